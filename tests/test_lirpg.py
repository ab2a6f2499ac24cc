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
    data["gae_rows"] = data["gae_rows"].double()
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
    loss, rule, _ = algo.meta_objective(data, mb)
    assert torch.linalg.vector_norm(rule.grads["theta"]).item() == pytest.approx(0.05, rel=1e-6)  # the clip is active
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
                up = algo.meta_objective(data, mb)[0].item()
                p.view(-1)[i] = old - 1e-6
                down = algo.meta_objective(data, mb)[0].item()
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
    _, rule, _ = algo.meta_objective(data, mb)
    theta = torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])
    state = algo.adam_state()["theta"]
    m = 0.9 * state["exp_avg"] + 0.1 * rule.grads["theta"].detach()
    v = 0.999 * state["exp_avg_sq"] + 0.001 * rule.grads["theta"].detach() ** 2
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
