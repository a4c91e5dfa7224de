"""streams/local_state.py: a local table partition too old to have seen every deletion is restored in full."""
from __future__ import annotations

import gc
import os
import time

from faust.types import TP

from streams import metrics
from streams.local_state import discard_if_stale, last_written
from streams.table_io import PartitionTable
from tests.unit.pipelines import offline_pipeline

DAY = 86400.0


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    for f in path.iterdir():
        os.utime(f, (then, then))


def _closed(table, partition: int) -> None:
    """What a revocation (or a stop) leaves: the partition's database closed, its files on disk."""
    table.data._dbs.pop(partition).close()
    gc.collect()


def test_regression_a_partition_store_older_than_half_the_tombstone_retention_is_restored_in_full(tmp_path):
    """Faust reopened a partition's local database from any age and read the changelog from the offset it had
    reached: a deletion whose tombstone compaction had dropped meanwhile (an erased user) never reached it, and the
    deleted profile was served again (found by review)."""
    pipeline = offline_pipeline(tmp_path, store="rocksdb://")  # tombstone retention: 7 days by default
    table = pipeline.profiles
    changelog = table.changelog_topic.get_topic_name()
    for partition in (1, 2):
        PartitionTable(table, partition).put_many([(f"user-{partition}".encode(), b"profile")])
        table.data.set_persisted_offset(TP(changelog, partition), 41)
        _closed(table, partition)
    path_1, path_2 = table.data.partition_path(1), table.data.partition_path(2)
    _age(path_1, 4 * DAY)  # older than half the retention: compaction may have dropped a tombstone since
    _age(path_2, 3 * DAY)
    before = metrics.STALE_STORES_DISCARDED._value.get()
    assert PartitionTable(table, 1).get(b"user-1") is None
    assert table.data.persisted_offset(TP(changelog, 1)) is None  # restored from the changelog's start
    assert PartitionTable(table, 2).get(b"user-2") == b"profile"
    assert table.data.persisted_offset(TP(changelog, 2)) == 41
    assert metrics.STALE_STORES_DISCARDED._value.get() == before + 1


def test_rocksdbs_own_log_does_not_count_as_a_write(tmp_path):
    """An open database appends statistics to its LOG every few minutes without any write."""
    db = tmp_path / "table-0.db"
    db.mkdir()
    (db / "000007.sst").write_bytes(b"x")
    (db / "LOG").write_text("stats")
    _age(db, 10 * DAY)
    os.utime(db / "LOG")  # just now
    assert abs(last_written(db) - (time.time() - 10 * DAY)) < 60
    assert discard_if_stale(db, 5 * DAY, time.time()) and not db.exists()
    assert not discard_if_stale(tmp_path / "never-written.db", 1.0, time.time())
