"""Direct access to one partition of a Faust table's store, for the batch path.

Faust's per-key path (``table.data[key] = value``) finds the partition from the *current event*, keeps an LRU
key index and serialises per call; reads without a current event search every partition's database. The
batch loop knows each record's partition, so it reads and writes that partition's RocksDB directly, writing a
batch's profiles in one ``WriteBatch``. The changelog records are produced by the pipeline as before, and the
persisted changelog offset is still kept by Faust's store, so a restore starts where Faust expects.

Stores without per-partition databases (``memory://``) take Faust's path under a current event for the
partition.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from faust.streams import _current_event

from streams.local_state import mark_corrupt


class _Where:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class _PartitionEvent:
    """What Faust tables need of a current event: ``.message.partition`` and ``.message.topic``."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, message: Any) -> None:
        self.message = message


@contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Make Faust's table calls inside the block go to ``partition`` (its store and changelog partition)."""
    event = _PartitionEvent(_Where(topic, partition))
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def scan(db: Any, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of a rocksdict database from ``from_key`` (the first key) on, in key order, raising
    what RocksDB met once the end is reached: ``items()`` ends at a corrupt block without a word, so a partition's
    activity index and state were rebuilt from part of it, and the users past the block were never scored for
    silence again (found by a failure-injection review)."""
    it = db.iter()
    if from_key is None:
        it.seek_to_first()
    else:
        it.seek(from_key)
    while it.valid():
        yield it.key(), it.value()
        it.next()
    it.status()  # raises (rocksdict's Exception) on a corrupt block


class PartitionTable:
    """Reads and batched writes of one partition of a Faust table with bytes keys and values."""

    def __init__(self, table: Any, partition: int) -> None:
        self.table = table
        self.partition = partition
        self.topic = table.changelog_topic.get_topic_name()
        # looked up per call, as Faust does: a rebalance closes and re-opens the partition's database
        self._db_for = getattr(table.data, "_db_for_partition", None)

    @contextmanager
    def _noting_damage(self) -> Iterator[None]:
        """A RocksDB error that says the database is damaged leaves the marker that has it discarded and restored
        from the changelog at its next opening (streams/local_state.py); the error is raised on as before."""
        try:
            yield
        except Exception as exc:
            mark_corrupt(self.table.data, self.partition, exc)
            raise

    def get(self, key: bytes) -> bytes | None:
        if self._db_for is not None:
            try:  # not ``_noting_damage``: a generator-based context manager costs 1 µs here, try nothing
                return self._db_for(self.partition).get(key)
            except Exception as exc:
                mark_corrupt(self.table.data, self.partition, exc)
                raise
        with partition_context(self.topic, self.partition):
            return self.table.data.get(key)

    def put_many(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """One write batch; a value of None deletes the key (the changelog's tombstone)."""
        if self._db_for is not None:
            import rocksdict

            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            with self._noting_damage():
                self._db_for(self.partition).write(batch)
            return
        with partition_context(self.topic, self.partition):
            for key, value in items:
                if value is None:
                    self.table.data.pop(key, None)
                else:
                    self.table.data[key] = value

    def values(self) -> Iterator[bytes]:
        """Every value stored in this partition (a RocksDB store holds one database per partition; the memory
        store holds all partitions together, so its keys are told apart with the producer's partitioner)."""
        if self._db_for is not None:
            offset_key = getattr(self.table.data, "offset_key", None)  # Faust's own record of the changelog offset
            with self._noting_damage():
                for key, value in scan(self._db_for(self.partition)):
                    if key != offset_key:
                        yield value
            return
        from streams.producing import key_partition

        partitions = list(range(self.table.partitions or self.table.app.conf.topic_partitions))
        for key, value in list(self.table.data.items()):
            if isinstance(key, bytes) and key_partition(key, partitions) == self.partition:
                yield value

    def items_with_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The partition's keys that start with ``prefix``, with their values, in key order."""
        if self._db_for is not None:
            out = []
            with self._noting_damage():
                for key, value in scan(self._db_for(self.partition), prefix):
                    if not key.startswith(prefix):
                        break
                    out.append((key, value))
            return out
        with partition_context(self.topic, self.partition):
            return sorted((k, v) for k, v in self.table.data.items() if isinstance(k, bytes) and k.startswith(prefix))
