"""BG/NBD against Fader, Hardie & Lee (2005) and the metric helpers."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from models.churn import baselines as B
from models.churn.data import build_task
from models.churn.metrics import (auc, bootstrap_auc_diff, bootstrap_forecast_corr, calibration_curve,
                                  forecast_metrics, lift_gain)

from .helpers import CUTOFF, cdnow_sample

FHL = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def test_bgnbd_on_the_cdnow_sample_reproduces_fader_hardie_lee_2005():
    task = build_task(cdnow_sample(), CUTOFF, 273, seed=0)
    summary = B.rfm_summary(task.sequences, task.cutoff)  # weeks, as in the paper
    assert summary[:, 2].max() <= 39.0 + 1e-9
    res = B.fit_bgnbd(summary, 39.0)
    for k, v in FHL.items():
        assert abs(res.params[k] - v) / v < 0.05, (k, res.params[k], v)
    fc = forecast_metrics(task.count, res.expected)
    assert abs(fc["forecast_corr"] - 0.626) < 0.02  # the paper's correlation of predicted vs actual
    assert 0.76 < auc(task.churn, -res.expected) < 0.79  # 0.7725 measured with a direct implementation
    assert auc(task.churn, 1 - res.p_alive) < 0.4  # P(alive) is a poor churn score on CDNOW (~0.32)
    assert ((res.p_zero >= 0) & (res.p_zero <= 1)).all()
    assert 0.75 < auc(task.churn, B.recency_days(task.sequences, task.cutoff)) < 0.79


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60))
def test_rank_auc_equals_sklearn(pairs):
    y = np.array([p[0] for p in pairs], dtype=int)
    s = np.array([p[1] for p in pairs], dtype=float)
    if y.min() == y.max():
        assert np.isnan(auc(y, s))
    else:
        assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_metric_helpers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    good = y + rng.normal(0, 0.5, 500)
    ci = bootstrap_auc_diff(y, good, rng.normal(size=500), n_boot=200)
    assert ci["ci95"][0] > 0.1 and ci["diff"] > ci["ci95"][0]
    cal = calibration_curve(y, np.full(500, y.mean()))
    assert cal["ece"] < 0.1
    g = lift_gain(y, good)
    assert abs(g["gain"][-1] - 1.0) < 1e-12 and g["lift"][0] > 1.5
    fc = forecast_metrics(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3.0]) * 1.1)
    assert abs(fc["forecast_cum_error_pct"] - 10.0) < 1e-9 and abs(fc["forecast_corr"] - 1) < 1e-12


def test_forecast_corr_bootstrap_brackets_the_correlation_and_orders_a_better_forecast():
    rng = np.random.default_rng(1)
    actual = rng.poisson(rng.gamma(0.5, 4.0, 2000)).astype(float)
    close = actual + rng.normal(0, 1.0, 2000)
    far = actual + rng.normal(0, 4.0, 2000)
    out = bootstrap_forecast_corr(actual, close, far, n_boot=300, seed=0)
    lo, hi = out["corr"]["ci95"]
    assert lo < out["corr"]["value"] < hi
    assert abs(out["corr"]["value"] - np.corrcoef(actual, close)[0, 1]) < 1e-12
    diff = out["diff_vs_reference"]
    assert diff["ci95"][0] > 0 and diff["p_le_0"] == 0.0
    # the same forecast against itself: a zero difference
    same = bootstrap_forecast_corr(actual, close, close, n_boot=50)["diff_vs_reference"]
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
