"""metarun.rl.returns against plain numpy loops, and gradients against finite differences."""
import numpy as np
import pytest
import torch

from metarun.rl.returns import discounted_returns, gae, n_step_returns


def numpy_returns(rewards, discount, dones):
    out, running = np.zeros_like(rewards), np.zeros(rewards.shape[:-1])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + discount * running * (1 - dones[..., t])
        out[..., t] = running
    return out


def numpy_gae(rewards, values, next_values, dones, terminated, gamma, lam):
    """The textbook backward recursion (as in OpenAI baselines' ppo2 runner)."""
    adv, running = np.zeros_like(rewards), np.zeros(rewards.shape[:-1])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[..., t] + gamma * next_values[..., t] * (1 - terminated[..., t]) - values[..., t]
        running = delta + gamma * lam * (1 - dones[..., t]) * running
        adv[..., t] = running
    return adv


def episode_ends(shape, seed, p=0.15):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float64)


def test_discounted_returns_match_a_loop_with_and_without_episode_ends():
    rewards = np.random.default_rng(0).normal(size=(2, 3, 17))
    dones = episode_ends(rewards.shape, 1)
    got = discounted_returns(torch.from_numpy(rewards), 0.9).numpy()
    np.testing.assert_allclose(got, numpy_returns(rewards, 0.9, np.zeros_like(rewards)), rtol=1e-12)
    got = discounted_returns(torch.from_numpy(rewards), 0.9, torch.from_numpy(dones)).numpy()
    np.testing.assert_allclose(got, numpy_returns(rewards, 0.9, dones), rtol=1e-12)


def test_gae_equals_the_numpy_recursion_with_episode_ends_and_time_limits():
    rng = np.random.default_rng(2)
    shape = (4, 64)
    rewards, values, next_values = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape)
    dones = episode_ends(shape, 3)
    terminated = dones * (rng.random(shape) < 0.5)  # some ends are time limits: bootstrapped, not propagated
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    got = gae(t(rewards), t(values), t(next_values), t(dones), 0.99, 0.95, terminated=t(terminated)).numpy()
    np.testing.assert_allclose(got, numpy_gae(rewards, values, next_values, dones, terminated, 0.99, 0.95), rtol=1e-10, atol=1e-12)
    # Without `terminated`, every end stops the bootstrap.
    got = gae(t(rewards), t(values), t(next_values), t(dones), 0.99, 0.95).numpy()
    np.testing.assert_allclose(got, numpy_gae(rewards, values, next_values, dones, dones, 0.99, 0.95), rtol=1e-10, atol=1e-12)


def test_gae_gradient_with_respect_to_rewards_matches_finite_differences():
    # LIRPG differentiates the advantage through the (intrinsic) rewards: check that derivative.
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    values, next_values = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    dones = torch.zeros(12, dtype=torch.float64)
    dones[5] = 1
    weights = torch.randn(12, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r: (gae(r, values, next_values, dones, 0.9, 0.8) * weights).sum(), (rewards,))
    grad, = torch.autograd.grad((gae(rewards, values, next_values, dones, 0.9, 0.8) * weights).sum(), rewards)
    # Rewards after the episode end (index 5) cannot reach advantages before it.
    assert torch.allclose(grad[:6], torch.tensor([sum(weights[t].item() * 0.72 ** (j - t) for t in range(j + 1)) for j in range(6)],
                                                  dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 3, 10])
def test_n_step_returns_equal_the_formula(n):
    rng = np.random.default_rng(n)
    h = 9
    rewards, values = rng.normal(size=(2, h)), rng.normal(size=(2, h + 1))
    dones = episode_ends((2, h), 5, p=0.2)
    expected = np.zeros((2, h))
    for b in range(2):
        for t in range(h):
            total, scale, alive = 0.0, 1.0, True
            for k in range(n):
                if t + k >= h:
                    break
                total += scale * rewards[b, t + k]
                scale *= 0.9
                if dones[b, t + k]:
                    alive = False
                    break
            if alive:
                total += scale * values[b, min(t + n, h)]
            expected[b, t] = total
    got = n_step_returns(torch.from_numpy(rewards), torch.from_numpy(values), 0.9, n, torch.from_numpy(dones)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_n_step_returns_rejects_values_without_a_bootstrap_step():
    with pytest.raises(ValueError, match="values needs 5"):
        n_step_returns(torch.zeros(4), torch.zeros(4), 0.9, 2)
