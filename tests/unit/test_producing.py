"""streams/producing.py: the keys that probes use to reach every partition."""
import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.producing import one_key_per_partition


@pytest.mark.parametrize("partitions", [1, 2, 3, 8, 16])
def test_one_key_per_partition_lands_each_key_on_its_partition(partitions: int) -> None:
    keys = one_key_per_partition("probe", partitions)
    parts = list(range(partitions))
    assert sorted(keys) == parts
    assert {DefaultPartitioner()(key, parts, parts) for key in keys.values()} == set(parts)
    assert all(DefaultPartitioner()(key, parts, parts) == p for p, key in keys.items())
    assert all(key.startswith(b"probe-") for key in keys.values())
