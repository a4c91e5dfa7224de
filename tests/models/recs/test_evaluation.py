from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, strategies as st

from models.recs.evaluation import (leave_one_out, metrics_from_ranks, ndcg_at_10, normalize_log,
                                    paired_bootstrap_diff, ranks_from_scores)

from .helpers import sequential_log


def test_metrics_hand_checked():
    # ranks 0, 1, 9, 10, 19, 20 (0-based)
    m = metrics_from_ranks(np.array([0, 1, 9, 10, 19, 20]))
    assert m["hit@10"] == pytest.approx(3 / 6)
    assert m["recall@20"] == pytest.approx(5 / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 6)
    assert m["ndcg@k"][0] == pytest.approx(1 / 6)  # NDCG@1 = hit@1
    assert len(m["ndcg@k"]) == 50
    assert all(a <= b + 1e-12 for a, b in zip(m["ndcg@k"], m["ndcg@k"][1:]))


def test_ranks_exclude_history_and_keep_target():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    # target 3 (score 2); items 0 and 1 consumed -> only item 2 is above it
    assert ranks_from_scores(scores, np.array([3]), [np.array([0, 1])])[0] == 1
    # a target that sits in the history stays rankable (never silently dropped)
    assert ranks_from_scores(scores, np.array([0]), [np.array([0, 1])])[0] == 0


def test_ties_are_deterministic_by_index():
    scores = np.zeros((1, 6))
    assert ranks_from_scores(scores, np.array([4]), [np.array([1])])[0] == 3  # items 0,2,3 before it


def test_split_is_leave_last_out_in_time_order():
    df = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 2, "item_id": ["x", "y", "z", "w", "x", "y"],
                       "ts": [4, 1, 3, 2, 1, 2]})
    s = leave_one_out(df)
    a = s.user_ids.index("a")
    b = s.user_ids.index("b")
    ids = s.item_ids
    assert [ids[i] for i in s.train_seqs[a]] == ["y", "w"]
    assert ids[s.valid[a]] == "z" and ids[s.test[a]] == "x"
    assert s.test[b] == -1 and len(s.train_seqs[b]) == 2  # fewer than 3 events: train only


@given(st.integers(0, 10_000))
def test_split_independent_of_row_order(seed):
    df = sequential_log(n_users=8, n_items=10, length=6, seed=1)
    df.loc[df.index % 3 == 0, "ts"] = 5.0  # many ties
    a = leave_one_out(df)
    b = leave_one_out(df.sample(frac=1.0, random_state=seed))
    assert a.item_ids == b.item_ids
    assert np.array_equal(a.test, b.test) and np.array_equal(a.valid, b.valid)
    assert all(np.array_equal(x, y) for x, y in zip(a.train_seqs, b.train_seqs))


def test_no_leakage_in_split():
    s = leave_one_out(sequential_log(unique_last=True))
    for u in s.eval_users:
        assert s.test[u] not in s.fit_sequences("test")[u]
        assert s.valid[u] not in s.fit_sequences("valid")[u]
        assert s.test[u] not in s.fit_sequences("valid")[u]
    # the canary items (each user's unique last item) appear in no training data at all
    canary = {s.item_index[f"t{u}"] for u in range(60)}
    for stage in ("valid", "test"):
        assert not canary & set(np.concatenate(s.fit_sequences(stage)).tolist())


def test_bad_log_rejected():
    with pytest.raises(ValueError, match="missing column"):
        normalize_log(pd.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(ValueError):
        normalize_log(pd.DataFrame({"user_id": [1], "item_id": [2], "ts": ["not a time"]}))


def test_per_user_ndcg_averages_to_the_headline():
    ranks = np.array([0, 3, 9, 10, 57])
    assert ndcg_at_10(ranks).tolist()[:2] == [1.0, 1.0 / math.log2(5)]
    assert ndcg_at_10(ranks)[3:].tolist() == [0.0, 0.0]
    assert ndcg_at_10(ranks).mean() == pytest.approx(metrics_from_ranks(ranks)["ndcg@10"])


def test_paired_bootstrap_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(1)
    b = rng.random(2000)
    better = paired_bootstrap_diff(b + 0.05, b)
    assert better["diff"] == pytest.approx(0.05) and better["ci95"][0] > 0.04
    same = paired_bootstrap_diff(rng.permutation(b), b)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    with pytest.raises(ValueError):
        paired_bootstrap_diff(b, b[:-1])
