"""`tidewater up` (streams/cli.run_up) with its broker, topics, replay, worker and summary stood in for: how it
ends (cleanup, exit codes, local state). The real run is `make run`."""
from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import typer

import infra.broker
import infra.topics
import streams.replay
import streams.summary
from streams import cli
from tidewater.errors import UserError


class Broker:
    def __init__(self, **kwargs) -> None:
        self.port, self.stopped, self.bootstrap_servers = kwargs.get("port") or 19999, False, "127.0.0.1:19999"

    def start(self) -> "Broker":
        made.append(self)
        return self

    def stop(self) -> None:
        self.stopped = True


class Worker:
    """A worker process: ``code`` is what it exits with when waited for (None: it runs until signalled)."""

    def __init__(self, code: int | None = None) -> None:
        self.code, self.signals, self.pid = code, [], 4242

    def poll(self):
        return self.code

    def send_signal(self, sig) -> None:
        self.signals.append(sig)
        self.code = -sig

    def wait(self, timeout=None):
        if self.code is None:
            raise KeyboardInterrupt  # the user's Ctrl-C while it serves
        return self.code

    def kill(self) -> None:
        self.code = -9


made: list[Broker] = []


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    made.clear()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(infra.broker, "EmbeddedBroker", Broker)
    monkeypatch.setattr(infra.broker, "free_port", lambda: 16123)
    monkeypatch.setattr(infra.topics, "create_topics_sync", lambda s: {})

    async def replay(s, datasets, **_):
        return {"clicks": 3}

    monkeypatch.setattr(streams.replay, "replay", replay)
    state = SimpleNamespace(worker=Worker(), wait=lambda *a, **k: None, summary=lambda s: {})
    monkeypatch.setattr(cli.subprocess, "Popen", lambda *a, **k: state.worker)
    monkeypatch.setattr(streams.summary, "wait_until_processed", lambda *a, **k: state.wait(*a, **k))
    monkeypatch.setattr(streams.summary, "print_summary", lambda s: state.summary(s))
    yield state
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored for whoever runs next


def run(keep: bool = False) -> None:
    cli.run_up(["cdnow"], None, "tansu", 0, keep, None)


def test_regression_an_interrupted_up_stops_worker_and_broker_and_exits_130(stand_ins):
    """Ctrl-C (or SIGTERM / SIGHUP, now alike) ended `up` with 0: a wrapper or CI took an interrupted run for a
    finished one (found by review)."""
    def interrupted(*_, **__):
        raise KeyboardInterrupt

    stand_ins.wait = interrupted
    with pytest.raises(typer.Exit) as ended:
        run()
    assert ended.value.exit_code == 130
    assert stand_ins.worker.signals == [signal.SIGTERM] and made[0].stopped


def test_regression_sigterm_runs_the_cleanup_too(stand_ins):
    """Python's default SIGTERM skipped the cleanup, and the broker (a session of its own) outlived `up`."""
    def terminated(*_, **__):  # what SIGTERM does now (calling the handler: a real one would kill pytest without it)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), "no SIGTERM handler: Python's default ends the process without its cleanup"
        handler(signal.SIGTERM, None)

    stand_ins.wait = terminated
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit):
        run()
    assert made[0].stopped and signal.getsignal(signal.SIGTERM) is previous


def test_regression_a_second_ctrl_c_does_not_leave_the_broker_running(stand_ins):
    """A Ctrl-C during the cleanup's wait for the worker skipped broker.stop(): Tansu stayed, holding its port."""
    class SlowToStop(Worker):
        def wait(self, timeout=None):
            handler = signal.getsignal(signal.SIGINT)
            if callable(handler):  # what a second Ctrl-C would do now (as an error: an interrupt ends pytest)
                try:
                    handler(signal.SIGINT, None)
                except KeyboardInterrupt:
                    raise RuntimeError("a second Ctrl-C interrupted the cleanup") from None
            return 0

    stand_ins.worker = SlowToStop()

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    stand_ins.wait = interrupted
    with pytest.raises(typer.Exit):
        run()
    assert made[0].stopped


def test_keep_running_ends_with_0_on_ctrl_c_and_with_an_error_when_the_worker_dies(stand_ins):
    run(keep=True)  # served, then Ctrl-C: the normal way to stop it
    assert made[-1].stopped
    stand_ins.worker = Worker(code=3)
    with pytest.raises(UserError, match="the worker exited with code 3"):  # it ended `up` with 0 and no word
        run(keep=True)
    assert made[-1].stopped


def test_regression_a_run_on_the_same_port_starts_from_fresh_local_state(stand_ins, tmp_path):
    """A fresh embedded broker has no topics, and the stores of a run before on the same --port were kept: their
    profiles skipped every replayed event as already applied (found by review)."""
    old = tmp_path / "var" / "up-19999" / "tables"
    old.mkdir(parents=True)
    (old / "stale").write_text("x")
    run()
    assert not (tmp_path / "var" / "up-19999").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_regression_the_runs_local_state_is_removed_at_the_end(stand_ins, tmp_path, keep):
    """Each `up` left its worker's state of the embedded broker's run, about 9 MB in var/up-PORT, that only `make
    clean` removed; it is useless once that broker is gone (found by the README review)."""
    state = tmp_path / "var" / "up-19999" / "tables"

    def worker_wrote_its_state(*_, **__):
        state.mkdir(parents=True)
        (state / "profiles").write_text("x")

    stand_ins.wait = worker_wrote_its_state
    run(keep=keep)
    assert made[-1].stopped and not (tmp_path / "var" / "up-19999").exists()
