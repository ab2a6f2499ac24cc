"""LIRPG and PPO: the meta-gradient against finite differences, the simulated Adam step against the
real one, the reward delay, the normaliser against VecNormalize's rule, exact resume, bad input."""
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from metarun.config import ConfigError, DataError

pytest.importorskip("mujoco")

from metarun.train import build, run  # noqa: E402

TINY = ["task=mujoco_delayed", "model=actor_critic", "model.hidden=[5]", "algo.nsteps=16", "algo.minibatches=2",
        "algo.epochs=1", "device=cpu"]


def make_cfg(*overrides):
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny_lirpg(*overrides):
    torch.manual_seed(0)
    _, model, _, algo = build(make_cfg("algo=lirpg", *TINY, "algo.intrinsic_hidden=[4]", *overrides))
    return algo


def float64_batch(algo):
    """A rollout of the tiny problem, in float64, with an episode end inside it, ready for meta_objective."""
    data = algo.rollout()
    algo.model.double()
    algo.intrinsic.double()
    data = {k: v.double() if torch.is_tensor(v) else v for k, v in data.items()}
    data["dones"][5] = 1.0  # an episode end inside the segment: the GAE must cut there
    with torch.no_grad():  # rollout-time quantities recomputed in float64
        from metarun.algos.ppo import gaussian_log_prob

        mean, log_std, data["values"] = algo.model(data["obs"], value=True)
        data["logp"] = gaussian_log_prob(mean, log_std, data["actions"]) - 0.05  # ratios != 1: a non-trivial surrogate
        data["next_values"] = algo.model.value(data["next_obs"])
    algo.advantages(data)
    return data


def prime_optimizer(algo, data):
    """One real Adam step, so the lookahead starts from a non-zero optimizer state."""
    loss, _ = algo.ppo_loss(None, data, torch.arange(8), data["adv"][:8], data["returns"][:8])
    loss.backward()
    algo.optimizer.step()
    algo.optimizer.zero_grad()


@pytest.mark.parametrize("detach_second_moment", [False])
def test_lookahead_meta_gradient_equals_finite_differences(detach_second_moment):
    # d L_ex(theta'(eta)) / d eta by autograd through adapt's Adam step and clip, against central
    # differences of the same function of eta (float64), for every eta entry of the reward net and some of V_ex.
    algo = tiny_lirpg(f"algo.detach_second_moment={detach_second_moment}", "algo.r_ex_coef=0.5", "algo.max_grad_norm=0.05")
    data = float64_batch(algo)
    prime_optimizer(algo, data)
    mb = torch.tensor([0, 3, 4, 6, 9, 12, 15])
    state = algo.adam_state()
    loss, inner_grad, _ = algo.meta_objective(data, mb, state)
    assert torch.linalg.vector_norm(inner_grad).item() == pytest.approx(0.05, rel=1e-6)  # the clip is active
    params = dict(algo.intrinsic.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    assert grads["reward_net.0.weight"].abs().max() > 1e-6  # the meta-gradient reaches r_in
    checked = 0
    for name in ("reward_net.0.weight", "reward_net.2.weight", "reward_net.2.bias", "value_net.0.bias"):
        p = params[name]
        for i in range(p.numel()):
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + 1e-6
                up = algo.meta_objective(data, mb, state)[0].item()
                p.view(-1)[i] = old - 1e-6
                down = algo.meta_objective(data, mb, state)[0].item()
                p.view(-1)[i] = old
            assert grads[name].view(-1)[i].item() == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9), (name, i)
            checked += 1
    assert checked > 40


def test_the_real_policy_step_equals_the_lookahead():
    # theta <- theta' : torch.optim.Adam's step with the kept gradient lands where the simulated step did.
    algo = tiny_lirpg()
    data = float64_batch(algo)
    prime_optimizer(algo, data)
    mb = torch.arange(8)
    _, inner_grad, _ = algo.meta_objective(data, mb, algo.adam_state())
    theta = torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])
    state = algo.adam_state()["theta"]
    m = 0.9 * state["exp_avg"] + 0.1 * inner_grad.detach()
    v = 0.999 * state["exp_avg_sq"] + 0.001 * inner_grad.detach() ** 2
    t = state["step"].item() + 1
    expected = theta - 3e-4 / (1 - 0.9 ** t) * m / (v.sqrt() / (1 - 0.999 ** t) ** 0.5 + 1e-5)
    algo.update(data, mb)
    after = torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])
    assert torch.allclose(after, expected, rtol=0, atol=1e-12)


def test_detached_second_moment_differentiates_through_the_first_moment_only():
    # One Adam step from zero state on theta = x * c: with the full derivative the step is
    # lr * sign(g) (no dependence on x); with v detached, d theta'/dx = -lr * c / |g| (hand-derived).
    from metarun.inner_loop import Adam, adapt

    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    c = 3.0

    def stepped(detach):
        return adapt(lambda p: x * c * p["w"].sum(), {"w": torch.zeros(1, dtype=torch.float64)}, 1, 0.1,
                     rule=Adam(eps=0.0, detach_second_moment=detach))["w"].sum()

    full, = torch.autograd.grad(stepped(False), x)
    assert full.item() == pytest.approx(0.0, abs=1e-12)
    first, = torch.autograd.grad(stepped(True), x)
    assert first.item() == pytest.approx(-0.1 * c / (c * 2.0), rel=1e-12)


def test_reward_delay_releases_the_sum_every_k_steps_and_at_episode_end():
    import gymnasium

    from metarun.tasks.mujoco_delayed import RewardDelay

    class Counter(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-1, 1, (1,))
        action_space = gymnasium.spaces.Box(-1, 1, (1,))

        def reset(self, seed=None, options=None):
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.zeros(1, np.float32), float(self.t), self.t == 7, False, {}

    env = RewardDelay(Counter(), 3)
    env.reset()
    got = [env.step(np.zeros(1))[1] for _ in range(7)]
    assert got == [0, 0, 1 + 2 + 3, 0, 0, 4 + 5 + 6, 7]  # step 7 ends the episode: its pending reward is released
    env.reset()
    assert [env.step(np.zeros(1))[1] for _ in range(3)] == [0, 0, 6]  # the count restarts with the episode


def test_normalizer_follows_vecnormalize():
    # SB3's VecNormalize arithmetic, written out: obs stats updated then applied, returns reset at done.
    from metarun.rl.normalize import Normalizer

    rng = np.random.default_rng(0)
    norm = Normalizer((3,), gamma=0.9)
    obs_seen, ret, rets = [], 0.0, []
    for t in range(50):
        obs = rng.normal(size=3) * 5 + 2
        obs_seen.append(obs)
        got = norm.observation(obs)
        x = np.array(obs_seen)
        count = 1e-4 + len(x)
        mean = x.sum(0) / count  # the prior (mean 0, var 1, count 1e-4) folded in
        var = (1e-4 * 1.0 + ((x - x.mean(0)) ** 2).sum(0) + x.mean(0) ** 2 * 1e-4 * len(x) / count) / count
        np.testing.assert_allclose(got, np.clip((obs - mean) / np.sqrt(var + 1e-8), -10, 10), rtol=1e-9)
        r, done = rng.normal(), t % 13 == 12
        ret = ret * 0.9 + r
        rets.append(ret)
        y = np.array(rets)
        rvar = (1e-4 + ((y - y.mean()) ** 2).sum() + y.mean() ** 2 * 1e-4 * len(y) / (1e-4 + len(y))) / (1e-4 + len(y))
        assert norm.reward(r, done) == pytest.approx(np.clip(r / np.sqrt(rvar + 1e-8), -10, 10), rel=1e-9)
        if done:
            ret = 0.0


@pytest.mark.parametrize("overrides, message", [
    (["task.reward_delay=0"], "task.reward_delay=0 is not allowed"),
    (["task.env_id=Hoper-v5"], "task.env_id='Hoper-v5' is not allowed: a Gymnasium MuJoCo v5 environment"),
    (["algo.minibatches=3"], "algo.minibatches=3 is not allowed"),
])
def test_bad_input_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(make_cfg("algo=ppo", *TINY, *overrides))


def test_missing_mujoco_is_a_data_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mujoco(name, *args, **kwargs):
        if name == "mujoco":
            raise ImportError("No module named 'mujoco'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mujoco)
    from metarun.tasks.mujoco_delayed import MujocoDelayed

    with pytest.raises(DataError, match=r'needs MuJoCo .*pip install "metarun\[rl\]"'):
        MujocoDelayed()


RESUME = ["algo.nsteps=64", "algo.minibatches=4", "algo.epochs=2", "model.hidden=[8]", "iterations=6", "eval_every=2",
          "log_every=1", "checkpoint_every=3", "eval_tasks=2", "eval_steps=0", "task=mujoco_delayed", "model=actor_critic",
          "device=cpu"]


@pytest.mark.parametrize("algo", ["lirpg", "ppo"])
def test_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, algo):
    # The checkpoint at iteration 3 falls inside an episode (a random Hopper policy falls after ~20-60
    # steps, 64 steps per iteration): the MuJoCo state, the env's RNG, the time limit, the delayed
    # reward, the normaliser, both optimizers and eta must all come back for the rows to be equal.
    from test_resume import check_resume_equals_uninterrupted, rows

    from metarun.algos.lirpg import LIRPG
    from metarun.algos.ppo import PPO

    extra = ["algo.intrinsic_hidden=[8]"] if algo == "lirpg" else []
    full, _ = check_resume_equals_uninterrupted(tmp_path, monkeypatch, LIRPG if algo == "lirpg" else PPO,
                                                [f"algo={algo}", *RESUME, *extra], 5)
    last = rows(tmp_path / "full")[-1]
    assert last["train/env_steps"] == 6 * 64 and last["train/episodes"] > 0
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["algo"]["runner"]["wrappers"][0]["count"] >= 0 and state["algo"]["runner"]["mujoco"].numel() > 10


def test_step_and_evaluation_are_device_clean():
    from test_device import audited

    algo = tiny_lirpg()
    assert audited(lambda: algo.step(None)) == []
    assert audited(lambda: algo.evaluate("val", 2, 0, 1, 1)) == []


def test_evaluation_is_seeded_by_split_and_independent_of_chunk():
    algo = tiny_lirpg()
    val = algo.evaluate("val", 3, 0, 7, chunk=3)["return"]
    assert val.shape == (1, 3)
    assert torch.equal(val, algo.evaluate("val", 3, 0, 7, chunk=1)["return"])
    assert not torch.equal(val, algo.evaluate("test", 3, 0, 7, chunk=3)["return"])


@pytest.mark.slow
def test_ppo_learns_undelayed_hopper_in_a_few_updates(tmp_path):
    # A run that actually learns: 12 updates of 1024 steps lift the training return of a random policy.
    summary = run(make_cfg("algo=ppo", "task=mujoco_delayed", "model=actor_critic", "task.reward_delay=1", "algo.nsteps=1024",
                           "iterations=12", "eval_every=12", "eval_tasks=2", "eval_steps=0", "log_every=1", "progress=false",
                           "device=cpu"), tmp_path)
    returns = [json.loads(line).get("train/return") for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    returns = [r for r in returns if r is not None]
    assert returns[-1] > 1.5 * returns[0], returns
    assert summary["test/return"] > 100


def test_quick_preset_runs_end_to_end_from_the_command_line(tmp_path):
    # The CI check of the setup: `metarun +experiment=lirpg_hopper_delayed` (scale=quick: two updates of
    # 2048 steps, validations, the test), then mode=eval of its checkpoint gives the same test figure.
    from conftest import run_metarun

    preset = "lirpg_hopper_delayed"
    out = run_metarun(f"+experiment={preset}", f"hydra.run.dir={tmp_path / preset}", "threads=1", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "final: test/return=" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / preset / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/env_steps"] == 2 * 2048 and "eval/return" in rows[-1]
    evaluated = run_metarun("mode=eval", f"run_dir={tmp_path / 'lirpg_hopper_delayed'}", f"hydra.run.dir={tmp_path / 'ev'}",
                            cwd=tmp_path, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["test/return"] == pytest.approx(
        json.loads((tmp_path / "lirpg_hopper_delayed" / "summary.json").read_text())["test/return"])


def test_bad_input_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    # Checked before any job starts, also inside a sweep (the second env id is the bad one).
    from conftest import run_metarun

    out = run_metarun("-m", "+experiment=lirpg_hopper_delayed", "task.reward_delay=0", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "metarun: error: task.reward_delay=0 is not allowed: must be an integer >= 1"], out.stderr
    out = run_metarun("-m", "+experiment=lirpg_hopper_delayed", "task.env_id=Hopper-v5,Hopper-v9", cwd=tmp_path, timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        "metarun: error: task.env_id='Hopper-v9' is not allowed: must be a Gymnasium MuJoCo v5 environment id"), out.stderr
    assert not (tmp_path / "outputs").exists()  # no job ran


def test_ppo_and_lirpg_refuse_other_task_families_and_models():
    with pytest.raises(ConfigError, match="task='Sinusoid' is not allowed: a task family with one persistent environment"):
        build(make_cfg("algo=ppo", "model=actor_critic"))
    with pytest.raises(ConfigError, match="model='MLP' is not allowed: actor_critic"):
        build(make_cfg("algo=lirpg", "task=mujoco_delayed"))
    with pytest.raises(ConfigError, match="ppo or lirpg for mujoco_delayed"):
        build(make_cfg("algo=maml", "task=mujoco_delayed"))


def test_autograd_and_torch_func_inner_gradients_give_the_same_meta_gradient():
    # LIRPG's eager lookahead takes the inner gradient with torch.autograd.grad; torch.func.grad
    # (functional=True, what algo.compile traces) must give the same eta gradient.
    algo = tiny_lirpg("algo.r_ex_coef=0.5")
    data = float64_batch(algo)
    prime_optimizer(algo, data)
    mb = torch.arange(3, 12)
    eta = list(algo.intrinsic.parameters())
    by_autograd = torch.autograd.grad(algo.meta_objective(data, mb, algo.adam_state())[0], eta)
    by_func = torch.autograd.grad(algo.meta_objective(data, mb, algo.adam_state(), functional=True)[0], eta)
    for a, b in zip(by_autograd, by_func):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_first_lookahead_starts_from_the_state_torch_adam_starts_from():
    # Before the policy's first step adam_state() is zeros at step 0: the lookahead from it must
    # land where torch.optim.Adam's first real step lands.
    algo = tiny_lirpg()
    data = float64_batch(algo)
    assert not algo.optimizer.state
    mb = torch.arange(8)
    _, inner_grad, _ = algo.meta_objective(data, mb, algo.adam_state())
    theta = torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])
    expected = theta - 3e-4 * inner_grad.detach() / (inner_grad.detach().abs() + 1e-5)  # Adam's first step
    algo.update(data, mb)
    after = torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])
    assert torch.allclose(after, expected, rtol=0, atol=1e-12)


@pytest.mark.slow  # compilations: ~1-2 min on 2 cores
@pytest.mark.parametrize("algo", ["lirpg", "ppo"])
def test_compiled_updates_train_like_the_eager_ones_and_resume(tmp_path, monkeypatch, algo):
    # algo.compile=true (torch.compile of PPO's minibatch loss, of LIRPG's whole meta objective) gives
    # the eager run's figures to float tolerance (compiled kernels may reorder sums), and a compiled
    # LIRPG run resumes exactly.
    from test_resume import check_resume_equals_uninterrupted

    from metarun.algos.lirpg import LIRPG

    extra = ["algo.intrinsic_hidden=[8]"] if algo == "lirpg" else []
    overrides = [f"algo={algo}", *RESUME, *extra, "iterations=5"]
    eager = run(make_cfg(*overrides), tmp_path / "eager")
    if algo == "lirpg":
        compiled, _ = check_resume_equals_uninterrupted(tmp_path / "c", monkeypatch, LIRPG, [*overrides, "algo.compile=true"], 5)
        compiled_dir = tmp_path / "c" / "full"
    else:
        compiled, compiled_dir = run(make_cfg(*overrides, "algo.compile=true"), tmp_path / "compiled"), tmp_path / "compiled"
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "eager", compiled_dir)]
    assert [r["iteration"] for r in rows[0]] == [r["iteration"] for r in rows[1]] == [0, 1, 2, 3, 4, 5]
    keys = ["train/outer_pg_loss", "train/v_ex_loss", "train/approx_kl_new", "train/r_in"] if algo == "lirpg" else ["train/pg_loss", "train/vf_loss", "train/approx_kl"]
    for a, b in zip(rows[0][1:], rows[1][1:]):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-6), k
    assert compiled["test/return"] == pytest.approx(eager["test/return"], rel=1e-3)


@pytest.mark.slow
def test_metarun_report_on_a_ppo_and_lirpg_sweep(tmp_path):
    # PPO counts no oracle calls ({}), LIRPG does: the report's table must take both.
    from conftest import REPO, run_metarun

    from metarun import report

    sweep_dir = tmp_path / "multirun"
    result = run_metarun("-m", "+experiment=lirpg_delayed_sweep", "seed=0", "algo=ppo,lirpg", "algo.nsteps=128",
                         "algo.minibatches=2", "algo.epochs=1", "progress=false", f"hydra.sweep.dir={sweep_dir}", cwd=REPO,
                         timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = report.report(sweep_dir, out=tmp_path / "report", smooth=1)["table"].set_index("setting")
    assert table.loc["algo=lirpg", "oracle_calls_per_iter"] == 2 * 3  # inner, outer gradient and second-order product per minibatch
    assert table.loc["algo=ppo", "oracle_calls_per_iter"] == 0 and table["final_test_return"].notna().all()


def test_minibatch_mixed_advantage_is_the_gae_of_the_mixed_reward():
    # LIRPG splits the mixed GAE into a constant of the rollout and r_in_coef * (rows of W^T) r_in:
    # the sum must be metarun.rl.returns.gae of r_ex_coef r_ex + r_in_coef r_in (with episode cuts and
    # time-limit bootstraps), entry for entry.
    from metarun.rl.returns import gae

    algo = tiny_lirpg("algo.r_ex_coef=0.7", "algo.r_in_coef=0.3")
    data = float64_batch(algo)
    data["terminated"][9] = 1.0
    data["dones"][9] = 1.0
    algo.advantages(data)
    with torch.no_grad():
        r_in = algo.intrinsic.reward(data["obs"], data["actions"])
        mixed = gae(0.7 * data["rewards"] + 0.3 * r_in, data["values"], data["next_values"], data["dones"], 0.99, 0.95,
                    terminated=data["terminated"])
    mb = torch.tensor([0, 2, 5, 6, 9, 10, 15])
    assert torch.allclose(data["adv"][mb] + 0.3 * (data["gae_rows"][mb] @ r_in), mixed[mb], rtol=1e-12, atol=1e-12)
