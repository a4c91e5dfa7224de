"""Processing rate of Tidewater workers, timed by the workers themselves (the ``acks`` of GET /stats).

Polling ``processed`` from outside undercounts the window: it moves in steps of a whole batch, and while a big
batch runs on a worker's event loop its /stats answers late. The workers stamp their first and latest acked
batch instead; the first batch's records are left out because its start is not stamped."""
from __future__ import annotations

from typing import Any, Iterable


def acked_rate(stats: Iterable[dict[str, Any]]) -> float | None:
    """Records/s over all workers, from the earliest first ack to the latest ack; None before two acks."""
    started = [s for s in stats if (s.get("acks") or {}).get("first_at") is not None]
    if not started:
        return None
    first = min((s["acks"] for s in started), key=lambda a: a["first_at"])
    window = max(s["acks"]["last_at"] for s in started) - first["first_at"]
    if window <= 0:
        return None
    return (sum(s["processed"] for s in started) - first["first_count"]) / window
