"""Serving: :class:`ChurnScorer` scores raw event sequences with a registry artifact.

    scorer = ChurnScorer.load(Registry("var/registry/churn").current_path())
    probs = scorer.score_many(sequences, as_of)        # calibrated churn probabilities
    expected = scorer.forecast_many(sequences, as_of)  # expected purchases in the training horizon

Each event is a dict with ``ts`` (epoch seconds), ``type`` ("click" | "purchase") and optional
``item``, ``category``, ``amount``, ``quantity``; events at or after the scoring time are ignored.
Sequences are truncated to the last ``max_events`` events, padded per micro-batch (sorted by length
to limit padding) and run under ``torch.inference_mode()``; on CUDA with bf16 (or fp16) autocast.

A model whose fine-tuning kept its GLM start (the deep head's output layer is zero) scores from the summary
features alone, with the same outputs (``uses_encoder`` is False); any other model runs the encoder.

Thread safety: the model is read-only after loading and forward passes are serialised by a lock,
so one scorer can be shared by executor threads (the stream worker calls it via run_in_executor).
Featurisation runs outside the lock.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .features import OPTIONAL_FIELDS, SUMMARY_NAMES

_N_EVENTS = SUMMARY_NAMES.index("log_n_events")


BUILT_IN_PURCHASE_LOGS = ("cdnow_master", "cdnow_sample")  # `tidewater train churn` without --purchases


def event_types(meta: dict) -> list[str]:
    """The event types a version was trained on. Versions published before the metadata recorded them: the
    built-in CDNOW logs hold purchases only; any other log may have had clicks (read everything, as before)."""
    types = meta.get("event_types")
    if types is None:
        return ["purchase"] if meta.get("dataset") in BUILT_IN_PURCHASE_LOGS else ["click", "purchase"]
    return list(types)


def event_fields(meta: dict) -> list[str]:
    """The optional event fields (amount, quantity) a version's training log had values for. Versions published
    before the metadata recorded them read both, as they always did."""
    fields = meta.get("event_fields")
    return list(OPTIONAL_FIELDS) if fields is None else [f for f in OPTIONAL_FIELDS if f in fields]


def amp_dtype(torch, device) -> object | None:
    """The autocast dtype on ``device``: bf16 on GPUs that compute it natively (compute capability 8 and up:
    Ampere, Hopper), fp16 on older ones (``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only
    emulated, and slow), None on the CPU (float32)."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


LENGTH_STEP = 16  # bucketed sequence lengths (GPU): multiples of this, up to the model's longest


def bucket_length(length: int, longest: int) -> int:
    return min(-(-length // LENGTH_STEP) * LENGTH_STEP, longest)


def bucket_rows(rows: int, most_rows: int) -> int:
    """Rows padded up to the next power of two, capped at ``most_rows`` (never fewer than ``rows``)."""
    return max(min(1 << max(rows - 1, 0).bit_length(), most_rows), rows)


def bucket_shape(batch: dict[str, np.ndarray], summary: np.ndarray, longest: int, most_rows: int
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A collated batch padded to a bucketed shape: lengths up to a multiple of ``LENGTH_STEP`` (masked positions,
    capped at ``longest``), rows up to a power of two capped at ``most_rows`` (copies of the first row, whose
    outputs are dropped). The real rows' outputs do not change: the padding is masked out, and rows do not see
    each other."""
    rows, length = batch["attention_mask"].shape
    extra_len = bucket_length(length, max(longest, length)) - length
    extra_rows = bucket_rows(rows, most_rows) - rows
    if not extra_len and not extra_rows:
        return batch, summary
    out = {}
    for k, v in batch.items():
        if extra_len:
            v = np.pad(v, [(0, 0), (0, extra_len)] + [(0, 0)] * (v.ndim - 2))
        if extra_rows:
            v = np.concatenate([v, np.repeat(v[:1], extra_rows, axis=0)])
        out[k] = v
    if extra_rows:
        summary = np.concatenate([summary, np.repeat(summary[:1], extra_rows, axis=0)])
    return out, summary


def last_events(sequence: Sequence[dict], as_of: float, keep: int) -> Sequence[dict]:
    """The last ``keep`` events before ``as_of``, in time order: the ring's view a model was trained on
    (``ChurnTask.ring_sequences``), for callers that pass a whole history (``tidewater.scoring.RingScorer`` cuts the
    stream's ring itself). A history longer than it had been summarised whole: a weekly buyer of three years got
    78 expected purchases where the trained view gives 41 (found by review)."""
    if len(sequence) <= keep:  # the stream's rings, already cut: as they are, not copied
        return sequence
    try:
        before = sorted((e for e in sequence if e["ts"] < as_of), key=lambda e: e["ts"])  # stable: ties keep order
    except (KeyError, TypeError):  # odd events: prepare says what is wrong with them
        return sequence
    return before[-keep:]


class ChurnScorer:
    def __init__(self, model, *, version: str = "unversioned", device: str | None = None, micro_batch: int = 256,
                 meta: dict | None = None, no_history: tuple[float, float] | None = None) -> None:
        import torch

        self._torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype(torch, self.device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = model.cfg
        self.version = version
        self.meta = meta or {}
        self.micro_batch = max(1, int(micro_batch))
        # a model whose fine-tuning kept the GLM start has a zero deep head: its scores need no encoder pass
        self.uses_encoder = self.model.encoder_contributes()
        # a model trained on a log without clicks (CDNOW: purchases only) never learnt what clicks mean: served a
        # stream with clicks, it read a browsing user's clicks as activity it had only seen from buyers (60 clicks
        # gave 166 expected purchases). It scores the purchases alone, as in training. Older versions, whose
        # metadata does not say, read everything as before.
        self.reads_clicks = "click" in event_types(self.meta)
        # the same for amounts and quantities: a model trained on a log without them (a CSV of user_id,ts) saw every
        # amount absent, so a served amount would meet weights (amount buckets, summary columns) that never learnt
        fields = event_fields(self.meta)
        self.reads_amounts, self.reads_quantities = "amount" in fields, "quantity" in fields
        # and item or category ids, for a version that records which it saw (``id_fields``; older ones read both)
        ids = self.meta.get("id_fields")
        unread_ids = set() if ids is None else {f for f in ("item", "category") if f not in ids}
        self._unread_fields = frozenset(OPTIONAL_FIELDS) - set(fields) | unread_ids
        # the number of most recent events per user it was trained on (its training log's view through the stream's
        # ring); a ring kept longer (TIDEWATER_RECENT_EVENTS raised) is cut to it. 0: not recorded, no cut
        self.ring_events = int(self.meta.get("ring_events") or 0)
        # the time resolution of its training log (86400: whole days, as CDNOW's dates): served events are floored
        # to it, so that two orders of one day are one basket and gaps count in whole days, as in training (the
        # stream's seconds made them two orders: 0.881 against 0.847 for the same day; skew review). 0: as they are
        self.ts_resolution_s = float(self.meta.get("ts_resolution_s") or 0.0)
        # on a GPU each new (rows, length) shape of a forward pass first stalls for ~40 ms (measured on an H200:
        # cuDNN's attention plans and kernel selection), and the stream's batches come in every size: padded to
        # power-of-two rows and lengths in steps of LENGTH_STEP, a version meets a few dozen shapes, all run once
        # by warm_up. The CPU has no such cost and would only pay for the padding
        self.shape_buckets = self.device.type == "cuda"
        self._lock = threading.Lock()
        # (churn probability, expected purchases) for a sequence with none of the events the model reads: a user
        # who only browsed, for a model trained on purchases alone. Training never saw such an input (every
        # training user has an event before the cut-off), and the weights' reading of its all-zero summary was
        # arbitrary: the CDNOW model gave browse-only users 0.29, below a real buyer's 0.62 (found by review). The
        # training users' churn rate and mean count instead; None (versions before it): the weights decide
        self.no_history = no_history

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, micro_batch: int = 256) -> "ChurnScorer":
        """Load a registry version directory (weights.safetensors, config.json, feature_spec.json, meta.json)."""
        from .train import load_model

        path = Path(path)
        meta_file = path / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        info_file = path / "train_info.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        no_history = (float(info["prior_churn"]), float(info["prior_count"])) if "prior_churn" in info else None
        return cls(load_model(path), version=meta.get("version", path.name), device=device,
                   micro_batch=micro_batch, meta=meta, no_history=no_history)

    @property
    def horizon_days(self) -> float | None:
        return self.meta.get("horizon_days")

    # ------------------------------------------------------------------------------------------
    def predict_many(self, sequences: Sequence[Iterable[dict]], as_of: Sequence[float] | float
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated churn probability, expected purchases in the horizon), float64 arrays in input order."""
        from . import features as F

        n = len(sequences)
        if np.isscalar(as_of):
            as_of = [float(as_of)] * n
        as_of = list(as_of)
        if len(as_of) != n:
            raise ValueError(f"{n} sequences but {len(as_of)} as_of times")
        if n == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)
        if not self.reads_clicks:
            sequences = [[e for e in seq if e.get("type", "purchase") != "click"] for seq in sequences]
        if self._unread_fields:
            unread = self._unread_fields
            sequences = [[{k: v for k, v in e.items() if k not in unread} for e in seq] for seq in sequences]
        if self.ts_resolution_s:
            r = self.ts_resolution_s
            sequences = [[{**e, "ts": F.floor_times(e["ts"], r)} if "ts" in e else e for e in seq]
                         for seq in sequences]
        if self.ring_events:  # the view it was trained on: the last ring_events events before as_of
            sequences = [last_events(seq if isinstance(seq, Sequence) else list(seq), t, self.ring_events)
                         for seq, t in zip(sequences, as_of)]
        summary_only = {} if self.uses_encoder else {"with_tokens": False}
        toks, summ = F.prepare(sequences, as_of, max_events=self.cfg.max_events, item_buckets=self.cfg.item_buckets,
                               category_buckets=self.cfg.category_buckets, **summary_only)
        if not self.uses_encoder:
            return self.predict_from_summary(summ)
        prob = np.zeros(n, dtype=np.float64)
        rate = np.zeros(n, dtype=np.float64)
        order = np.argsort([len(t["type"]) for t in toks], kind="stable")
        for s in range(0, n, self.micro_batch):
            idx = order[s:s + self.micro_batch]
            prob[idx], rate[idx] = self._encoder_pass(F.collate([toks[i] for i in idx]), summ[idx])
        return self._fill_no_history(prob, rate, summ)

    def _fill_no_history(self, prob: np.ndarray, rate: np.ndarray, summary: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        if self.no_history is not None:
            empty = summary[:, _N_EVENTS] == 0  # log1p(events read before the scoring time): none
            if empty.any():
                prob[empty], rate[empty] = self.no_history
        return prob, rate

    def _encoder_pass(self, batch_np: dict[str, np.ndarray], summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, expected purchases) of one collated micro-batch."""
        from .train import to_torch

        torch = self._torch
        rows = len(summary)
        if self.shape_buckets:
            batch_np, summary = bucket_shape(batch_np, summary, self.cfg.max_events + 1, self.micro_batch)
        batch = to_torch(batch_np, summary, self.device)
        with self._lock, torch.inference_mode():
            if self.amp_dtype is not None:  # the encoder in half precision, the calibrated heads in float32
                with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                    states = self.model.encode(batch)
                logit, log_rate = self.model.outputs_from_states(states.float(), batch)
            else:
                logit, log_rate = self.model.raw_outputs(batch)
            p, r = self.model.calibrated(logit[:rows], log_rate[:rows])
        return p.cpu().numpy(), r.cpu().numpy()

    _glm: tuple | None = None  # the linear path's parameters as float64 arrays (predict_from_summary)

    def warm_up(self) -> int:
        """Run every bucketed shape once (a no-op on the CPU), so that the first batches of each shape do not stall
        on kernel selection, or compile the summary path of a model that skips its encoder (about three seconds
        the first time); the worker's loader thread calls it before a version goes live. Returns the number of
        shapes run."""
        from . import features as F

        if not self.uses_encoder:  # its compiled summary loop and linear path (numba: compiled or read from its cache)
            from .summary_batch import compile_now

            compile_now()
            self.predict_from_summary(np.zeros((1, len(SUMMARY_NAMES)), np.float32))
            return 0
        if not self.shape_buckets:
            return 0
        # distinct times: purchases at one time are one basket, one token (the first version warmed length 16 alone)
        events = [{"ts": float(i), "type": "purchase", "item": "i", "category": "c", "amount": 1.0, "quantity": 1}
                  for i in range(self.cfg.max_events)]
        toks, summ = F.prepare([events], [float(self.cfg.max_events)], max_events=self.cfg.max_events,
                               item_buckets=self.cfg.item_buckets, category_buckets=self.cfg.category_buckets)
        full = toks[0]
        longest = len(full["type"])
        lengths = sorted({bucket_length(n, longest) for n in range(1, longest + 1)})
        shapes = 0
        for rows in sorted({bucket_rows(n, self.micro_batch) for n in range(1, self.micro_batch + 1)}):
            for length in lengths:
                tok = {k: v[:length] for k, v in full.items()}
                self._encoder_pass(F.collate([tok] * rows), np.repeat(summ, rows, axis=0))
                shapes += 1
        return shapes

    def predict_from_summary(self, summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``predict_many`` from the sequences' summary matrix (``features.prepare(..., with_tokens=False)[1]`` or
        ``summary_batch.summary_of_records``), for a model that scores without its encoder."""
        if self.uses_encoder:
            raise ValueError("this model runs its encoder: it needs the event sequences (predict_many)")
        if self._glm is None:
            self._glm = _glm_parameters(self.model)
        from .summary_batch import glm_outputs  # compiled (numba): imported where a model scores without its encoder

        summary = np.ascontiguousarray(summary)  # float32 (the features) or float64, compiled for each
        if summary.ndim != 2 or summary.shape[1] != len(self._glm[0]):  # the loop reads as many columns as given
            raise ValueError(f"summary of shape {summary.shape}: expected (n, {len(self._glm[0])})")
        p, r = glm_outputs(summary, *self._glm)
        return self._fill_no_history(p, r, summary)

    def score_many(self, sequences: Sequence[Iterable[dict]], as_of: Sequence[float] | float) -> np.ndarray:
        """Calibrated churn probabilities, one per sequence."""
        return self.predict_many(sequences, as_of)[0]

    def forecast_many(self, sequences: Sequence[Iterable[dict]], as_of: Sequence[float] | float) -> np.ndarray:
        """Expected number of purchases in the horizon the model was trained for."""
        return self.predict_many(sequences, as_of)[1]

    def score_one(self, events: Iterable[dict], as_of: float) -> float:
        return float(self.score_many([list(events)], [as_of])[0])


def _glm_parameters(model: Any) -> tuple:
    """The summary-only path's parameters, float64 (the same numbers as the model's float32 buffers and weights)."""
    def f64(t: Any) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    return (f64(model.summary_low), f64(model.summary_high), f64(model.summary_mean), f64(model.summary_std),
            f64(model.wide.weight), f64(model.wide.bias), float(model.temperature), float(model.bias),
            float(model.forecast_shift), float(model.forecast_max))
