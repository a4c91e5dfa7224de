from __future__ import annotations

import json

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from models.recs.user_vector import UserState, recompute, update_one

vec = arrays(np.float32, st.tuples(st.integers(1, 40), st.just(8)),
             elements=st.floats(-3, 3, allow_nan=False, width=32))


@given(vec, st.floats(0.05, 0.99))
def test_incremental_equals_recomputed_within_window(vecs, decay):
    state = None
    for v in vecs:
        state = update_one(state, v, decay)
    full = recompute(vecs, decay, window=50)
    assert state.count == full.count == len(vecs)
    np.testing.assert_allclose(state.vector(), full.vector(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.weight, full.weight, rtol=1e-5)


@given(st.integers(0, 2**31 - 1), st.floats(0.3, 0.9))
def test_incremental_close_to_windowed_beyond_window(seed, decay):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((80, 16)).astype(np.float32)
    window = 30
    state = None
    for v in vecs:
        state = update_one(state, v, decay)
    windowed = recompute(vecs, decay, window=window)
    # older events carry relative weight <= decay**window; vectors bounded by max norm
    bound = 3 * decay ** window * np.abs(vecs).max() + 1e-4
    assert np.max(np.abs(state.vector() - windowed.vector())) <= bound
    # and recomputing with an unbounded window is exact
    np.testing.assert_allclose(state.vector(), recompute(vecs, decay, window=10**6).vector(), rtol=1e-4, atol=1e-4)


def test_state_is_small_and_json_serialisable():
    s = update_one(None, np.ones(64, np.float32), 0.9)
    s = update_one(s.to_json(), np.zeros(64, np.float32), 0.9)  # accepts the JSON form back
    blob = json.loads(json.dumps(s.to_json()))
    assert set(blob) == {"sum", "weight", "count"} and len(blob["sum"]) == 64
    back = UserState.from_json(blob)
    np.testing.assert_allclose(back.vector(), s.vector())
    np.testing.assert_allclose(s.vector(), np.full(64, 0.9 / 1.9), rtol=1e-6)


def test_recent_events_weigh_more():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    v = recompute([a, b], 0.5).vector()
    assert v[1] > v[0]
