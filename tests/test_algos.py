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
    Reptile(model, None, REGRESSION, ["*"], k, alpha, epsilon, inner_data="support", schedule="constant").step(batch)
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


def test_eval_set_is_fixed_across_training_seeds_and_set_by_eval_seed(tmp_path, monkeypatch):
    # Record the evaluation tasks every run draws: they must not depend on the training seed (runs
    # compare task for task), and must change with eval_seed.
    import metarun.evaluate as evaluation

    drawn = []
    original = evaluation.task_set

    def recording(task, split, num_tasks, seed, chunk):
        for batch in original(task, split, num_tasks, seed, chunk):
            drawn[-1].append(batch)
            yield batch

    monkeypatch.setattr(evaluation, "task_set", recording)

    def tasks(seed, eval_seed):
        drawn.append([])
        run(make_cfg(f"seed={seed}", f"eval_seed={eval_seed}", "iterations=2", "eval_tasks=10", "eval_every=1"), tmp_path / f"{seed}-{eval_seed}")
        return drawn[-1]

    same = [tasks(0, 1), tasks(1, 1)]
    assert len(same[0]) == len(same[1]) > 0
    assert all(torch.equal(a, b) for x, y in zip(*same) for a, b in zip(x, y))
    other = tasks(0, 2)
    assert not torch.equal(other[0][0], same[0][0][0])


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


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from metarun.algos.maml import MAML

    # The loss turns non-finite at iteration 8, after the checkpoint of iteration 5.
    step, calls = MAML.step, []

    def step_then_blow_up(self, batch):
        calls.append(1)
        metrics = step(self, batch)
        return {**metrics, "loss": float("nan")} if len(calls) == 8 else metrics

    monkeypatch.setattr(MAML, "step", step_then_blow_up)
    cfg = make_cfg("iterations=20", "checkpoint_every=5", "eval_every=1000")
    with pytest.raises(NonFiniteLoss) as err:
        run(cfg, tmp_path)
    message = str(err.value)
    assert "iteration 8" in message and "non-finite" in message and "optim.lr" in message
    assert f"last good checkpoint ({tmp_path / 'checkpoint.pt'}, iteration 5) is kept" in message
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path):
    cfg = make_cfg("iterations=200", "checkpoint_every=50", "eval_every=1000", "optim=sgd", "optim.lr=1e6")
    with pytest.raises(NonFiniteLoss, match="no checkpoint was written yet"):
        run(cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_best_checkpoint_holds_the_best_validation_parameters_and_is_tested(tmp_path, monkeypatch):
    import metarun.train as train
    from metarun.checkpoint import load
    from metarun.evaluate import evaluate, summarize
    from metarun.train import build

    # Which evaluation is best is decided by the score; to exercise best != last without depending
    # on how training happens to go, the score favours iteration 10 by a margin no loss can beat.
    # Everything else (saving that iteration's parameters, testing them) is the real code.
    selection = train.selection_metric
    evaluations = []

    def favour_iteration_10(metrics):
        key, value, score = selection(metrics)
        evaluations.append(value)
        return key, value, score + (1e6 if len(evaluations) == 3 else 0)  # evaluations at 0, 5, 10, ...

    monkeypatch.setattr(train, "selection_metric", favour_iteration_10)
    common = ["iterations=25", "eval_every=5", "eval_tasks=20", "eval_steps=1"]
    last = run(make_cfg(*common), tmp_path / "last")
    evaluations.clear()
    cfg = make_cfg(*common, "test_checkpoint=best")
    best = run(cfg, tmp_path / "best")
    rows = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["iteration"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    assert best["tested_iteration"] == 10 and best["tested_checkpoint"] == "best.pt"
    assert last["tested_iteration"] == 25 and last["tested_checkpoint"] == "checkpoint.pt"
    state = load(tmp_path / "best" / "best.pt")
    assert state["iteration"] == 10 and state["best"]["value"] == evaluated[10]
    # best.pt holds iteration 10's parameters: they reproduce its validation loss, and the run's test figures.
    task, model, _, algo = build(cfg)
    model.load_state_dict(state["model"])
    val = summarize(evaluate(algo, task, "val", 20, 1, cfg.eval_seed, cfg.eval_chunk), "eval")
    test = summarize(evaluate(algo, task, "test", 20, 1, cfg.eval_seed, cfg.eval_chunk), "test")
    assert val["eval/loss"] == pytest.approx(evaluated[10], rel=1e-5)
    assert test["test/loss"] == pytest.approx(best["test/loss"], rel=1e-5)
    assert best["test/loss"] != pytest.approx(last["test/loss"], rel=1e-6)  # iteration 10's figures, not 25's


def test_reptile_paper_mode_steps_on_minibatches_of_all_the_tasks_data_with_annealed_epsilon():
    torch.manual_seed(0)
    model = LinearHead(4).double()
    batch = quadratic_batch(tasks=3, n=6)  # 6 support + 6 query examples per task
    k, alpha, epsilon, iterations = 5, 0.05, 0.7, 4
    algo = Reptile(model, None, REGRESSION, ["*"], k, alpha, epsilon, inner_batch=4, iterations=iterations)
    thetas, epsilons = [], []
    for _ in range(iterations):
        theta = model.head.weight.detach()[0].clone()
        state = torch.get_rng_state()
        order = algo.minibatches(3, 12, "cpu")  # the minibatches the step is about to draw
        torch.set_rng_state(state)
        epsilons.append(algo.step(batch)["epsilon"])
        phis = []
        for i, (sx, sy, qx, qy) in enumerate(zip(*batch)):
            x, y = torch.cat([sx, qx]), torch.cat([sy, qy])
            w = theta.clone()
            for s in range(k):
                idx = order[i, s]
                assert len(set(idx.tolist())) == 4  # without replacement within a step
                xb, yb = x[idx], y[idx, 0]
                w = w - alpha * 2 / len(idx) * xb.T @ (xb @ w - yb)
            phis.append(w)
        expected = theta + epsilons[-1] * (torch.stack(phis).mean(0) - theta)
        torch.testing.assert_close(model.head.weight.detach()[0], expected, rtol=1e-10, atol=1e-12)
        thetas.append(expected)
    assert epsilons == pytest.approx([0.7, 0.525, 0.35, 0.175])  # epsilon * (1 - (t-1)/T): linear to 0
    # Each pass over a task's 12 examples is a permutation: 5 steps x 4 = 20 draws = one pass + 8.
    order = algo.minibatches(2, 12, "cpu").flatten(1)
    assert all(sorted(row[:12].tolist()) == list(range(12)) for row in order)


def test_reptile_refuses_a_partial_adapted_subset():
    from metarun.config import ConfigError

    with pytest.raises(ConfigError, match=r"algo.adapt=\['head.\*'\].*never train"):
        Reptile(_TwoPart(), None, REGRESSION, ["head.*"], 1, 0.1, 0.1, schedule="constant")


class _TwoPart(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)
