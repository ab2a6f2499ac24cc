"""Delayed-reward MuJoCo (Zheng, Oh and Singh, 2018, Sec. 4.2): a Gymnasium MuJoCo v5 environment
whose reward is held back and released in sums.

    RewardDelay(k):  r'_t = r_{t-k+1} + ... + r_t  when the k-th step since the last release ends,
                     or the episode ends (the pending part is released then), else 0

The policy learns from r'; what is logged and evaluated is always the true, undelayed episode return
(info["undelayed_reward"] carries each step's true reward). There is one task: the environment
persists across iterations and the algorithm (algo=ppo, algo=lirpg) owns it, so `sample` returns
None. The paper's v2 environments no longer install with current MuJoCo; v5 is the maintained
version (other observations and reward details, so absolute scores differ from the paper's).
"""
import gymnasium

from metarun.config import ConfigError, DataError


class RewardDelay(gymnasium.Wrapper):
    """Release the summed reward every `delay` steps and at episode end; 0 in between."""

    def __init__(self, env, delay):
        super().__init__(env)
        self.delay = delay
        self.pending, self.count = 0.0, 0  # reward held back and steps since the last release

    def reset(self, **kwargs):
        self.pending, self.count = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.pending += float(reward)
        self.count += 1
        info["undelayed_reward"] = float(reward)
        if terminated or truncated or self.count == self.delay:
            released, self.pending, self.count = self.pending, 0.0, 0
            return obs, released, terminated, truncated, info
        return obs, 0.0, terminated, truncated, info

    def state_dict(self):
        return {"pending": self.pending, "count": self.count}

    def load_state_dict(self, state):
        self.pending, self.count = float(state["pending"]), int(state["count"])


def mujoco_env_ids():
    """The MuJoCo v5 environments registered in Gymnasium (Hopper-v5, Walker2d-v5, ...)."""
    return sorted(k for k, spec in gymnasium.envs.registry.items()
                  if k.endswith("-v5") and "gymnasium.envs.mujoco" in str(spec.entry_point))


class MujocoDelayed:
    """Task family of one delayed-reward MuJoCo environment; `make_env` builds it for the algorithm."""

    classification = False

    def __init__(self, env_id="Hopper-v5", reward_delay=20, device="cpu"):
        if not (isinstance(reward_delay, int) and not isinstance(reward_delay, bool) and reward_delay >= 1):
            raise ConfigError("task.reward_delay", reward_delay, "an integer >= 1 (1: no delay)")
        try:
            import mujoco  # noqa: F401  (Gymnasium imports it only when an environment is made)
        except ImportError as e:
            raise DataError(f"task=mujoco_delayed needs MuJoCo ({e}): pip install \"metarun[rl]\" "
                            "(or pip install \"gymnasium[mujoco]\")") from None
        ids = mujoco_env_ids()
        if env_id not in ids:
            raise ConfigError("task.env_id", env_id, "a Gymnasium MuJoCo v5 environment: " + ", ".join(ids))
        self.env_id, self.reward_delay, self.device = env_id, reward_delay, device
        probe = gymnasium.make(env_id)
        self.input_shape = tuple(probe.observation_space.shape)
        self.output_dim = int(probe.action_space.shape[0])
        self.action_low, self.action_high = probe.action_space.low.astype("float64"), probe.action_space.high.astype("float64")
        probe.close()

    def make_env(self, delayed=True):
        """A fresh environment: Gymnasium's (with its TimeLimit), wrapped in RewardDelay unless `delayed` is False."""
        env = gymnasium.make(self.env_id)
        return RewardDelay(env, self.reward_delay) if delayed else env

    def sample(self, n, generator, split="train"):
        return None  # one persistent environment, owned by the algorithm
