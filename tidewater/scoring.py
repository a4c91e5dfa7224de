"""The churn model as the engine calls it: on the profile's ring of ``RecentEvent`` structs."""
from __future__ import annotations

from typing import Any

from models.churn.summary_batch import MIN_BATCH, summary_of_records


class RingScorer:
    """Adapts a model scorer (event dicts) to the profile's ring of ``RecentEvent`` structs. A model that
    scores from the summary features alone (``uses_encoder`` False) gets a tick's rings summarised in one
    compiled pass (``models/churn/summary_batch.py``, bit for bit the per-sequence features), a single ring too."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.version = scorer.version
        # stamped on each score: what its probability and forecast are about (a consumer had to read the registry)
        horizon = (getattr(scorer, "meta", None) or {}).get("horizon_days")
        self.horizon_days = float(horizon) if horizon is not None else None
        # what of the rings the model reads (ChurnScorer's metadata; a scorer without it reads everything)
        self._reads = {what: getattr(scorer, f"reads_{what}", True) for what in ("clicks", "amounts", "quantities")}
        self._reads["resolution"] = float(getattr(scorer, "ts_resolution_s", 0.0) or 0.0)

    @staticmethod
    def _dicts(sequences: Any) -> list[list[dict]]:
        # a dict display per event: half the cost of msgspec.structs.asdict plus a merge for the "item" key
        return [[{"ts": e.ts, "type": e.type, "item": e.item_id, "category": e.category, "amount": e.amount,
                  "quantity": e.quantity} for e in ring] for ring in sequences]

    def _from_summary(self, sequences: Any) -> bool:
        return len(sequences) >= MIN_BATCH and not getattr(self.scorer, "uses_encoder", True)

    def _predict_from_summary(self, sequences: Any, as_of: Any) -> Any:
        as_of = [as_of] * len(sequences) if isinstance(as_of, (int, float)) else list(as_of)
        return self.scorer.predict_from_summary(summary_of_records(sequences, as_of, **self._reads))

    def _ring_view(self, sequences: Any) -> Any:
        """The last ``ring_events`` of each ring, the view the model was trained on, when the worker keeps more.
        A model that does not read clicks was trained on a log without them: its view is the last
        ``ring_events`` purchases, so clicks go before the cut (after it, they would take purchases' places)."""
        keep = getattr(self.scorer, "ring_events", 0)
        if not keep or max(map(len, sequences), default=0) <= keep:
            return sequences
        if self._reads["clicks"]:
            return [ring[-keep:] if len(ring) > keep else ring for ring in sequences]
        return [[e for e in ring if e.type != "click"][-keep:] if len(ring) > keep else ring for ring in sequences]

    def score_many(self, sequences: Any, as_of: Any) -> Any:
        sequences = self._ring_view(sequences)
        if self._from_summary(sequences):
            return self._predict_from_summary(sequences, as_of)[0]
        return self.scorer.score_many(self._dicts(sequences), as_of)

    def predict_many(self, sequences: Any, as_of: Any) -> Any:
        """(churn probabilities, expected purchases in the model's horizon)."""
        sequences = self._ring_view(sequences)
        if self._from_summary(sequences):
            return self._predict_from_summary(sequences, as_of)
        return self.scorer.predict_many(self._dicts(sequences), as_of)
