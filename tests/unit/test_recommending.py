"""tidewater/recommending.py: the user vector folded in the profile, the change that triggers a recommendation, the
query and the popularity placeholder, with a stand-in model (no FAISS). Written when mutation testing (twenty-sixth
session) found these behaviours pinned by no test."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from tidewater.profile import new_profile
from tidewater.recommending import PartitionPopularity, Query, VectorRecommender

ITEMS = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([0.0, 2.0], np.float32)}


class Index:
    def __init__(self, version):
        self.current = SimpleNamespace(version=version)

    @property
    def version(self):
        return self.current.version


class FakeModel:
    """What VectorRecommender uses of models.recs.recommender.Recommender."""

    def __init__(self, version="recs-1", index_version="", rerank_candidates=0, decay=0.5):
        self.version, self.decay, self.dim, self.segments = version, decay, 2, None
        self.index = Index(index_version)
        self.rerank_candidates = rerank_candidates
        self.swapped = None

    def swap_index(self, directory):
        self.swapped = directory

    def item_vector(self, item_id):
        return ITEMS.get(item_id)

    def recompute_user(self, item_ids):
        return None  # an empty ring: no vector yet


def folded(rec, *items):
    profile = new_profile("u1")
    rec.fold(profile, "unknown")  # the first event of this model: rebuilt from the (empty) ring, no vector
    assert profile.vec_version == rec.version and profile.vec_sum is None
    for item in items:
        assert rec.fold(profile, item)
    return profile


def test_folding_builds_the_decayed_sum_the_vector_and_the_count():
    """The first known item starts the sum; each next one is decay x sum + v. The user vector is the sum divided
    by the weight (decay x weight + 1 per item), and ``vec_count`` counts the folded items."""
    rec = VectorRecommender(FakeModel(decay=0.5))
    profile = folded(rec, "a", "b")
    expected_sum = 0.5 * ITEMS["a"] + ITEMS["b"]
    assert profile.vec_count == 2 and profile.vec_weight == pytest.approx(1.5)
    np.testing.assert_allclose(rec.vector(profile), expected_sum / 1.5, rtol=1e-6)


def test_change_since_rec_is_zero_at_the_recommendation_and_one_minus_the_cosine_after():
    """``mark_recommended`` keeps the unit vector; ``change_since_rec`` is 1 - cosine between the vector now and
    that one: 0 right after, whatever the vector's length, and 1 - cos after a fold that turns it."""
    rec = VectorRecommender(FakeModel(decay=0.5))
    profile = folded(rec, "a")  # |a| = 5: not a unit vector
    assert rec.change_since_rec(profile) == 1.0  # never recommended
    rec.mark_recommended(profile)
    np.testing.assert_allclose(np.frombuffer(profile.vec_at_rec, np.float32), [0.6, 0.8], rtol=1e-6)
    assert rec.change_since_rec(profile) == pytest.approx(0.0, abs=1e-6)
    rec.fold(profile, "b")
    now = 0.5 * ITEMS["a"] + ITEMS["b"]
    cosine = float(now @ ITEMS["a"]) / (math.sqrt(now @ now) * 5.0)
    assert rec.change_since_rec(profile) == pytest.approx(1.0 - cosine, abs=1e-6)


def test_a_vector_of_another_model_version_is_not_used():
    """A profile's vector from another model version (before its rebuild) is no vector for this one: no query
    vector, no change."""
    rec = VectorRecommender(FakeModel())
    profile = folded(rec, "a")
    profile.vec_version = "recs-0"
    assert rec.vector(profile) is None and rec.change_since_rec(profile) == 0.0


def test_the_index_version_is_the_registry_name_of_a_published_index_else_the_models():
    """A published index is named as the registry names it; the model's own index says its version; an index
    with no version is the model's version."""
    model = FakeModel(version="recs-1", index_version="recs-1-own")
    rec = VectorRecommender(model, index_dir="/idx", index_version="idx-7")
    assert model.swapped == "/idx" and rec.index_version == "idx-7" and rec.index_error is None
    assert VectorRecommender(FakeModel(version="recs-1", index_version="recs-1-own")).index_version == "recs-1-own"
    assert VectorRecommender(FakeModel(version="recs-1", index_version="")).index_version == "recs-1"


def test_a_model_without_rerank_candidates_queries_with_the_seen_items():
    """``rerank_candidates`` 0 is a model without the full-rank re-scoring: the query carries the seen items as
    its exclusions, not a history."""
    rec = VectorRecommender(FakeModel(rerank_candidates=0))
    assert not rec.reranks
    query = rec.query(folded(rec, "a"))
    assert query.history == () and query.excluded is not None
    assert VectorRecommender(FakeModel(rerank_candidates=5)).reranks


def test_partition_popularity_with_k_zero_recommends_nothing():
    """k = 0 (or less) is an empty answer for every query, not the whole popular list."""
    queries = [Query(None, frozenset()), Query(None, frozenset({"x"}))]
    assert PartitionPopularity().recommend_many(queries, 0, ["x", "y", "z"], [5, 4, 3]) == [[], []]
    assert PartitionPopularity().recommend_many(queries, 2, ["x", "y", "z"], [5, 4, 3]) == [
        [("x", 5.0), ("y", 4.0)], [("y", 4.0), ("z", 3.0)]]


def test_partition_popularity_scores_items_without_a_count_zero():
    """The popular list may be longer than its counts (counted at the last ranking): an item past the counts
    scores 0.0, and those with a count score it."""
    answer = PartitionPopularity().recommend_many([Query(None, frozenset())], 3, ["x", "y", "z"], [5, 4])
    assert answer == [[("x", 5.0), ("y", 4.0), ("z", 0.0)]]
