"""Pipeline.stop: the batch loop ends, and what was computed is sent, before Faust closes the tables."""
from __future__ import annotations

import asyncio

import pytest

from tests.unit.pipelines import offline_pipeline


def _loop_of(pipeline, load_s: float = 0.0, hold: asyncio.Event | None = None):
    """``pipeline.run`` with its model load taking ``load_s`` and batches recorded instead of computed (each
    waiting for ``hold`` first, when given). No idle pass: it would raise a failed send on its own."""
    batches: list = []

    async def reload_models() -> None:
        await asyncio.sleep(load_s)

    async def on_batch(records, taken_at=None) -> None:
        if hold is not None:
            await hold.wait()
        batches.append(list(records))

    pipeline.reload_models, pipeline.on_batch = reload_models, on_batch
    pipeline.idle_every_s = float("inf")
    return batches


async def _running_a_batch(pipeline) -> asyncio.Task:
    """``pipeline.run`` started, ready, and given one record (r1), its batch begun."""
    running = asyncio.ensure_future(pipeline.run())
    while not pipeline.ready:
        await asyncio.sleep(0.01)
    pipeline.inbox.extend(["r1"])
    pipeline._ready.set()
    await asyncio.sleep(0.05)
    return running


def test_regression_a_stop_while_the_models_load_ends_the_loop_before_it_begins(tmp_path):
    """A SIGTERM while the models were still loading (likely in a rolling deploy) returned at once without
    stopping anything: once loaded, the loop began and processed batches while Faust closed the tables (review
    of the change)."""
    pipeline = offline_pipeline(tmp_path)
    batches = _loop_of(pipeline, load_s=0.3)

    async def scenario() -> None:
        running = asyncio.ensure_future(pipeline.run())
        await asyncio.sleep(0.05)
        assert not pipeline.ready
        await pipeline.stop()
        pipeline.inbox.extend(["r1", "r2"])  # records fetched meanwhile
        pipeline._ready.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(scenario())
    assert batches == [] and pipeline._loop_done.is_set()


def test_a_stop_lets_the_batch_in_progress_finish_and_takes_no_new_one(tmp_path):
    pipeline = offline_pipeline(tmp_path)
    hold = asyncio.Event()
    batches = _loop_of(pipeline, hold=hold)

    async def scenario() -> None:
        running = await _running_a_batch(pipeline)  # the batch of r1 is in progress, held
        stopping = asyncio.ensure_future(pipeline.stop())
        pipeline.inbox.extend(["r2"])  # fetched meanwhile: not a new batch
        await asyncio.sleep(0.05)
        assert not stopping.done() and batches == []
        hold.set()
        await asyncio.wait_for(stopping, 5)
        assert pipeline._loop_done.is_set() and running.done() and not running.cancelled()

    asyncio.run(scenario())
    assert batches == [["r1"]]


def test_a_stop_past_its_budget_cancels_the_loop(tmp_path):
    """A batch that outlasts the stop's budget (half the rebalance timeout) is cancelled: Faust then closes the
    tables, and the orchestrator's grace period would run out otherwise. Its records are read again."""
    pipeline = offline_pipeline(tmp_path)
    _loop_of(pipeline, hold=asyncio.Event())  # never released
    pipeline.stop_budget_s = lambda: 0.2

    async def scenario() -> None:
        running = await _running_a_batch(pipeline)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(pipeline.stop(), 5)
        assert asyncio.get_running_loop().time() - started < 2
        await asyncio.sleep(0)
        assert running.cancelled()

    asyncio.run(scenario())
    assert pipeline.processed == 0


def test_regression_a_delivery_that_failed_is_an_error_at_a_stop_too(tmp_path):
    """A stop that ended the loop before its idle check returned normally after a delivery had failed: the worker
    exited 0 (review of the change)."""
    pipeline = offline_pipeline(tmp_path)
    _loop_of(pipeline)

    async def scenario() -> None:
        running = asyncio.ensure_future(pipeline.run())
        while not pipeline.ready:
            await asyncio.sleep(0.01)
        pipeline._send_failed = OSError("broker gone")
        await pipeline.stop()
        with pytest.raises(OSError, match="broker gone"):
            await asyncio.wait_for(running, 5)

    asyncio.run(scenario())


def test_regression_a_rebalance_while_stopping_drops_the_batches_not_sent(tmp_path):
    """Faust skips the revocation once stopping (it leaves the group), so a batch sent after a rebalance began
    could land in a changelog partition another worker was restoring. The stages send nothing more then; the
    records are read again (review of the change)."""
    from streams.app import Outgoing

    pipeline = offline_pipeline(tmp_path)
    sent: list = []

    class Sender:
        async def send(self, records, whole=False):
            sent.append(records)
            return []

    pipeline._sender = Sender()
    pipeline.rebalance_started()  # not stopping: nothing changes
    assert not pipeline._abandoned

    async def scenario() -> None:
        sending = asyncio.ensure_future(pipeline._send_loop())
        pipeline._stopping = True
        pipeline.app.on_rebalance_start()  # as aiokafka's listener calls it (create_app wraps it)
        await pipeline._hand_over(Outgoing(1, outputs=[("recs", None, b"u", b"r")],
                                           changelog=[("profiles-changelog", 0, b"u", b"p")]))
        await asyncio.wait_for(pipeline._drained(), 5)
        sending.cancel()

    asyncio.run(scenario())
    assert pipeline._abandoned and sent == []


def test_a_stop_that_wakes_an_idle_loop_starts_no_batch(tmp_path):
    """A stop wakes the loop waiting for input: records fetched in the meantime were taken as a new batch, which
    stretched the stop toward its budget (review of the change). They are read again instead."""
    pipeline = offline_pipeline(tmp_path)
    batches = _loop_of(pipeline)
    pipeline.wait_s = 30.0  # the loop waits for input that long unless woken

    async def scenario() -> None:
        running = asyncio.ensure_future(pipeline.run())
        while not pipeline.ready:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # waiting for input
        pipeline.inbox.extend(["r1"])  # fetched, the loop not woken yet
        await asyncio.wait_for(pipeline.stop(), 5)
        assert running.done()

    asyncio.run(scenario())
    assert batches == []


def test_regression_a_crashed_batch_loop_ends_the_process_even_if_kafka_stays_away(tmp_path, monkeypatch):
    """After the batch loop crashed (a delivery Kafka never confirmed), Faust's stop waited for Kafka to commit,
    so the worker stayed up doing nothing until Kafka came back (found by a failure-injection review). A daemon
    timer ends the process with code 1 after CRASH_EXIT_S."""
    import threading

    from streams import app as app_module

    exited = threading.Event()
    codes: list = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    timer = app_module.exit_after_crash(0.05, exit=fake_exit)
    assert timer.daemon and exited.wait(5) and codes == [1]

    armed: list = []
    monkeypatch.setattr(app_module, "exit_after_crash", lambda *a, **k: armed.append(True))
    pipeline = offline_pipeline(tmp_path)

    async def crash() -> None:
        raise OSError("KafkaTimeoutError")

    pipeline.run = crash
    batch_loop = pipeline.app._app_tasks[0]  # the app's one task: the batch loop
    with pytest.raises(OSError):
        asyncio.run(batch_loop())
    assert armed == [True]
