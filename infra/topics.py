"""Topic provisioning: every Tidewater topic with the configured partitions; changelogs compacted.

Idempotent: existing topics are left as they are (a partition count or a config other than the spec's is
reported: Faust needs co-partitioned inputs and changelogs, and the workers rely on the changelogs' compaction
and tombstone retention)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from tidewater.errors import UserError
from tidewater.settings import Settings

CHANGELOG_TABLES = ("profiles", "partition-state")

log = logging.getLogger("tidewater.topics")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compact: bool = False
    replication: int = 1
    tombstone_retention_s: float | None = None  # a compacted topic's delete.retention.ms (None: the broker's)

    @property
    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact" if self.compact else "delete"}
        if self.compact and self.tombstone_retention_s is not None:
            # the workers discard local stores older than half this (streams/local_state.py): the two must agree
            configs["delete.retention.ms"] = str(int(self.tombstone_retention_s * 1000))
        if self.replication >= 3:
            # the producers write with acks=all, which waits for the in-sync replicas only: with the broker's
            # default of 1 that can be the leader alone, and a write it acknowledged is lost with it
            configs["min.insync.replicas"] = "2"
        return configs


def topic_specs(s: Settings) -> list[TopicSpec]:
    rf = s.replication_factor
    plain = [TopicSpec(name, s.partitions, replication=rf) for name in s.all_topics()]
    changelogs = [TopicSpec(f"{s.app_id}-{table}-changelog", s.partitions, compact=True, replication=rf,
                            tombstone_retention_s=s.tombstone_retention_s) for table in CHANGELOG_TABLES]
    return plain + changelogs


async def create_topics(s: Settings, specs: list[TopicSpec] | None = None) -> dict[str, str]:
    """Create missing topics. Returns {topic: "created" | "exists" | "exists (N partitions!)"}."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

    from streams.kafka_config import aiokafka_kwargs

    specs = specs if specs is not None else topic_specs(s)
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(s), request_timeout_ms=15000)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise UserError(f"cannot reach Kafka at {s.bootstrap_servers}: {exc}") from None
    result: dict[str, str] = {}
    try:
        existing = set(await admin.list_topics())
        for spec in specs:
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            try:
                response = await admin.create_topics([NewTopic(spec.name, spec.partitions, s.replication_factor,
                                                               topic_configs=spec.configs)])
                result[spec.name] = creation_outcome(spec.name, response.topic_errors)
            except TopicAlreadyExistsError:
                result[spec.name] = "exists"
        existing_specs = [spec for spec in specs if result[spec.name] == "exists"]
        counts = await _partition_counts(admin, [spec.name for spec in existing_specs])
        differing = await _differing_configs(admin, existing_specs)
        for spec in specs:
            problems = [f"{n} partitions, expected {spec.partitions}"] \
                if counts.get(spec.name, spec.partitions) != spec.partitions else []
            problems += differing.get(spec.name, [])
            if problems:
                result[spec.name] = f"exists ({'; '.join(problems)}!)"
    finally:
        await admin.close()
    return result


def creation_outcome(name: str, topic_errors: list[tuple]) -> str:
    """"created" or "exists" from a CreateTopics response's ``(topic, error_code[, message])`` entries; any
    other error is a UserError. aiokafka returns the broker's per-topic errors instead of raising them, so a
    replication factor above the broker count, say, printed "created" for topics that were not."""
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    for entry in topic_errors:
        if entry[0] != name or entry[1] == 0:
            continue
        error = for_code(entry[1])
        if error is TopicAlreadyExistsError:
            return "exists"
        message = entry[2] if len(entry) > 2 and entry[2] else error.description
        raise UserError(f"cannot create topic {name}: {error.__name__}: {message}")
    return "created"


async def _partition_counts(admin, topics: list[str]) -> dict[str, int]:
    """{topic: partition count} of ``topics`` (all existing), from one describe request."""
    return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)}


async def _differing_configs(admin, specs: list[TopicSpec]) -> dict[str, list[str]]:
    """{topic: ["delete.retention.ms is 86400000, expected 604800000", ...]} for existing topics whose configs
    differ from their spec's: an existing topic is left as it is, and a changelog made before its tombstone
    retention was set (or not compacted at all) must not pass unnoticed. A config the broker does not report
    (Tansu lists only those set explicitly) is not judged."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not specs:
        return {}
    by_name = {spec.name: spec for spec in specs}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in by_name])
    differing: dict[str, list[str]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries in (r[:5] for r in response.resources):
            if error_code != 0 or name not in by_name:
                continue
            actual = {entry[0]: entry[1] for entry in entries}
            for key, wanted in by_name[name].configs.items():
                if key in actual and actual[key] != wanted:
                    differing.setdefault(name, []).append(f"{key} is {actual[key]}, expected {wanted}")
    return differing


def create_topics_sync(s: Settings) -> dict[str, str]:
    return asyncio.run(create_topics(s))


async def input_partition_mismatches(s: Settings, wait_s: float = 0.0) -> list[str]:
    """Input topics that exist with another partition count than ``TIDEWATER_PARTITIONS``: the profile tables, the
    activity index rebuilt at an assignment and the offer-budget shares all assume the configured count. Retries
    reaching the cluster for ``wait_s`` seconds, then raises ``UserError``."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from streams.kafka_config import aiokafka_kwargs

    started = time.monotonic()
    deadline = started + wait_s
    delay = 0.5
    while True:
        admin = AIOKafkaAdminClient(**aiokafka_kwargs(s), request_timeout_ms=15000)
        try:
            await admin.start()
            break
        except (KafkaError, OSError) as exc:
            await admin.close()
            if time.monotonic() + delay > deadline:
                raise UserError(f"cannot reach Kafka at {s.bootstrap_servers} (tried for "
                                f"{time.monotonic() - started:.0f} s; TIDEWATER_BROKER_WAIT_S={wait_s:g}): {exc}") from None
            log.warning("waiting for Kafka at %s: %s", s.bootstrap_servers, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        existing = set(await admin.list_topics())
        counts = await _partition_counts(admin, [t for t in (s.topic_clicks, s.topic_purchases) if t in existing])
    finally:
        await admin.close()
    return [f"input topic {topic} has {n} partitions but TIDEWATER_PARTITIONS is {s.partitions}"
            for topic, n in sorted(counts.items()) if n != s.partitions]


def check_input_partitions(s: Settings) -> None:
    """Refuse to start a worker on input topics partitioned otherwise than configured (a clear error)."""
    problems = asyncio.run(input_partition_mismatches(s, wait_s=s.broker_wait_s))
    if problems:
        raise UserError("; ".join(problems) + ": set TIDEWATER_PARTITIONS to the topics' partition count")
