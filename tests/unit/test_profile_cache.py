"""The worker's cache of decoded profiles (streams/app.py ProfileCache): bounded, least recently written first."""
from __future__ import annotations

from hypothesis import given, strategies as st

from streams.app import ProfileCache, create_app
from tidewater.profile import new_profile
from tidewater.settings import Settings


@given(size=st.integers(0, 5), writes=st.lists(st.sampled_from("abcdefgh"), max_size=40))
def test_the_cache_keeps_the_most_recently_written_profiles_up_to_its_size(size, writes):
    cache = ProfileCache(size)
    for user in writes:
        cache.put(0, user, new_profile(user))
    recent: list[str] = []  # users by last write, most recent last
    for user in writes:
        if user in recent:
            recent.remove(user)
        recent.append(user)
    assert [user for _, user in cache.profiles] == (recent[max(0, len(recent) - size):] if size else [])


def test_the_cache_size_is_a_setting(tmp_path):
    settings = Settings.from_env(environ={"TIDEWATER_PROFILE_CACHE_USERS": "7",
                                          "TIDEWATER_DATA_DIR": str(tmp_path / "data"),
                                          "TIDEWATER_REGISTRY_DIR": str(tmp_path / "registry"),
                                          "TIDEWATER_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert create_app(settings).tidewater.cache.max_cached == 7


class DictTable:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put_many(self, items) -> None:
        for key, value in items:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


# a batch: (user, deleted?) pairs; batches are held in order and written later, oldest first, a few at a time
batch_st = st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), max_size=4)


@given(batches=st.lists(batch_st, min_size=1, max_size=8), lag=st.integers(0, 3))
def test_the_engine_reads_the_latest_profile_whether_or_not_its_batch_is_written_yet(batches, lag):
    """Profiles reach RocksDB only once their batch's outputs are in Kafka (Pipeline._send_loop); until then the
    engine must read them from the view, and an older batch's write must not hide a newer batch's profile."""
    from streams.app import PartitionProfiles
    from tidewater.profile import encode_profile

    table, latest = DictTable(), {}
    view = PartitionProfiles(table, ProfileCache(0))  # no cache: every read goes through the view
    held: list[tuple[int, list]] = []
    for number, batch in enumerate(batches, start=1):
        writes = []
        for user, deleted in dict(batch).items():
            profile = new_profile(user)
            profile.n_events = number
            writes.append((user.encode(), None if deleted else encode_profile(profile)))
            latest[user] = None if deleted else number
        view.hold(writes, number)
        held.append((number, writes))
        while len(held) > lag:
            view.write(held[0][1], held[0][0])
            held.pop(0)
        for user, number_read in latest.items():
            got = view.get(user)
            assert (got.n_events if got else None) == number_read
    for number, writes in held:
        view.write(writes, number)
    assert view.unwritten == {}
    assert {k.decode() for k in table.data} == {u for u, n in latest.items() if n is not None}


def test_the_rebalance_timeout_outlasts_a_long_batch_not_the_session_timeout(tmp_path):
    """It was the session timeout (10 s): a worker finishing a long batch (a daily tick scoring tens of thousands
    of users with an encoder model) before it could rejoin was dropped from the group (found by review)."""
    env = {"TIDEWATER_DATA_DIR": str(tmp_path / "data"), "TIDEWATER_REGISTRY_DIR": str(tmp_path / "registry"),
           "TIDEWATER_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    conf = create_app(Settings.from_env(environ=env)).conf
    assert conf.broker_rebalance_timeout == 60.0 and conf.broker_session_timeout == 10.0
    conf = create_app(Settings.from_env(environ=env | {"TIDEWATER_SESSION_TIMEOUT_S": "90"})).conf
    assert conf.broker_rebalance_timeout == 90.0  # never shorter than the session timeout


def test_regression_the_producer_timeout_is_two_minutes_not_fausts_twenty(tmp_path):
    """Faust's producer_request_timeout (20 minutes), which aiokafka takes as a batch's lifetime, kept a worker
    whose outputs the broker did not take (too few in-sync replicas, a leader away) stuck with /health ok before
    its delivery failed and it stopped (found by review). The app now gets TIDEWATER_PRODUCER_TIMEOUT_S, Kafka's
    own default of 120 s. (This checks the setting reaches Faust; that aiokafka expires batches after it is read
    from its source, not tested here.)"""
    env = {"TIDEWATER_DATA_DIR": str(tmp_path / "data"), "TIDEWATER_REGISTRY_DIR": str(tmp_path / "registry"),
           "TIDEWATER_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    assert create_app(Settings.from_env(environ=env)).conf.producer_request_timeout == 120.0
    conf = create_app(Settings.from_env(environ=env | {"TIDEWATER_PRODUCER_TIMEOUT_S": "30"})).conf
    assert conf.producer_request_timeout == 30.0


def test_regression_a_user_on_two_partitions_has_a_profile_in_each_on_one_worker_as_on_two():
    """A producer that does not hash keys with murmur2 (librdkafka's default) puts one user on two partitions. The
    worker's cache was keyed by user alone: on one worker the second partition's engine took the first one's
    profile object, changed it and wrote it to its own changelog partition, so outputs and stored profiles
    depended on how partitions were spread over workers (found by a scale-out review)."""
    import json

    from streams.app import PartitionProfiles
    from tidewater.engine import EngineConfig, PartitionEngine, Record

    class EmptyTable:
        def get(self, key):
            return None

    def record(topic, partition, event):
        return Record(topic, partition, 0, event["user_id"].encode(), json.dumps(event).encode(), None)

    config = EngineConfig(partitions=8)
    inputs = ((0, record("clicks", 0, {"type": "click", "event_id": "a", "user_id": "u", "ts": 1000.0})),
              (1, record("purchases", 1, {"type": "purchase", "event_id": "b", "user_id": "u", "ts": 2000.0,
                                          "amount": 30.0})))

    def run(one_worker: bool):
        caches = [ProfileCache()] * 2 if one_worker else [ProfileCache(), ProfileCache()]
        stored = {}
        for partition, rec in inputs:
            engine = PartitionEngine(partition, config, PartitionProfiles(EmptyTable(), caches[partition],
                                                                          partition))
            engine.on_record(rec, 0.0)
            result = engine.on_notify(1e9, caught_up=frozenset(config.input_topics))
            for user_id, profile in result.profiles.items():
                caches[partition].put(partition, user_id, profile)  # as Pipeline._flush does
                stored[partition] = (profile.n_events, dict(profile.applied))
        return stored

    assert run(one_worker=True) == run(one_worker=False) == {0: (1, {"clicks/0": 0}), 1: (1, {"purchases/1": 0})}
