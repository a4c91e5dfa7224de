"""Metrics for churn scores and purchase forecasts (numpy + scikit-learn)."""
from __future__ import annotations

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
    corr = float(np.corrcoef(actual, predicted)[0, 1]) if actual.std() > 0 and predicted.std() > 0 else float("nan")
    return {
        "forecast_corr": corr,
        "forecast_cum_error_pct": float(100.0 * (predicted.sum() / max(actual.sum(), 1e-12) - 1.0)),
        "forecast_mae": float(np.abs(actual - predicted).mean()),
        "forecast_total": float(predicted.sum()),
        "actual_total": float(actual.sum()),
    }


def bootstrap_auc_diff(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """Paired bootstrap over users of AUC(a) - AUC(b): point estimate, 95 % percentile CI, P(diff <= 0)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    n = len(y)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[i] = auc(y[idx], score_a[idx]) - auc(y[idx], score_b[idx])
    diffs = diffs[~np.isnan(diffs)]
    return {
        "diff": auc(y, score_a) - auc(y, score_b),
        "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "p_le_0": float(np.mean(diffs <= 0)),
        "n_boot": int(len(diffs)),
    }


def lift_gain(y: np.ndarray, score: np.ndarray, points: int = 20) -> dict:
    """Cumulative gain (share of churners caught) and lift in the top-k % of users by score."""
    y = np.asarray(y).astype(float)
    order = np.argsort(-np.asarray(score), kind="stable")
    cum = np.cumsum(y[order])
    fracs = np.linspace(1.0 / points, 1.0, points)
    ks = np.maximum((fracs * len(y)).astype(int), 1)
    gain = cum[ks - 1] / max(y.sum(), 1e-12)
    return {"fraction": fracs.tolist(), "gain": gain.tolist(), "lift": (gain / fracs).tolist()}
