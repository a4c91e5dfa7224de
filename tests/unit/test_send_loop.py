"""Pipeline._send_loop, the task that hands each computed batch to the producer and then acks its inputs."""
import asyncio
from types import SimpleNamespace

from streams.app import Pipeline


class FailingSender:
    def __init__(self) -> None:
        self.sent: list = []

    async def send(self, records, on_delivered=None) -> None:
        self.sent.append(records)
        raise OSError("broker gone")


def test_regression_a_failed_send_does_not_hang_the_batch_loop() -> None:
    """The outbox holds one batch. When a send failed while the next batch waited in the outbox and the batch
    loop was already putting a third, the send task used to stop taking batches: that put waited forever and
    the worker hung instead of stopping. Batches after a failure are taken but neither sent nor acked."""
    acked: list = []
    pipeline = SimpleNamespace(sender=FailingSender(), _outbox=asyncio.Queue(maxsize=1), _send_failed=None,
                               _persisted=None, _ack=acked.append, processed=0)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        for batch in ("a", "b", "c"):
            await asyncio.wait_for(pipeline._outbox.put(([("out", None, b"k", batch.encode())], [], [batch])), 2)
        await asyncio.wait_for(pipeline._outbox.join(), 2)
        sending.cancel()

    asyncio.run(scenario())
    assert isinstance(pipeline._send_failed, OSError)
    assert len(pipeline.sender.sent) == 1  # only the first batch reached the producer
    assert acked == [] and pipeline.processed == 0  # nothing after (or in) the failed batch is acked
