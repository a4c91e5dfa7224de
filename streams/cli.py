"""`tidewater worker | up | replay | record | settings | schemas`."""
from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from tidewater.errors import UserError, writable_dir
from tidewater.settings import Settings, url_host

BOOTSTRAP_HELP = "Kafka bootstrap servers (env TIDEWATER_BOOTSTRAP_SERVERS)."


NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Size the native thread pools (OpenMP: FAISS, torch; OpenBLAS/MKL: numpy) of this process, unless the
    environment already does. It must run before those libraries load: OpenMP reads the variable once, and
    ``omp_set_num_threads`` would only change the calling thread, not the engine threads that search. Measured in
    the live worker on 2 cores shared with the broker: with the default pools a 64x16 matrix-vector product
    (the segment) and a 7-query FAISS search took milliseconds, waiting on each other's spinning threads."""
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, str(max(1, threads)))


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def startup_line(s: Settings, loglevel: str) -> str:
    """What a starting worker says whatever its log level: where it serves, and what it will log (at the default
    level it printed nothing, no address either; found by the README review)."""
    host = "127.0.0.1" if s.web_host in ("0.0.0.0", "") else "[::1]" if s.web_host in ("::", "[::]") else \
        url_host(s.web_host)
    quiet = " (problems only: --loglevel info for more)" if loglevel in ("warning", "error", "critical") else ""
    return (f"tidewater worker of {s.app_id!r} on {s.bootstrap_servers}, {s.partitions} partitions: "
            f"http://{host}:{s.web_port}/health, /metrics, /dashboard; log level {loglevel}{quiet}")


def _loglevel(value: str) -> str:
    """Checked when the command line is read: Faust found a bad level only after the broker and the models."""
    if value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def register(app: typer.Typer, topics_app: typer.Typer) -> None:
    @app.command()
    def worker(
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
        web_port: Optional[int] = typer.Option(None, help="HTTP port (env TIDEWATER_WEB_PORT)."),
        data_dir: Optional[str] = typer.Option(None, help="Local state dir (env TIDEWATER_DATA_DIR)."),
        loglevel: str = typer.Option("warning", callback=_loglevel,
                                     help=f"Log level: {', '.join(LOG_LEVELS)}."),
    ) -> None:
        """Run a stream worker (Faust). Start more with the same app id to scale out over partitions."""
        s = Settings.from_env({"bootstrap_servers": bootstrap_servers, "web_port": web_port, "data_dir": data_dir})
        limit_native_threads(s.model_threads)  # before numpy, torch and faiss load their thread pools

        from faust.worker import Worker

        from streams.app import create_app

        from infra.topics import check_topics

        writable_dir(s.data_dir, "TIDEWATER_DATA_DIR")  # before Kafka is waited for and the models load
        # the tables, the activity index and the offer-budget shares assume the partition count; the stale-store
        # rule follows the changelogs' actual tombstone retention
        s = check_topics(s)
        faust_app = create_app(s)
        faust_app.tidewater.preload_models()  # type: ignore[attr-defined]
        typer.echo(startup_line(s, loglevel), err=True)  # at the default level the worker said nothing at all
        Worker(faust_app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()

    @app.command()
    def replay(
        dataset: list[str] = typer.Option(..., "--dataset", metavar="DATASET", help="cdnow | cdnow-sample | ml-100k | PATH.jsonl (repeatable)."),
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
        speed: float = typer.Option(0.0, min=0.0, help="0 = as fast as possible; N = N× real time by event time."),
        limit: Optional[int] = typer.Option(None, min=1, help="Stop after this many events."),
        skip: int = typer.Option(0, min=0, help="Leave out the first N events (resume a replay that stopped on a "
                                                "record Kafka refused: its message gives N)."),
        close: bool = typer.Option(False, "--close", help="Then a clock record to every partition at the first "
                                                          "tick after the last event: the workers score the "
                                                          "replay's last tick."),
        as_is: bool = typer.Option(False, "--as-is", help="Send a file's lines even when none of its first 10 is a "
                                                          "JSON object (a file made to test the dead-letter path); "
                                                          "without it such a file is refused as not JSON lines."),
    ) -> None:
        """Write events from the real datasets or a JSON-lines file to the input topics; returns when all are written."""
        from streams.replay import replay as do_replay

        s = Settings.from_env({"bootstrap_servers": bootstrap_servers})
        counts = asyncio.run(do_replay(s, dataset, speed=speed, limit=limit, progress=sys.stderr.isatty(),
                                       close=close, skip=skip, check_lines=not as_is))
        for topic, n in counts.items():
            typer.echo(f"{topic}: {n} events written")

    @app.command()
    def clock(
        ts: Optional[str] = typer.Option(None, "--ts", help="Event time to announce: epoch seconds or RFC 3339 "
                                                            "(default: now minus --lag-s)."),
        lag_s: float = typer.Option(3600.0, "--lag-s", min=0.0, help="With the default time: how far behind now (the "
                                                             "lateness the producers may still have)."),
        every: Optional[float] = typer.Option(None, "--every", min=1.0, help="Repeat every this many seconds "
                                                                             "(until interrupted), with the time "
                                                                             "then."),
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
    ) -> None:
        """Write a clock record to every partition of the clicks topic: event time has reached TS there. A
        partition's timers run on its own records' time, so a partition whose users have all gone quiet scores
        no one for inactivity until its clock moves. Run it on a schedule (--every 600) next to a live shop."""
        from streams.replay import _started_producer, send_clock
        from tidewater.events import Clock, decode_event, too_far_ahead

        s = Settings.from_env({"bootstrap_servers": bootstrap_servers})
        fixed = None
        if ts is not None:
            if _is_number(ts) and not math.isfinite(float(ts)):
                raise UserError(f"--ts {ts!r}: not a time (seconds since the epoch, or an ISO date)")
            decoded = decode_event(json.dumps({"type": "clock", "ts": float(ts) if _is_number(ts) else ts}).encode(),
                                   max_bytes=s.max_event_bytes)
            if not isinstance(decoded, Clock):
                raise UserError(f"--ts {ts!r}: {decoded.detail}")
            fixed = decoded.ts
            now = time.time()
            if too_far_ahead(fixed, now, s.max_event_lead_s):  # the workers dead-letter it: it said "written" (review)
                raise UserError(f"--ts {ts!r} is {fixed - now:.0f} s ahead of this machine's clock; the workers "
                                f"refuse a clock more than TIDEWATER_MAX_EVENT_LEAD_S ({s.max_event_lead_s:g} s) ahead")

        async def run() -> None:
            producer = await _started_producer(s, topics=(s.topic_clicks,))
            try:
                while True:
                    at = fixed if fixed is not None else time.time() - lag_s
                    n = await send_clock(producer, s.topic_clicks, at)
                    typer.echo(f"clock {at:.0f} written to {n} partitions of {s.topic_clicks}")
                    if every is None:
                        return
                    await asyncio.sleep(every)
            finally:
                await producer.stop()

        asyncio.run(run())

    @app.command()
    def redrive(
        letters: str = typer.Option(..., "--letters", help="Dead letters as JSON lines: `tidewater record --topic "
                                                           "<dead-letter topic> --out FILE` writes them."),
        reason: Optional[list[str]] = typer.Option(None, "--reason", help="Only letters rejected for this reason "
                                                                          "(repeatable; default: all)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be sent; send nothing."),
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
    ) -> None:
        """Send dead-lettered records back to their input topic once the cause is fixed (a limit raised, a
        producer's key corrected): those that decode under the current settings go, keyed by their user_id; the
        others are counted by the reason they would get now and left out (a redrive adds no dead letters)."""
        from streams.replay import redrive as do_redrive

        s = Settings.from_env({"bootstrap_servers": bootstrap_servers})
        plan = asyncio.run(do_redrive(s, letters, reasons=reason, dry_run=dry_run))
        for what, n in sorted(plan.counts.items()):
            typer.echo(f"{what}: {n}")
        verb = "would be sent" if dry_run else "sent"
        typer.echo(f"{len(plan.records)} records {verb} back to their input topics")

    @app.command()
    def record(
        topic: str = typer.Option(..., help="Topic to dump."),
        out: str = typer.Option(..., help="Output JSON-lines file (one record value per line)."),
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
        with_meta: bool = typer.Option(
            False, help="Write {topic, partition, offset, timestamp, key, value, partitions} envelopes instead: "
                        "replay sends each back to its topic, partition and key, byte for byte."),
    ) -> None:
        """Dump a topic (partition by partition, in offset order) to JSON lines; returns at its end."""
        from streams.replay import record as do_record

        s = Settings.from_env({"bootstrap_servers": bootstrap_servers})
        n = asyncio.run(do_record(s, topic, out, with_meta=with_meta))
        typer.echo(f"{n} records from {topic} written to {out}")

    @app.command()
    def up(
        dataset: list[str] = typer.Option(
            ["cdnow", "ml-100k"], "--dataset", metavar="DATASET",
            help="Datasets to replay through the pipeline: cdnow | cdnow-sample | ml-100k | PATH.jsonl (repeatable)."),
        bootstrap_servers: Optional[str] = typer.Option(None, help="Use this cluster instead of an embedded broker."),
        broker_kind: str = typer.Option("tansu", "--broker", metavar="KIND", help="Embedded broker: tansu or noida."),
        port: int = typer.Option(0, min=0, max=65535, help="Embedded broker port (0 = free)."),
        keep_running: bool = typer.Option(False, help="Keep broker and worker up after the replay (Ctrl-C stops)."),
        limit: Optional[int] = typer.Option(None, help="Replay at most this many events."),
    ) -> None:
        """Broker + topics + worker in one: replay the real data and print what came out of the output topics."""
        run_up(dataset, bootstrap_servers, broker_kind, port, keep_running, limit)

    @app.command("settings")
    def settings_cmd(markdown: bool = typer.Option(False, help="Print the README table.")) -> None:
        """Show every setting with its environment variable (secrets are never shown)."""
        from tidewater.settings import settings_table_markdown

        if markdown:
            typer.echo(settings_table_markdown())
            return
        s = Settings.from_env()
        from dataclasses import fields

        for f in fields(s):
            typer.echo(f"{f.metadata['env']:38s} = {getattr(s, f.name)!s}")

    @app.command()
    def schemas(out_dir: str = typer.Option("docs/schemas", help="Where to write the JSON Schema files.")) -> None:
        """Write the JSON Schemas of the input events and the output topics (the public contract)."""
        from tidewater.schemas import write_schemas

        writable_dir(out_dir, "--out-dir")
        for path in write_schemas(out_dir):
            typer.echo(path)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_up(datasets: list[str], bootstrap: Optional[str], kind: str, port: int, keep: bool,
           limit: Optional[int]) -> None:
    from infra.broker import EmbeddedBroker, free_port
    from infra.topics import create_topics_sync
    from streams.broker_quirks import QUIRKS_BY_BROKER
    from streams.replay import replay as do_replay
    from streams.summary import print_summary, wait_until_processed

    broker = None
    worker_proc = None
    up_state = None  # the worker's local state of this embedded broker's run: useless once the broker is gone
    interrupted = served = False
    env = dict(os.environ)
    # SIGTERM / SIGHUP (a CI job's timeout, a closed terminal) as Ctrl-C: the cleanup below runs. Python's default
    # skipped it, and the broker, in a session of its own, outlived `up` (found by review)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if bootstrap is None:
            broker = EmbeddedBroker(kind=kind, port=port, log_path="var/broker.log")
            Path("var").mkdir(exist_ok=True)
            broker.start()
            bootstrap = broker.bootstrap_servers
            typer.echo(f"embedded {kind} broker on {bootstrap}")
            if kind in QUIRKS_BY_BROKER:  # Tansu's high watermark, noida's empty fetches: streams/broker_quirks.py
                env.setdefault("TIDEWATER_BROKER_QUIRKS", QUIRKS_BY_BROKER[kind])
        env["TIDEWATER_BOOTSTRAP_SERVERS"] = bootstrap
        s = Settings.from_env(environ=env)
        if broker is not None:  # a fresh broker has no topics: fresh local state too. A run before on the same
            # --port left its stores, whose profiles then skipped every replayed event as applied (found by review)
            s = s.replace(data_dir=f"var/up-{broker.port}")
            shutil.rmtree(s.data_dir, ignore_errors=True)
            env["TIDEWATER_DATA_DIR"] = up_state = s.data_dir
        for name, status in create_topics_sync(s).items():
            typer.echo(f"topic {name}: {status}")
        # Replay first, then start the worker: with the whole input in the topics the output depends only on
        # the data (see "Deterministic across two input topics" in the README). --keep-running serves live
        # traffic afterwards.
        counts = asyncio.run(do_replay(s, datasets, limit=limit, progress=True))
        total = sum(counts.values())
        typer.echo(f"replayed {total} events: {counts}")
        web_port = int(env.get("TIDEWATER_WEB_PORT") or free_port())  # just before the worker binds it
        env["TIDEWATER_WEB_PORT"] = str(web_port)
        worker_proc = subprocess.Popen([sys.executable, "-m", "tidewater.cli", "worker"], env=env)
        typer.echo(f"worker started (pid {worker_proc.pid}); API and metrics at http://127.0.0.1:{web_port}/stats "
                   f"and /metrics")
        typer.echo(f"dashboard: http://127.0.0.1:{web_port}/dashboard")
        wait_until_processed(web_port, total, worker_proc, read_token=s.read_token.reveal())
        print_summary(s)
        served = True
        if keep:
            typer.echo("running; Ctrl-C to stop")
            code = worker_proc.wait()
            if code != 0:  # it used to end `up` with 0 and no word (found by review)
                raise UserError(f"the worker exited with code {code}")
    except KeyboardInterrupt:
        interrupted = not (keep and served)  # Ctrl-C is how --keep-running ends, once the summary is out
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short (review)
        try:
            if worker_proc is not None and worker_proc.poll() is None:
                worker_proc.send_signal(signal.SIGTERM)
                try:
                    worker_proc.wait(30)
                except subprocess.TimeoutExpired:
                    worker_proc.kill()
        finally:
            if broker is not None:
                broker.stop()
            if up_state is not None:  # each run left about 9 MB in var/ that only `make clean` removed (review)
                shutil.rmtree(up_state, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if interrupted:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)  # not 0: a wrapper or CI must not take an interrupted run for a finished one


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
