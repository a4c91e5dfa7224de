"""Peer for the recommender: SASRec as RecBole 1.2.1 implements it, on Tidewater's own split.

Runs inside the separate environment `.bench/venv-recbole` (RecBole needs numpy<2); started by
`bench/recbole_peer.py`, which exports the split first. Input directory (--data):

* `tw_split/tw_split.inter` — RecBole atomic file, every user's de-duplicated events in OUR order
  (`models/recs/evaluation.py`: ts, then the (user, item) hash for equal ts). The `timestamp` column is
  the 0-based position in that order, so RecBole's time ordering cannot differ from ours: it stores
  float fields as float32 (64-second resolution at ml-100k's epoch times) and its stable sort keeps file
  order among equal values, so the raw timestamps would give it another order for close events.
* `split.json` — our item order, evaluated users, validation and test targets.

RecBole does its own time-ordered leave-one-out (`eval_args: {order: TO, split: {LS: valid_and_test}}`)
and trains SASRec with its stock Trainer and SASRec defaults (2 layers, 2 heads, d=64, dropout 0.5, CE
loss over all items, lr 1e-3, batch 2048, max length 50), early stopping on validation NDCG@10 with
stopping_step 10. Two things differ from a stock run, both to follow our protocol:

1. Full ranking excludes the user's earlier items. RecBole's full-sort evaluation does not mask history
   for sequential models; `MaskedTrainer` masks every item the user interacted with before the target
   (validation: TRAIN; test: TRAIN + validation item), exactly our `ranks_from_scores`. Early stopping
   uses the masked validation NDCG@10. The stock (unmasked) test metrics are reported too.
2. A wall-clock deadline (--deadline-min): training stops after the epoch when another epoch of the mean
   length so far would end past it; the best checkpoint so far is tested (`stopped: "deadline"`).

The run asserts that RecBole's validation/test targets and test-time input sequences are ours, user for
user, then writes `scores.npy` (evaluated users × our items, float32: SASRec's scores from the best
checkpoint on RecBole's own test batches) for our evaluation code, and `result.json`.
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATASET = "tw_split"


class Deadline(Exception):
    pass


def build_trainer_class():
    from recbole.trainer import Trainer

    class MaskedTrainer(Trainer):
        """Stock Trainer; full-sort scores additionally get -inf on the user's items before the target."""

        user_seq: dict[int, np.ndarray] = {}
        mask_history = True

        def _full_sort_batch_eval(self, batched_data):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if self.mask_history:
                uids = interaction[self.config["USER_ID_FIELD"]].cpu().numpy()
                targets = positive_i.cpu().numpy()
                rows, cols = [], []
                for r, (u, t) in enumerate(zip(uids, targets)):
                    seq = self.user_seq[int(u)]
                    pos = int(np.flatnonzero(seq == t)[0])
                    rows.append(np.full(pos, r))
                    cols.append(seq[:pos])
                rows_t = torch.from_numpy(np.concatenate(rows)).to(scores.device)
                cols_t = torch.from_numpy(np.concatenate(cols)).to(scores.device)
                scores[rows_t, cols_t] = -np.inf
            return interaction, scores, positive_u, positive_i

    return MaskedTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory with tw_split/tw_split.inter and split.json")
    ap.add_argument("--out", required=True, help="output directory (result.json, scores.npy, RecBole logs)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--deadline-min", type=float, default=0.0, help="stop training after this many minutes (0: none)")
    ap.add_argument("--seed", type=int, default=2020, help="RecBole's default seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume-from", default=None,
                    help="an earlier run's output directory (same split): continue from its best checkpoint")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = Path(args.data).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # RecBole writes ./log and ./log_tensorboard

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import init_logger, init_seed

    split = json.loads((data / "split.json").read_text())
    config = Config(model="SASRec", dataset=DATASET, config_dict={
        "data_path": str(data),
        "checkpoint_dir": str(out / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "train_neg_sample_args": None,  # CE loss over all items (SASRec default loss_type)
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR", "Recall"], "topk": [10, 20],
        "valid_metric": "NDCG@10", "epochs": args.epochs, "stopping_step": args.stopping_step,
        "seed": args.seed, "reproducibility": True, "use_gpu": False, "show_progress": False,
        "worker": 0, "log_wandb": False,
    })
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    uid_f, iid_f = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    seq_f, len_f = iid_f + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]
    max_len = config["MAX_ITEM_LIST_LENGTH"]

    # every user's full sequence in RecBole ids, from the same file (already in our order)
    import pandas as pd

    inter = pd.read_csv(data / DATASET / f"{DATASET}.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter["timestamp"] = inter["timestamp"].astype(float)
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    user_seq_tok = {u: g["item_id"].tolist() for u, g in inter.groupby("user_id", sort=False)}
    user_seq = {int(dataset.token2id(uid_f, u)): np.asarray(dataset.token2id(iid_f, items), dtype=np.int64)
                for u, items in user_seq_tok.items()}

    # --- the split RecBole built must be ours, user for user
    our_valid = dict(zip(split["eval_users"], split["valid"]))
    our_test = dict(zip(split["eval_users"], split["test"]))

    def targets_of(loader):
        d = loader._dataset.inter_feat
        users = dataset.id2token(uid_f, d[uid_f].numpy())
        items = dataset.id2token(iid_f, d[iid_f].numpy())
        return dict(zip(users, items)), d

    rb_valid, _ = targets_of(valid_data)
    rb_test, test_feat = targets_of(test_data)
    assert rb_valid == our_valid, "RecBole's validation targets differ from ours"
    assert rb_test == our_test, "RecBole's test targets differ from ours"
    for u, s, n in zip(dataset.id2token(uid_f, test_feat[uid_f].numpy()), test_feat[seq_f].numpy(),
                       test_feat[len_f].numpy()):
        want = user_seq_tok[u][:-1][-max_len:]  # TRAIN + validation item, last 50
        assert list(dataset.id2token(iid_f, s[:n])) == want, f"test input of user {u} differs from ours"
    n_train = len(train_data._dataset)
    log.info(f"split check passed: {len(rb_test)} users, {n_train} training sequences")

    model = SASRec(config, train_data._dataset).to(config["device"])
    MaskedTrainer = build_trainer_class()
    trainer = MaskedTrainer(config, model)
    trainer.user_seq = user_seq

    history: list[tuple[int, float, float]] = []
    earlier_seconds = 0.0
    if args.resume_from:  # the earlier run's best checkpoint (model, optimizer, early-stopping counter)
        import shutil

        earlier = Path(args.resume_from).resolve()
        checkpoint = sorted((earlier / "saved").glob("*.pth"))[-1]
        (out / "saved").mkdir(parents=True, exist_ok=True)
        resumed = out / "saved" / checkpoint.name  # RecBole saves new bests over the file it resumed from
        shutil.copy2(checkpoint, resumed)
        trainer.resume_checkpoint(resumed)
        before = json.loads((earlier / "result.json").read_text())
        history = [(e - 1, v, 0.0) for e, v in before["valid_curve"] if e - 1 < trainer.start_epoch]
        earlier_seconds = float(before["train_seconds"])
        log.info(f"resumed from {checkpoint} at epoch {trainer.start_epoch}")
    resumed_epochs = len(history)
    t0 = time.time()
    deadline = t0 + args.deadline_min * 60 if args.deadline_min > 0 else None

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        history.append((epoch_idx, float(valid_score), round(time.time() - t0, 1)))
        print(f"epoch {epoch_idx} valid ndcg@10 {valid_score:.4f} ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        # stop when the next epoch (at the mean epoch time so far) would end past the deadline
        new_epochs = len(history) - resumed_epochs
        if deadline is not None and time.time() + (time.time() - t0) / new_epochs > deadline:
            raise Deadline

    stopped = "epochs"
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=on_epoch)
        if history and history[-1][0] < args.epochs - 1:
            stopped = "early_stopping"
    except Deadline:
        stopped = "deadline"
    train_seconds = time.time() - t0 + earlier_seconds
    best = max(history, key=lambda h: h[1])  # first epoch with the best score = the saved checkpoint

    masked = trainer.evaluate(test_data, load_best_model=True)
    trainer.mask_history = False
    stock = trainer.evaluate(test_data, load_best_model=False)

    # --- scores of the best checkpoint on RecBole's own test batches -> our users x our items
    model.eval()
    col = np.asarray(dataset.token2id(iid_f, split["item_ids"]), dtype=np.int64)
    row_of = {u: r for r, u in enumerate(split["eval_users"])}
    scores = np.full((len(row_of), len(col)), np.nan, dtype=np.float32)
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0]
            s = model.full_sort_predict(interaction.to(config["device"])).cpu().numpy()
            users = dataset.id2token(uid_f, interaction[uid_f].numpy())
            for u, srow in zip(users, s):
                scores[row_of[u]] = srow[col]
    assert not np.isnan(scores).any(), "some evaluated user got no scores"
    np.save(out / "scores.npy", scores)

    def pick(res) -> dict:
        return {k: round(float(res[k]), 6) for k in ("ndcg@10", "hit@10", "mrr@10", "recall@20")}

    result = {
        "recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "model": "SASRec", "config": {k: config[k] for k in (
            "n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
            "hidden_act", "loss_type", "learning_rate", "train_batch_size", "MAX_ITEM_LIST_LENGTH",
            "stopping_step", "epochs", "seed")},
        "users": len(rb_test), "items": int(dataset.item_num - 1), "train_sequences": n_train,
        "epochs": len(history), "best_epoch": best[0] + 1, "best_valid_ndcg@10": round(best[1], 6),
        "stopped": stopped, "train_seconds": round(train_seconds, 1), "threads": args.threads,
        "recbole_test_masked": pick(masked), "recbole_test_stock_unmasked": pick(stock),
        "valid_curve": [[e + 1, round(v, 5)] for e, v, _ in history],
        "resumed_from": args.resume_from, "resumed_epochs": resumed_epochs,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
