"""The churn model as the engine calls it: on the profile's ring of ``RecentEvent`` structs."""
from __future__ import annotations

from typing import Any


class RingScorer:
    """Adapts a model scorer (event dicts) to the profile's ring of ``RecentEvent`` structs."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.version = scorer.version

    @staticmethod
    def _dicts(sequences: Any) -> list[list[dict]]:
        # a dict display per event: half the cost of msgspec.structs.asdict plus a merge for the "item" key
        return [[{"ts": e.ts, "type": e.type, "item": e.item_id, "category": e.category, "amount": e.amount,
                  "quantity": e.quantity} for e in ring] for ring in sequences]

    def score_many(self, sequences: Any, as_of: Any) -> Any:
        return self.scorer.score_many(self._dicts(sequences), as_of)

    def predict_many(self, sequences: Any, as_of: Any) -> Any:
        """(churn probabilities, expected purchases in the model's horizon)."""
        return self.scorer.predict_many(self._dicts(sequences), as_of)
