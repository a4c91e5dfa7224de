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

A damaged database is discarded the same way, as Kafka Streams wipes a corrupted task's state: the changelog holds
every record. One that RocksDB refuses to open (a damaged ``MANIFEST`` or ``CURRENT``) is discarded at once; a
read or write that meets damage later (a block's checksum) leaves a marker beside the database (``<db>.corrupt``)
and raises, the worker stops, and the next opening discards it. Before, the worker failed at every start until an
operator deleted the database by hand.
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


def corrupt_marker(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".corrupt")


def is_corruption(exc: BaseException) -> bool:
    """RocksDB's status for damaged files ("Corruption: block checksum mismatch ...", "Corruption: CURRENT file
    ..."): rocksdict raises it as a plain Exception with that text."""
    return "Corruption:" in str(exc)


def mark_corrupt(store: Any, partition: int, exc: BaseException) -> bool:
    """Leave the marker that makes the next opening discard ``partition``'s database, if ``exc`` says it is
    damaged; True when it did. Never raises: the caller raises the RocksDB error on."""
    if not is_corruption(exc) or not hasattr(store, "partition_path"):
        return False
    path = Path(store.partition_path(partition))
    log.error("the local store %s is damaged (%s): the worker stops, and at its next start discards it and restores "
              "the partition from its changelog", path, str(exc))  # not the exception: its frames hold the database
    try:
        corrupt_marker(path).write_text(f"{exc}\n")
    except OSError as marker_error:  # a failing disk: the store stays, as before the marker existed
        log.error("could not leave the marker %s (%s): delete the store by hand", corrupt_marker(path), marker_error)
        return False
    return True


def _discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # half deleted: opening what is left would serve part of the partition
        shutil.rmtree(path)  # raises why
    for marker in (caught_up_marker(path), corrupt_marker(path)):
        marker.unlink(missing_ok=True)
    _marked.pop(caught_up_marker(path), None)  # the next catch-up touches it again at once


def _note_damage_in(method: Any, partitions_of: Any) -> Any:
    """``method`` of a store, leaving the damage marker (``mark_corrupt``) for the partitions ``partitions_of(*args)``
    names when it raises RocksDB's corruption (Faust's own reads and writes: the offset its recovery reads first,
    the restore's writes)."""
    def noted(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            if is_corruption(exc):
                for partition in partitions_of(*args, **kwargs):
                    mark_corrupt(method.__self__, partition, exc)
            raise
    return noted


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
    offset_key = getattr(store, "offset_key", b"__faust\x00offset__")

    def _reopened_empty(partition: int, path: Path, why: str, counter: Any) -> Any:
        log.warning("discarding the local store %s, %s; the partition is restored from its changelog", path, why)
        _discard(path)
        counter.inc()
        return open_partition(partition)

    def _open_for_partition(partition: int) -> Any:
        path = Path(store.partition_path(partition))
        age = stale_since(path, max_age_s, time.time())
        db = None
        try:
            db = open_partition(partition)
            db.get(offset_key)  # what Faust's recovery reads first: a damaged block there failed every start
        except Exception as exc:  # noqa: BLE001 - only RocksDB's corruption is handled; the rest is raised
            if not is_corruption(exc):
                raise
            if db is not None:
                db.close()
            return _reopened_empty(partition, path, f"which RocksDB finds damaged ({exc})",
                                   metrics.CORRUPT_STORES_DISCARDED)
        damage = corrupt_marker(path)
        if damage.exists():  # a read or write met damage before the last stop (``mark_corrupt``)
            db.close()
            return _reopened_empty(partition, path, f"found damaged ({damage.read_text(errors='replace').strip()})",
                                   metrics.CORRUPT_STORES_DISCARDED)
        if age is None:
            return db
        db.close()
        last = "at an unknown time" if age == float("inf") else f"{age / 3600:.1f} h ago"
        return _reopened_empty(partition, path, f"last caught up {last} (more than {max_age_s / 3600:.1f} h: "
                               "deletions compacted away since may be missing)", metrics.STALE_STORES_DISCARDED)

    store._open_for_partition = _open_for_partition
    store.persisted_offset = _note_damage_in(store.persisted_offset, lambda tp: [tp.partition])
    store.set_persisted_offset = _note_damage_in(store.set_persisted_offset, lambda tp, offset: [tp.partition])
    store.apply_changelog_batch = _note_damage_in(
        store.apply_changelog_batch, lambda batch, *_, **__: sorted({e.message.partition for e in batch}))
