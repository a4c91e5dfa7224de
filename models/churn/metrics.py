"""Metrics for churn scores and purchase forecasts (numpy + scikit-learn)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via ranks (ties get mid-ranks); equals sklearn's roc_auc_score."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_curve(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict:
    """Equal-frequency bins: mean predicted vs observed churn rate, and the expected calibration error."""
    order = np.argsort(prob, kind="stable")
    parts = [p for p in np.array_split(order, bins) if len(p)]
    pred = [float(prob[p].mean()) for p in parts]
    obs = [float(y[p].mean()) for p in parts]
    sizes = [len(p) for p in parts]
    ece = float(sum(n * abs(a - b) for n, a, b in zip(sizes, pred, obs)) / max(sum(sizes), 1))
    return {"mean_predicted": pred, "observed": obs, "n": sizes, "ece": ece}


def binary_metrics(y: np.ndarray, score: np.ndarray, prob: np.ndarray | None = None) -> dict:
    """AUC and PR-AUC of a churn score (higher = more likely to churn); Brier, log loss and the
    calibration curve when calibrated probabilities are given."""
    from sklearn.metrics import average_precision_score, log_loss

    y = np.asarray(y).astype(int)
    out = {"auc": auc(y, score), "pr_auc": float(average_precision_score(y, score)), "n": int(len(y)),
           "churn_rate": float(y.mean())}
    if prob is not None:
        prob = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
        out["brier"] = float(np.mean((prob - y) ** 2))
        out["log_loss"] = float(log_loss(y, prob, labels=[0, 1]))
        out["calibration"] = calibration_curve(y, prob)
    return out


def forecast_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """Per-user correlation of predicted and actual purchases in the horizon, cumulative error %
    (sum predicted / sum actual - 1), mean absolute error."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    return {
        "forecast_corr": _corr(actual, predicted),
        "forecast_cum_error_pct": float(100.0 * (predicted.sum() / max(actual.sum(), 1e-12) - 1.0)),
        "forecast_mae": float(np.abs(actual - predicted).mean()),
        "forecast_total": float(predicted.sum()),
        "actual_total": float(actual.sum()),
    }


def _corr(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson's correlation; NaN where either side does not vary: also forecasts equal up to float noise (BG/NBD's
    spread 8e-22 on a log where every user looked alike), whose correlation is that of the rounding errors."""
    if _constant(actual) or _constant(predicted):
        return float("nan")
    return float(np.corrcoef(actual, predicted)[0, 1])


def _constant(x: np.ndarray) -> bool:
    return len(x) == 0 or bool(np.ptp(x) <= 1e-12 * max(float(np.abs(x).max()), 1e-300))


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, pred_a: np.ndarray,
                     pred_b: np.ndarray | None = None, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Bootstrap over users of ``metric(y, a)`` or, with ``pred_b``, of the paired ``metric(y, a) - metric(y, b)``
    (the same resampled users for both): point estimate, 95 % percentile CI, P(value <= 0) for a difference."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    n = len(y)

    def value(idx: np.ndarray | slice) -> float:
        v = metric(y[idx], pred_a[idx])
        return v - metric(y[idx], pred_b[idx]) if pred_b is not None else v

    values = np.array([value(rng.integers(0, n, n)) for _ in range(n_boot)])
    values = values[~np.isnan(values)]
    out = {"value" if pred_b is None else "diff": value(slice(None)), "n_boot": int(len(values))}
    if not len(values):  # undefined on every resample (forecasts that do not vary, one class): a traceback before
        out |= {"ci95": None, "note": "the metric is undefined on every resample"}
        return out
    out["ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    if pred_b is not None:
        out["p_le_0"] = float(np.mean(values <= 0))
    return out


def bootstrap_auc_diff(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """Paired bootstrap over users of AUC(a) - AUC(b): point estimate, 95 % percentile CI, P(diff <= 0)."""
    return paired_bootstrap(auc, y, score_a, score_b, n_boot=n_boot, seed=seed)


def bootstrap_forecast_corr(actual: np.ndarray, predicted: np.ndarray, reference: np.ndarray | None = None, *,
                            n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % CI of the per-user forecast correlation and, given a reference forecast, of the paired difference."""
    actual = np.asarray(actual, dtype=np.float64)
    out = {"corr": paired_bootstrap(_corr, actual, np.asarray(predicted, np.float64), n_boot=n_boot, seed=seed)}
    if reference is not None:
        out["diff_vs_reference"] = paired_bootstrap(_corr, actual, np.asarray(predicted, np.float64),
                                                    np.asarray(reference, np.float64), n_boot=n_boot, seed=seed)
    return out


def lift_gain(y: np.ndarray, score: np.ndarray, points: int = 20) -> dict:
    """Cumulative gain (share of churners caught) and lift in the top-k % of users by score."""
    y = np.asarray(y).astype(float)
    order = np.argsort(-np.asarray(score), kind="stable")
    cum = np.cumsum(y[order])
    fracs = np.linspace(1.0 / points, 1.0, points)
    ks = np.maximum((fracs * len(y)).astype(int), 1)
    gain = cum[ks - 1] / max(y.sum(), 1e-12)
    return {"fraction": fracs.tolist(), "gain": gain.tolist(), "lift": (gain / fracs).tolist()}
