"""Pre-training, fine-tuning, calibration and artifact I/O for :class:`ChurnTransformer`.

Deterministic for a given seed and thread count (seeded torch init, numpy shuffles, torch masks).
"""
from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as TF
from tqdm.auto import tqdm

from . import features as F
from .model import ChurnConfig, ChurnTransformer

FEATURE_SPEC_VERSION = 1


def feature_spec() -> dict:
    return {
        "version": FEATURE_SPEC_VERSION,
        "token_keys": list(F.TOKEN_KEYS),
        "time_edges_days": F.TIME_EDGES_DAYS.tolist(),
        "amount_edges_log1p": F.AMOUNT_EDGES_LOG.tolist(),
        "qty_buckets": F.N_QTY_BUCKETS,
        "summary_names": list(F.SUMMARY_NAMES),
        "order": "summary token, then events most recent first; events with ts >= as_of ignored",
    }


def to_torch(batch: dict[str, np.ndarray], summary: np.ndarray | None = None,
             device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    if summary is not None:
        out["summary"] = torch.from_numpy(np.ascontiguousarray(summary, dtype=np.float32)).to(device)
    return out


def tokenize_task(sequences: Sequence[list[dict]], as_of: Sequence[float], cfg: ChurnConfig):
    """Tokens and summaries for already normalised sequences."""
    toks = [F.encode_tokens(s, float(t), max_events=cfg.max_events, item_buckets=cfg.item_buckets,
                            category_buckets=cfg.category_buckets) for s, t in zip(sequences, as_of)]
    summ = np.stack([F.summary_features(s, float(t)) for s, t in zip(sequences, as_of)]) if len(sequences) \
        else np.zeros((0, F.N_SUMMARY), np.float32)
    return toks, summ


def length_batches(lengths: np.ndarray, idx: np.ndarray, batch_size: int, rng: np.random.Generator,
                   chunk: int = 32) -> list[np.ndarray]:
    """Shuffled mini-batches of ``idx`` with similar lengths (less padding): shuffle, sort within chunks
    of ``chunk`` batches, cut into batches, shuffle the batch order."""
    order = idx[rng.permutation(len(idx))]
    batches = []
    span = batch_size * chunk
    for s in range(0, len(order), span):
        part = order[s:s + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _passes_per_epoch(n: int, cfg: ChurnConfig) -> int:
    """Small data sets: an "epoch" makes several passes so it has at least ``min_steps_per_epoch``
    optimiser steps (otherwise a few hundred users get a few dozen steps in total). Large data sets: 1."""
    return max(1, math.ceil(cfg.min_steps_per_epoch / max(1, math.ceil(n / cfg.batch_size))))


def _seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# pre-training: masked-event modelling + next-gap prediction on sequences before the cut-off
# ------------------------------------------------------------------------------------------------
def _pretrain_examples(sequences: Sequence[list[dict]], as_of: float, cfg: ChurnConfig,
                       rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    toks, next_gap = [], np.full(len(sequences), -100, dtype=np.int64)
    for i, seq in enumerate(sequences):
        if len(seq) >= 2 and rng.random() < cfg.prefix_prob:
            k = int(rng.integers(1, len(seq)))  # keep events [0, k), predict the gap to event k
            t_last = seq[k - 1]["ts"]
            toks.append(F.encode_tokens(seq[:k], t_last + 1.0, max_events=cfg.max_events,
                                        item_buckets=cfg.item_buckets, category_buckets=cfg.category_buckets))
            gap_days = (seq[k]["ts"] - t_last) / F.DAY
            next_gap[i] = int(F._bucket_time(np.array([gap_days]))[0])
        else:
            toks.append(F.encode_tokens(seq, as_of, max_events=cfg.max_events, item_buckets=cfg.item_buckets,
                                        category_buckets=cfg.category_buckets))
    return toks, next_gap


def _mask_batch(batch: dict[str, torch.Tensor], prob: float, gen: torch.Generator):
    attn = batch["attention_mask"].bool().clone()
    attn[:, 0] = False  # never mask the summary token
    pick = (torch.rand(attn.shape, generator=gen) < prob) & attn
    targets = {k: torch.where(pick, batch[k], torch.full_like(batch[k], -100)) for k in ("type", "gap_b", "amount_b", "qty_b")}
    masked = dict(batch)
    masked["type"] = torch.where(pick, torch.full_like(batch["type"], F.MASK), batch["type"])
    for k in ("item", "category", "amount_b", "qty_b", "gap_b", "age_b"):
        masked[k] = torch.where(pick, torch.zeros_like(batch[k]), batch[k])
    masked["cont"] = batch["cont"].masked_fill(pick.unsqueeze(-1), 0.0)
    return masked, targets, int(pick.sum())


def pretrain(model: ChurnTransformer, sequences: Sequence[list[dict]], as_of: float, *, seed: int = 0,
             progress: bool = True) -> list[float]:
    """Masked-event modelling + next-gap pre-training. Returns the mean loss of each epoch."""
    cfg = model.cfg
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    params = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=cfg.weight_decay)
    n = len(sequences)
    passes = _passes_per_epoch(n, cfg)
    steps_per_epoch = math.ceil(n / cfg.batch_size) * passes
    total = steps_per_epoch * cfg.pretrain_epochs
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 5 %
        opt, lambda step: min((step + 1) / warm, max(0.05, 1.0 - (step - warm) / max(total - warm, 1))))
    losses = []
    model.train()
    bar = tqdm(total=total, desc="pre-train (masked events)", disable=not progress, leave=False)
    for _ in range(cfg.pretrain_epochs * passes):
        toks, next_gap = _pretrain_examples(sequences, as_of, cfg, rng)
        lengths = np.array([len(t["type"]) for t in toks])
        ep = []
        for idx in length_batches(lengths, np.arange(n), cfg.batch_size, rng):
            batch = to_torch(F.collate([toks[i] for i in idx]))
            masked, targets, n_masked = _mask_batch(batch, cfg.mask_prob, gen)
            mem, ng = model.pretrain_logits(masked)
            loss = TF.cross_entropy(ng, torch.from_numpy(next_gap[idx]), ignore_index=-100) \
                if (next_gap[idx] >= 0).any() else ng.sum() * 0.0
            if n_masked:
                loss = loss + sum(TF.cross_entropy(mem[k].flatten(0, 1), targets[k].flatten(), ignore_index=-100)
                                  for k in mem) / len(mem)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ep.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(ep):.3f}")
        losses.append(float(np.mean(ep)))
    bar.close()
    model.eval()
    return losses


# ------------------------------------------------------------------------------------------------
# fine-tuning: churn (cross-entropy) + purchases in the horizon (Poisson NLL)
# ------------------------------------------------------------------------------------------------
def _order_by_length(toks: Sequence[dict]) -> np.ndarray:
    return np.argsort([len(t["type"]) for t in toks], kind="stable")


@torch.inference_mode()
def predict_raw(model: ChurnTransformer, toks: Sequence[dict], summary: np.ndarray,
                batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated churn logits and log expected counts, in input order."""
    model.eval()
    logits = np.zeros(len(toks), np.float32)
    lrate = np.zeros(len(toks), np.float32)
    order = _order_by_length(toks)
    for s in range(0, len(toks), batch_size):
        idx = order[s:s + batch_size]
        batch = to_torch(F.collate([toks[i] for i in idx]), summary[idx])
        lo, lr = model.raw_outputs(batch)
        logits[idx] = lo.float().numpy()
        lrate[idx] = lr.float().numpy()
    return logits, lrate


def predict_calibrated(model: ChurnTransformer, toks: Sequence[dict], summary: np.ndarray,
                       batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw churn logits, churn probabilities, expected purchases in the horizon), in input order. The last two
    come from ``model.calibrated``, in float32 as the served scorer computes them: what is evaluated is what is
    served."""
    logit, lrate = predict_raw(model, toks, summary, batch_size)
    with torch.inference_mode():
        prob, rate = model.calibrated(torch.from_numpy(logit), torch.from_numpy(lrate))
    return logit, prob.numpy().astype(np.float64), rate.numpy().astype(np.float64)


def _loss(model, batch, churn, count, w):
    logit, log_rate = model.raw_outputs(batch)
    bce = TF.binary_cross_entropy_with_logits(logit, churn)
    pois = TF.poisson_nll_loss(log_rate, count, log_input=True, full=False)
    return bce + w * pois, bce, pois


def set_summary_stats(model: ChurnTransformer, summary_train: np.ndarray) -> None:
    mean = summary_train.mean(0)
    std = summary_train.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    model.summary_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    model.summary_std.copy_(torch.from_numpy(std.astype(np.float32)))
    model.summary_low.copy_(torch.from_numpy(summary_train.min(0).astype(np.float32)))
    model.summary_high.copy_(torch.from_numpy(summary_train.max(0).astype(np.float32)))


def fit_glm_prior(model: ChurnTransformer, summary_train: np.ndarray, churn: np.ndarray, count: np.ndarray) -> None:
    """Set the wide path to a logistic regression (churn) and a Poisson regression (count) on the
    standardised summary of the training users, and zero the deep head's output layer: fine-tuning
    starts from the two GLMs and the encoder only learns what they miss. A target without variation
    (every training user churns, or nobody buys in the horizon) gets a constant at its clipped mean."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, PoissonRegressor

    s = model.standardised_summary(torch.from_numpy(summary_train.astype(np.float32))).numpy()
    n = max(len(s), 1)
    churn = np.asarray(churn, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    zeros = np.zeros(s.shape[1])
    with warnings.catch_warnings():  # an unconverged GLM is still a fine start: fine-tuning goes on from it
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(np.unique(churn)) > 1:
            logit = LogisticRegression(C=1.0, max_iter=2000).fit(s, churn)
            churn_w, churn_b = logit.coef_[0], float(logit.intercept_[0])
        else:
            p = float(np.clip(churn.mean() if len(churn) else 0.5, 1e-3, 1 - 1e-3))
            churn_w, churn_b = zeros, math.log(p / (1 - p))
        if count.sum() > 0:
            pois = PoissonRegressor(alpha=1.0 / n, max_iter=1000).fit(s, count)
            count_w, count_b = pois.coef_, float(pois.intercept_)
        else:
            count_w, count_b = zeros, math.log(1e-3)
    with torch.no_grad():
        model.wide.weight[0].copy_(torch.from_numpy(np.asarray(churn_w, dtype=np.float32)))
        model.wide.bias[0] = churn_b
        model.wide.weight[1].copy_(torch.from_numpy(np.asarray(count_w, dtype=np.float32)))
        model.wide.bias[1] = count_b
        last = model.head[-1]
        last.weight.zero_()
        last.bias.zero_()


def apply_lora(model: ChurnTransformer) -> None:
    """Wrap the encoder with peft LoRA adapters; freeze embeddings and encoder weights (head stays trainable)."""
    from peft import LoraConfig, get_peft_model

    cfg = model.cfg
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=["query", "key", "value", "dense"])
    model.encoder = get_peft_model(model.encoder, lcfg)
    for p in model.embed.parameters():
        p.requires_grad_(False)


def merge_lora(model: ChurnTransformer) -> None:
    if hasattr(model.encoder, "merge_and_unload"):
        model.encoder = model.encoder.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)


def finetune(model: ChurnTransformer, toks: Sequence[dict], summary: np.ndarray, churn: np.ndarray,
             count: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, seed: int = 0,
             lora: bool = False, progress: bool = True, desc: str = "fine-tune") -> dict:
    """Train the heads (and the encoder, or LoRA adapters with ``lora``) with early stopping on the
    validation loss named by ``cfg.early_stop_on``; restores the best epoch. Returns the history."""
    cfg = model.cfg
    rng = np.random.default_rng(seed + 3)
    set_summary_stats(model, summary[train_idx])
    glm_start = cfg.glm_prior and model.wide is not None
    if glm_start:
        fit_glm_prior(model, summary[train_idx], churn[train_idx], count[train_idx])
    if lora:
        apply_lora(model)
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and not n.startswith(("mem_heads.", "next_gap."))]
    opt = torch.optim.AdamW(params, lr=cfg.lora_lr if lora else cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.from_numpy(churn.astype(np.float32))
    c = torch.from_numpy(count.astype(np.float32))
    lengths = np.array([len(t["type"]) for t in toks])
    val_order = val_idx[_order_by_length([toks[i] for i in val_idx])]
    val_batches = [val_order[s:s + 1024] for s in range(0, len(val_order), 1024)]
    best, best_state, bad, hist = math.inf, None, 0, {"train_loss": [], "val_loss": [], "val_bce": []}
    passes = _passes_per_epoch(len(train_idx), cfg)
    steps = math.ceil(len(train_idx) / cfg.batch_size) * passes
    bar = tqdm(total=steps * cfg.finetune_epochs, desc=desc, disable=not progress, leave=False)
    # exponential moving average of the trainable weights: validated, kept and saved instead of the raw
    # weights (fine-tuning on small, noisy labels jumps around from step to step)
    ema = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if cfg.ema_decay > 0 else {}
    live: dict[str, torch.Tensor] = {}
    n_steps = 0

    on_churn = cfg.early_stop_on == "churn"

    @torch.inference_mode()
    def validate() -> tuple[float, float, np.ndarray]:
        """(mean total loss, mean cross-entropy, each user's selected loss in ``val_order``)."""
        tot = bce_tot = 0.0
        per_user = np.zeros(len(val_order))
        at = 0
        for idx in val_batches:
            batch = to_torch(F.collate([toks[i] for i in idx]), summary[idx])
            logit, log_rate = model.raw_outputs(batch)
            bce = TF.binary_cross_entropy_with_logits(logit, y[idx], reduction="none")
            pois = TF.poisson_nll_loss(log_rate, c[idx], log_input=True, full=False, reduction="none")
            loss = bce + cfg.forecast_weight * pois
            per_user[at:at + len(idx)] = (bce if on_churn else loss).double().numpy()
            at += len(idx)
            tot += float(loss.sum())
            bce_tot += float(bce.sum())
        n = max(len(val_idx), 1)
        return tot / n, bce_tot / n, per_user

    glm_state, glm_per_user, best_per_user = None, None, None
    if glm_start:  # the GLMs alone are a candidate: keep them if no epoch beats them
        model.eval()
        glm_loss, glm_bce, glm_per_user = validate()
        best = glm_bce if on_churn else glm_loss
        best_state = glm_state = copy.deepcopy(model.state_dict())
        hist["best_epoch"] = 0
        hist["glm_val_loss"], hist["glm_val_bce"] = glm_loss, glm_bce
    for epoch in range(cfg.finetune_epochs):
        model.train()
        ep = []
        epoch_batches = [b for _ in range(passes) for b in length_batches(lengths, train_idx, cfg.batch_size, rng)]
        for idx in epoch_batches:
            batch = to_torch(F.collate([toks[i] for i in idx]), summary[idx])
            loss, _, _ = _loss(model, batch, y[idx], c[idx], cfg.forecast_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema:
                n_steps += 1
                decay = min(cfg.ema_decay, (1.0 + n_steps) / (10.0 + n_steps))  # warm-up for short runs
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in ema:
                            ema[n].lerp_(p.detach(), 1.0 - decay)
            ep.append(float(loss.detach()))
            bar.update(1)
        model.eval()
        if ema:  # validate the averaged weights; the live ones come back before the next epoch
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in ema:
                        live[n] = p.detach().clone()
                        p.copy_(ema[n])
        vl, vbce, epoch_per_user = validate()
        hist["train_loss"].append(float(np.mean(ep)))
        hist["val_loss"].append(vl)
        hist["val_bce"].append(vbce)
        bar.set_postfix(train=f"{np.mean(ep):.4f}", val=f"{vl:.4f}")
        criterion = vbce if on_churn else vl
        if criterion < best - 1e-5:
            best, bad = criterion, 0
            best_state = copy.deepcopy(model.state_dict())
            best_per_user = epoch_per_user
            hist["best_epoch"] = epoch + 1
        else:
            bad += 1
        if live:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in live:
                        p.copy_(live[n])
        if bad >= cfg.patience:
            break
    bar.close()
    if glm_per_user is not None and best_per_user is not None and hist["best_epoch"] > 0:
        gain, se = _paired_gain(glm_per_user, best_per_user)
        hist["val_gain_over_glm"], hist["val_gain_se"] = gain, se
        if gain <= cfg.select_margin_se * se:  # within the noise of this validation set: the simpler model
            best_state, hist["best_epoch"], hist["kept_glm_within_se"] = glm_state, 0, True
    if best_state is not None:
        model.load_state_dict(best_state)
    if lora:
        merge_lora(model)
    model.eval()
    return hist


def _paired_gain(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean per-user loss reduction from ``before`` to ``after`` and its standard error."""
    diff = before - after
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return float(diff.mean()), se


def calibrate(model: ChurnTransformer, toks: Sequence[dict], summary: np.ndarray, churn: np.ndarray,
              count: np.ndarray, val_idx: np.ndarray, count_bound: float = math.inf) -> dict:
    """Temperature scaling (temperature + bias) of the churn logit and a multiplicative correction of
    the forecast, both fitted on the validation users. ``count_bound``: forecasts above it (beyond anything the
    training users did) stay out of the correction: one heavy buyer in validation, extrapolated by the Poisson
    regression, set it for everyone (a forecast of 3.6 purchases against 165 on a log with one daily buyer;
    found by review)."""
    logits, lrate = predict_raw(model, [toks[i] for i in val_idx], summary[val_idx])
    z = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(churn[val_idx].astype(np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
    # a standard normal prior on log(temperature) (the fit's maximum a posteriori): negligible on thousands of
    # validation users, but where the scores separate a small validation set the maximum likelihood is at
    # temperature 0, and the model served only 0 and 1 (found by review). None on the bias: the mean
    # probability still equals the validation churn rate
    prior = 0.5 / max(len(val_idx), 1)

    def closure():
        opt.zero_grad()
        loss = TF.binary_cross_entropy_with_logits(z / log_t.exp() + b, y) + prior * log_t ** 2
        loss.backward()
        return loss

    opt.step(closure)
    with np.errstate(over="ignore"):
        forecast = np.exp(lrate.astype(np.float64))
    # users beyond anything the training users did stay out: a forecast above the bound (NaN and infinity are
    # not below it), and a count above it (one user who bought 500 times set everyone's forecast 10x; review)
    typical = (forecast <= count_bound) & (count[val_idx] <= count_bound)
    pred_total = float(forecast[typical].sum())
    shift = math.log(max(float(count[val_idx][typical].sum()), 1e-9) / max(pred_total, 1e-9))
    model.temperature.fill_(float(log_t.detach().exp()))
    model.bias.fill_(float(b.detach()))
    model.forecast_shift.fill_(shift)
    model.forecast_max.fill_(count_bound)
    return {"temperature": float(log_t.detach().exp()), "bias": float(b.detach()), "forecast_shift": shift,
            "forecast_shift_left_out": int((~typical).sum())}


# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: ChurnTransformer
    info: dict = field(default_factory=dict)


def new_model(cfg: ChurnConfig, seed: int) -> ChurnTransformer:
    _seed_all(seed)
    return ChurnTransformer(cfg).eval()


def train_model(task, cfg: ChurnConfig, *, seed: int = 0, do_pretrain: bool = True, lora: bool = False,
                progress: bool = True, pretrained_state: dict | None = None, tokens=None) -> TrainResult:
    """Full pipeline on a :class:`~models.churn.data.ChurnTask`: (pre-train) -> fine-tune -> calibrate.

    ``pretrained_state`` reuses an already pre-trained encoder (so ablations share one pre-training);
    ``tokens`` reuses the task's (tokens, summaries). `train churn` and `evaluate churn` both go through
    here, so the same seed gives the same model in both commands."""
    t0 = time.perf_counter()
    tokens = tokens if tokens is not None else tokenize_task(task.ring_sequences, task.as_of, cfg)
    info: dict = {}
    if do_pretrain and pretrained_state is None:
        base = new_model(cfg, seed)
        tp = time.perf_counter()
        info["pretrain_loss"] = pretrain(base, task.sequences, task.cutoff, seed=seed, progress=progress)
        info["pretrain_seconds"] = time.perf_counter() - tp
        pretrained_state = copy.deepcopy(base.state_dict())
    model, ft = finetune_variant(task, cfg, tokens, seed=seed,
                                 pretrained_state=pretrained_state if do_pretrain else None,
                                 lora=lora, progress=progress, desc="fine-tune (LoRA)" if lora else "fine-tune")
    info.update(ft)
    info["train_seconds"] = time.perf_counter() - t0
    return TrainResult(model=model, info=info)


def finetune_variant(task, cfg: ChurnConfig, tokens, *, seed: int, pretrained_state: dict | None, lora: bool,
                     progress: bool, desc: str) -> tuple[ChurnTransformer, dict]:
    """Fresh model (seeded) <- pre-trained weights where shapes match -> fine-tune -> calibrate."""
    t0 = time.perf_counter()
    toks, summ = tokens
    model = new_model(cfg, seed)
    if pretrained_state is not None:
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in pretrained_state.items() if k in own and own[k].shape == v.shape},
                              strict=False)
    hist = finetune(model, toks, summ, task.churn, task.count, task.idx("train"), task.idx("val"), seed=seed,
                    lora=lora, progress=progress, desc=desc)
    train = task.idx("train")
    bound = 2.0 * max(float(task.count[train].max(initial=0)), 1.0)  # twice the most any training user bought
    cal = calibrate(model, toks, summ, task.churn, task.count, task.idx("val"), count_bound=bound)
    info = {"pretrained": pretrained_state is not None, "lora": lora, "finetune": hist, "calibration": cal,
            "finetune_seconds": time.perf_counter() - t0,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            # the answer for a sequence with none of the events the model reads (ChurnScorer.no_history): the
            # training users' churn rate and mean purchase count, not the weights' reading of an all-zero summary
            "prior_churn": float(np.mean(task.churn[train])), "prior_count": float(np.mean(task.count[train]))}
    return model, info


def save_model(model: ChurnTransformer, directory: Path, *, metrics: dict | None = None,
               extra: dict | None = None) -> None:
    """Write weights (safetensors), config, feature spec and metrics into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    (directory / "config.json").write_text(model.cfg.to_json())
    (directory / "feature_spec.json").write_text(json.dumps(feature_spec(), indent=2))
    (directory / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True, default=float))
    if extra:
        (directory / "train_info.json").write_text(json.dumps(extra, indent=2, sort_keys=True, default=float))


# buffers added after versions were published: those load with the defaults (no bound), as they were trained
SERVING_GUARDS = ("summary_low", "summary_high", "forecast_max")


def load_model(directory: Path) -> ChurnTransformer:
    from safetensors.torch import load_file

    directory = Path(directory)
    spec = json.loads((directory / "feature_spec.json").read_text())
    if spec.get("version") != FEATURE_SPEC_VERSION:
        raise ValueError(f"{directory}: feature spec version {spec.get('version')} != {FEATURE_SPEC_VERSION}")
    # the whole spec, not its number alone: bucket edges or summary features changed without a version bump would
    # feed the weights tokens they were not trained on, and score without an error
    differ = sorted(k for k, v in feature_spec().items() if k != "order" and spec.get(k) != v)
    if differ:
        raise ValueError(f"{directory}: trained with other features than this code computes ({', '.join(differ)} "
                         "differ in feature_spec.json); retrain, or serve it with the code it was trained with")
    cfg = ChurnConfig.from_dict(json.loads((directory / "config.json").read_text()))
    model = ChurnTransformer(cfg)
    state = load_file(str(directory / "weights.safetensors"))
    own = model.state_dict()
    for guard in SERVING_GUARDS:  # versions saved before these existed serve without them, as they were trained
        state.setdefault(guard, own[guard])
    model.load_state_dict(state)
    return model.eval()

