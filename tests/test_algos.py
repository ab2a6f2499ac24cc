"""Algorithms and runs: Reptile's closed form, runs that learn, determinism, non-finite losses."""
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from metarun.algos.reptile import Reptile
from metarun.train import NonFiniteLoss, run

from test_inner_loop import REGRESSION, LinearHead, quadratic_batch


def make_cfg(*overrides):
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=["progress=false", *overrides])


def test_reptile_update_matches_closed_form_on_quadratic():
    torch.manual_seed(0)
    model = LinearHead(4).double()
    theta = model.head.weight.detach()[0].clone()
    batch = quadratic_batch(tasks=3)
    k, alpha, epsilon = 4, 0.05, 0.7
    Reptile(model, None, REGRESSION, ["*"], k, alpha, epsilon).step(batch)
    # k steps of gradient descent on 1/n ||X w - y||^2: w <- (I - alpha H) w + alpha b.
    phis = []
    for sx, sy, _, _ in zip(*batch):
        n, d = sx.shape
        h, b = 2 / n * sx.T @ sx, 2 / n * sx.T @ sy[:, 0]
        a = torch.eye(d, dtype=h.dtype) - alpha * h
        phi = torch.linalg.matrix_power(a, k) @ theta + sum(torch.linalg.matrix_power(a, j) @ (alpha * b) for j in range(k))
        phis.append(phi)
    expected = theta + epsilon * (torch.stack(phis).mean(0) - theta)
    torch.testing.assert_close(model.head.weight.detach()[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "reptile"])
def test_short_sinusoid_run_lowers_post_adaptation_mse(tmp_path, algo):
    cfg = make_cfg(f"algo={algo}", "iterations=400", "eval_every=400", "eval_tasks=100", "log_every=50",
                   "logger=jsonl", *(["algo.epsilon=0.5", "algo.inner_lr=0.02"] if algo == "reptile" else []))
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    start, end = rows[0], rows[-1]
    assert start["iteration"] == 0 and end["iteration"] == 400
    # Post-adaptation (1 inner step) MSE on the fixed evaluation tasks falls well below its start.
    assert end["eval/loss_step1"] < 0.8 * start["eval/loss_step1"], (start["eval/loss_step1"], end["eval/loss_step1"])
    assert summary["status"] == "completed" and summary["test/loss"] < start["eval/loss_step10"]
    expected_inner = 400 * 25 * cfg.algo.inner_steps
    assert end["oracle/inner_grad"] == expected_inner
    assert end["oracle/second_order"] == (expected_inner if algo in ("maml", "anil") else 0)
    assert end["oracle/jacobian_vector"] == (expected_inner if algo == "anil" else 0)  # frozen body


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    def metrics(seed, name):
        cfg = make_cfg(f"seed={seed}", "iterations=40", "eval_every=20", "log_every=10", "eval_tasks=20")
        run(cfg, tmp_path / name)
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    a, b, c = metrics(0, "a"), metrics(0, "b"), metrics(1, "c")
    assert a == b
    assert a != c


def test_eval_set_is_fixed_across_seeds(tmp_path):
    # Iteration-0 evaluation of two seeds differs only through the initial weights, so with the
    # same weights (same seed) but different training seeds the eval tasks must coincide.
    def first_row(seed, eval_seed):
        cfg = make_cfg(f"seed={seed}", f"eval_seed={eval_seed}", "iterations=1", "eval_tasks=10")
        run(cfg, tmp_path / f"{seed}-{eval_seed}")
        return json.loads((tmp_path / f"{seed}-{eval_seed}" / "metrics.jsonl").read_text().splitlines()[0])

    assert first_row(0, 1)["eval/loss_step3"] != first_row(0, 2)["eval/loss_step3"]


def test_linear_regression_logs_distance_to_known_optimum(tmp_path):
    cfg = make_cfg("task=linear_regression", "model=linear", "algo=anil", "algo.inner_l2=0.01", "algo.inner_steps=5",
                   "algo.inner_lr=0.1", "optim.lr=0.01", "iterations=300", "eval_every=300", "log_every=10",
                   "eval_tasks=50", "eval_steps=5")
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dist = [r["train/dist_to_opt"] for r in rows if "train/dist_to_opt" in r]
    assert dist[0] > 0.9  # a random 5-dim subspace of R^20 is far from the truth
    assert dist[-1] < 0.5 * dist[0]
    assert rows[-1]["eval/loss_step5"] < rows[0]["eval/loss_step5"]


def test_distance_to_optimum_is_zero_at_the_optimum():
    from metarun.models.linear import LinearFeatures
    from metarun.tasks.linear_regression import LinearRegression

    task = LinearRegression(input_dim=8, features=3)
    model = LinearFeatures((8,), 1, features=3)
    with torch.no_grad():
        model.body[-1].weight.copy_(torch.randn(3, 3) @ task.truth)  # any basis of the true row space
    assert task.metrics(model)["dist_to_opt"] < 1e-5


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = make_cfg("iterations=200", "checkpoint_every=5", "eval_every=1000", "optim=sgd", "optim.lr=1e6")
    with pytest.raises(NonFiniteLoss) as err:
        run(cfg, tmp_path)
    message = str(err.value)
    assert "non-finite" in message and "optim.lr" in message
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    if "last good checkpoint" in message:
        state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_best_checkpoint_holds_the_best_validation_parameters_and_is_tested(tmp_path):
    from metarun.checkpoint import load
    from metarun.evaluate import evaluate, summarize
    from metarun.train import build

    # A large outer lr makes the validation loss jump around, so the best is not the last iterate.
    common = ["iterations=25", "eval_every=5", "eval_tasks=20", "eval_steps=1", "optim.lr=0.03"]
    last = run(make_cfg(*common), tmp_path / "last")
    cfg = make_cfg(*common, "test_checkpoint=best")
    best = run(cfg, tmp_path / "best")
    rows = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["iteration"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    best_iteration = min(evaluated, key=evaluated.get)
    assert best_iteration != 25 and best["tested_iteration"] == best_iteration and last["tested_iteration"] == 25
    state = load(tmp_path / "best" / "best.pt")
    assert state["iteration"] == best_iteration and state["best"]["value"] == evaluated[best_iteration]
    # best.pt holds that iteration's parameters: they reproduce its validation loss, and the run's test figures.
    task, model, _, algo = build(cfg)
    model.load_state_dict(state["model"])
    val = summarize(evaluate(algo, task, "val", 20, 1, cfg.eval_seed, cfg.eval_chunk), "eval")
    test = summarize(evaluate(algo, task, "test", 20, 1, cfg.eval_seed, cfg.eval_chunk), "test")
    assert val["eval/loss"] == pytest.approx(evaluated[best_iteration], rel=1e-5)
    assert test["test/loss"] == pytest.approx(best["test/loss"], rel=1e-5)
    assert best["test/loss"] != pytest.approx(last["test/loss"], rel=1e-3)
