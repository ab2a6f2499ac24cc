"""MAML for RL: navigation2d dynamics, linear baseline, REINFORCE inner step, TRPO outer step, runs."""
import json
import math
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch.func import functional_call

from metarun.algos.maml_rl import MAMLRL, baseline_features, conjugate_gradient, fit_linear_baseline, gaussian_kl, line_search
from metarun.config import ConfigError
from metarun.models.gaussian_mlp import GaussianMLP
from metarun.tasks.navigation2d import BatchedNavigation2D, Navigation2D, Navigation2DEnv

os.environ.setdefault("WANDB_MODE", "disabled")


def make_algo(seed=0, task_options=None, **options):
    torch.manual_seed(seed)
    task = Navigation2D(**(task_options or {}))
    model = GaussianMLP(task.input_shape, task.output_dim, hidden=options.pop("hidden", (16, 16)))
    # TRPO needs no optimizer (and the first torch.optim construction imports torch._dynamo, ~10 s).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2) if options.get("outer") == "adam" else None
    options = {"adapt": ["*"], "inner_steps": 1, "inner_lr": 0.1, "trajectories": 4, **options}
    return MAMLRL(model, optimizer, task, **options)


# ---- environment ---------------------------------------------------------------------------------

def test_dynamics_reward_clipping_and_termination():
    goals = torch.tensor([[0.3, -0.2], [0.05, 0.0]])
    env = BatchedNavigation2D(goals)  # action = velocity, clipped to [-0.1, 0.1]
    assert torch.equal(env.reset(), torch.zeros(2, 2))
    obs, reward, terminated = env.step(torch.tensor([[0.05, 3.0], [-7.0, 0.02]]))
    assert torch.allclose(obs, torch.tensor([[0.05, 0.1], [-0.1, 0.02]]))
    expected = -torch.tensor([math.hypot(0.05 - 0.3, 0.1 + 0.2), math.hypot(-0.1 - 0.05, 0.02)])
    assert torch.allclose(reward, expected)  # distance, not squared
    assert not terminated.any()
    # Within 0.01 on one axis only: not terminated; on both: terminated.
    env = BatchedNavigation2D(torch.tensor([[0.1, 0.05], [0.1, 0.1]]))
    env.reset()
    _, reward, terminated = env.step(torch.tensor([[0.095, 0.095], [0.095, 0.095]]))
    assert terminated.tolist() == [False, True]
    assert reward[1].item() == pytest.approx(-math.hypot(0.005, 0.005), abs=1e-6)


def test_normalized_actions_scale_onto_the_velocity_box():
    task = Navigation2D(normalize_actions=True)
    env = task.env(torch.zeros(1, 2))
    env.reset()
    obs, _, _ = env.step(torch.tensor([[0.5, -4.0]]))  # 0.1 * a, clipped: rllab's normalize()
    assert torch.allclose(obs, torch.tensor([[0.05, -0.1]]))
    raw = Navigation2D(normalize_actions=False).env(torch.zeros(1, 2))
    raw.reset()
    assert torch.allclose(raw.step(torch.tensor([[0.5, -0.04]]))[0], torch.tensor([[0.1, -0.04]]))


def test_goals_are_uniform_in_the_square_and_seeded():
    task = Navigation2D()
    goals = task.sample(2000, torch.Generator().manual_seed(3), "train")
    assert goals.shape == (2000, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    assert abs(goals.mean().item()) < 0.02 and goals.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.05)
    assert torch.equal(goals, task.sample(2000, torch.Generator().manual_seed(3), "test"))


def test_reference_test_goals_are_the_reference_scripts_and_only_for_the_test_split():
    task = Navigation2D(test_goals="reference")
    goals = task.sample(40, torch.Generator().manual_seed(0), "test")
    # test_maml_point.py: np.random.seed(1); np.random.uniform(-0.5, 0.5, size=(40, 2)). Its first draws:
    assert goals[0].tolist() == pytest.approx([-0.082978, 0.220324], abs=1e-6)
    assert goals[39].tolist() == pytest.approx(list(np.random.RandomState(1).uniform(-0.5, 0.5, (40, 2))[39]), abs=1e-7)
    assert torch.equal(task.sample(5, None, "test"), goals[:5])
    assert torch.equal(task.sample(60, None, "test")[:40], goals)  # more than 40 continue the stream
    # Training and validation goals stay random draws from the run's generators.
    assert torch.equal(task.sample(3, torch.Generator().manual_seed(0), "val"),
                       Navigation2D().sample(3, torch.Generator().manual_seed(0), "val"))
    with pytest.raises(ConfigError, match="task.test_goals"):
        Navigation2D(test_goals="cbfinn")


def test_gymnasium_single_env():
    env = Navigation2DEnv(horizon=3, normalize_actions=False)
    obs, info = env.reset(seed=5)
    goal = info["goal"]
    assert np.array_equal(obs, np.zeros(2, np.float32)) and np.all(np.abs(goal) <= 0.5)
    assert np.array_equal(env.reset(seed=5)[1]["goal"], goal)  # seeded
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, -0.03]))
    assert np.allclose(obs, [0.1, -0.03]) and reward == pytest.approx(-np.linalg.norm(obs - goal), rel=1e-5)
    assert (terminated, truncated) == (False, False)
    env.step(np.zeros(2))
    assert env.step(np.zeros(2))[3] is True  # truncated at the horizon
    obs, info = env.reset(options={"goal": (0.05, 0.0)})
    assert env.step(np.array([0.05, 0.0]))[2] is True  # terminated at the goal
    gymnasium = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env
    assert isinstance(env, gymnasium.Env)
    check_env(Navigation2DEnv(), skip_render_check=True)


# ---- baseline and returns -------------------------------------------------------------------------

def test_linear_baseline_is_ridge_least_squares_on_rllab_features():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 4, 100, 2, generator=g)
    returns = torch.randn(3, 4, 100, generator=g) + torch.linspace(-5, 0, 100)
    mask = (torch.rand(3, 4, 100, generator=g) > 0.2).float()
    features = baseline_features(obs)
    t = torch.arange(100) / 100.0
    assert torch.allclose(features[1, 2, :, 4], t) and torch.allclose(features[1, 2, :, 6], t ** 3)
    assert torch.allclose(features[0, 0, :, 2:4], obs[0, 0].pow(2)) and torch.all(features[..., 7] == 1)
    reg = 1e-2
    coeffs = fit_linear_baseline(features, returns, mask, reg)
    for i in range(3):
        keep = mask[i].reshape(-1) > 0
        x = features[i].reshape(-1, 8)[keep].double()
        y = returns[i].reshape(-1)[keep].double()
        # Ridge regression == least squares on [X; sqrt(reg) I] against [y; 0].
        augmented = torch.cat([x, math.sqrt(reg) * torch.eye(8, dtype=torch.float64)])
        target = torch.cat([y, torch.zeros(8, dtype=torch.float64)])
        expected = torch.linalg.lstsq(augmented, target[:, None]).solution[:, 0]
        assert torch.allclose(coeffs[i].double(), expected, atol=1e-4)
    # A vanishing ridge gives the plain least-squares fit on the valid samples.
    keep = mask[0].reshape(-1) > 0
    x = features[0].reshape(-1, 8)[keep].double()
    plain = torch.linalg.lstsq(x, returns[0].reshape(-1)[keep].double()[:, None]).solution[:, 0]
    fitted = x @ fit_linear_baseline(features, returns, mask, 1e-10)[0].double()
    assert torch.allclose(fitted, x @ plain, atol=1e-3)


def test_advantages_are_standardised_per_task_and_zero_after_termination():
    algo = make_algo(task_options={"horizon": 30})
    params = dict(algo.model.named_parameters())
    goals = torch.tensor([[0.0, 0.005], [0.4, 0.4]])  # the first goal ends episodes quickly
    data = algo.rollout(params, {k: params[k] for k in algo.adapted}, None, goals, torch.Generator().manual_seed(0))
    mask, adv = data["mask"], data["adv"]
    for i in range(2):
        valid = adv[i][mask[i] > 0]
        assert valid.mean().abs() < 1e-4 and valid.std(correction=0).item() == pytest.approx(1, abs=1e-3)
    assert torch.all(adv[mask == 0] == 0) and torch.all(data["rew"][mask == 0] == 0)
    # The mask is 1 up to and including the terminating step, then 0.
    assert torch.all(mask[..., 1:] <= mask[..., :-1])


# ---- inner step ------------------------------------------------------------------------------------

def test_reinforce_inner_gradient_matches_finite_differences_of_the_expected_return():
    """One-step episodes: the REINFORCE step (baseline = mean return, advantages divided by their
    std) is -grad E[r] / std(r). Compare its directional derivative with central finite differences
    of the sampled return under common random numbers (the same action noise)."""
    n, seed = 50000, 7
    algo = make_algo(task_options={"horizon": 1}, trajectories=n)
    params = {k: v.detach() for k, v in algo.model.named_parameters()}
    goals = torch.tensor([[0.3, -0.2]])
    data = algo.rollout(params, params, None, goals, torch.Generator().manual_seed(seed))
    task_data = {k: v[0] for k, v in data.items()}
    lr = 1e-3
    fast = algo.inner_step(params, params, task_data, lr)
    inner_grad = {k: (params[k] - fast[k]) / lr for k in params}
    rewards = data["rew"][0, :, 0]
    reward_std = rewards.std(correction=0)

    eps = torch.randn((1, n, 2), generator=torch.Generator().manual_seed(seed))[0]
    env = algo.task.env(goals.expand(n, 2))

    def expected_return(p):
        mean, log_std = functional_call(algo.model, p, (torch.zeros(n, 2),))
        env.reset()
        return env.step(mean + log_std.exp() * eps)[1].mean()

    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        # Head directions only: at the start (0, 0) every hidden pre-activation is exactly 0, a ReLU
        # kink where central differences see half the slope and autograd none.
        direction = {k: torch.randn(v.shape, generator=g) * k.startswith("head.") for k, v in params.items()}
        h = 1e-3
        plus = expected_return({k: params[k] + h * direction[k] for k in params})
        minus = expected_return({k: params[k] - h * direction[k] for k in params})
        finite_difference = (plus - minus) / (2 * h)
        reinforce = -sum((inner_grad[k] * direction[k]).sum() for k in params) * reward_std
        assert reinforce.item() == pytest.approx(finite_difference.item(), rel=0.05)


def test_batched_adaptation_equals_per_task_and_adapt_patterns_pick_the_subset():
    algo = make_algo(adapt=["head.*"], inner_steps=2)
    params = {k: v.detach() for k, v in algo.model.named_parameters()}
    assert set(algo.adapted) == {"head.mean.weight", "head.mean.bias", "head.log_std"}
    goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4], [0.0, -0.5]])
    data = algo.rollout(params, params, None, goals, torch.Generator().manual_seed(0))
    fast = {k: params[k] for k in algo.adapted}
    batched, dim = algo.adapt_on(params, fast, None, data, 0.1)
    assert dim == 0 and set(batched) == set(algo.adapted)
    for i in range(3):
        single = algo.inner_step(params, fast, {k: v[i] for k, v in data.items()}, 0.1)
        for k in algo.adapted:
            assert torch.allclose(batched[k][i], single[k], atol=1e-5)
        assert not torch.allclose(single["head.log_std"], params["head.log_std"])


# ---- outer step ----------------------------------------------------------------------------------

def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x, ax = conjugate_gradient(lambda v: a @ v, b, 20)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    # A x is tracked by the iteration (TRPO's step length uses it), also when CG stops early.
    x, ax = conjugate_gradient(lambda v: a @ v, b, 3)
    assert not torch.allclose(x, torch.linalg.solve(a, b), atol=1e-3)
    assert torch.allclose(ax, a @ x, atol=1e-10)


def test_line_search_rejects_a_step_that_increases_the_loss_and_backtracks_into_the_kl_bound():
    state = {"x": torch.tensor([1.0])}

    def set_params(v):
        state["x"] = v.clone()

    def evaluate():  # loss x^2, "KL" (x - 1)^2 from the old point 1
        x = state["x"].item()
        return x * x, (x - 1) ** 2

    old = torch.tensor([1.0])
    # Every fraction of this step moves away from the minimum: rejected, parameters restored.
    fraction, loss, kl, trials = line_search(set_params, evaluate, old, torch.tensor([-1.0]), 1.0, 0.5, 10, 0.8)
    assert (fraction, loss, kl, trials) == (0.0, 1.0, 0.0, 10) and state["x"].item() == 1.0
    # A descent step of length 1.5 has KL (1.5 f)^2 <= 0.25 only for f <= 1/3: the first such
    # fraction is 0.8^5 = 0.328 (0.8^4 = 0.41 gives KL 0.38), the 6th trial.
    fraction, loss, kl, trials = line_search(set_params, evaluate, old, torch.tensor([1.5]), 1.0, 0.25, 10, 0.8)
    assert fraction == pytest.approx(0.8 ** 5) and trials == 6
    assert state["x"].item() == pytest.approx(1 - 1.5 * 0.8 ** 5)
    assert kl == pytest.approx((1.5 * 0.8 ** 5) ** 2) and loss == pytest.approx((1 - 1.5 * 0.8 ** 5) ** 2)


def test_fisher_vector_product_equals_the_hessian_of_the_mean_kl_through_the_adaptation():
    algo = make_algo(task_options={"horizon": 8}, trajectories=3)
    params = dict(algo.model.named_parameters())
    goals = torch.tensor([[0.2, 0.1], [-0.3, 0.4]])
    inner, post = algo.sample_and_adapt(params, goals)
    theta = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.no_grad():
        old = algo.post_policy(theta, inner, post["obs"])
    _, kl = algo.surrogate(*algo.post_policy(theta, inner, post["obs"]), post, old)
    flat_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, list(theta.values()), create_graph=True)])
    v = torch.randn(flat_grad.shape, generator=torch.Generator().manual_seed(0))
    pearlmutter = torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat_grad @ v, list(theta.values()))])
    _, pullback = torch.func.vjp(lambda th: algo.post_policy(th, inner, post["obs"]), {k: v.detach() for k, v in params.items()})
    fvp, calls = algo.fisher_vector_product(params, inner, post, old, pullback)
    assert torch.allclose(fvp(v) - algo.cg_damping * v, pearlmutter, rtol=1e-3, atol=1e-6 * pearlmutter.abs().max())
    assert len(calls) == 1 and pearlmutter.norm() > 0
    # The second-order path matters: with first_order the product differs.
    algo.first_order = True
    fvp_first, _ = algo.fisher_vector_product(params, inner, post, old)
    assert not torch.allclose(fvp_first(v), fvp(v), rtol=1e-2)


def test_trpo_step_respects_the_kl_bound():
    algo = make_algo(task_options={"horizon": 20}, trajectories=5, max_kl=1e-3)
    captured = {}
    sample = algo.sample_and_adapt

    def capture(params, goals, generator=None):
        captured["inner"], captured["post"] = sample(params, goals, generator)
        captured["theta"] = {k: v.detach().clone() for k, v in params.items()}
        return captured["inner"], captured["post"]

    algo.sample_and_adapt = capture
    goals = algo.task.sample(3, torch.Generator().manual_seed(0))
    metrics = algo.step(goals)
    assert metrics["step_fraction"] > 0 and metrics["loss"] < 0
    obs = captured["post"]["obs"]
    with torch.no_grad():
        before = algo.post_policy(captured["theta"], captured["inner"], obs)
        after = algo.post_policy(dict(algo.model.named_parameters()), captured["inner"], obs)
    mask = captured["post"]["mask"]
    kl = ((gaussian_kl(*before, *after) * mask).sum((1, 2)) / mask.sum((1, 2))).mean()
    assert 0 < kl.item() <= 1e-3 and kl.item() == pytest.approx(metrics["kl"], rel=1e-4)
    calls = algo.oracle_calls(3)
    assert calls["outer_grad"] == 3 and calls["inner_grad"] == 3 * (2 + algo.last["trials"])
    assert calls["second_order"] == 3 * algo.last["fvp"] + 1 * (3 + 2 * 3 * algo.last["fvp"])


@pytest.mark.parametrize("fisher_subsample, adapt", [(1.0, ["*"]), (0.5, ["*"]), (0.5, ["head.*"])])
def test_oracle_counts_equal_the_inner_gradients_actually_taken(fisher_subsample, adapt):
    # Count every inner REINFORCE gradient (one per task per adapt_on call) during one TRPO step.
    algo = make_algo(task_options={"horizon": 8}, inner_steps=2, fisher_subsample=fisher_subsample, adapt=adapt)
    taken = []
    original = algo.adapt_on

    def counting(params, fast, fast_dim, data, lr):
        taken.append(data["obs"].shape[0])
        return original(params, fast, fast_dim, data, lr)

    algo.adapt_on = counting
    algo.step(algo.task.sample(4, torch.Generator().manual_seed(1)))
    calls = algo.oracle_calls(4)
    assert calls["inner_grad"] == sum(taken)
    fvp = algo.last["fvp"]
    fisher_tasks = 2 if fisher_subsample < 1 else 4
    inner_hvp = 2 * (4 + 2 * fisher_tasks * fvp)
    assert calls["second_order"] == fisher_tasks * fvp + inner_hvp
    # ANIL-RL (frozen body): every inner Hessian-vector product needs a mixed product into the body too.
    assert calls["jacobian_vector"] == (inner_hvp if adapt == ["head.*"] else 0)


def test_evaluate_returns_per_task_returns_after_each_step_and_is_deterministic():
    algo = make_algo(task_options={"horizon": 10})
    result = algo.evaluate("test", 5, 2, seed=3, chunk=2)
    assert set(result) == {"return"} and result["return"].shape == (3, 5)
    assert torch.all(result["return"] < 0)
    assert torch.equal(result["return"], algo.evaluate("test", 5, 2, seed=3, chunk=2)["return"])
    # Validation goals are not the test goals (selection on "val" never sees the test set).
    val = algo.evaluate("val", 5, 0, seed=3)["return"]
    assert not torch.equal(val[0], result["return"][0])
    # eval_trajectories: every evaluation step samples that many trajectories per goal.
    algo.eval_trajectories, rollout, counts = 12, algo.rollout, []
    algo.rollout = lambda *args: counts.append(rollout(*args)["mask"].shape[1]) or rollout(*args)
    assert algo.evaluate("test", 5, 1, seed=3)["return"].shape == (2, 5)
    assert counts == [12, 12]


# ---- config and runs -----------------------------------------------------------------------------

def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="algo.outer"):
        make_algo(outer="foo")
    with pytest.raises(ConfigError, match="algo.trajectories"):
        make_algo(trajectories=0)
    with pytest.raises(ConfigError, match="algo.fisher_subsample"):
        make_algo(fisher_subsample=1.5)
    with pytest.raises(ConfigError, match="algo.adapt"):
        make_algo(adapt=["tail.*"])
    with pytest.raises(ConfigError, match="task.horizon"):
        Navigation2D(horizon=0)
    with pytest.raises(ConfigError, match="model.init_std"):
        GaussianMLP((2,), 2, init_std=0.0)
    from metarun.tasks.sinusoid import Sinusoid
    with pytest.raises(ConfigError, match="task"):
        MAMLRL(GaussianMLP((1,), 1), None, Sinusoid(), ["*"], 1, 0.1)


def test_cli_rejects_unknown_outer(capsys):
    from metarun.cli import main
    import sys
    argv = sys.argv
    sys.argv = ["metarun", "algo=maml_rl", "task=navigation2d", "model=gaussian_mlp", "algo.outer=foo"]
    try:
        with pytest.raises(SystemExit) as exit:
            main()
    finally:
        sys.argv = argv
    assert exit.value.code == 2
    assert "algo.outer='foo'" in capsys.readouterr().err


@pytest.mark.parametrize("swept", [["algo.inner_steps=2", "algo.inner_lr=0.05", "algo.adapt=[head.*]"],
                                   ["algo.outer=adam", "algo.inner_steps=0"]])
def test_run_through_the_train_loop_with_swept_values(tmp_path, swept):
    """The composed config runs end to end with the values a sweep would set (inner steps, lr, adapt, outer)."""
    from metarun.train import run
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=maml_rl_navigation", "iterations=2", "eval_every=1", "meta_batch_size=2",
            "eval_tasks=3", "eval_steps=2", "algo.trajectories=2", "task.horizon=10", "model.hidden=[8]",
            "progress=false", "logger=jsonl", *swept])
    GlobalHydra.instance().clear()
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert "eval/return_step2" in rows[-1] and "train/return" in rows[-1]
    assert math.isfinite(summary["test/return"]) and rows[-1]["oracle/outer_grad"] == 2 * 2
    if cfg.algo.outer == "adam":  # inner_steps=0: joint policy gradient, nothing through an adaptation
        assert rows[-1]["oracle/inner_grad"] == 0 and rows[-1]["oracle/second_order"] == 0
    else:  # two iterations of K*T*(2 + line-search trials) inner gradients, K=2, T=2
        assert rows[-1]["oracle/inner_grad"] >= 2 * (2 * 2 * 3)


@pytest.mark.slow
def test_short_navigation_run_improves_post_adaptation_return():
    algo = make_algo(seed=0, hidden=(32, 32), trajectories=10, fisher_subsample=0.5, task_options={"horizon": 50})
    before = algo.evaluate("val", 10, 1, seed=1)["return"].mean(1)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        algo.step(algo.task.sample(10, g))
    after = algo.evaluate("val", 10, 1, seed=1)["return"].mean(1)
    # Post-adaptation (1 step) return improves by a clear margin over the initial policy's.
    assert after[1] > before[1] + 5, (before, after)
