"""Classic churn baselines on the same task and the same users as the model.

* BG/NBD (Fader, Hardie & Lee 2005) via ``lifetimes``: fitted on the calibration-period summaries
  (frequency = repeat purchases, recency ``t_x`` and age ``T``, in weeks) of all users — it uses no
  labels. Churn score = minus the expected purchases in the horizon; the conditional probability of
  no purchase in the horizon gives calibrated probabilities; P(alive) is reported as well (it is a
  poor churn score on CDNOW: it ranks one-time buyers as alive).
* Recency alone (days since the last purchase).
* Logistic regression and LightGBM on the RFM + inter-purchase-gap summary features
  (:func:`models.churn.features.summary_features`), trained on the train users, LightGBM with early
  stopping on the validation users.

``lifetimes.datasets.load_*`` needs the removed ``pkg_resources``: never call it; data comes from
:func:`models.datasets.load_cdnow`.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

from .features import DAY

WEEK = 7 * DAY


def rfm_summary(sequences: list[list[dict]], as_of: np.ndarray | float, unit: float = WEEK) -> np.ndarray:
    """BG/NBD inputs per user: [frequency x (repeat purchases), recency t_x, age T] in ``unit``.

    Purchases are distinct timestamps (baskets); ``T`` counts from the first purchase (or from the first
    event for users who only clicked: x = t_x = 0)."""
    as_of = np.broadcast_to(np.asarray(as_of, dtype=np.float64), (len(sequences),))
    out = np.zeros((len(sequences), 3))
    for i, seq in enumerate(sequences):
        p = [e["ts"] for e in seq if e["type"] == "purchase"]
        if p:
            first = p[0]
            out[i] = (len(p) - 1, (p[-1] - first) / unit, (as_of[i] - first) / unit)
        elif seq:
            out[i] = (0, 0.0, (as_of[i] - seq[0]["ts"]) / unit)
    return out


@dataclass
class BGNBDResult:
    params: dict
    expected: np.ndarray  # expected purchases in the horizon
    p_alive: np.ndarray
    p_zero: np.ndarray  # P(no purchase in the horizon | history) = churn probability


def fit_bgnbd(summary: np.ndarray, horizon: float, penalizer: float = 0.0) -> BGNBDResult:
    """Fit BG/NBD on [x, t_x, T] and score every row for a horizon in the same time unit.

    When the unpenalised fit does not converge (e.g. logs with very many purchases per user), the
    penalizer is raised step by step (0.001, 0.01, 0.1, 1); the one used is in ``params["penalizer"]``."""
    from lifetimes import BetaGeoFitter
    from lifetimes.utils import ConvergenceError

    x, tx, T = summary[:, 0], summary[:, 1], np.maximum(summary[:, 2], 1e-6)
    last_exc: Exception | None = None
    for pen in [penalizer] + [p for p in (0.001, 0.01, 0.1, 1.0) if p > penalizer]:
        bgf = BetaGeoFitter(penalizer_coef=pen)
        try:
            # lifetimes print()s the optimiser state when it fails: keep stdout clean for --json
            with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                bgf.fit(x, tx, T)
            break
        except (ConvergenceError, ValueError, FloatingPointError) as exc:
            last_exc = exc
    else:
        raise RuntimeError(f"BG/NBD did not converge even with a penalizer: {last_exc}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(horizon, x, tx, T), float)
        p_alive = np.asarray(bgf.conditional_probability_alive(x, tx, T), float)
    r, alpha = bgf.params_["r"], bgf.params_["alpha"]
    # Given alive at T, lambda | data ~ Gamma(r + x, alpha + T), and no purchase in (T, T+t] has
    # probability exp(-lambda t); dropout happens only right after a purchase.
    p_no_purchase_if_alive = ((alpha + T) / (alpha + T + horizon)) ** (r + x)
    p_zero = np.clip(1.0 - p_alive * (1.0 - p_no_purchase_if_alive), 0.0, 1.0)
    expected = np.nan_to_num(expected, nan=0.0, posinf=0.0)
    params = {k: float(v) for k, v in bgf.params_.items()} | {"penalizer": float(bgf.penalizer_coef)}
    return BGNBDResult(params=params, expected=expected, p_alive=p_alive, p_zero=p_zero)


def recency_days(sequences: list[list[dict]], as_of: np.ndarray | float) -> np.ndarray:
    s = rfm_summary(sequences, as_of, unit=DAY)
    return s[:, 2] - s[:, 1]  # T - t_x = time since the last purchase


def fit_logreg(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    model.fit(x_train, y_train)
    return model


def fit_lightgbm(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int = 0):
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=2000, learning_rate=0.02, num_leaves=15, min_child_samples=40, subsample=0.8,
        subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0, random_state=seed, n_jobs=1,
        deterministic=True, force_col_wise=True, verbose=-1,
    )
    with warnings.catch_warnings():  # lightgbm 4.7 renamed eval_set; keep the form every 4.x accepts
        warnings.simplefilter("ignore")
        model.fit(x_train, y_train, eval_set=[(x_val, y_val)], eval_metric="binary_logloss",
                  callbacks=[lgb.early_stopping(100, verbose=False)])
    return model


def platt(score_val: np.ndarray, y_val: np.ndarray):
    """1-D logistic calibration of a raw score (fitted on validation users) -> callable."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = float(np.mean(score_val)), float(np.std(score_val)) or 1.0
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(((score_val - mu) / sd)[:, None], y_val)
    return lambda s: lr.predict_proba(((np.asarray(s) - mu) / sd)[:, None])[:, 1]
