"""A worker's local table stores (RocksDB, one database per table partition) that are too old to trust.

Faust keeps a partition's local database when the partition leaves the worker (a rebalance, a stop) and, when it
comes back, reads the changelog only from the offset that database had reached. The changelogs are compacted,
and a compacted topic drops a deletion's tombstone ``delete.retention.ms`` after writing it: a database last
written longer ago than that can miss a deletion for good (an erased user's profile, an item count dropped
from the partition state), and would serve the deleted record again (found by review). Such a database is
discarded before Faust opens it, and the partition is restored from the changelog in full, as on a new disk.

Last written: the newest of RocksDB's data files (tables, write-ahead logs, manifest). Its ``LOG`` is left out:
an open database appends statistics to it every few minutes without any write.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from streams import metrics

log = logging.getLogger("tidewater.local_state")

_INFO_FILES = ("LOG", "LOCK")


def last_written(path: Path) -> float | None:
    """When a RocksDB directory's data last changed (its files' newest mtime); None if there is none."""
    times = [f.stat().st_mtime for f in path.iterdir()
             if f.is_file() and not f.name.startswith(_INFO_FILES)] if path.is_dir() else []
    return max(times, default=None)


def discard_if_stale(path: Path, max_age_s: float, now: float) -> bool:
    """Delete the database at ``path`` if it was last written ``max_age_s`` or more before ``now``."""
    written = last_written(path)
    if written is None or now - written < max_age_s:
        return False
    log.warning("discarding the local store %s, last written %.1f h ago (more than %.1f h: deletions compacted "
                "away since may be missing); the partition is restored from its changelog", path,
                (now - written) / 3600, max_age_s / 3600)
    shutil.rmtree(path)
    metrics.STALE_STORES_DISCARDED.inc()
    return True


def guard_against_stale_partitions(store: Any, tombstone_retention_s: float) -> None:
    """Make a Faust RocksDB store discard a partition's database older than half the changelog's tombstone
    retention when it opens it (half: the restore that follows reads for a while, and clocks drift). Stores
    without partition databases (``memory://``) are left alone."""
    if not hasattr(store, "partition_path") or not hasattr(store, "_open_for_partition"):
        return
    open_partition = store._open_for_partition
    max_age_s = tombstone_retention_s / 2

    def _open_for_partition(partition: int) -> Any:
        discard_if_stale(Path(store.partition_path(partition)), max_age_s, time.time())
        return open_partition(partition)

    store._open_for_partition = _open_for_partition
