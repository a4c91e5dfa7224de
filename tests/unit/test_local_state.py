"""streams/local_state.py: a local table partition too old to have seen every deletion is restored in full."""
from __future__ import annotations

import gc
import os
import time

import pytest
from faust.types import TP

from streams import metrics
from streams.local_state import caught_up_marker, corrupt_marker, mark_caught_up, mark_open_partitions_caught_up
from streams.table_io import PartitionTable
from tests.unit.pipelines import offline_pipeline
from tests.unit.test_table_io import damage_blocks

DAY = 86400.0


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _closed(table, partition: int) -> None:
    """What a revocation (or a stop) leaves: the partition's database closed, its files on disk."""
    table.data._dbs.pop(partition).close()
    gc.collect()


def _stored(table, partition: int, mark: bool = True) -> None:
    """A batch written to ``partition`` (as Pipeline._write does), then the partition closed."""
    PartitionTable(table, partition).put_many([(f"user-{partition}".encode(), b"profile")])
    table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), partition), 41)
    if mark:
        mark_caught_up(table.data, partition)
    _closed(table, partition)


def test_regression_a_partition_store_older_than_half_the_tombstone_retention_is_restored_in_full(tmp_path):
    """Faust reopened a partition's local database from any age and read the changelog from the offset it had
    reached: a deletion whose tombstone compaction had dropped meanwhile (an erased user) never reached it, and the
    deleted profile was served again (found by review)."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")  # tombstone retention: 7 days by default
    table = pipeline.profiles
    changelog = table.changelog_topic.get_topic_name()
    for partition in (1, 2):
        _stored(table, partition)
    _stored(table, 3, mark=False)  # written before the marker existed, or never caught up: its age is unknown
    _age(caught_up_marker(table.data.partition_path(1)), 4 * DAY)  # past half the retention
    _age(caught_up_marker(table.data.partition_path(2)), 3 * DAY)
    before = metrics.STALE_STORES_DISCARDED._value.get()
    assert PartitionTable(table, 1).get(b"user-1") is None
    assert table.data.persisted_offset(TP(changelog, 1)) is None  # restored from the changelog's start
    assert PartitionTable(table, 2).get(b"user-2") == b"profile"
    assert table.data.persisted_offset(TP(changelog, 2)) == 41
    assert PartitionTable(table, 3).get(b"user-3") is None
    assert metrics.STALE_STORES_DISCARDED._value.get() == before + 2
    assert not caught_up_marker(table.data.partition_path(1)).exists()  # its age starts again when caught up


def test_regression_opening_a_store_does_not_make_it_fresh(tmp_path):
    """The age was read from RocksDB's own files, and opening a database writes a new log, manifest and options
    file: a store opened again and again without catching up (a crash loop, rebalances during its restore)
    looked fresh each time (found by review). Only being caught up counts."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    _stored(table, 1)
    marker = caught_up_marker(table.data.partition_path(1))
    _age(marker, 2 * DAY)
    assert PartitionTable(table, 1).get(b"user-1") == b"profile"  # opened, not caught up: the age stays
    _closed(table, 1)
    _age(marker, 4 * DAY)
    assert PartitionTable(table, 1).get(b"user-1") is None


def test_regression_a_store_still_open_elsewhere_keeps_its_files(tmp_path):
    """The stale store was deleted before RocksDB's lock was taken: with a handle still open (Faust does not close
    a revoked partition's database; another worker on the same directory) the files went and the open failed
    (found by review). The open comes first, so it fails with the files in place."""
    from rocksdict import Rdict

    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    _stored(table, 1)
    path = table.data.partition_path(1)
    elsewhere = Rdict(str(path))  # holds the database's lock
    for f in [caught_up_marker(path), *path.iterdir()]:  # stale by any reckoning
        _age(f, 9 * DAY)
    try:
        with pytest.raises(Exception, match="(?i)lock"):
            table.data._open_for_partition(1)
        assert elsewhere[b"user-1"] == b"profile" and (path / "CURRENT").exists()  # the files are still there
    finally:
        elsewhere.close()


def test_a_recovery_marks_every_open_partition_caught_up(tmp_path):
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.states
    for partition in (0, 2):
        PartitionTable(table, partition).put_many([(b"p", b"s")])
    mark_open_partitions_caught_up(table.data)
    assert [caught_up_marker(table.data.partition_path(p)).exists() for p in range(4)] == [True, False, True, False]


def test_a_marker_is_touched_at_most_once_a_minute(tmp_path):
    """A touch per batch was file I/O on the event loop's hot path; the age is compared with days."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    PartitionTable(table, 0).put_many([(b"u", b"p")])
    mark_caught_up(table.data, 0)
    marker = caught_up_marker(table.data.partition_path(0))
    _age(marker, 30.0)
    mark_caught_up(table.data, 0)  # the next batch, within the minute
    assert time.time() - marker.stat().st_mtime >= 29.0


def test_regression_a_store_rocksdb_cannot_open_is_restored_from_the_changelog(tmp_path):
    """A damaged CURRENT or MANIFEST made the worker fail at every start until an operator deleted the partition's
    database by hand (the runbook said so). It is discarded at the opening, as a stale one is, and the partition
    restored from its changelog; another partition keeps its database."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    changelog = table.changelog_topic.get_topic_name()
    for partition in (1, 2):
        _stored(table, partition)
    (table.data.partition_path(1) / "CURRENT").write_bytes(b"garbage")
    before = metrics.CORRUPT_STORES_DISCARDED._value.get()
    assert PartitionTable(table, 1).get(b"user-1") is None
    assert table.data.persisted_offset(TP(changelog, 1)) is None  # restored from the changelog's start
    assert PartitionTable(table, 2).get(b"user-2") == b"profile"
    assert metrics.CORRUPT_STORES_DISCARDED._value.get() == before + 1


def test_regression_a_store_damaged_past_its_opening_is_restored_at_the_next_start(tmp_path):
    """A damaged block opens fine and fails the first read of it: the worker stopped there at every start. The
    read now leaves a marker beside the database and raises as before; the next opening discards the database
    and the partition is restored from its changelog."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    rows = [(f"user-{i:05d}".encode(), bytes([i % 251]) * 300) for i in range(4000)]
    PartitionTable(table, 1).put_many(rows)
    table.data._dbs[1].flush()
    mark_caught_up(table.data, 1)
    _closed(table, 1)
    path = table.data.partition_path(1)
    damage_blocks(path)
    before = metrics.CORRUPT_STORES_DISCARDED._value.get()
    def scan_error() -> str:  # the activity index's scan at an assignment; no traceback kept (it holds the database)
        try:
            list(PartitionTable(table, 1).values())
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return ""

    assert scan_error().startswith("Corruption: block checksum mismatch")
    assert corrupt_marker(path).exists() and path.exists()  # an open database is not deleted under the worker
    _closed(table, 1)  # the worker stopped
    assert PartitionTable(table, 1).get(b"user-00001") is None and list(PartitionTable(table, 1).values()) == []
    assert not corrupt_marker(path).exists() and metrics.CORRUPT_STORES_DISCARDED._value.get() == before + 1


def test_regression_damage_where_faust_reads_its_offset_is_restored_at_once(tmp_path):
    """Faust's recovery reads its own offset key first, through no call of ours: a damaged block there failed every
    start and left no marker (found by the review of the change). The opening reads that key too, and discards a
    database that fails it."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    table = pipeline.profiles
    changelog = table.changelog_topic.get_topic_name()
    PartitionTable(table, 1).put_many([(f"user-{i:05d}".encode(), bytes([i % 251]) * 300) for i in range(4000)])
    table.data.set_persisted_offset(TP(changelog, 1), 41)
    table.data._dbs[1].flush()
    mark_caught_up(table.data, 1)
    _closed(table, 1)
    damage_blocks(table.data.partition_path(1), at=0)  # the first block: the offset key sorts before "user-"
    before = metrics.CORRUPT_STORES_DISCARDED._value.get()
    assert table.data.persisted_offset(TP(changelog, 1)) is None  # restored from the changelog's start
    assert metrics.CORRUPT_STORES_DISCARDED._value.get() == before + 1


def test_faust_calls_that_meet_damage_leave_the_marker(tmp_path):
    """A restore's write or an offset's write that meets damage (a compaction's background error) leaves the
    marker, like the worker's own reads and writes, and raises on."""
    from types import SimpleNamespace

    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    store = pipeline.profiles.data
    changelog = pipeline.profiles.changelog_topic.get_topic_name()
    damaged = Exception("Corruption: block checksum mismatch")

    class Broken:
        def put(self, *_):
            raise damaged

        def write(self, *_):
            raise damaged

    store._dbs[2] = store._dbs[3] = Broken()
    with pytest.raises(Exception, match="Corruption"):
        store.set_persisted_offset(TP(changelog, 2), 7)
    assert corrupt_marker(store.partition_path(2)).exists()
    event = SimpleNamespace(message=SimpleNamespace(tp=TP(changelog, 3), offset=1, partition=3, key=b"k", value=b"v"))
    with pytest.raises(Exception, match="Corruption"):
        store.apply_changelog_batch([event], None, None)
    assert corrupt_marker(store.partition_path(3)).exists()
    del store._dbs[2], store._dbs[3]


def test_an_error_that_is_not_damage_leaves_no_marker(tmp_path):
    from streams.local_state import mark_corrupt

    pipeline = offline_pipeline(tmp_path, store="rocksdb://")
    store = pipeline.profiles.data
    assert not mark_corrupt(store, 1, OSError("IO error: No space left on device"))
    assert not corrupt_marker(store.partition_path(1)).exists()
    assert mark_corrupt(store, 1, Exception("Corruption: block checksum mismatch: stored = 1, computed = 2"))
    assert corrupt_marker(store.partition_path(1)).read_text().startswith("Corruption: block checksum mismatch")
