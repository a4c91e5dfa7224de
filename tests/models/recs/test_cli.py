from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from models.recs import cli as recs_cli
from models.recs import pipeline
from models.recs.recommender import Recommender
from models.recs.user_vector import update_one

from .helpers import sequential_log

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def app():
    root = typer.Typer()
    train, evaluate, index = typer.Typer(), typer.Typer(), typer.Typer()
    root.add_typer(train, name="train")
    root.add_typer(evaluate, name="evaluate")
    root.add_typer(index, name="index")
    recs_cli.register(train, evaluate, index)
    return root


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "log.csv"
    sequential_log(n_users=50, n_items=25, length=10, unique_last=True).to_csv(path, index=False)
    return path


def test_evaluate_json_last_line_and_no_leakage(app, csv, tmp_path, monkeypatch):
    seen: list[list[np.ndarray]] = []
    from models.recs import baselines, seqlinear

    for cls in (baselines.Popularity, baselines.ItemKNN, baselines.ALS, baselines.Markov, seqlinear.SeqLinearModel):
        orig = cls.fit

        def spy(self, seqs, *a, _orig=orig, **kw):
            seen.append([np.asarray(s).copy() for s in seqs])
            return _orig(self, seqs, *a, **kw)

        monkeypatch.setattr(cls, "fit", spy)
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(csv), "--json",
                                   "--report-dir", str(tmp_path / "rep"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["model"]) == {"ndcg@10", "hit@10", "mrr@10", "recall@20"}
    assert set(out["baselines"]) == {"pop", "item_knn", "als", "markov"}
    assert 0.0 <= out["index"]["recall@10_vs_exact"] <= 1.0
    assert out["dataset"] == "log" and out["users"] == 50
    assert (tmp_path / "rep" / "ndcg_at_k.png").stat().st_size > 0
    # leakage canary: each user's test item is unique to that user and must reach no fit() call
    from models.recs.evaluation import leave_one_out
    import pandas as pd

    split = leave_one_out(pd.read_csv(csv, dtype={"user_id": str, "item_id": str}))
    canary = {split.item_index[f"t{u}"] for u in range(50)}
    assert len(seen) >= 5
    for seqs in seen:
        assert not canary & set(np.concatenate(seqs).tolist())
    # the trained model found the canaries cold (it never saw them)
    assert out["train"]["cold_items"] >= 50


def test_bad_input_is_a_user_error(app, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\n1,2\n")
    from tidewater.errors import UserError

    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(bad)])
    assert isinstance(res.exception, UserError) and "missing column" in str(res.exception)
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(tmp_path / "nope.csv")])
    assert isinstance(res.exception, UserError)
    res = CliRunner().invoke(app, ["index", "build", "--registry", str(tmp_path / "empty")])
    assert isinstance(res.exception, UserError) and "train recs" in str(res.exception)


def test_train_publish_index_build_and_recommender(app, csv, tmp_path):
    reg = tmp_path / "reg"
    res = CliRunner().invoke(app, ["train", "recs", "--interactions", str(csv), "--registry", str(reg),
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    rec = Recommender.from_registry(reg / "recs", use_gpu=False)
    assert rec.version == info["version"]
    assert rec.item_vector("nope") is None and rec.item_vector("i3").shape == (64,)
    state = None
    for it in ["i3", "i4", "i5"]:
        state = rec.update_user(state, it)
    state = rec.update_user(state.to_json(), "unknown-item")  # unknown items leave the state as is
    assert state.count == 3
    np.testing.assert_allclose(state.vector(), rec.recompute_user(["i3", "i4", "i5"]).vector(), rtol=1e-5,
                               atol=1e-6)
    out = rec.recommend_many([state, None], k=5, exclude=[{"i3", "i4", "i5"}, {rec.popular_items(1)[0]}])
    assert len(out[0]) == 5 and not {"i3", "i4", "i5"} & {i for i, _ in out[0]}
    assert out[1] == [(i, 0.0) for i in rec.popular_items(6)[1:]]  # fallback, filtered
    # the walk goes upward: after i3,i4,i5 the next items should be near i6
    assert "i6" in [i for i, _ in out[0]]
    # regression: a vector of zeros (a user of long-tail items only, which have none) got every item at score 0 in
    # catalogue order instead of the popular items; on both paths, the re-ranking one too (found by review)
    zero = np.zeros(rec.dim, np.float32)
    assert rec.recommend_many([zero], k=5) == [[(i, 0.0) for i in rec.popular_items(5)]]
    assert rec.recommend_many([zero], k=5, histories=[["i3"]], exclude_history=True) == \
        [[(i, 0.0) for i in rec.popular_items(5, {"i3"})]]
    # segments trained with the model: ids in range, the index inside the version named after the version
    assert info["segments"] == len(rec.segments) >= 2
    assert 0 <= rec.segment_of(state) < len(rec.segments)
    assert rec.index.version == rec.version
    res = CliRunner().invoke(app, ["index", "build", "--registry", str(reg)])
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout.strip().splitlines()[-1])
    from models.registry import Registry

    new_dir = Registry(reg / "recs_index").current_path()
    assert rec.swap_index(new_dir) == rec.index.version and built["model_version"] == rec.version
    assert len(rec.recommend_many([state], k=5)[0]) == 5
    # an index of other vectors or another catalogue is refused, and the one serving stays (found by review)
    from models.recs.index import ItemIndex

    serving = rec.index.version
    rng = np.random.default_rng(0)
    for name, ids, dim in (("other-dim", rec.item_ids, rec.dim + 1),
                           ("other-ids", [f"x{i}" for i in range(len(rec.item_ids))], rec.dim)):
        ItemIndex.build(ids, rng.normal(size=(len(ids), dim)).astype(np.float32), kind="flat", version=name,
                        use_gpu=False).save(tmp_path / name)
        with pytest.raises(ValueError, match="does not match recs model"):
            rec.swap_index(tmp_path / name)
        assert rec.index.version == serving
    # the same catalogue and dimension but other vectors (another model's): refused too (found by review)
    ItemIndex.build(rec.item_ids, rng.normal(size=(len(rec.item_ids), rec.dim)).astype(np.float32), kind="flat",
                    version="other-vectors", use_gpu=False).save(tmp_path / "other-vectors")
    with pytest.raises(ValueError, match="other item vectors"):
        rec.swap_index(tmp_path / "other-vectors")
    assert rec.index.version == serving


def test_regression_training_on_a_log_without_sequences_is_a_user_error(app, tmp_path):
    """One event per user: `train recs` exited 0 and published a model whose vectors were all zero (found by
    review)."""
    from tidewater.errors import UserError

    single = tmp_path / "single.csv"
    single.write_text("user_id,item_id,ts\n" + "".join(f"u{u},i{u % 7},{1000 + u}\n" for u in range(40)))
    res = CliRunner().invoke(app, ["train", "recs", "--interactions", str(single), "--registry", str(tmp_path / "r")])
    assert isinstance(res.exception, UserError) and "2 or more distinct items" in str(res.exception)


def test_regression_a_goal_nothing_can_score_is_undecided_not_reached(app, tmp_path):
    """Every user's held-out item is seen by no one else: the model and every baseline score 0, and 0 >= 1.3 × 0
    reported the goal as reached (found by review). It is undecided (null)."""
    log = tmp_path / "cold.csv"
    rows = [(f"u{u}", item, n) for u in range(40) for n, item in enumerate(["a", "b", "c", f"v{u}", f"t{u}"])]
    log.write_text("user_id,item_id,ts\n" + "".join(f"{u},{i},{1000 + n}\n" for u, i, n in rows))
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(log), "--json",
                                   "--report-dir", str(tmp_path / "rep"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    goal = json.loads(res.stdout.strip().splitlines()[-1])["goal"]
    assert goal["best_baseline_ndcg@10"] == 0.0 and goal["ratio"] is None and goal["reached"] is None


@pytest.mark.parametrize("args", [["evaluate", "recs", "--threads", "-1"], ["train", "recs", "--threads", "0"],
                                  ["evaluate", "recs", "--seed", "-1"]])
def test_regression_impossible_threads_or_seed_are_refused_by_name(app, csv, tmp_path, args):
    """`evaluate recs --threads -1` went to the ALS library as it was and the process died in libgomp with no
    message; `--seed -1` said "expected non-negative integer" without naming the option (found by review)."""
    extra = ["--report-dir", str(tmp_path / "r")] if args[0] == "evaluate" else ["--registry", str(tmp_path / "g")]
    res = CliRunner().invoke(app, args + ["--interactions", str(csv), *extra])
    assert res.exit_code == 2 and args[2] in res.output and "Invalid value" in res.output, res.output


def test_regression_evaluate_on_a_catalogue_too_small_for_the_pq_index_reports_it(app, tmp_path):
    """Under 16 items, building the diagnostic IVF-PQ index (4-bit codes need 16 training points) ended
    `evaluate recs` in a faiss traceback (found by review): that diagnostic is reported as not available."""
    small = tmp_path / "small.csv"
    sequential_log(n_users=40, n_items=10, length=6).to_csv(small, index=False)
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(small), "--json",
                                   "--report-dir", str(tmp_path / "report"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    index = json.loads(res.stdout.strip().splitlines()[-1])["index"]
    assert index["recall@10_vs_exact"] is None and "training points" in index["error"]
    assert index["ivf"]["recall@10_vs_exact"] is not None


def test_regression_threads_limit_the_blas_libraries_too():
    """--threads set torch's threads only: numpy's and scipy's OpenBLAS ran on every core (found by review)."""
    import scipy.linalg  # noqa: F401 - its BLAS loaded, as training loads it
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=2)  # as outside the tests (their conftest sets OMP_NUM_THREADS=1)
    pipeline.set_threads(1)
    pools = threadpool_info()
    assert any(pool["internal_api"] == "openblas" for pool in pools)
    assert all(pool["num_threads"] == 1 for pool in pools), pools


def test_regression_what_the_log_loses_or_lacks_is_said(tmp_path):
    """Ignored columns (a rating column made 1-star ratings positives), collapsed repeats, a catalogue past the items
    the model learns and an evaluation of a handful of users were all silent (found by the recs CLI review)."""
    said: list[str] = []
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts,Rating\nu1,i1,1,5\nu1,i1,2,1\nu1,i2,3,4\n")
    _, df, _ = pipeline.load_log(path, said.append)
    assert said == ["note: ignored column(s) Rating: every row counts as one interaction"]
    from models.recs.evaluation import normalize_log
    from models.recs.seqlinear import LinearConfig

    said.clear()
    pipeline.note_repeats(len(df), len(normalize_log(df)), said.append)
    pipeline.note_catalogue_cap(8001, LinearConfig(), said.append)
    pipeline.note_few_users(10, said.append)
    assert said[0].startswith("note: 1 of 3 rows repeat a user's item")
    assert said[1].startswith("warning: 1 of the 8,001 items are past the 8,000 most frequent")
    assert said[2].startswith("warning: only 10 users have the 3 distinct items")
    said.clear()
    pipeline.note_repeats(3, 3, said.append)
    pipeline.note_catalogue_cap(8000, LinearConfig(), said.append)
    pipeline.note_few_users(100, said.append)
    assert said == []


def test_regression_an_empty_ts_is_named_with_its_row(app, tmp_path):
    from tidewater.errors import UserError

    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,1600000000\nu1,i2,\nu2,i1,1600000100\n")
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(path)])
    assert isinstance(res.exception, UserError) and "an empty ts in row 3" in str(res.exception)


def test_max_items_caps_the_items_the_model_learns(app, csv, tmp_path):
    """The 8,000-item cap had no option: a larger catalogue lost its tail with no way to keep it (review)."""
    res = CliRunner().invoke(app, ["evaluate", "recs", "--interactions", str(csv), "--json", "--max-items", "10",
                                   "--report-dir", str(tmp_path / "rep"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["train"]["cold_items"] >= out["items"] - 10 > 50  # the default cap left only the 50 canaries cold
    res = CliRunner().invoke(app, ["train", "recs", "--interactions", str(csv), "--arch", "sasrec",
                                   "--max-items", "10", "--registry", str(tmp_path / "reg")])
    assert "--max-items applies to --arch seqlinear" in str(res.exception)


def test_regression_a_model_that_ranks_no_held_out_item_is_published_with_a_warning(csv, tmp_path, monkeypatch):
    """`--arch sasrec` published a model of validation NDCG@10 0.0 without a word (found by the recs CLI review)."""
    real = pipeline.train_model

    def useless(*args, **kwargs):
        model, res = real(*args, **kwargs)
        res.best_valid_ndcg10 = 0.0
        return model, res

    monkeypatch.setattr(pipeline, "train_model", useless)
    said: list[str] = []
    pipeline.train_and_publish(csv, tmp_path / "reg", threads=1, progress=False, log=said.append)
    assert any(m.startswith("warning: validation NDCG@10 is 0") for m in said)
