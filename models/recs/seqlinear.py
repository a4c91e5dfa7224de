"""Default recommender: a closed-form sequential item-item model with learned 64-d item embeddings.

For every training position t of every user, ``x_t`` is the exponentially decayed, normalised
history vector over the user's last ``window`` events (weight ``decay**lag``), and ``y_t`` the one-hot
next item. Ridge regression gives the item-to-next-item matrix (SLIST/SLIT-style, Choi et al. 2021)::

    B = (X^T X + reg I)^-1 X^T Y          (full model: score = x_user B)

The 64-d embeddings are its reduced-rank solution: with V the top ``dim`` eigenvectors of
``B^T X^T X B`` (the covariance of the fitted scores), ``B_d = (B V) V^T``. Item query vectors
``P = B V`` and index vectors ``Q = V``. The streaming user vector is the decayed mean of the query
vectors of the user's last events — exactly ``x_user P`` — so it is updatable one event at a time
(:mod:`models.recs.user_vector`) and its FAISS inner-product search against ``Q`` is the rank-``dim`` model.

Only the ``max_items`` most frequent items enter the dense item-item system (memory ``max_items**2``);
items outside it or without any training event are cold: their vectors are regressed from MiniLM
text embeddings when ``item_text`` is available, else zero (neutral score).

Defaults (decay 0.9, reg 10) were chosen on ml-100k's VALIDATION items only (grid 0.5..0.9 x 3..100).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp


@dataclass
class LinearConfig:
    arch: str = "seqlinear"
    dim: int = 64
    decay: float = 0.9
    window: int = 50
    reg: float = 10.0
    max_items: int = 8000
    seed: int = 0
    threads: int = 2

    @property
    def stream_window(self) -> int:
        return self.window

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stream_window"] = self.window
        return d


def history_matrix(histories: Sequence[np.ndarray], col_of: np.ndarray, n_cols: int, decay: float,
                   window: int) -> sp.csr_matrix:
    """Rows: decayed, normalised history vectors over the last `window` events (cols via col_of, -1 = drop)."""
    rows, cols, vals = [], [], []
    for r, h in enumerate(histories):
        h = np.asarray(h, np.int64)[-window:]
        if len(h) == 0:
            continue
        w = decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
        w /= w.sum()
        c = col_of[h]
        keep = c >= 0
        rows.append(np.full(int(keep.sum()), r))
        cols.append(c[keep])
        vals.append(w[keep])
    if not rows:
        return sp.csr_matrix((len(histories), n_cols))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(histories), n_cols))
    m.sum_duplicates()
    return m


@dataclass
class LinearFitResult:
    epochs: int
    best_epoch: int
    best_valid_ndcg10: float | None
    seconds: float
    losses: list
    cold_items: int = 0
    text_fused: bool = False


class SeqLinearModel:
    def __init__(self, cfg: LinearConfig, n_items: int) -> None:
        self.cfg = cfg
        self.n_items = n_items
        self.decay = cfg.decay
        self.item_emb: np.ndarray | None = None
        self.query_emb: np.ndarray | None = None
        self.B: np.ndarray | None = None

    def fit(self, seqs: Sequence[np.ndarray], valid_histories=None, valid_targets=None,
            item_texts: Sequence[str] | None = None, progress: bool = False,
            log: Callable[[str], None] | None = None, max_epochs: int | None = None) -> LinearFitResult:
        from tqdm import tqdm

        t0 = time.time()
        cfg = self.cfg
        bar = tqdm(total=4, desc="train recs (seqlinear)", unit="step", leave=False, disable=not progress)
        counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in seqs]) if len(seqs) else
                             np.zeros(0, np.int64), minlength=self.n_items)
        warm = np.flatnonzero(counts > 0)
        if len(warm) > cfg.max_items:
            warm = np.sort(warm[np.argsort(-counts[warm], kind="stable")[:cfg.max_items]])
        self.cols = warm
        col_of = np.full(self.n_items, -1, np.int64)
        col_of[warm] = np.arange(len(warm))
        self.col_of = col_of
        m = len(warm)
        prefixes, targets = [], []
        for s in seqs:
            s = np.asarray(s, np.int64)
            for t in range(1, len(s)):
                if col_of[s[t]] >= 0:
                    prefixes.append(s[max(0, t - cfg.window):t])
                    targets.append(col_of[s[t]])
        X = history_matrix(prefixes, col_of, m, cfg.decay, cfg.window)
        Y = sp.csr_matrix((np.ones(len(targets)), (np.arange(len(targets)), np.asarray(targets, np.int64))),
                          shape=(len(targets), m))
        del prefixes, targets  # one small array per training step: freed before the m x m work
        bar.update(1)
        # m x m float64 arrays, each freed as soon as it is used: memory is a few m² (m up to max_items), the
        # numbers exactly those of the plain expressions (gram + reg·I, B.T @ gram @ B, (cov + cov.T) / 2)
        gram = (X.T @ X).toarray()
        xty = (X.T @ Y).toarray()
        g = gram.copy()
        g[np.diag_indices(m)] += cfg.reg
        B = np.linalg.solve(g, xty) if m else np.zeros((0, 0))
        del g, xty
        bar.update(1)
        d = min(cfg.dim, m)
        cov = B.T @ gram  # then @ B: the covariance of the fitted scores
        del gram
        cov = cov @ B
        sym = cov + cov.T
        del cov
        sym /= 2
        evals, evecs = np.linalg.eigh(sym) if m else (np.zeros(0), np.zeros((0, 0)))
        del sym
        V = evecs[:, ::-1][:, :d]
        bar.update(1)
        self.B = B.astype(np.float32)
        Q = np.zeros((self.n_items, cfg.dim), np.float32)
        P = np.zeros((self.n_items, cfg.dim), np.float32)
        Q[warm, :d] = V
        P[warm, :d] = B @ V
        # scale so both tables have comparable norms (inner products unchanged up to a constant)
        s = np.sqrt((np.linalg.norm(P[warm]) + 1e-12) / (np.linalg.norm(Q[warm]) + 1e-12))
        P /= s
        Q *= s
        self.item_emb, self.query_emb = Q, P
        cold = np.setdiff1d(np.arange(self.n_items), warm)
        fused = False
        # the cold items that have a text get vectors mapped from it; one without a text stays at zero (one
        # missing text used to leave every cold item at zero)
        with_text = cold[[bool(item_texts[i]) for i in cold]] if item_texts is not None and len(cold) else cold[:0]
        if len(with_text) and len(warm):
            from models.recs.model import _ridge_map, text_embeddings

            rng = np.random.default_rng(cfg.seed)
            fit_on = warm if len(warm) <= 1000 else np.sort(rng.choice(warm, 1000, replace=False))
            emb = text_embeddings([item_texts[i] for i in np.concatenate([fit_on, with_text])])
            xw, xc = emb[:len(fit_on)], emb[len(fit_on):]
            self.item_emb[with_text] = _ridge_map(xw, Q[fit_on], xc, alpha=1.0)
            self.query_emb[with_text] = _ridge_map(xw, P[fit_on], xc, alpha=1.0)
            fused = True
        bar.update(1)
        bar.close()
        valid = None
        if valid_histories is not None and valid_targets is not None and len(valid_targets):
            from models.recs.evaluation import metrics_from_ranks, ranks_from_scores

            valid = metrics_from_ranks(ranks_from_scores(self.score(None, valid_histories), valid_targets,
                                                         valid_histories))["ndcg@10"]
            if log:
                log(f"seqlinear: valid ndcg@10 {valid:.4f}")
        return LinearFitResult(1, 1, valid, time.time() - t0, [], int(len(cold)), fused)

    # ---------------------------------------------------------------- inference
    def score(self, users, histories: Sequence[np.ndarray], batch: int = 1024) -> np.ndarray:
        """Full-rank model scores (n_users, n_items); cold items scored by the low-rank vectors."""
        out = np.empty((len(histories), self.n_items), np.float32)
        for s in range(0, len(histories), batch):
            hb = histories[s:s + batch]
            x = history_matrix(hb, self.col_of, len(self.cols), self.cfg.decay, self.cfg.window)
            out[s:s + len(hb)] = self.stream_vectors(hb) @ self.item_emb.T
            if len(self.cols):
                out[s:s + len(hb), self.cols] = np.asarray(x @ self.B)
        return out

    def user_hidden(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """64-d user vectors of the rank-`dim` model (same as the streaming vectors)."""
        return self.stream_vectors(histories)

    def stream_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        from models.recs.user_vector import recompute

        out = np.zeros((len(histories), self.cfg.dim), np.float32)
        for r, h in enumerate(histories):
            if len(h):
                out[r] = recompute(self.query_emb[np.asarray(h, np.int64)], self.decay, self.cfg.window).vector()
        return out

    def state_dict(self) -> dict:
        return {"cols": self.cols}
