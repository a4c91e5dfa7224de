"""Stand-in churn scorer used until a trained model is in the registry. It is a heuristic, not a model, and says
so in every output's ``model_version`` (``heuristic:...``). The recommender's stand-in is
``tidewater.recommending.PartitionPopularity`` (``baseline:...``)."""
from __future__ import annotations

import math
from typing import Any, Sequence

DAY = 86400.0


class RecencyHeuristic:
    """Churn score from recency and purchase count: 1 - exp(-recency_days / (15 * (1 + ln(1 + purchases))))."""

    version = "heuristic:recency-v1"

    def score_many(self, sequences: Sequence[Sequence[Any]], as_of: Sequence[float]) -> list[float]:
        """``sequences``: the users' recent events (``RecentEvent`` structs or dicts with ts/type)."""
        scores = []
        for events, t in zip(sequences, as_of):
            if not events:
                scores.append(1.0)
                continue
            rows = [(e["ts"], e["type"]) if isinstance(e, dict) else (e.ts, e.type) for e in events]
            recency_days = max(0.0, t - max(ts for ts, _ in rows)) / DAY
            purchases = sum(1 for _, kind in rows if kind == "purchase")
            scores.append(round(1.0 - math.exp(-recency_days / (15.0 * (1.0 + math.log1p(purchases)))), 6))
        return scores
