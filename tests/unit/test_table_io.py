"""streams/table_io.py writes where Faust's own table path would, and reads back what Faust wrote."""
from __future__ import annotations

import faust
import pytest

from streams.table_io import PartitionTable, partition_context


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_partition_writes_are_visible_to_fausts_own_reads_of_that_partition(tmp_path, store):
    app = faust.App("table-io", broker="kafka://127.0.0.1:1", store=store, datadir=str(tmp_path))
    table = app.Table("profiles", partitions=2, key_type=bytes, value_type=bytes)
    PartitionTable(table, 1).put_many([(b"u1", b"one"), (b"u2", b"two")])
    with partition_context(table.changelog_topic.get_topic_name(), 1):
        table.data[b"u3"] = b"three"  # Faust's path
        assert table.data[b"u1"] == b"one"
    assert PartitionTable(table, 1).get(b"u3") == b"three"
    assert PartitionTable(table, 1).get(b"missing") is None
    if store == "rocksdb://":  # one database per partition: nothing leaked into partition 0
        assert PartitionTable(table, 0).get(b"u1") is None
