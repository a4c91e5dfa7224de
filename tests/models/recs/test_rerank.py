"""The served second stage: index candidates re-scored by seqlinear's full-rank model."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.recs.evaluation import leave_one_out
from models.recs.recommender import Recommender, write_artifacts
import models.recs.rerank as rerank_module
from models.recs.rerank import FullRankScorer
from models.recs.seqlinear import LinearConfig, SeqLinearModel
from tests.models.recs.helpers import sequential_log


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    split = leave_one_out(sequential_log(n_users=80, n_items=40, length=14, seed=3))
    model = SeqLinearModel(LinearConfig(dim=8, threads=1), split.n_items)
    model.fit(split.fit_sequences("test"))
    directory = tmp_path_factory.mktemp("reg") / "v0001-rerank"
    popularity = np.bincount(np.concatenate(split.train_seqs), minlength=split.n_items)
    write_artifacts(directory, model, split.item_ids, popularity, index_kind="flat")
    return split, model, directory


def offline_top(model, history: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    scores = model.score(None, [history])[0].astype(np.float64)
    scores[history] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order.tolist(), scores[order]


def test_served_recommendations_equal_the_full_model_when_every_item_is_a_candidate(fitted):
    split, model, directory = fitted
    rec = Recommender(directory, use_gpu=False, rerank_candidates=split.n_items)
    assert rec.full is not None
    hist = split.history("test")
    users = split.eval_users[:25]
    states = [rec.recompute_user([split.item_ids[i] for i in hist[u]]) for u in users]
    histories = [[split.item_ids[i] for i in hist[u]] for u in users]
    exclude = [set(h) for h in histories]
    served = rec.recommend_many(states, k=10, exclude=exclude, histories=histories)
    for u, row in zip(users, served):
        want, want_scores = offline_top(model, hist[u], 10)
        assert [rec._pos[i] for i, _ in row] == want
        np.testing.assert_allclose([s for _, s in row], want_scores, rtol=1e-5, atol=1e-6)


def test_without_candidates_or_histories_the_index_ranking_is_served(fitted):
    split, _, directory = fitted
    plain = Recommender(directory, use_gpu=False, rerank_candidates=0)
    assert plain.full is None and plain.rerank_candidates == 0
    rec = Recommender(directory, use_gpu=False)
    state = rec.recompute_user(["i3", "i4"])
    vector_only = plain.recommend_many([state], k=5, exclude=[{"i3", "i4"}])
    assert rec.recommend_many([state], k=5, exclude=[{"i3", "i4"}]) == vector_only  # no histories: no re-rank
    reranked = rec.recommend_many([state], k=5, exclude=[{"i3", "i4"}], histories=[["i3", "i4"]])
    assert len(reranked[0]) == 5 and not {"i3", "i4"} & {i for i, _ in reranked[0]}


def test_saved_scorer_loads_with_the_same_columns(fitted):
    split, model, directory = fitted
    saved = FullRankScorer.from_model(model)
    loaded = FullRankScorer.load(directory, split.n_items, model.decay, model.cfg.window)
    np.testing.assert_array_equal(loaded.col_of, saved.col_of)
    np.testing.assert_array_equal(np.asarray(loaded.matrix), saved.matrix)


def test_items_outside_the_dense_system_keep_their_index_score_and_history_is_normalised_first():
    matrix = np.array([[0.0, 2.0], [4.0, 0.0]], np.float32)
    col_of = np.array([0, -1, 1])  # item 1 is outside the dense system
    scorer = FullRankScorer(matrix, col_of, decay=0.5, window=3)

    def scores(history, ids, fallback):
        top, top_scores = scorer.rerank_batch([history], np.array([ids]), np.array([fallback], np.float64), [[]],
                                              k=len(ids), candidates=len(ids))
        return dict(zip(top[0].tolist(), top_scores[0].tolist()))

    # history items 0, 1, 2 (oldest first): weights 0.25, 0.5, 1 over 1.75; item 1 is dropped after normalising
    got = scores([0, 1, 2], [0, 1, 2], [9.0, 7.0, 9.0])
    w0, w2 = 0.25 / 1.75, 1.0 / 1.75
    np.testing.assert_allclose([got[0], got[1], got[2]], [w2 * 4.0, 7.0, w0 * 2.0])
    # no usable history: x = 0 would score every dense item 0, so the row keeps the index's scores (review)
    got = scores([1], [0, 1], [3.0, 5.0])
    np.testing.assert_allclose([got[0], got[1]], [3.0, 5.0])
    top, _ = scorer.rerank_batch([[0, 1, 2]], np.array([[0, 1, 2]]), np.array([[9.0, 7.0, 9.0]]), [[]], k=2,
                                 candidates=3)
    assert top[0].tolist() == [1, 0]


def test_the_served_path_re_scores_exactly_the_first_unseen_index_candidates(fitted):
    """Recommender (vectorised, unfiltered index answer cut to its first `rerank_candidates` unseen items) =
    the offline full model's ranking of a filtered index search of that many items, with few candidates so that
    the cut matters (the same `search_and_rerank` is what `evaluate recs` reports as the streaming path)."""
    split, model, directory = fitted
    rec = Recommender(directory, use_gpu=False, rerank_candidates=6)
    hist = split.history("test")
    users = split.eval_users[:30]
    histories = [[split.item_ids[i] for i in hist[u]] for u in users]
    states = [rec.recompute_user(h) for h in histories]
    served = rec.recommend_many(states, k=4, exclude=[set(h) for h in histories], histories=histories)
    vectors = np.stack([s.vector() for s in states])
    filtered = rec.index.search_many(vectors, 6, [set(h) for h in histories])
    for u, row, cands in zip(users, served, filtered):
        idx = np.array([rec._pos[i] for i, _ in cands])
        full = model.score(None, [hist[u]])[0].astype(np.float64)[idx]
        order = np.lexsort((idx, -full))[:4]
        assert [rec._pos[i] for i, _ in row] == idx[order].tolist()
        np.testing.assert_allclose([s for _, s in row], full[order], rtol=1e-5, atol=1e-6)


def reference_rerank(scorer: FullRankScorer, history, ids, fallback, exclude, k, candidates):
    """One row, the plain way: the first `candidates` unexcluded ids, scored x_user · B (cold: index score; every
    item its index score when no history item is in the dense system)."""
    h = list(history)[-scorer.window:]
    w = scorer.decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
    w = w / w.sum() if len(h) else w
    x = {}
    for item, weight in zip(h, w):
        if scorer.col_of[item] >= 0:
            x[scorer.col_of[item]] = x.get(scorer.col_of[item], 0.0) + weight
    picked = [(i, f) for i, f in zip(ids, fallback) if i >= 0 and i not in set(exclude)][:candidates]
    scored = []
    for item, index_score in picked:
        col = scorer.col_of[item]
        s = index_score if col < 0 or not x else sum(wt * float(scorer.matrix[r, col]) for r, wt in x.items())
        scored.append((item, s))
    scored.sort(key=lambda t: (-t[1], t[0]))
    return scored[:k]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), use_isin=st.booleans())
def test_vectorised_rerank_equals_the_per_row_reference(data, use_isin):
    """Random batches across chunk boundaries, with padding ids, exclusions, cold items and short histories."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_items = data.draw(st.integers(2, 30))
    col_of = np.arange(n_items, dtype=np.int64)
    cold = rng.random(n_items) < 0.2
    col_of[cold] = -1
    col_of[~cold] = np.arange(int((~cold).sum()))
    matrix = rng.standard_normal((int((~cold).sum()), int((~cold).sum()))).astype(np.float32)
    scorer = FullRankScorer(matrix, col_of, decay=0.8, window=data.draw(st.integers(1, 6)))
    q, c = data.draw(st.integers(1, 9)), data.draw(st.integers(1, n_items))
    ids = np.stack([rng.permutation(n_items)[:c] for _ in range(q)]).astype(np.int64)
    ids[rng.random(ids.shape) < 0.1] = -1
    fallback = rng.standard_normal((q, c))
    histories = [rng.integers(0, n_items, rng.integers(0, 9)).tolist() for _ in range(q)]
    exclude = [rng.choice(n_items, rng.integers(0, n_items), replace=False).tolist() for _ in range(q)]
    k, candidates = data.draw(st.integers(1, c)), data.draw(st.integers(1, c))
    saved = rerank_module.MASK_CELLS
    rerank_module.MASK_CELLS = 0 if use_isin else saved  # exclusions by np.isin instead of the dense mask
    try:
        top, top_scores = scorer.rerank_batch(histories, ids, fallback, exclude, k, candidates, chunk=4)
    finally:
        rerank_module.MASK_CELLS = saved
    for r in range(q):
        want = reference_rerank(scorer, histories[r], ids[r], fallback[r], exclude[r], k, candidates)
        got = [(int(i), float(s)) for i, s in zip(top[r], top_scores[r]) if i >= 0]
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6, atol=1e-9)
        assert all(i == -1 for i in top[r][len(got):])


@pytest.mark.parametrize("candidates", [0, 6])
def test_exclude_history_is_the_history_passed_as_exclusions(fitted, candidates):
    """The stream passes a user's ring once (``exclude_history``) instead of again as ``exclude``: the same
    answers, with and without the re-ranking, for users with and without a vector, and rounded on request."""
    split, _, directory = fitted
    rec = Recommender(directory, use_gpu=False, rerank_candidates=candidates)
    hist = split.history("test")
    histories = [[split.item_ids[i] for i in hist[u]] for u in split.eval_users[:20]]
    states = [rec.recompute_user(h) for h in histories] + [None]
    histories.append([rec.popular_items(1)[0]])  # no vector: popular items, still without the history
    want = rec.recommend_many(states, k=5, exclude=[set(h) for h in histories], histories=histories)
    got = rec.recommend_many(states, k=5, histories=histories, exclude_history=True)
    assert got == want
    assert histories[-1][0] not in [i for i, _ in got[-1]]
    rounded = rec.recommend_many(states, k=5, histories=histories, exclude_history=True, decimals=3)
    assert [[i for i, _ in row] for row in rounded] == [[i for i, _ in row] for row in want]
    assert [[s for _, s in row] for row in rounded] == [[float(np.round(s, 3)) for _, s in row] for row in want]


def test_regression_purchases_excluded_with_the_history_leave_the_history_as_it_was(fitted):
    """The stream passes a user's ring as the history and the purchases the ring has forgotten as ``exclude``. The
    union of the two was written into the history's own list: the re-ranking then read an unordered set of
    positions (recency weights in set order, the purchases as the latest events), and past 50 items it failed
    the whole call (found by review)."""
    split, _, directory = fitted
    rec = Recommender(directory, use_gpu=False, rerank_candidates=25)
    hist = split.history("test")
    histories = [[split.item_ids[i] for i in hist[u]] for u in split.eval_users[:30]]
    states = [rec.recompute_user(h) for h in histories]
    bought = [{split.item_ids[(3 * r + 7) % split.n_items]} - set(h) if r % 2 else None
              for r, h in enumerate(histories)]
    want = rec.recommend_many(states, k=5, exclude=[set(h) | (b or set()) for h, b in zip(histories, bought)],
                              histories=histories)
    got = rec.recommend_many(states, k=5, exclude=bought, histories=histories, exclude_history=True)
    assert got == want
    many = [split.item_ids[i] for i in range(split.n_items)] * 2  # a history over 50 items, and a purchase
    assert len(rec.recommend_many([rec.recompute_user(many)], k=3, exclude=[{split.item_ids[0]}],
                                  histories=[many], exclude_history=True)[0]) == 0  # every item seen: none left


def test_regression_an_empty_dense_system_serves_the_index_scores():
    """Found by the property test: with every item outside the dense system, B is 0 x 0 and the gather failed."""
    scorer = FullRankScorer(np.zeros((0, 0), np.float32), np.array([-1, -1]), decay=0.8, window=1)
    top, top_scores = scorer.rerank_batch([[1, 1, 1]], np.array([[1, 0]]), np.array([[0.5, 0.25]]), [[]], k=2,
                                          candidates=2)
    assert top.tolist() == [[1, 0]] and top_scores.tolist() == [[0.5, 0.25]]


def test_regression_a_history_outside_the_dense_system_keeps_the_index_ranking():
    """Every item of the history outside the dense system (new items, the long tail): each candidate scored 0 and
    the row came in catalogue order (found by review); it keeps the index's order and scores. A history with one
    item inside is re-scored as before."""
    matrix = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0], [1.0, 1.0, 0.0]], np.float32)
    scorer = FullRankScorer(matrix, np.array([0, 1, 2, -1, -1]), decay=0.8, window=4)
    ids, index_scores = np.array([[2, 0, 1], [2, 0, 1]]), np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    top, top_scores = scorer.rerank_batch([[3, 4], [3, 1]], ids, index_scores, [[], []], k=3, candidates=3)
    assert top[0].tolist() == [2, 0, 1] and top_scores[0].tolist() == [0.9, 0.5, 0.1]
    assert top[1].tolist() == [0, 2, 1]  # row 1 of the matrix, weighted 1 / 1.8 (item 3 dropped after normalising)
    np.testing.assert_allclose(top_scores[1], np.array([3.0, 1.0, 0.0]) / 1.8)


@pytest.mark.parametrize("mask_cells", [None, 0])
def test_repeated_history_items_are_excluded_once(fitted, monkeypatch, mask_cells):
    """A ring repeats items (the same film clicked twice). The stream passes it as it is; the search is widened
    by the distinct excluded items (counted on the dense mask, or by sets above ``MASK_CELLS``), so the answers
    equal passing the de-duplicated sets explicitly."""
    from models.recs import rerank

    if mask_cells is not None:
        monkeypatch.setattr(rerank, "MASK_CELLS", mask_cells)
    split, _, directory = fitted
    rec = Recommender(directory, use_gpu=False, rerank_candidates=25)  # of 40 items: the search width matters
    hist = split.history("test")
    histories = [[split.item_ids[i] for i in hist[u]] for u in split.eval_users[:40]]
    histories = [h + h[: 1 + r % 4] * (1 + r % 3) for r, h in enumerate(histories)]  # repeats, most recent last
    assert all(len(set(h)) < len(h) for h in histories if h)
    states = [rec.recompute_user(h) for h in histories]
    want = rec.recommend_many(states, k=20, exclude=[set(h) for h in histories], histories=histories)
    got = rec.recommend_many(states, k=20, histories=histories, exclude_history=True)
    assert got == want
    assert all(len(row) == 20 for row in got)  # 25 candidates left after the history (13 items of 40)
    assert all(not set(h) & {i for i, _ in row} for h, row in zip(histories, got))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_regression_rows_of_each_width_are_re_ranked_as_in_one_padded_batch(data):
    """Rows are re-ranked per search width: padded to the widest, one heavy user's row made every row's arrays that
    wide (found by review). Each row's answer is the padded batch's, items and scores."""
    from models.recs.index import ItemIndex
    from models.recs.rerank import exclusion_mask, row_width, search_and_rerank

    n = data.draw(st.integers(40, 160))
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    index = ItemIndex.build([f"i{j}" for j in range(n)], vectors, kind="flat", version="t", use_gpu=False)
    full = FullRankScorer(rng.standard_normal((n, n)).astype(np.float32) * 0.01, np.arange(n), 0.8, 10)
    sizes = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=12))  # some rows exclude most items
    exclude = [rng.choice(n, size, replace=False).tolist() for size in sizes]
    histories = [rng.choice(n, 5).tolist() for _ in sizes]
    queries = rng.standard_normal((len(sizes), 8)).astype(np.float32)
    k, candidates = data.draw(st.integers(1, 12)), data.draw(st.integers(0, 20))
    got_ids, got_scores = search_and_rerank(index, full, queries, k, candidates, exclude, histories)
    mask = exclusion_mask(exclude, n)
    widths = [row_width(candidates + int(d), n) for d in mask.sum(axis=1)]
    scores, ids = index.search_rows(queries, widths)
    want_ids, want_scores = full.rerank_batch(histories, ids, scores.astype(np.float64), exclude, k, candidates,
                                              exclude_mask=mask)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores)
