"""Topic creation's reading of the broker's answer (infra/topics.py)."""
import pytest

from infra.topics import creation_outcome, topic_specs
from tidewater.errors import UserError
from tidewater.settings import Settings


def test_regression_a_topic_the_broker_refused_is_an_error_not_created():
    """aiokafka returns per-topic errors in the response instead of raising: a replication factor of 3 on one
    broker printed "created" for every topic, and the compose set-up service exited 0 (found by review)."""
    assert creation_outcome("clicks", [("clicks", 0, None)]) == "created"
    assert creation_outcome("clicks", [("clicks", 36, "Topic 'clicks' already exists.")]) == "exists"
    with pytest.raises(UserError, match="cannot create topic clicks: InvalidReplicationFactorError"):
        creation_outcome("clicks", [("clicks", 38, "Replication factor: 3 larger than available brokers: 1.")])
    with pytest.raises(UserError, match="InvalidReplicationFactorError"):  # v0 responses carry no message
        creation_outcome("clicks", [("clicks", 38)])


def test_changelogs_are_compacted_and_the_rest_deleted_by_age():
    specs = {spec.name: spec for spec in topic_specs(Settings(partitions=4))}
    # the workers discard local stores older than half the tombstone retention (streams/local_state.py)
    assert specs["tidewater-profiles-changelog"].configs == {"cleanup.policy": "compact",
                                                             "delete.retention.ms": str(7 * 86400 * 1000)}
    assert specs["tidewater-partition-state-changelog"].configs["delete.retention.ms"] == "604800000"
    assert specs["clicks"].configs == {"cleanup.policy": "delete"} and specs["clicks"].partitions == 4


def test_regression_replicated_topics_need_two_in_sync_replicas_for_acks_all():
    """With three replicas and the broker's default min.insync.replicas of 1, acks=all could be acknowledged by
    the leader alone, and the write was lost with it (found by review). One replica (the embedded brokers,
    the compose stack) keeps the broker's default."""
    specs = topic_specs(Settings(partitions=4, replication_factor=3))
    assert {spec.configs.get("min.insync.replicas") for spec in specs} == {"2"}
    assert all(spec.replication == 3 for spec in specs)
    assert not any("min.insync.replicas" in spec.configs for spec in topic_specs(Settings(replication_factor=1)))
