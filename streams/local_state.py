"""A worker's local table stores (RocksDB, one database per table partition) that are too old to trust.

Faust keeps a partition's local database when the partition leaves the worker (a rebalance, a stop) and, when it
comes back, reads the changelog only from the offset that database had reached. The changelogs are compacted,
and a compacted topic drops a deletion's tombstone ``delete.retention.ms`` after writing it: a database last
caught up with its changelog longer ago than that can miss a deletion for good (an erased user's profile, an item
count dropped from the partition state), and would serve the deleted record again (found by review). Such a
database is discarded when Faust opens it, and the partition is restored from the changelog in full, as on a new
disk.

Caught up: the worker touches a marker file beside the database (``<db>.caught-up``) when it has restored the
partition and with the batches it writes there (at most once a minute). The database's own files cannot tell: opening one writes a new
log, manifest and options file, so a database opened again and again without catching up looked fresh (found by
review). A database without a marker (written before the marker existed, or never caught up) is discarded.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from streams import metrics

log = logging.getLogger("tidewater.local_state")


def caught_up_marker(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".caught-up")


MARK_EVERY_S = 60.0  # a marker is touched at most this often: its age is compared with days, and a touch per
_marked: dict[Path, float] = {}  # batch was file I/O on the event loop's hot path (marker -> last touch, monotonic)


def mark_caught_up(store: Any, partition: int) -> None:
    """The store's database of ``partition`` holds everything its changelog had up to now."""
    if hasattr(store, "partition_path"):
        marker = caught_up_marker(Path(store.partition_path(partition)))
        now = time.monotonic()
        if now - _marked.get(marker, -MARK_EVERY_S) >= MARK_EVERY_S:
            marker.touch()
            _marked[marker] = now


def mark_open_partitions_caught_up(store: Any) -> None:
    """After a recovery: every partition the store has open was just restored to its changelog's end."""
    for partition in list(getattr(store, "_dbs", {})):
        mark_caught_up(store, partition)


def stale_since(db_path: Path, max_age_s: float, now: float) -> float | None:
    """How long ago the database at ``db_path`` was last caught up, if that is ``max_age_s`` or more (or unknown:
    infinity); None for a fresh one or none at all."""
    if not db_path.exists():
        return None
    marker = caught_up_marker(db_path)
    age = now - marker.stat().st_mtime if marker.exists() else float("inf")
    return age if age >= max_age_s else None


def guard_against_stale_partitions(store: Any, tombstone_retention_s: float) -> None:
    """Make a Faust RocksDB store discard a partition's database last caught up more than half the changelogs'
    tombstone retention ago when it opens it (half: the restore that follows reads for a while, and clocks
    drift). The database is opened first, which takes RocksDB's lock: one still open elsewhere (this process's
    previous handle, another worker on the same directory) fails the open as before instead of losing its files.
    Stores without partition databases (``memory://``) are left alone."""
    if not hasattr(store, "partition_path") or not hasattr(store, "_open_for_partition"):
        return
    open_partition = store._open_for_partition
    max_age_s = tombstone_retention_s / 2

    def _open_for_partition(partition: int) -> Any:
        path = Path(store.partition_path(partition))
        age = stale_since(path, max_age_s, time.time())
        db = open_partition(partition)
        if age is None:
            return db
        db.close()
        log.warning("discarding the local store %s, last caught up %s (more than %.1f h: deletions compacted away "
                    "since may be missing); the partition is restored from its changelog", path,
                    "at an unknown time" if age == float("inf") else f"{age / 3600:.1f} h ago", max_age_s / 3600)
        shutil.rmtree(path)
        caught_up_marker(path).unlink(missing_ok=True)
        _marked.pop(caught_up_marker(path), None)  # the next catch-up touches it again at once
        metrics.STALE_STORES_DISCARDED.inc()
        return open_partition(partition)

    store._open_for_partition = _open_for_partition
