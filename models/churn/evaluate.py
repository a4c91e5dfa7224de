"""Train the churn model with default hyper-parameters and evaluate it and every baseline on the same
test users of the same split (plus ablations and the whole sample)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import baselines as B
from .data import build_task
from .features import DAY
from .metrics import binary_metrics, bootstrap_auc_diff, bootstrap_forecast_corr, forecast_metrics
from .model import ChurnConfig
from .train import finetune_variant as train_variant, new_model, predict_calibrated, pretrain, tokenize_task

FRAME_NOTES = ("ts_unit", "rows_without_user", "returns_dropped", "sampled_from_users")  # how the log was read (models.churn.cli)
FHL_2005 = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "forecast_corr": 0.626}


def _strip_calibration(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "calibration"} | (
        {"calibration_ece": m["calibration"]["ece"]} if "calibration" in m else {})


def evaluate(frame: pd.DataFrame, cutoff: float, horizon_days: float, *, dataset: str, seed: int = 0,
             cfg: ChurnConfig | None = None, progress: bool = True, ablations: bool = True,
             report_dir: Path | None = None, reference_sample: pd.DataFrame | None = None) -> tuple[dict, object, dict]:
    """Returns (result JSON-able dict, the main model, its training info)."""
    cfg = cfg or ChurnConfig()
    t_start = time.perf_counter()
    task = build_task(frame, cutoff, horizon_days, seed=seed)
    task.check_splits()
    tokens = tokenize_task(task.ring_sequences, task.as_of, cfg)  # the served view (the stream's ring)
    toks, summ = tokens
    tr, va, te = task.idx("train"), task.idx("val"), task.idx("test")
    y, cnt = task.churn, task.count
    horizon_weeks = horizon_days / 7.0

    # ---- baselines -----------------------------------------------------------------------------
    scores: dict[str, np.ndarray] = {}  # on all users
    probs: dict[str, np.ndarray] = {}
    forecasts: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    failed: dict[str, str] = {}  # a baseline that cannot be fitted on this log (BG/NBD not converging, say)

    def attempt(name: str, fit):
        try:
            return fit()
        except Exception as exc:  # reported in its place; the model and the other baselines are still evaluated
            failed[name] = f"{type(exc).__name__}: {exc}"
            return None

    rfm = B.rfm_summary(task.sequences, task.cutoff)
    bg = attempt("bgnbd", lambda: B.fit_bgnbd(rfm, horizon_weeks))
    if bg is not None:
        scores["bgnbd"], probs["bgnbd"], forecasts["bgnbd"] = -bg.expected, bg.p_zero, bg.expected
    notes["bgnbd"] = ("fitted on the calibration summaries of all users (no labels); score = -expected purchases "
                      "in the horizon; probability = P(no purchase in the horizon | history)")
    rec = B.recency_days(task.sequences, task.cutoff)
    recency_platt = attempt("recency", lambda: B.platt(rec[va], y[va]))
    if recency_platt is not None:
        scores["recency"], probs["recency"] = rec, recency_platt(rec)
    notes["recency"] = "days since the last purchase; probability by logistic calibration on the validation users"
    lr = attempt("rfm_logreg", lambda: B.fit_logreg(summ[tr], y[tr], seed))
    if lr is not None:
        probs["rfm_logreg"] = scores["rfm_logreg"] = lr.predict_proba(summ)[:, 1]
    gbm = attempt("rfm_lightgbm", lambda: B.fit_lightgbm(summ[tr], y[tr], summ[va], y[va], seed))
    if gbm is not None:
        probs["rfm_lightgbm"] = scores["rfm_lightgbm"] = gbm.predict_proba(summ)[:, 1]
        notes["rfm_lightgbm"] = f"{summ.shape[1]} RFM + gap features, early stopping on validation " \
                                f"({gbm.best_iteration_} trees)"
    baselines = {}
    for name in scores:
        m = _strip_calibration(binary_metrics(y[te], scores[name][te], probs[name][te]))
        m["calibration_curve"] = binary_metrics(y[te], scores[name][te], probs[name][te])["calibration"]
        if name in forecasts:
            m.update(forecast_metrics(cnt[te], forecasts[name][te]))
        m["note"] = notes.get(name, "")
        baselines[name] = m
    for name, error in failed.items():
        baselines[name] = {"auc": None, "error": error, "note": notes.get(name, "")}
    if bg is not None:
        baselines["bgnbd"]["params_weeks"] = bg.params
        baselines["bgnbd"]["p_alive_auc"] = binary_metrics(y[te], 1 - bg.p_alive[te])["auc"]
        baselines["bgnbd"]["p_zero_auc"] = binary_metrics(y[te], bg.p_zero[te])["auc"]

    # ---- the model: one pre-training shared by the variants ------------------------------------
    t_model = time.perf_counter()
    base = new_model(cfg, seed)
    t0 = time.perf_counter()
    pre_loss = pretrain(base, task.sequences, task.cutoff, seed=seed, progress=progress)
    pretrain_s = time.perf_counter() - t0
    pre_state = copy.deepcopy(base.state_dict())
    main, info = train_variant(task, cfg, tokens, seed=seed, pretrained_state=pre_state, lora=False,
                               progress=progress, desc="fine-tune")
    info["pretrain_loss"] = pre_loss
    info["pretrain_seconds"] = pretrain_s
    info["train_seconds"] = time.perf_counter() - t_model
    outs = {"model": predict_calibrated(main, *tokens)}
    infos = {"model": info}
    if ablations:
        variants = {
            "model_no_pretrain": (cfg, None, False),
            "model_lora": (cfg, pre_state, True),
            "model_sequence_only": (ChurnConfig.from_dict(cfg.to_dict() | {"use_summary": False}), pre_state, False),
        }
        for name, (vcfg, state, lora) in variants.items():
            m, inf = train_variant(task, vcfg, tokens, seed=seed, pretrained_state=state, lora=lora,
                                   progress=progress, desc=f"fine-tune ({name})")
            outs[name] = predict_calibrated(m, *tokens)
            infos[name] = inf

    def model_metrics(name: str, idx: np.ndarray) -> dict:
        logit, prob, rate = outs[name]
        full = binary_metrics(y[idx], logit[idx], prob[idx])
        m = _strip_calibration(full)
        m["calibration_curve"] = full["calibration"]
        m.update(forecast_metrics(cnt[idx], rate[idx]))
        inf = infos[name]
        m["finetune_seconds"] = round(inf["finetune_seconds"], 1)
        m["best_epoch"] = inf["finetune"].get("best_epoch")
        m["temperature"] = inf["calibration"]["temperature"]
        return m

    result_model = model_metrics("model", te)
    result_model["pretrain_seconds"] = round(pretrain_s, 1)
    result_model["train_seconds"] = round(info["train_seconds"], 1)
    result_model["n_parameters"] = info["n_parameters"]
    result_model["uses_encoder"] = main.encoder_contributes()  # False: fine-tuning kept the GLM start
    abl = {name: model_metrics(name, te) for name in outs if name != "model"}

    # the strongest baseline on the test users, as the goal defines it (a baseline that failed, or whose AUC is not a
    # number, is not a candidate: max() kept a NaN that came first)
    fitted = [name for name in scores if np.isfinite(baselines[name]["auc"])]
    best = max(fitted, key=lambda k: baselines[k]["auc"]) if fitted else None
    if best is not None:
        ci = bootstrap_auc_diff(y[te], outs["model"][0][te], scores[best][te], seed=seed)
        ci["best_baseline"] = best
    else:
        ci = {"error": "no baseline could be evaluated on this log"}
    ci_each = {name: bootstrap_auc_diff(y[te], outs["model"][0][te], scores[name][te], n_boot=500, seed=seed)
               for name in fitted if name != best}
    pre_ci = None
    if "model_no_pretrain" in outs:
        pre_ci = bootstrap_auc_diff(y[te], outs["model"][0][te], outs["model_no_pretrain"][0][te], n_boot=500,
                                    seed=seed)

    # the forecast goal is a correlation on 7k users with a heavy tail of buyers: its sampling noise, and how it
    # differs between the three user splits for the model and for BG/NBD (which saw no labels)
    if bg is not None:
        forecast_ci = bootstrap_forecast_corr(cnt[te], outs["model"][2][te], forecasts["bgnbd"][te], seed=seed)
        forecast_ci["reference"] = "bgnbd"
        forecast_ci["by_split"] = {
            part: {"model": forecast_metrics(cnt[idx], outs["model"][2][idx])["forecast_corr"],
                   "bgnbd": forecast_metrics(cnt[idx], forecasts["bgnbd"][idx])["forecast_corr"]}
            for part, idx in (("train", tr), ("val", va), ("test", te))}
    else:
        forecast_ci = {"error": "BG/NBD, the forecast's reference, could not be fitted: " + failed["bgnbd"]}

    everyone = np.arange(len(y))
    whole = {
        "note": "all users of the task; the supervised models saw the train users' labels, BG/NBD and recency did not",
        "n": int(len(y)),
        "model": {k: v for k, v in model_metrics("model", everyone).items() if k != "calibration_curve"},
        "baselines": {name: {"auc": binary_metrics(y, scores[name])["auc"]} for name in scores},
    }
    if bg is not None:
        whole["baselines"]["bgnbd"].update(forecast_metrics(cnt, forecasts["bgnbd"]))

    result = {
        "dataset": dataset,
        "cutoff": task.meta["cutoff_iso"],
        "horizon_days": horizon_days,
        "seed": seed,
        "task": task.meta | {"n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te))}
        | {key: frame.attrs[key] for key in FRAME_NOTES if key in frame.attrs},
        "model": result_model,
        "ablations": abl,
        "baselines": baselines,
        "best_baseline": best,
        "ci_vs_best_baseline": ci,
        "ci_vs_other_baselines": ci_each,
        "goal_auc_plus_0_01_reached": best is not None and bool(result_model["auc"] >= baselines[best]["auc"] + 0.01),
        "goal_forecast_reached": bool(result_model["forecast_corr"] >= 0.66
                                      and abs(result_model["forecast_cum_error_pct"]) <= 3.0),
        "forecast_ci": forecast_ci,
        "whole_sample": whole,
        "config": cfg.to_dict(),
    }
    if pre_ci is not None:
        result["ci_pretrain_vs_no_pretrain"] = pre_ci
    if reference_sample is not None:
        try:
            result["reference_fhl2005"] = fhl_check(reference_sample, cutoff, horizon_days)
        except Exception as exc:  # a check of the baseline, not the evaluation: say so and go on
            result["reference_fhl2005"] = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    if report_dir is not None:
        names = ["model"] + [n for n in ("model_no_pretrain", "model_lora") if n in outs] + list(scores)
        sc = {n: (outs[n][0] if n in outs else scores[n])[te] for n in names}
        pr = {n: (outs[n][1] if n in outs else probs[n])[te] for n in names}
        result["report"] = write_report_safe(report_dir, y[te], sc, pr, result)
    return result, main, info


def write_report_safe(report_dir, y, sc, pr, result) -> dict:
    """The HTML/PNG report, or what kept it from being written (an unwritable directory): the metrics are printed
    either way (the evaluation printed nothing, after all its training, when the report directory was bad)."""
    from .report import write_report

    try:
        return write_report(Path(report_dir), y, sc, pr, result)
    except Exception as exc:
        return {"error": f"report not written to {report_dir}: {type(exc).__name__}: {exc}"}


def fhl_check(sample: pd.DataFrame, cutoff: float, horizon_days: float) -> dict:
    """BG/NBD on the 2,357-customer CDNOW sample vs Fader, Hardie & Lee (2005), time unit weeks."""
    task = build_task(sample, cutoff, horizon_days, seed=0)
    bg = B.fit_bgnbd(B.rfm_summary(task.sequences, task.cutoff), horizon_days / 7.0)
    fc = forecast_metrics(task.count, bg.expected)
    return {
        "n_customers": int(len(task.users)),
        "params_weeks": bg.params,
        "published": FHL_2005,
        "forecast_corr": fc["forecast_corr"],
        "auc_expected_purchases": binary_metrics(task.churn, -bg.expected)["auc"],
        "auc_recency": binary_metrics(task.churn, B.recency_days(task.sequences, task.cutoff))["auc"],
        "auc_p_alive": binary_metrics(task.churn, 1 - bg.p_alive)["auc"],
    }


__all__ = ["evaluate", "fhl_check", "DAY"]
