"""Topic checks against the real broker."""
import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from infra.topics import TopicSpec, create_topics, input_partition_mismatches
from tidewater.errors import UserError
from tidewater.settings import Settings

pytestmark = [pytest.mark.broker]


def _settings(broker, prefix: str, partitions: int) -> Settings:
    return Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                                          TIDEWATER_TOPIC_CLICKS=f"{prefix}-clicks",
                                          TIDEWATER_TOPIC_PURCHASES=f"{prefix}-purchases",
                                          TIDEWATER_PARTITIONS=str(partitions)))


def test_a_worker_refuses_input_topics_partitioned_otherwise_than_configured(broker, tmp_path):
    """The profile tables, the activity index rebuilt at an assignment and the offer-budget shares all assume
    TIDEWATER_PARTITIONS: a worker on topics with another count stops at once with a clear error, not later."""
    prefix = "p" + uuid.uuid4().hex[:8]
    created = _settings(broker, prefix, 3)
    asyncio.run(create_topics(created, [TopicSpec(f"{prefix}-{kind}", 3) for kind in ("clicks", "purchases")]))
    assert asyncio.run(input_partition_mismatches(created)) == []
    wrong = _settings(broker, prefix, 8)
    problems = asyncio.run(input_partition_mismatches(wrong))
    assert problems == [f"input topic {prefix}-clicks has 3 partitions but TIDEWATER_PARTITIONS is 8",
                        f"input topic {prefix}-purchases has 3 partitions but TIDEWATER_PARTITIONS is 8"]
    env = dict(os.environ, TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers, TIDEWATER_PARTITIONS="8",
               TIDEWATER_TOPIC_CLICKS=f"{prefix}-clicks", TIDEWATER_TOPIC_PURCHASES=f"{prefix}-purchases",
               TIDEWATER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-m", "tidewater.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "has 3 partitions but TIDEWATER_PARTITIONS is 8" in proc.stderr and "Traceback" not in proc.stderr


def test_regression_an_existing_topic_with_other_configs_is_reported_not_passed_as_it_is(broker):
    """`topics create` left existing topics as they were and said "exists": a changelog made before its tombstone
    retention was set, or not compacted, went unnoticed (the workers rely on both: streams/local_state.py)."""
    prefix = "c" + uuid.uuid4().hex[:8]
    s = _settings(broker, prefix, 2)
    made_elsewhere = [TopicSpec(f"{prefix}-changelog", 2, compact=True, tombstone_retention_s=86400.0),
                      TopicSpec(f"{prefix}-log", 2)]
    asyncio.run(create_topics(s, made_elsewhere))
    wanted = [TopicSpec(f"{prefix}-changelog", 2, compact=True, tombstone_retention_s=7 * 86400.0),
              TopicSpec(f"{prefix}-log", 2, compact=True), TopicSpec(f"{prefix}-other", 3)]
    outcome = asyncio.run(create_topics(s, wanted))
    assert outcome[f"{prefix}-changelog"] == "exists (delete.retention.ms is 86400000, expected 604800000!)"
    assert outcome[f"{prefix}-log"] == "exists (cleanup.policy is delete, expected compact!)"
    assert outcome[f"{prefix}-other"] == "created"
    assert asyncio.run(create_topics(s, made_elsewhere)) == {f"{prefix}-changelog": "exists",
                                                           f"{prefix}-log": "exists"}


def test_regression_a_worker_follows_the_changelogs_actual_tombstone_retention(broker):
    """The stale-store rule assumed TIDEWATER_TOMBSTONE_RETENTION_S (7 days), but changelogs created before it was
    set keep Kafka's 1 day: stores 1 to 3.5 days old could still miss a deletion (found by review). The worker
    reads the changelogs' delete.retention.ms at start and follows the shorter."""
    from dataclasses import replace

    from infra.topics import check_topics, topic_specs

    prefix = "r" + uuid.uuid4().hex[:8]
    s = Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers, TIDEWATER_APP_ID=prefix,
                                       TIDEWATER_TOPIC_CLICKS=f"{prefix}-clicks",
                                       TIDEWATER_TOPIC_PURCHASES=f"{prefix}-purchases", TIDEWATER_PARTITIONS="2"))
    # another application's topic, partitioned otherwise: with no input topic yet, the check described every topic
    # of the cluster and refused to start over it (found by this test)
    asyncio.run(create_topics(s, [TopicSpec(f"{prefix}-unrelated", 3)]))
    assert check_topics(s).tombstone_retention_s == s.tombstone_retention_s  # no changelog yet: the setting
    old = [replace(spec, tombstone_retention_s=86400.0 if spec.compact else None) for spec in topic_specs(s)]
    asyncio.run(create_topics(s, old))
    assert check_topics(s).tombstone_retention_s == 86400.0


def test_regression_a_worker_refuses_an_output_topic_with_fewer_partitions_and_a_changelog_not_compacted(broker):
    """The worker checked the input topics alone. An output topic with fewer partitions stopped it at every start
    on aiokafka's bare AssertionError ("Unrecognized partition"), and a changelog that was not compacted was
    accepted: its profiles age out, and a restore after a failover loses them (found by review)."""
    from infra.topics import check_topics, topic_specs

    prefix = "o" + uuid.uuid4().hex[:8]
    s = Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers, TIDEWATER_APP_ID=prefix,
                                       TIDEWATER_TOPIC_CLICKS=f"{prefix}-clicks",
                                       TIDEWATER_TOPIC_PURCHASES=f"{prefix}-purchases",
                                       TIDEWATER_TOPIC_OFFERS=f"{prefix}-offers", TIDEWATER_PARTITIONS="4"))
    specs = {spec.name: spec for spec in topic_specs(s)}
    changelog = f"{prefix}-profiles-changelog"
    made_elsewhere = [TopicSpec(f"{prefix}-offers", 1), TopicSpec(changelog, 4)]  # not compacted
    asyncio.run(create_topics(s, made_elsewhere + [spec for name, spec in specs.items()
                                                   if name not in (f"{prefix}-offers", changelog)]))
    with pytest.raises(UserError) as refused:
        check_topics(s)
    message = str(refused.value)
    assert f"topic {prefix}-offers has 1 partitions, expected 4" in message
    assert f"changelog {changelog} has cleanup.policy=delete" in message
    assert "TIDEWATER_PARTITIONS to the input" not in message  # the inputs are right
    # and `topics create` reports both (it raised a NameError on the partition count, found by this test)
    outcome = asyncio.run(create_topics(s))
    assert outcome[f"{prefix}-offers"] == "exists (1 partitions, expected 4!)"
    assert outcome[changelog].startswith("exists (cleanup.policy is delete, expected compact")


def test_regression_replay_and_clock_refuse_topics_that_do_not_exist_instead_of_creating_them(broker, tmp_path,
                                                                                              monkeypatch):
    """The brokers create a topic on its first write: a misspelt TIDEWATER_TOPIC_* name, or a replay before
    `tidewater topics create`, made a topic with the broker's partition count, and the command said
    "clicks2: 1 events written" (found by review). Both refuse now, and create nothing."""
    from aiokafka import AIOKafkaProducer
    from typer.testing import CliRunner

    import streams.replay
    from streams.replay import replay
    from tidewater.cli import app

    monkeypatch.setattr(streams.replay, "TOPIC_LISTING_WAIT_S", 1.0)  # how long a new topic may take to be listed
    prefix = "missing" + uuid.uuid4().hex[:8]
    s = _settings(broker, prefix, 4)
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "click", "event_id": "e1", "user_id": "u1", "ts": 1600000000}\n')
    with pytest.raises(UserError, match=rf"topic '{prefix}-clicks' does not exist"):
        asyncio.run(replay(s, [str(events)], progress=False))
    env = {"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "TIDEWATER_TOPIC_CLICKS": f"{prefix}-clicks"}
    done = CliRunner().invoke(app, ["clock"], env=env)
    assert isinstance(done.exception, UserError)  # `tidewater` prints it as "error: ..." and exits with 2
    assert f"topic '{prefix}-clicks' does not exist" in str(done.exception)

    async def listed() -> set[str]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            return set((await producer.client.fetch_all_metadata()).topics())
        finally:
            await producer.stop()

    assert not {t for t in asyncio.run(listed()) if t.startswith(prefix)}  # nothing was created
    asyncio.run(create_topics(s, [TopicSpec(f"{prefix}-{kind}", 4) for kind in ("clicks", "purchases")]))
    assert asyncio.run(replay(s, [str(events)], progress=False)) == {f"{prefix}-clicks": 1, f"{prefix}-purchases": 0}


def test_regression_topics_create_exits_with_1_when_an_existing_topic_differs(broker):
    """It printed "exists (4 partitions, expected 8!)" and exited with 0, so a deployment script went on to start
    workers that refuse the topics (found by review)."""
    from typer.testing import CliRunner

    from tidewater.cli import app

    prefix = "differ" + uuid.uuid4().hex[:8]
    env = {"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "TIDEWATER_APP_ID": prefix,
           **{f"TIDEWATER_TOPIC_{kind.upper()}": f"{prefix}-{kind}"  # none shared with the other tests
              for kind in ("clicks", "purchases", "churn_scores", "dead_letter", "erasures", "offers",
                           "recommendations")}}
    asyncio.run(create_topics(_settings(broker, prefix, 3), [TopicSpec(f"{prefix}-clicks", 3)]))
    done = CliRunner().invoke(app, ["topics", "create", "--partitions", "4"], env=env)
    assert done.exit_code == 1, done.output
    assert f"{prefix}-clicks" in done.output and "3 partitions, expected 4!" in done.output
    assert "1 existing topic(s) have another partition count, or are changelogs not compacted" in done.output
    again = CliRunner().invoke(app, ["topics", "create", "--partitions", "3"], env=env)  # others created with 4
    assert again.exit_code == 1 and "4 partitions, expected 3!" in again.output


def test_topics_create_accepts_what_the_workers_accept_and_refuses_a_changelog_not_compacted(broker):
    """A compacted output topic is said, not refused: the workers run on it, and an exit of 1 would hold the
    compose stack's workers back (they wait for the topics service to succeed; found by the final review)."""
    from typer.testing import CliRunner

    from infra.topics import topic_specs
    from tidewater.cli import app

    prefix = "policy" + uuid.uuid4().hex[:8]
    env = {"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "TIDEWATER_APP_ID": prefix,
           **{f"TIDEWATER_TOPIC_{kind.upper()}": f"{prefix}-{kind}"
              for kind in ("clicks", "purchases", "churn_scores", "dead_letter", "erasures", "offers",
                           "recommendations")}}
    s = Settings.from_env(environ=env)
    asyncio.run(create_topics(s, [TopicSpec(s.topic_offers, s.partitions, compact=True)]))
    done = CliRunner().invoke(app, ["topics", "create"], env=env)
    assert done.exit_code == 0 and "cleanup.policy is compact, expected delete!" in done.output, done.output
    other = {**env, "TIDEWATER_APP_ID": prefix + "b"}
    changelog = next(spec.name for spec in topic_specs(Settings.from_env(environ=other)) if spec.compact)
    asyncio.run(create_topics(s, [TopicSpec(changelog, s.partitions, compact=False)]))
    done = CliRunner().invoke(app, ["topics", "create"], env=other)
    assert done.exit_code == 1 and "cleanup.policy is delete, expected compact!" in done.output, done.output
