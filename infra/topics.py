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

    from streams.kafka_config import aiokafka_kwargs, unreachable

    specs = specs if specs is not None else topic_specs(s)
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(s), request_timeout_ms=15000)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise unreachable(s, exc) from None
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
            problems = [f"{counts[spec.name]} partitions, expected {spec.partitions}"] \
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
    """{topic: partition count} of ``topics`` (all existing), from one describe request. None asked, none
    described: an empty list asks the broker for every topic, and a worker on a cluster without its input topics
    yet refused to start over other applications' topics (found by a test)."""
    if not topics:
        return {}
    return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)}


async def _differing_configs(admin, specs: list[TopicSpec]) -> dict[str, list[str]]:
    """{topic: ["delete.retention.ms is 86400000, expected 604800000", ...]} for existing topics whose configs
    differ from their spec's: an existing topic is left as it is, and a changelog made before its tombstone
    retention was set (or not compacted at all) must not pass unnoticed. A config the broker does not report
    (Tansu lists only those set explicitly) is not judged."""
    by_name = {spec.name: spec for spec in specs}
    keys = {key for spec in specs for key in spec.configs}
    actual = await _topic_configs(admin, list(by_name), *keys)
    differing: dict[str, list[str]] = {}
    for (name, key), value in sorted(actual.items()):
        wanted = by_name[name].configs.get(key)
        if wanted is not None and value != wanted:
            differing.setdefault(name, []).append(f"{key} is {value}, expected {wanted}")
    return differing


async def _topic_configs(admin, topics: list[str], *keys: str) -> dict[tuple[str, str], str]:
    """{(topic, key): value} of the configs the broker reports for ``topics`` (DescribeConfigs); empty where it
    answers with an error or not at all (a broker without the API: the configs are then not checked)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    if not topics:
        return {}
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    except (KafkaError, OSError, ValueError) as exc:
        log.warning("could not read the topics' configs (%r): not checked", exc)
        return {}
    found: dict[tuple[str, str], str] = {}
    for response in responses:
        for error_code, _message, _type, name, entries in (r[:5] for r in response.resources):
            if error_code == 0:
                found.update({(name, entry[0]): entry[1] for entry in entries if entry[0] in keys})
    return found


def create_topics_sync(s: Settings) -> dict[str, str]:
    return asyncio.run(create_topics(s))


async def input_partition_mismatches(s: Settings, wait_s: float = 0.0) -> list[str]:
    """Input topics that exist with another partition count than ``TIDEWATER_PARTITIONS``: the profile tables, the
    activity index rebuilt at an assignment and the offer-budget shares all assume the configured count. Retries
    reaching the cluster for ``wait_s`` seconds, then raises ``UserError``."""
    return (await _startup_facts(s, wait_s))[0]


INPUT_HINT = "set TIDEWATER_PARTITIONS to the input topics' partition count"


async def _startup_facts(s: Settings, wait_s: float) -> tuple[list[str], float | None, list[str]]:
    """(the input partition problems, the shortest ``delete.retention.ms`` of the changelogs in seconds, None where
    the broker does not say; the other topics' problems, each with its remedy), from one admin connection."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from streams.kafka_config import aiokafka_kwargs, unreachable

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
                raise unreachable(s, exc, f" (tried for {time.monotonic() - started:.0f} s; "
                                          f"TIDEWATER_BROKER_WAIT_S={wait_s:g})") from None
            log.warning("waiting for Kafka at %s: %s", s.bootstrap_servers, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        existing = set(await admin.list_topics())
        specs = [spec for spec in topic_specs(s) if spec.name in existing]
        counts = await _partition_counts(admin, [spec.name for spec in specs])
        changelogs = [spec.name for spec in specs if spec.compact]
        configs = await _topic_configs(admin, changelogs, "delete.retention.ms", "cleanup.policy")
    finally:
        await admin.close()
    inputs = (s.topic_clicks, s.topic_purchases)
    problems = [f"input topic {topic} has {n} partitions but TIDEWATER_PARTITIONS is {s.partitions}"
                for topic, n in sorted(counts.items()) if n != s.partitions and topic in inputs]
    # the worker writes each user's outputs and changelog records to partition hash(user) % TIDEWATER_PARTITIONS:
    # fewer partitions stopped it at every start on aiokafka's bare AssertionError, more left some unused and
    # disagreed with Kafka's own partitioner for the topic (found by review)
    others = [f"topic {topic} has {n} partitions, expected {s.partitions}: the worker writes to partition "
              f"hash(user_id) % TIDEWATER_PARTITIONS; recreate it with {s.partitions}"
              for topic, n in sorted(counts.items()) if n != s.partitions and topic not in inputs]
    # a changelog that is not compacted ages its profiles out, and a restore after a failover loses them; `topics
    # create` only reported it, and the worker accepted it (found by review)
    others += [f"changelog {topic} has cleanup.policy={value}: its profiles would age out of it and a restore "
               f"lose them; set cleanup.policy=compact (`tidewater topics create` reports what differs)"
               for (topic, key), value in sorted(configs.items())
               if key == "cleanup.policy" and value.replace(" ", "") != "compact"]  # compact,delete deletes too
    retention = [float(value) / 1000 for (_, key), value in configs.items() if key == "delete.retention.ms"]
    return problems, min(retention, default=None), others


def check_topics(s: Settings) -> Settings:
    """Refuse to start a worker on topics partitioned otherwise than configured, or on a changelog that is not
    compacted (a clear error). Returns the
    settings with the changelogs' actual tombstone retention where it is shorter than TIDEWATER_TOMBSTONE_RETENTION_S
    (changelogs created before it was set keep Kafka's 1 day): the worker's stale-store rule must follow the
    topics' (found by review)."""
    problems, retention, others = asyncio.run(_startup_facts(s, wait_s=s.broker_wait_s))
    if problems or others:
        raise UserError("; ".join(([f"{'; '.join(problems)}: {INPUT_HINT}"] if problems else []) + others))
    if retention is not None and retention < s.tombstone_retention_s:
        log.warning("the changelogs keep deletions %.1f h (delete.retention.ms), less than "
                    "TIDEWATER_TOMBSTONE_RETENTION_S (%.1f h): local stores older than %.1f h are restored in full; "
                    "`tidewater topics create` shows how to change the topics", retention / 3600,
                    s.tombstone_retention_s / 3600, retention / 7200)
        return s.replace(tombstone_retention_s=retention)
    return s
