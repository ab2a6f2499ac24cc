"""HalfCheetah goal-velocity and goal-direction tasks (Finn et al., 2017, Sec. 5.3; cbfinn/maml_rl
half_cheetah_env_rand.py and half_cheetah_env_rand_direc.py) on Gymnasium's MuJoCo HalfCheetah-v5.

    goal=velocity   a task is a target forward velocity v* ~ U[goal_low, goal_high] = U[0, 2];
                    reward = -|v - v*| - ctrl_cost * ||a||^2
    goal=direction  a task is a direction d in {-1, +1}, each with probability 1/2;
                    reward = d * v - ctrl_cost * ||a||^2

v is Gymnasium's forward velocity (its info["x_velocity"]: the root's x displacement over one env
step of 5 physics steps, divided by dt = 0.05 s), a the action clipped to the actuators' box [-1, 1]
(the clipped action also drives the simulation), ctrl_cost = 0.05 (the reference's 0.1 * 0.5).
Observations are Gymnasium's 17 numbers (qpos without the root's x, qvel). Episodes never terminate;
the rollout truncates them at `horizon` = 200 steps. Every split draws goals from the same
distribution (evaluation uses its own seeded generator, as for navigation2d).

`BatchedHalfCheetah` steps every (task, trajectory) pair: one MjData per pair, all sharing the
MjModel of one Gymnasium environment, stepped with `mujoco.mj_step` exactly as Gymnasium's
`HalfCheetahEnv.step` does (tests/test_half_cheetah.py checks observations and velocities against
it). Going around Gymnasium's per-env Python wrappers halves the time of a rollout; the physics
itself is the rest. The MjData pool is built once per count of pairs and reused by every rollout.
The initial-state noise of `reset` (Gymnasium's: qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)) is drawn
from a torch generator, so a run is reproducible from its seed like the action noise.
"""
import warnings

import numpy as np
import torch

from metarun.config import ConfigError, DataError

GOALS = ("velocity", "direction")
RESET_NOISE = 0.1  # Gymnasium's default reset_noise_scale for HalfCheetah-v5


class BatchedHalfCheetah:
    """HalfCheetah for goals of shape (*batch, 1), one MuJoCo simulation per goal, stepped together.

    The simulations come from the task's pool: an env is valid until the next `task.env(...)` call
    with the same number of goals (a rollout finishes before the next one starts).
    """

    def __init__(self, task, goals, datas):
        self.task, self.datas = task, datas
        self.shape = goals.shape[:-1]
        self.goals = goals.reshape(-1).double().cpu()  # the simulation and its rewards live on the CPU
        self.observation = np.empty((len(datas), task.input_shape[0]))  # filled in place, float64
        self.velocity = torch.zeros(len(datas), dtype=torch.float64)  # forward velocity of the last step

    def reset(self, generator=None):
        """Initial states with Gymnasium's noise drawn from `generator` (None: torch's global RNG)."""
        mujoco, model, n = self.task.mujoco, self.task.model, len(self.datas)
        noise = RESET_NOISE * (2 * torch.rand(n, model.nq, generator=generator, dtype=torch.float64, device="cpu") - 1)
        qpos = (self.task.init_qpos + noise).numpy()
        qvel = (self.task.init_qvel + RESET_NOISE * torch.randn(n, model.nv, generator=generator, dtype=torch.float64, device="cpu")).numpy()
        for i, data in enumerate(self.datas):
            mujoco.mj_resetData(model, data)
            data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
            mujoco.mj_forward(model, data)
            self._observe(i, data)
        self.velocity.zero_()
        return self._observations()

    def step(self, action):
        """Return (observation, reward, terminated) after one env step with the clipped action."""
        task = self.task
        mujoco, model, skip, dt = task.mujoco, task.model, task.frame_skip, task.dt
        action = action.detach().cpu().reshape(len(self.datas), -1).double().clamp(task.action_low, task.action_high)
        controls, velocity = action.numpy(), self.velocity.numpy()
        for i, data in enumerate(self.datas):  # the only per-simulation loop: physics in C
            x_before = data.qpos[0]
            data.ctrl[:] = controls[i]
            mujoco.mj_step(model, data, nstep=skip)
            velocity[i] = (data.qpos[0] - x_before) / dt
            self._observe(i, data)
        if task.goal == "velocity":
            progress = -(self.velocity - self.goals).abs()
        else:
            progress = self.goals * self.velocity
        reward = (progress - task.ctrl_cost * action.pow(2).sum(-1)).float().reshape(self.shape).to(task.device)
        return self._observations(), reward, torch.zeros(self.shape, dtype=torch.bool, device=task.device)

    def _observe(self, i, data):
        k = self.task.model.nq - 1  # qpos without the root's x, then qvel (Gymnasium's observation)
        self.observation[i, :k] = data.qpos[1:]
        self.observation[i, k:] = data.qvel

    def _observations(self):
        return torch.from_numpy(self.observation).float().reshape(*self.shape, -1).to(self.task.device)


class HalfCheetah:
    """Task family: a task is a goal velocity or direction; `sample` returns goals of shape (n, 1)."""

    classification = False

    def __init__(self, goal="velocity", horizon=200, goal_low=0.0, goal_high=2.0, ctrl_cost=0.05, device="cpu"):
        if goal not in GOALS:
            raise ConfigError("task.goal", goal, "one of " + ", ".join(GOALS))
        if not (isinstance(horizon, int) and not isinstance(horizon, bool) and horizon >= 1):
            raise ConfigError("task.horizon", horizon, "an integer >= 1")
        for key, value in (("task.goal_low", goal_low), ("task.goal_high", goal_high), ("task.ctrl_cost", ctrl_cost)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(key, value, "a number")
        if not goal_low < goal_high:
            raise ConfigError("task.goal_high", goal_high, f"a number > task.goal_low={goal_low}")
        if ctrl_cost < 0:
            raise ConfigError("task.ctrl_cost", ctrl_cost, "a number >= 0")
        try:
            import gymnasium
            import mujoco
        except ImportError as e:
            raise DataError(f"the HalfCheetah tasks need Gymnasium's MuJoCo environments ({e}): "
                            'pip install "metarun[rl]" (or pip install "gymnasium[mujoco]")') from None
        self.goal, self.horizon, self.goal_range, self.ctrl_cost = goal, horizon, (goal_low, goal_high), ctrl_cost
        # MuJoCo simulates on the CPU: observations and rewards go to `device`, actions come back
        # from it once per env step (the one host transfer a GPU run of this task makes per step).
        self.device = torch.device(device)
        # One Gymnasium environment provides the model and constants; the simulations are MjData.
        # MuJoCo 4 warns (on stderr and into ./MUJOCO_LOG.TXT) that Gymnasium's half_cheetah.xml
        # uses the deprecated `settotalmass`: keep that one quiet, pass any other warning on.
        messages, previous = [], mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(messages.append)
        try:
            self.gym_env = gymnasium.make("HalfCheetah-v5", reset_noise_scale=RESET_NOISE).unwrapped
        finally:
            mujoco.set_mju_user_warning(previous)
        for message in messages:
            if "settotalmass" not in message:
                warnings.warn(f"MuJoCo: {message}", stacklevel=2)
        self.mujoco, self.model = mujoco, self.gym_env.model
        self.frame_skip, self.dt = self.gym_env.frame_skip, self.gym_env.dt
        self.init_qpos = torch.as_tensor(self.gym_env.init_qpos, dtype=torch.float64)
        self.init_qvel = torch.as_tensor(self.gym_env.init_qvel, dtype=torch.float64)
        space = self.gym_env.action_space
        self.action_low = torch.as_tensor(space.low, dtype=torch.float64)
        self.action_high = torch.as_tensor(space.high, dtype=torch.float64)
        self.input_shape = tuple(self.gym_env.observation_space.shape)  # (17,)
        self.output_dim = space.shape[0]  # 6
        self.pools = {}  # number of simulations -> list of MjData (creating one takes ~1 ms)

    def sample(self, n, generator, split="train"):
        if self.goal == "velocity":
            low, high = self.goal_range
            goals = low + (high - low) * torch.rand(n, 1, generator=generator, device="cpu")
        else:
            goals = 2.0 * torch.randint(0, 2, (n, 1), generator=generator, device="cpu") - 1.0
        return goals.to(self.device)

    def env(self, goals):
        """Batched environment for goals of any leading shape, e.g. (tasks, trajectories, 1)."""
        if goals.ndim < 2 or goals.shape[-1] != 1:
            raise ValueError(f"goals must have shape (..., 1), got {tuple(goals.shape)}")
        count = goals[..., 0].numel()
        if count not in self.pools:
            self.pools[count] = [self.mujoco.MjData(self.model) for _ in range(count)]
        return BatchedHalfCheetah(self, goals, self.pools[count])
