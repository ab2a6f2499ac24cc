"""metarun.rl.replay and metarun.rl.normalize: ring buffers, n-step sums, exact save/restore, running moments."""
import numpy as np
import pytest
import torch

from metarun.rl.normalize import TorchRunningMeanStd
from metarun.rl.replay import EpisodeReplay, TransitionReplay


def episodes(start, n, length=3):
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return {"obs": ids[:, None, None].expand(n, length, 2).clone(), "actions": torch.zeros(n, length, dtype=torch.long)}


def test_episode_replay_overwrites_the_oldest_and_samples_distinct_episodes():
    buffer = EpisodeReplay(5, 3, {"obs": ((2,), torch.float32), "actions": ((), torch.long)})
    buffer.add(episodes(0, 3))
    buffer.add(episodes(3, 4))  # 7 episodes into 5 slots: 0 and 1 are gone
    assert len(buffer) == 5
    assert sorted(buffer.data["obs"][:, 0, 0].tolist()) == [2, 3, 4, 5, 6]
    batch = buffer.sample(5, torch.Generator().manual_seed(0))
    assert sorted(batch["obs"][:, 0, 0].tolist()) == [2, 3, 4, 5, 6]  # without replacement
    with pytest.raises(ValueError):
        buffer.sample(6, torch.Generator())


def test_episode_replay_state_round_trip_continues_identically():
    def filled():
        b = EpisodeReplay(4, 3, {"obs": ((2,), torch.float32), "actions": ((), torch.long)})
        b.add(episodes(0, 3))
        return b

    a, b = filled(), EpisodeReplay(4, 3, {"obs": ((2,), torch.float32), "actions": ((), torch.long)})
    b.load_state_dict(a.state_dict())
    for buf in (a, b):
        buf.add(episodes(10, 2))
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(a.sample(3, ga)["obs"], b.sample(3, gb)["obs"])
    assert torch.equal(a.data["obs"], b.data["obs"])


def transition_buffer(rewards, dones, capacity=None, envs=1):
    t = len(rewards)
    buffer = TransitionReplay(capacity or t * envs, envs, {"reward": ((), torch.float32), "done": ((), torch.bool),
                                                           "terminated": ((), torch.bool), "next_obs": ((1,), torch.float32),
                                                           "obs": ((1,), torch.float32)})
    for k in range(t):
        buffer.add({"reward": torch.tensor([rewards[k]] * envs, dtype=torch.float32),
                    "done": torch.tensor([dones[k]] * envs), "terminated": torch.tensor([dones[k]] * envs),
                    "obs": torch.full((envs, 1), float(k)), "next_obs": torch.full((envs, 1), float(k + 1))})
    return buffer


def n_step_by_hand(rewards, dones, start, n, gamma, newest):
    total, k = 0.0, 0
    while k < n and start + k <= newest:
        total += gamma ** k * rewards[start + k]
        k += 1
        if dones[start + k - 1]:
            break
    return total, gamma ** k, start + k  # return, discount, next obs (= index of the last step + 1)


def test_n_step_sums_stop_at_episode_ends_and_at_the_newest_step():
    rewards = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    dones = [False, False, True, False, False, False, False]
    buffer = transition_buffer(rewards, dones)
    gamma, n = 0.9, 3
    out = buffer.sample(200, torch.Generator().manual_seed(0), n_step=n, gamma=gamma)
    for obs, r, disc, nxt, term in zip(out["obs"][:, 0], out["reward"], out["discount"], out["next_obs"][:, 0], out["terminated"]):
        want = n_step_by_hand(rewards, dones, int(obs), n, gamma, newest=6)
        assert r.item() == pytest.approx(want[0]) and disc.item() == pytest.approx(want[1])
        assert nxt.item() == want[2]
        assert term.item() == dones[want[2] - 1]
    starts = set(out["obs"][:, 0].int().tolist())
    assert starts == set(range(7))  # every stored step can be drawn


def test_transition_ring_keeps_the_newest_steps_and_restores_exactly():
    rewards = [float(k) for k in range(10)]
    dones = [k % 4 == 3 for k in range(10)]
    buffer = transition_buffer(rewards, dones, capacity=6, envs=2)  # 3 rows of 2 environments
    assert len(buffer) == 6
    out = buffer.sample(100, torch.Generator().manual_seed(0), n_step=2, gamma=0.5)
    assert set(out["obs"][:, 0].int().tolist()) == {7, 8, 9}
    copy = TransitionReplay(6, 2, {k: (v.shape[2:], v.dtype) for k, v in buffer.data.items()})
    copy.load_state_dict(buffer.state_dict())
    a = buffer.sample(50, torch.Generator().manual_seed(2), n_step=3, gamma=0.9)
    b = copy.sample(50, torch.Generator().manual_seed(2), n_step=3, gamma=0.9)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_running_mean_std_equals_the_moments_of_all_data():
    rms = TorchRunningMeanStd()
    chunks = [torch.randn(n) * 3 + 1 for n in (5, 17, 40)]
    for c in chunks:
        rms.update(c)
    # Law of total variance over the chunks and the initial pseudo-sample (count 1e-4 at mean 0, variance 1,
    # as VecNormalize and EPyMARL start); each chunk enters with its unbiased variance, as in the reference.
    eps = 1e-4
    parts = [(eps, 0.0, 1.0)] + [(len(c), c.double().mean().item(), c.double().var().item()) for c in chunks]
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    var = sum(n * v + n * (m - mean) ** 2 for n, m, v in parts) / total
    assert rms.mean.item() == pytest.approx(mean, rel=1e-5)
    assert rms.var.item() == pytest.approx(var, rel=1e-5)
    back = TorchRunningMeanStd()
    back.load_state_dict(rms.state_dict())
    assert torch.equal(back.normalize(torch.ones(3)), rms.normalize(torch.ones(3)))
    assert np.isfinite(back.count.item())
