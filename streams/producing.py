"""Batched producing for the hot path: records grouped per (topic, partition) into aiokafka BatchBuilders.

Faust's ``Topic.send`` costs a FutureMessage, a PendingMessage, a partitioner call and debug logging per record
(measured: a third of the worker's CPU). Here each output is one ``BatchBuilder.append``. The batches go through
the same aiokafka producer Faust owns; :func:`delivered` waits until Kafka has acknowledged them and raises what
failed, which the worker's send tasks (``streams.app.Pipeline._send_loop``) need before they store a batch's
profiles and ack its inputs.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.metrics import WHOLE_BATCHES_SPLIT

log = logging.getLogger("tidewater.producing")


_PARTITIONER = DefaultPartitioner()
# the largest record batch a whole send builds: Faust's default producer_max_request_size, under Kafka's default
# message.max.bytes (1,048,588 with the batch's overhead)
WHOLE_MAX_BYTES = 1_000_000


def key_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition the producers' default partitioner (murmur2, as Kafka's Java client) gives ``key`` among
    ``partitions`` (``list(range(n))``): where a user's events, profile and outputs live."""
    return _PARTITIONER(key, partitions, partitions)


def one_key_per_partition(prefix: str, partitions: int) -> dict[int, bytes]:
    """A key that the producer's partitioner sends to each partition (``prefix-0``, ``prefix-1``, ...: the first
    one found for each): probes that must reach every partition of a topic."""
    parts, keys, i = list(range(partitions)), {}, 0
    while len(keys) < partitions:
        key = f"{prefix}-{i}".encode()
        keys.setdefault(key_partition(key, parts), key)
        i += 1
    return keys


@dataclass(frozen=True)
class Delivery:
    """One produced batch: ``future`` resolves to aiokafka's RecordMetadata of its first record when the broker
    has acknowledged it, or to the error that made the producer give up."""

    future: asyncio.Future
    topic: str
    partition: int
    count: int


async def delivered(deliveries: list[Delivery]) -> dict[tuple[str, int], int]:
    """Wait until every batch is acknowledged and return the last offset written per (topic, partition); raise
    the first failure. A record handed to the producer is not yet a record in Kafka: an authorisation error, a
    record too large for the broker or a partition without a leader past the request timeout fails it there."""
    results = await asyncio.gather(*(d.future for d in deliveries))
    last: dict[tuple[str, int], int] = {}
    for d, meta in zip(deliveries, results):
        key = (d.topic, d.partition)
        last[key] = max(last.get(key, -1), meta.offset + d.count - 1)
    return last


class BatchSender:
    def __init__(self, faust_producer: Any, partitions: int, whole_max_bytes: int = WHOLE_MAX_BYTES) -> None:
        """``whole_max_bytes``: the largest record batch :meth:`send` builds for ``whole`` records (Faust's
        ``producer_max_request_size``, below Kafka's default ``message.max.bytes`` of 1,048,588)."""
        self.faust_producer = faust_producer
        self.all_partitions = list(range(partitions))
        self.whole_max_bytes = whole_max_bytes

    def partition_for(self, key: bytes) -> int:
        return key_partition(key, self.all_partitions)

    async def send(self, records: Iterable[tuple[str, int | None, bytes, bytes | None]], *,
                   whole: bool = False) -> list[Delivery]:
        """Queue records (topic, partition or None for the key's partition, key, value) in one batch per topic
        partition (more where one is full); returns the batches, to be awaited with :func:`delivered`.

        ``whole``: each topic partition's records in one record batch, which Kafka appends whole or not at all,
        up to ``whole_max_bytes`` (beyond, they are split as they would be otherwise, and counted in
        ``tidewater_whole_batches_split_total``). A batch's partition state goes so: split at the producer's
        batch size, a crash could land its item counts without the state record, and the re-read batch counted
        them again."""
        producer = self.faust_producer._ensure_producer()
        grouped: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = defaultdict(list)
        for topic, partition, key, value in records:
            if partition is None:
                partition = self.partition_for(key)
            grouped[(topic, partition)].append((key, value))
        out: list[Delivery] = []
        for (topic, partition), items in grouped.items():
            batch, size = self._whole_batch(producer) if whole else (producer.create_batch(), 0)
            count, split = 0, False
            for key, value in items:
                if batch.append(timestamp=None, key=key, value=value) is None:  # full: send, start another
                    if whole and not split:
                        log.warning("%d records for %s/%d do not fit in one record batch of %d bytes: sent in "
                                    "parts, which a crash can land apart", len(items), topic, partition, size)
                        WHOLE_BATCHES_SPLIT.inc()
                        split = True
                    out.append(Delivery(await producer.send_batch(batch, topic, partition=partition), topic,
                                        partition, count))
                    batch, count = producer.create_batch(), 0
                    batch.append(timestamp=None, key=key, value=value)
                count += 1
            out.append(Delivery(await producer.send_batch(batch, topic, partition=partition), topic, partition, count))
        return out

    def _whole_batch(self, producer: Any) -> tuple[Any, int]:
        """An empty batch as ``producer.create_batch()`` makes (aiokafka's ``MessageAccumulator.create_builder``),
        sized ``whole_max_bytes`` instead of the producer's batch size, when that is larger; and its size."""
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is None:  # a stand-in producer (tests): its own batches
            return producer.create_batch(), 0
        size = max(self.whole_max_bytes, accumulator._batch_size)
        txn = accumulator._txn_manager
        return BatchBuilder(size, accumulator._compression_type,
                            is_transactional=txn is not None and txn.transactional_id is not None,
                            key_serializer=producer._key_serializer, value_serializer=producer._value_serializer), size
