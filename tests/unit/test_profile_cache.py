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
        cache.put(user, new_profile(user))
    recent: list[str] = []  # users by last write, most recent last
    for user in writes:
        if user in recent:
            recent.remove(user)
        recent.append(user)
    assert list(cache.profiles) == (recent[max(0, len(recent) - size):] if size else [])


def test_the_cache_size_is_a_setting(tmp_path):
    settings = Settings.from_env(environ={"TIDEWATER_PROFILE_CACHE_USERS": "7",
                                          "TIDEWATER_DATA_DIR": str(tmp_path / "data"),
                                          "TIDEWATER_REGISTRY_DIR": str(tmp_path / "registry"),
                                          "TIDEWATER_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert create_app(settings).tidewater.cache.max_cached == 7
