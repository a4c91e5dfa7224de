"""The recs model's history kept in the profile (``recommending.rec_history``): distinct items at their first
occurrence, the list the user vector is folded from and the re-ranking reads, as the model was trained and
evaluated (models/recs/evaluation.py). Until the twenty-eighth session both came from the ring, which the train/serve
skew review showed to differ from the offline history: repeats and items without a vector crowded it, an item seen
again after the ring forgot it became its newest item, and a model swap rebuilt another vector than the folded one."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tidewater.events import Click, Purchase
from tidewater.profile import REC_HISTORY, ProfileConfig, apply, decode_profile, encode_profile, new_profile
from tidewater.recommending import PartitionPopularity, VectorRecommender, rec_history

from .test_engine_models import tiny_recs_version

KNOWN = [f"i{i}" for i in range(60)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_recs_version(tmp_path_factory.mktemp("recs") / "v0001-hist", items=KNOWN)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return tiny_recs_version(tmp_path_factory.mktemp("recs") / "v0002-hist", seed=1, items=KNOWN)


def stream(recommender, items, config=ProfileConfig(), profile=None, purchase_every=0):
    """A user's events through the worker's two steps: the profile update, then the fold of its item."""
    profile = profile if profile is not None else new_profile("u")
    start = profile.n_events
    for n, item in enumerate(items, start):
        cls = Purchase if purchase_every and n % purchase_every == 0 else Click
        extra = {"amount": 5.0} if cls is Purchase else {}
        apply(profile, cls(event_id=f"e{n}", user_id="u", ts=1000.0 + n, item_id=item, **extra), "c/0", n, 0.0,
              config)
        recommender.fold(profile, item)
    return profile


def offline_history(items):
    return list(dict.fromkeys(items))[-REC_HISTORY:]


def assert_vector_is_the_histories(model, profile, history):
    expected = model.recompute_user(history)
    np.testing.assert_allclose(np.frombuffer(profile.vec_sum, np.float32), np.asarray(expected.sum, np.float32),
                               rtol=1e-4, atol=1e-5)
    assert profile.vec_weight == pytest.approx(expected.weight, rel=1e-5)


def test_regression_repeats_crowded_the_history_out_of_the_ring(model):
    """40 items each viewed twice: the ring's 64 clicks held 32 of them, the history the model was trained on 40."""
    items = [item for item in KNOWN[:40] for _ in range(2)]
    recommender = VectorRecommender(model)
    profile = stream(recommender, items)
    assert len({e.item_id for e in profile.recent}) == 32
    assert rec_history(profile) == KNOWN[:40]
    assert_vector_is_the_histories(model, profile, KNOWN[:40])


def test_regression_an_item_seen_again_after_the_ring_forgot_it_became_the_newest_in_the_history(model):
    recommender = VectorRecommender(model)
    config = ProfileConfig(recent_events=4)
    profile = stream(recommender, ["i1", "i2", "i3", "i4", "i5", "i6", "i1"], config)  # i1 left the ring of 4
    assert rec_history(profile) == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert "i1" in recommender.query(profile).exclude  # still seen
    assert_vector_is_the_histories(model, profile, rec_history(profile))


def test_items_without_a_vector_stay_in_the_history_without_crowding_out_the_models(model):
    """50 known items then 30 the model has no vector for: the model reads its 50 (the ring held 34 of them)."""
    recommender = VectorRecommender(model)
    items = KNOWN[:50] + [f"new{i}" for i in range(30)]
    profile = stream(recommender, items, ProfileConfig(recent_events=64), purchase_every=0)
    assert rec_history(profile) == items
    assert model.positions(rec_history(profile)) == model.positions(KNOWN[:50])
    assert_vector_is_the_histories(model, profile, KNOWN[:50])


def test_a_re_ranking_query_carries_the_history_and_excludes_every_item_seen(model):
    recommender = VectorRecommender(model)
    recommender.reranks = True  # as with a version that has the full-rank matrix (tiny versions have none)
    config = ProfileConfig(recent_events=4)
    profile = stream(recommender, ["i1", "i2", "i3", "i4", "i5", "i6", "i1", "i2"], config)
    query = recommender.query(profile)
    assert query.history == ("i1", "i2", "i3", "i4", "i5", "i6") and query.exclude == set(query.history)
    assert query.bought == frozenset()  # every item seen is in the history here


def test_the_history_keeps_the_last_rec_history_items():
    profile = stream(PartitionPopularity(), [f"x{i}" for i in range(REC_HISTORY + 30)])
    assert rec_history(profile) == [f"x{i}" for i in range(30, REC_HISTORY + 30)]


def test_a_model_swap_rebuilds_the_vector_the_stream_would_have_folded(model, other_model):
    """A new version rebuilds the vector from the history: the same vector as folding every event with it,
    repeats and items the ring forgot included (it was rebuilt from the ring: another vector)."""
    items = ["i3", "i4", "i3", "i5"] + KNOWN[10:40] + ["i4", "i3"] + KNOWN[40:45]
    config = ProfileConfig(recent_events=8)
    swapped = stream(VectorRecommender(model), items, config)
    stream(VectorRecommender(other_model), ["i50"], config, profile=swapped)  # the swap at the next event
    folded = stream(VectorRecommender(other_model), items + ["i50"], config)
    assert rec_history(swapped) == rec_history(folded) == offline_history(items + ["i50"])
    np.testing.assert_allclose(np.frombuffer(swapped.vec_sum, np.float32), np.frombuffer(folded.vec_sum, np.float32),
                               rtol=1e-4, atol=1e-5)


def test_a_profile_stored_before_the_history_builds_it_from_its_ring(model):
    recommender = VectorRecommender(model)
    profile = stream(recommender, ["i1", "i2", "i1", "i3"])
    profile.rec_history = None  # as decoded from a profile stored before the field
    old = decode_profile(encode_profile(profile))
    assert old.rec_history is None
    assert rec_history(old) == ["i1", "i2", "i3"]  # read without changing the profile (a silent user's query)
    stream(recommender, ["i2", "i4"], profile=old)
    assert old.rec_history == ["i1", "i2", "i3", "i4"]


def test_the_placeholder_keeps_the_history_for_the_model_that_serves_next(model):
    """Events while no model serves (the popularity placeholder) are in the history the model rebuilds from."""
    profile = stream(VectorRecommender(model), ["i1", "i2"])
    stream(PartitionPopularity(), ["i3", "i1", "i4"], profile=profile)
    recommender = VectorRecommender(model)
    recommender.refresh(profile)  # the model serves again: rebuilt in its space
    assert rec_history(profile) == ["i1", "i2", "i3", "i4"]
    assert_vector_is_the_histories(model, profile, ["i1", "i2", "i3", "i4"])


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, len(KNOWN) - 1), max_size=150), ring=st.integers(2, 70),
       purchase_every=st.sampled_from([0, 2, 3]))
def test_the_history_and_the_vector_are_the_offline_protocols(model, picks, ring, purchase_every):
    """Whatever the ring's size and the mix of clicks and purchases, as long as the profile remembers every item
    (60 here, under the 128 it keeps beyond the ring): the history is the distinct items at their first
    occurrence, and the folded vector is the one recomputed from it."""
    items = [KNOWN[i] for i in picks]
    recommender = VectorRecommender(model)
    profile = stream(recommender, items, ProfileConfig(recent_events=ring), purchase_every=purchase_every)
    assert rec_history(profile) == offline_history(items)
    if items:
        assert_vector_is_the_histories(model, profile, offline_history(items))
