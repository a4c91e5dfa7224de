"""PNG + HTML evaluation report: ROC, precision-recall, calibration and cumulative gain / lift charts."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def write_report(report_dir: Path, y: np.ndarray, scores: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                 result: dict) -> dict[str, str]:
    """``scores``: name -> churn score on the test users; ``probs``: name -> calibrated probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .metrics import auc, calibration_curve, lift_gain

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    (ax_roc, ax_pr), (ax_cal, ax_gain) = axes
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax_roc.plot(fpr, tpr, label=f"{name} ({auc(y, s):.3f})", lw=1.5 if name == "model" else 1)
        prec, rec, _ = precision_recall_curve(y, s)
        ax_pr.plot(rec, prec, label=name, lw=1.5 if name == "model" else 1)
        g = lift_gain(y, s)
        ax_gain.plot([0] + g["fraction"], [0] + g["gain"], label=name)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(title="ROC (test users)", xlabel="false positive rate", ylabel="true positive rate")
    ax_pr.axhline(float(np.mean(y)), color="k", ls=":", lw=0.8)
    ax_pr.set(title="Precision-recall (churn = positive)", xlabel="recall", ylabel="precision")
    for name, p in probs.items():
        c = calibration_curve(y, p)
        ax_cal.plot(c["mean_predicted"], c["observed"], "o-", ms=3, label=f"{name} (ECE {c['ece']:.3f})")
    ax_cal.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_cal.set(title="Calibration (10 equal-size bins)", xlabel="predicted churn probability", ylabel="observed churn rate")
    ax_gain.plot([0, 1], [0, 1], "k:", lw=0.8)
    lift_ax = ax_gain.inset_axes([0.55, 0.1, 0.4, 0.35])
    for name, s in scores.items():
        g = lift_gain(y, s)
        lift_ax.plot(g["fraction"], g["lift"], lw=0.8)
    lift_ax.set_title("lift", fontsize=8)
    lift_ax.tick_params(labelsize=7)
    ax_gain.set(title="Cumulative gain (share of churners in top-k %)", xlabel="fraction of users targeted",
                ylabel="share of churners")
    for ax in (ax_roc, ax_pr, ax_cal, ax_gain):
        ax.legend(fontsize=7, loc="lower right" if ax is not ax_gain else "upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Churn: {result.get('dataset', '')} — cut-off {result.get('cutoff', '')}, "
                 f"horizon {result.get('horizon_days', '')} days")
    fig.tight_layout()
    png = report_dir / "churn_report.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    rows = []
    entries = [("model", result["model"])] + [(k, v) for k, v in result.get("ablations", {}).items()] \
        + [(k, v) for k, v in result["baselines"].items()]
    for name, m in entries:
        cells = [name] + [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "" for k in
                          ("auc", "pr_auc", "brier", "forecast_corr", "forecast_cum_error_pct")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Tidewater churn report</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>Churn report — {html.escape(str(result.get('dataset')))}</h1>
<p>Test users: {result['model'].get('n')}; cut-off {html.escape(str(result.get('cutoff')))}; horizon
{result.get('horizon_days')} days. AUC(model) − AUC(best baseline = {html.escape(str(result.get('best_baseline')))}):
{_ci_text(result['ci_vs_best_baseline'])}.</p>
<table><tr><th>model</th><th>AUC</th><th>PR-AUC</th><th>Brier</th><th>forecast corr</th><th>cum. error %</th></tr>
{''.join(rows)}</table>
<img src="churn_report.png" width="1100">
<h2>Full result</h2><pre>{html.escape(json.dumps(result, indent=2, default=float))}</pre></body></html>"""
    page_path = report_dir / "churn_report.html"
    page_path.write_text(page)
    (report_dir / "churn_metrics.json").write_text(json.dumps(strict_json(result), indent=2, default=float,
                                                              allow_nan=False))
    return {"png": str(png), "html": str(page_path)}


def _ci_text(ci: dict) -> str:
    if not ci.get("ci95"):
        return html.escape(str(ci.get("error") or ci.get("note") or "not available"))
    return f"{ci['diff']:+.4f}, 95 % CI {ci['ci95']}"


def strict_json(value):
    """``value`` with every float that is not finite (a NaN correlation of constant forecasts, say) as null:
    ``json.dumps`` writes a bare ``NaN``, which strict JSON parsers refuse."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
