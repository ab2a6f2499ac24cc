"""HalfCheetah velocity and direction tasks: rewards against Gymnasium's own step, goal sampling,
clipping, shapes, seeded resets, the simulation pool, config errors, and a tiny MAML-RL run."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco")
gymnasium = pytest.importorskip("gymnasium")
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from metarun.config import ConfigError, DataError  # noqa: E402
from metarun.tasks.half_cheetah import HalfCheetah  # noqa: E402

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def tasks():
    return {"velocity": HalfCheetah("velocity"), "direction": HalfCheetah("direction")}


def gym_twin(env, i):
    """A Gymnasium HalfCheetah-v5 in the state of simulation i of our batched env."""
    mujoco.set_mju_user_warning(lambda message: None)  # its settotalmass deprecation warning
    try:
        twin = gymnasium.make("HalfCheetah-v5").unwrapped
    finally:
        mujoco.set_mju_user_warning(None)
    twin.reset(seed=0)
    twin.set_state(env.datas[i].qpos.copy(), env.datas[i].qvel.copy())
    return twin


@pytest.mark.parametrize("kind", ["velocity", "direction"])
def test_reward_and_observation_match_gymnasium_step_by_step(tasks, kind):
    task = tasks[kind]
    goals = torch.tensor([[0.3], [1.7]]) if kind == "velocity" else torch.tensor([[1.0], [-1.0]])
    env = task.env(goals)
    obs = env.reset(torch.Generator().manual_seed(0))
    twins = [gym_twin(env, i) for i in range(2)]
    for i in range(2):
        np.testing.assert_allclose(obs[i].numpy(), twins[i]._get_obs(), atol=1e-6)
    g, velocities = torch.Generator().manual_seed(1), []
    for _ in range(4):  # several steps: the simulations carry their state as Gymnasium's does
        action = (0.8 * torch.randn(2, 6, generator=g)).clamp(-1, 1)  # in the box; clipping: next test
        obs, reward, terminated = env.step(action)
        assert obs.dtype == torch.float32 and reward.shape == (2,) and not terminated.any()
        for i, twin in enumerate(twins):
            a = action[i].double().numpy()
            twin_obs, _, twin_terminated, _, info = twin.step(a)
            np.testing.assert_allclose(obs[i].numpy(), twin_obs, atol=1e-5)
            # By hand from Gymnasium's info: its reward_ctrl is -0.1 ||a||^2; ours is 0.05 ||a||^2.
            v, g_i = info["x_velocity"], goals[i, 0].item()
            velocities.append(v)
            progress = -abs(v - g_i) if kind == "velocity" else g_i * v
            expected = progress - 0.05 * float(np.sum(a ** 2))
            assert info["reward_ctrl"] == pytest.approx(-0.1 * float(np.sum(a ** 2)))
            assert reward[i].item() == pytest.approx(expected, abs=1e-5)
            assert not twin_terminated
    assert max(map(abs, velocities)) > 0.05  # the velocity term was not trivially zero


def test_actions_are_clipped_for_the_dynamics_and_the_control_cost(tasks):
    task = tasks["direction"]
    env = task.env(torch.tensor([[1.0]]))
    env.reset(torch.Generator().manual_seed(2))
    twin = gym_twin(env, 0)
    action = torch.tensor([[3.0, -2.5, 0.5, -0.2, 1.5, -9.0]])
    clipped = action.clamp(-1, 1)
    obs, reward, _ = env.step(action)
    twin_obs, _, _, _, info = twin.step(clipped[0].double().numpy())
    np.testing.assert_allclose(obs[0].numpy(), twin_obs, atol=1e-5)
    assert reward[0].item() == pytest.approx(info["x_velocity"] - 0.05 * clipped.pow(2).sum().item(), abs=1e-5)
    assert reward[0].item() != pytest.approx(info["x_velocity"] - 0.05 * action.pow(2).sum().item(), abs=1e-2)


def test_shapes_and_seeded_resets_with_a_reused_pool(tasks):
    task = tasks["velocity"]
    assert task.input_shape == (17,) and task.output_dim == 6 and task.horizon == 200
    goals = task.sample(3, torch.Generator().manual_seed(0))[:, None].expand(-1, 2, -1)  # (tasks, trajectories, 1)
    env = task.env(goals)
    obs = env.reset(torch.Generator().manual_seed(5))
    assert obs.shape == (3, 2, 17) and obs.dtype == torch.float32
    # Gymnasium's initial-state noise: qpos (without x) within 0.1 of 0, qvel 0.1 N(0, 1).
    assert obs[..., :8].abs().max() <= 0.1 and obs[..., :8].abs().max() > 0.05
    assert 0.02 < obs[..., 8:].std() < 0.3
    g = torch.Generator().manual_seed(9)
    actions = [torch.randn(3, 2, 6, generator=g) for _ in range(3)]
    first = [env.step(a) for a in actions]
    # The same count reuses the pool's simulations, which a reset fully restores.
    again = task.env(goals)
    assert again.datas is env.datas
    assert torch.equal(again.reset(torch.Generator().manual_seed(5)), obs)
    assert all(data.time == 0 for data in again.datas)
    for a, (o, r, _) in zip(actions, first):
        o2, r2, _ = again.step(a)
        assert torch.equal(o2, o) and torch.equal(r2, r)
    assert not torch.equal(again.reset(torch.Generator().manual_seed(6)), obs)
    torch.manual_seed(3)  # no generator: torch's global RNG, so a run is reproducible from its seed
    before = env.reset()
    torch.manual_seed(3)
    assert torch.equal(env.reset(), before)
    assert task.env(torch.zeros(4, 1)).datas is not env.datas
    with pytest.raises(ValueError, match="shape"):
        task.env(torch.zeros(3, 2))


def test_construction_keeps_mujocos_deprecation_warning_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    HalfCheetah("velocity")
    assert "settotalmass" not in capfd.readouterr().err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is None  # MuJoCo's own handler is back for later warnings


def test_goal_sampling(tasks):
    velocity = tasks["velocity"].sample(4000, torch.Generator().manual_seed(0), "train")
    assert velocity.shape == (4000, 1) and velocity.min() >= 0 and velocity.max() <= 2
    assert velocity.mean().item() == pytest.approx(1.0, abs=0.03)
    assert velocity.std().item() == pytest.approx(2 / math.sqrt(12), rel=0.03)  # U[0, 2]
    assert torch.equal(velocity, tasks["velocity"].sample(4000, torch.Generator().manual_seed(0), "test"))
    direction = tasks["direction"].sample(4000, torch.Generator().manual_seed(0), "train")
    assert direction.shape == (4000, 1) and set(direction.unique().tolist()) == {-1.0, 1.0}
    assert (direction == 1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(direction, tasks["direction"].sample(4000, torch.Generator().manual_seed(0), "val"))
    assert not torch.equal(direction, tasks["direction"].sample(4000, torch.Generator().manual_seed(1), "val"))


def test_bad_options_and_a_missing_mujoco_fail_cleanly(monkeypatch):
    for options, key in [({"goal": "speed"}, "task.goal"), ({"horizon": 0}, "task.horizon"),
                         ({"goal_low": 2.0, "goal_high": 1.0}, "task.goal_high"), ({"ctrl_cost": -0.1}, "task.ctrl_cost"),
                         ({"goal_low": "a"}, "task.goal_low")]:
        with pytest.raises(ConfigError, match=key):
            HalfCheetah(**options)
    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` now raises ImportError
    with pytest.raises(DataError, match=r'pip install "metarun\[rl\]"'):
        HalfCheetah("velocity")


def test_maml_rl_evaluation_is_reproducible_from_the_seed():
    from metarun.algos.maml_rl import MAMLRL
    from metarun.models.gaussian_mlp import GaussianMLP
    task = HalfCheetah("direction", horizon=5)
    torch.manual_seed(0)
    algo = MAMLRL(GaussianMLP(task.input_shape, task.output_dim, hidden=(8, 8)), None, task, ["*"], 1, 0.1, trajectories=2)
    results = []
    for _ in range(2):  # the reset noise comes from torch's RNG, the goals and action noise from eval's seed
        torch.manual_seed(1)
        results.append(algo.evaluate("test", 3, 1, seed=4)["return"])
    assert results[0].shape == (2, 3) and torch.isfinite(results[0]).all()
    assert torch.equal(results[0], results[1])
    assert not torch.equal(algo.evaluate("test", 3, 1, seed=5)["return"], results[0])


@pytest.mark.parametrize("preset", ["maml_rl_half_cheetah_vel", "maml_rl_half_cheetah_dir"])
def test_one_meta_iteration_and_evaluation_through_the_train_loop(tmp_path, preset):
    from metarun.train import run
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"+experiment={preset}", "iterations=1", "eval_every=1", "meta_batch_size=2", "eval_tasks=2",
            "eval_steps=1", "algo.trajectories=2", "task.horizon=10", "model.hidden=[8,8]",
            "progress=false", "logger=jsonl", "threads=1"])
    GlobalHydra.instance().clear()
    assert cfg.task.goal == ("velocity" if preset.endswith("vel") else "direction")
    assert cfg.algo.inner_lr == 0.1 and cfg.algo.outer == "trpo"
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    last = rows[-1]
    values = [last["train/loss"], last["train/return"], last["eval/return_step0"], last["eval/return_step1"],
              summary["test/return"]]
    assert all(math.isfinite(v) for v in values)
    # 10 steps of |reward| <= |velocity| + |goal| + 0.05 * 6: far from 0 only if the env ran.
    assert last["train/return"] != 0 and abs(last["train/return"]) < 10 * 30
