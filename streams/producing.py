"""Batched producing for the hot path: records grouped per (topic, partition) into aiokafka BatchBuilders.

Faust's ``Topic.send`` costs a FutureMessage, a PendingMessage, a partitioner call and debug logging per record
(measured: a third of the worker's CPU). Here each output is one ``BatchBuilder.append``. The batches go through
the same aiokafka producer Faust owns, so Faust's commit (which flushes that producer before committing
offsets) still orders outputs and changelog records before the offsets of the inputs that caused them.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Callable, Iterable

from aiokafka.partitioner import DefaultPartitioner


def one_key_per_partition(prefix: str, partitions: int) -> dict[int, bytes]:
    """A key that the producer's partitioner sends to each partition (``prefix-0``, ``prefix-1``, ...: the first
    one found for each): probes that must reach every partition of a topic."""
    choose, parts, keys, i = DefaultPartitioner(), list(range(partitions)), {}, 0
    while len(keys) < partitions:
        key = f"{prefix}-{i}".encode()
        keys.setdefault(choose(key, parts, parts), key)
        i += 1
    return keys


class BatchSender:
    def __init__(self, faust_producer: Any, partitions: int) -> None:
        self.faust_producer = faust_producer
        self.all_partitions = list(range(partitions))
        self.partitioner = DefaultPartitioner()
        self.in_flight: set[asyncio.Future] = set()

    def partition_for(self, key: bytes) -> int:
        return self.partitioner(key, self.all_partitions, self.all_partitions)

    async def send(self, records: Iterable[tuple[str, int | None, bytes, bytes]],
                   on_delivered: Callable[[str, int, int], None] | None = None) -> None:
        """Queue records (topic, partition or None for the key's partition, key, value).

        ``on_delivered(topic, partition, last_offset)`` runs when a partition's batch is acknowledged."""
        producer = self.faust_producer._ensure_producer()
        grouped: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
        for topic, partition, key, value in records:
            if partition is None:
                partition = self.partition_for(key)
            grouped[(topic, partition)].append((key, value))
        for (topic, partition), items in grouped.items():
            batch = producer.create_batch()
            count = 0
            for key, value in items:
                if batch.append(timestamp=None, key=key, value=value) is None:  # full: send, start another
                    await self._submit(producer, batch, topic, partition, count, on_delivered)
                    batch, count = producer.create_batch(), 0
                    batch.append(timestamp=None, key=key, value=value)
                count += 1
            await self._submit(producer, batch, topic, partition, count, on_delivered)

    async def _submit(self, producer: Any, batch: Any, topic: str, partition: int, count: int,
                      on_delivered: Callable[[str, int, int], None] | None) -> None:
        future = await producer.send_batch(batch, topic, partition=partition)
        if on_delivered is not None:
            def done(fut: asyncio.Future, topic: str = topic, partition: int = partition, n: int = count) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    on_delivered(topic, partition, fut.result().offset + n - 1)

            future.add_done_callback(done)
