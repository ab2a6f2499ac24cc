"""2D navigation (Finn et al., 2017, Sec. 5.3; cbfinn/maml_rl point_env_randgoal).

A point starts at (0, 0) and must reach a goal drawn from U[-0.5, 0.5]^2. The observation is
the position, the action a velocity clipped to [-0.1, 0.1] per axis, the reward the negative
distance to the goal (not squared). An episode ends when the point is within 0.01 of the goal
on both axes (terminated) or after `horizon` = 100 steps (truncated).

`normalize_actions` (default true) reproduces rllab's ``normalize()`` wrapper that the reference
numbers were obtained with: the policy acts in [-1, 1] units, scaled linearly onto the velocity
box, so a unit-variance initial policy explores at the scale of the box. With false the policy's
action is the velocity itself.

`test_goals=reference` meta-tests on the 40 goals of the reference's test script
(cbfinn/maml_rl `test_maml_point.py`: ``np.random.seed(1); np.random.uniform(-0.5, 0.5, (40, 2))``),
so metarun's table and the published one average over the same goals; `sampled` (default) draws
the test goals like any split, from the evaluation's seeded generator.

`BatchedNavigation2D` steps every (task, trajectory) pair at once as torch tensors; `Navigation2DEnv`
is a single-goal Gymnasium-compatible environment over the same dynamics.
"""
import numpy as np
import torch

from metarun.config import ConfigError

try:  # Gymnasium is optional: without it the single env keeps the same API on a plain class.
    import gymnasium
    from gymnasium import spaces
except ImportError:  # pragma: no cover - exercised only where gymnasium is absent
    gymnasium = None


class BatchedNavigation2D:
    """Dynamics for goals of shape (*batch, 2): positions start at the origin, all step together.

    `step` is pure dynamics; the caller masks what happens after an episode terminated.
    """

    def __init__(self, goals, max_speed=0.1, success_radius=0.01, action_scale=1.0):
        self.goals = goals
        self.max_speed, self.success_radius, self.action_scale = max_speed, success_radius, action_scale
        self.position = torch.zeros_like(goals)

    def reset(self, generator=None):
        # Every episode starts at the origin: no reset noise, so `generator` is unused (it seeds
        # the reset noise of tasks that have some, such as half_cheetah_*).
        self.position = torch.zeros_like(self.goals)
        return self.position.clone()

    def step(self, action):
        """Return (observation, reward, terminated) after moving by the clipped velocity."""
        velocity = (self.action_scale * action).clamp(-self.max_speed, self.max_speed)
        self.position = self.position + velocity
        offset = self.position - self.goals
        reward = -offset.norm(dim=-1)
        terminated = (offset.abs() < self.success_radius).all(-1)
        return self.position.clone(), reward, terminated


class Navigation2D:
    """Task family: a task is a goal; `sample` returns goals of shape (n, 2)."""

    input_shape = (2,)
    output_dim = 2
    classification = False

    def __init__(self, horizon=100, goal_low=-0.5, goal_high=0.5, max_speed=0.1, success_radius=0.01, normalize_actions=True,
                 test_goals="sampled", device="cpu"):
        if not (isinstance(horizon, int) and horizon >= 1):
            raise ConfigError("task.horizon", horizon, "an integer >= 1")
        if not goal_low < goal_high:
            raise ConfigError("task.goal_high", goal_high, f"a number > task.goal_low={goal_low}")
        for key, value in (("task.max_speed", max_speed), ("task.success_radius", success_radius)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(key, value, "a number > 0")
        if not isinstance(normalize_actions, bool):
            raise ConfigError("task.normalize_actions", normalize_actions, "true or false")
        if test_goals not in ("sampled", "reference"):
            raise ConfigError("task.test_goals", test_goals, "sampled or reference")
        self.horizon, self.goal_range, self.test_goals = horizon, (goal_low, goal_high), test_goals
        self.device = torch.device(device)
        self.max_speed, self.success_radius = max_speed, success_radius
        self.normalize_actions = normalize_actions
        # rllab's normalize(): a in [-1, 1] maps to lb + (a + 1) (ub - lb) / 2 = max_speed * a.
        self.action_scale = max_speed if normalize_actions else 1.0

    def sample(self, n, generator, split="train"):
        # Every split draws from the same goal distribution; evaluation uses its own seeded generator.
        low, high = self.goal_range
        if split == "test" and self.test_goals == "reference":
            # numpy's legacy stream seeded 1, as the reference drew them; past 40 the same stream goes on.
            goals = np.random.RandomState(1).uniform(low, high, size=(max(n, 40), 2))[:n]
            return torch.as_tensor(goals, dtype=torch.float32, device=self.device)
        # Drawn on the CPU (the generator's device), then moved: the same goals on every device.
        return (low + (high - low) * torch.rand(n, 2, generator=generator, device="cpu")).to(self.device)

    def env(self, goals):
        """Batched environment for goals of any leading shape, e.g. (tasks, trajectories, 2)."""
        return BatchedNavigation2D(goals, self.max_speed, self.success_radius, self.action_scale)


class Navigation2DEnv(gymnasium.Env if gymnasium else object):
    """One navigation task as a Gymnasium environment (the same dynamics as the batched one).

    ``reset(seed=..., options={"goal": (x, y)})`` fixes the goal; without a goal option a new goal
    is drawn from U[goal_low, goal_high]^2. `step` returns (obs, reward, terminated, truncated, info).
    """

    metadata = {"render_modes": []}

    def __init__(self, goal=None, **task_options):
        self.task = Navigation2D(**task_options)
        self.fixed_goal = None if goal is None else np.asarray(goal, dtype=np.float32)
        high = 1.0 if self.task.normalize_actions else self.task.max_speed
        if gymnasium:
            reach = self.task.horizon * self.task.max_speed  # the farthest an episode can go
            self.observation_space = spaces.Box(-reach, reach, shape=(2,), dtype=np.float32)
            self.action_space = spaces.Box(-high, high, shape=(2,), dtype=np.float32)
        self.action_high = high
        self.rng = np.random.default_rng()
        self.batched, self.t = None, 0

    def reset(self, *, seed=None, options=None):
        if gymnasium:
            super().reset(seed=seed)
            self.rng = self.np_random
        elif seed is not None:
            self.rng = np.random.default_rng(seed)
        goal = (options or {}).get("goal", self.fixed_goal)
        if goal is None:
            goal = self.rng.uniform(*self.task.goal_range, size=2)
        self.goal = np.asarray(goal, dtype=np.float32)
        self.batched = self.task.env(torch.as_tensor(self.goal)[None])
        self.t = 0
        return self.batched.reset()[0].numpy(), {"goal": self.goal.copy()}

    def step(self, action):
        if self.batched is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated = self.batched.step(torch.as_tensor(np.asarray(action, dtype=np.float32))[None])
        self.t += 1
        truncated = self.t >= self.task.horizon and not bool(terminated[0])
        return obs[0].numpy(), float(reward[0]), bool(terminated[0]), truncated, {"goal": self.goal.copy(), "distance": -float(reward[0])}
