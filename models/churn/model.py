"""The churn model: a small BERT-style encoder over event tokens plus an RFM summary side input.

* :class:`ChurnConfig` — plain, JSON-serialisable hyper-parameters (saved with every artifact).
* :func:`bert_config` — builds the ``transformers.BertConfig`` from it (kept apart from the module).
* :class:`ChurnTransformer` — the torch module: event embeddings -> ``BertModel`` (random init, no
  hub download) -> heads. Pre-training heads predict masked event attributes and the next gap;
  fine-tuning heads predict the churn logit and the log of the expected purchase count in the
  horizon from [summary token, mean of event tokens, standardised RFM summary], added to a linear
  path from the summary that starts as a logistic / Poisson regression (``glm_prior``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import features as F


@dataclass
class ChurnConfig:
    # tokens
    max_events: int = 64
    item_buckets: int = 1024
    category_buckets: int = 128
    # encoder
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    dropout: float = 0.1
    use_summary: bool = True  # feed the RFM summary vector into the head
    wide: bool = False  # a randomly initialised linear path from the summary to the outputs (did not help)
    # start fine-tuning from two GLMs on the summary (logistic for churn, Poisson for the count) in the linear
    # path, with the deep head's output at zero: the encoder learns only what the GLMs miss, and the GLMs alone
    # are kept when no epoch beats them on validation (small logs, or logs with no sequence signal)
    glm_prior: bool = True
    # pre-training (masked-event modelling + next gap)
    pretrain_epochs: int = 4
    mask_prob: float = 0.15
    prefix_prob: float = 0.5  # share of pre-training examples cut to a random prefix for next-gap prediction
    pretrain_lr: float = 2e-3
    # fine-tuning
    finetune_epochs: int = 12
    patience: int = 3
    # the validation loss that picks the epoch: "churn" (its cross-entropy: the product's output) or "total"
    # (plus forecast_weight x the count's Poisson NLL, which on logs with heavy-tailed counts dominates the sum
    # and picked epochs that were worse for churn)
    early_stop_on: str = "churn"
    # the best fine-tuned epoch replaces the GLM start only if its validation gain exceeds this many standard
    # errors of the per-user loss difference (the one-standard-error rule): on a small validation set an epoch
    # "wins" by noise, and the simpler model is the safer one; larger logs shrink the standard error
    select_margin_se: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    min_steps_per_epoch: int = 50  # small logs: repeat passes so an epoch has at least this many steps
    forecast_weight: float = 0.5  # weight of the Poisson NLL of the count head
    ema_decay: float = 0.995  # EMA of the fine-tuned weights (0 = off)
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_lr: float = 3e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        if self.early_stop_on not in ("churn", "total"):  # at construction, not after the GLMs are fitted
            raise ValueError(f"early_stop_on must be 'churn' or 'total', got {self.early_stop_on!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChurnConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        # artifacts saved before the GLM prior existed have no linear path in their weights
        data = {"glm_prior": False} | dict(data)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def bert_config(cfg: ChurnConfig):
    """The encoder's ``BertConfig`` (built from scratch; nothing is downloaded)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=8,  # unused: tokens enter as inputs_embeds
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_events + 1,
        type_vocab_size=1,
        attn_implementation="sdpa",
    )


class EventEmbedder(nn.Module):
    def __init__(self, cfg: ChurnConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.emb = nn.ModuleDict({
            "event_type": nn.Embedding(F.N_TYPES, h),
            "item": nn.Embedding(cfg.item_buckets, h, padding_idx=0),
            "category": nn.Embedding(cfg.category_buckets, h, padding_idx=0),
            "amount_b": nn.Embedding(F.N_AMOUNT_BUCKETS, h, padding_idx=0),
            "qty_b": nn.Embedding(F.N_QTY_BUCKETS, h, padding_idx=0),
            "gap_b": nn.Embedding(F.N_TIME_BUCKETS, h, padding_idx=0),
            "age_b": nn.Embedding(F.N_TIME_BUCKETS, h, padding_idx=0),
        })
        self.cont = nn.Linear(F.N_CONT, h)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.cont(batch["cont"])
        for key, emb in self.emb.items():
            x = x + emb(batch["type" if key == "event_type" else key])
        return x


class ChurnTransformer(nn.Module):
    def __init__(self, cfg: ChurnConfig) -> None:
        super().__init__()
        from transformers import BertModel

        self.cfg = cfg
        h = cfg.hidden
        self.embed = EventEmbedder(cfg)
        self.encoder = BertModel(bert_config(cfg), add_pooling_layer=False)
        # pre-training heads
        self.mem_heads = nn.ModuleDict({
            "mem_type": nn.Linear(h, F.N_TYPES),
            "mem_gap_b": nn.Linear(h, F.N_TIME_BUCKETS),
            "mem_amount_b": nn.Linear(h, F.N_AMOUNT_BUCKETS),
            "mem_qty_b": nn.Linear(h, F.N_QTY_BUCKETS),
        })
        self.next_gap = nn.Linear(h, F.N_TIME_BUCKETS)
        # fine-tuning head
        n_sum = F.N_SUMMARY if cfg.use_summary else 0
        self.register_buffer("summary_mean", torch.zeros(F.N_SUMMARY))
        self.register_buffer("summary_std", torch.ones(F.N_SUMMARY))
        # the training users' range of each summary feature: the stream scores customers unlike any trained on
        # (a day old, where every CDNOW training user was 190 to 273 days old: 47 standard deviations out, and the
        # regressions extrapolated to a churn of 0.21 and 9 purchases; found by review), so serving stays inside it
        self.register_buffer("summary_low", torch.full((F.N_SUMMARY,), -math.inf))
        self.register_buffer("summary_high", torch.full((F.N_SUMMARY,), math.inf))
        self.head = nn.Sequential(
            nn.Linear(2 * h + n_sum, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 2),
        )
        # linear path from the standardised summary straight to both outputs (wide & deep): with glm_prior it
        # starts as a logistic / Poisson regression on the RFM features, which the deep part refines
        self.wide = nn.Linear(F.N_SUMMARY, 2) if cfg.use_summary and (cfg.wide or cfg.glm_prior) else None
        # calibration, fitted on validation: p = sigmoid(logit / temperature + bias); rate * exp(forecast_shift)
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("forecast_shift", torch.zeros(()))
        # the most a forecast may say: twice what any training user bought in the horizon (a burst of purchases
        # seconds apart extrapolated to 1e17; found by review)
        self.register_buffer("forecast_max", torch.full((), math.inf))

    # ---------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed(batch)
        out = self.encoder(inputs_embeds=x, attention_mask=batch["attention_mask"])
        return out.last_hidden_state

    def pretrain_logits(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        hs = self.encode(batch)
        return {k[4:]: head(hs) for k, head in self.mem_heads.items()}, self.next_gap(hs[:, 0])

    def raw_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated (churn logit, log expected count)."""
        return self.outputs_from_states(self.encode(batch), batch)

    def outputs_from_states(self, hs: torch.Tensor,
                            batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`raw_outputs` from the encoder's hidden states (a GPU scorer runs only the encoder in bf16/fp16:
        the heads and the linear path stay in float32, as calibrated)."""
        mask = batch["attention_mask"].to(hs.dtype).clone()
        mask[:, 0] = 0  # events only
        denom = mask.sum(1, keepdim=True).clamp_min(1.0)
        pooled = (hs * mask.unsqueeze(-1)).sum(1) / denom
        parts = [hs[:, 0], pooled]
        if self.cfg.use_summary:
            parts.append(self.standardised_summary(batch["summary"]).to(hs.dtype))
        out = self.head(torch.cat(parts, dim=-1))
        if self.wide is not None:
            out = out + self.wide(parts[-1])
        return out[:, 0], out[:, 1]

    def standardised_summary(self, summary: torch.Tensor) -> torch.Tensor:
        """The RFM summary as the head and the linear path see it: inside the training users' range, standardised
        by their mean and std."""
        return (torch.minimum(torch.maximum(summary, self.summary_low), self.summary_high) - self.summary_mean) \
            / self.summary_std

    def encoder_contributes(self) -> bool:
        """False when the deep head's output layer is all zeros (fine-tuning kept the GLM start): the outputs
        are then the linear path alone, and the encoder's forward pass can be skipped."""
        last = self.head[-1]
        return self.wide is None or bool(last.weight.any()) or bool(last.bias.any())

    def calibrated(self, logit: torch.Tensor, log_rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs -> (churn probability, expected purchases), in float32 whatever the compute dtype."""
        prob = torch.sigmoid(logit.float() / self.temperature + self.bias)
        rate = torch.exp(log_rate.float() + self.forecast_shift).clamp(max=float(self.forecast_max))
        return prob, rate

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated (churn probability, expected purchases in the horizon)."""
        return self.calibrated(*self.raw_outputs(batch))
