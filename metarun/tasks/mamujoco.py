"""Multi-agent MuJoCo (Peng et al., 2021) through Gymnasium-Robotics' MaMuJoCo: one robot, its joints
split among agents (`task.scenario` + `task.agent_conf`: HalfCheetah 2x3, Hopper 3x1, Ant 4x2, ...).

Each agent observes its own joints (`agent_obsk` = 0, as the Kaleidoscope reference) and acts on
them; the critic sees the global state (the single-agent observation). The reward is shared.
Episodes end when the robot falls (terminated, e.g. Hopper) or after `episode_limit` steps
(truncated: the value of the last state is still bootstrapped). Observations are zero-padded to
the longest agent's; parameter sharing needs all agents to have the same number of actions.

`MaMuJoCoEnv` steps `num_envs` simulations (a Python loop: one MuJoCo step is ~0.3 ms), resets
an environment as soon as its episode ends, and saves its exact state (joint positions and
velocities, step counters) for resume. Resets are seeded from a CPU generator the caller owns.
"""
import numpy as np
import torch

from metarun.config import ConfigError

SCENARIOS = ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Swimmer", "Reacher", "Humanoid", "HumanoidStandup",
             "InvertedPendulum", "InvertedDoublePendulum", "ManySegmentSwimmer", "ManySegmentAnt", "CoupledHalfCheetah")


def _make(scenario, agent_conf, agent_obsk):
    try:
        from gymnasium_robotics import mamujoco_v1
    except ImportError:
        raise ConfigError("task", "mamujoco", "needs Gymnasium-Robotics and MuJoCo: pip install -e '.[marl]'") from None
    try:
        # The step limit is ours (episode_limit); the wrapped env must never truncate on its own.
        return mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, max_episode_steps=10 ** 9)
    except Exception as e:  # MaMuJoCo raises bare Exceptions for unknown partitions
        raise ConfigError("task.agent_conf", agent_conf, f"a partition MaMuJoCo knows for {scenario} ({e})") from None


class MaMuJoCoEnv:
    """reset(generator) -> obs (envs, agents, obs_dim), state (envs, state_dim);
    step(actions (envs, agents, act_dim)) -> dict of next_obs, next_state (before any reset),
    reward, terminated, done (terminated or truncated), and obs/state to act on next (after resets)."""

    def __init__(self, task, num_envs):
        self.task, self.num_envs = task, num_envs
        self.envs = [_make(task.scenario, task.agent_conf, task.agent_obsk) for _ in range(num_envs)]
        self.agents = self.envs[0].possible_agents
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.generator = None

    def _views(self, env):
        obs = env._get_obs()
        padded = np.zeros((len(self.agents), self.task.obs_dim), dtype=np.float32)
        for i, a in enumerate(self.agents):
            padded[i, : len(obs[a])] = obs[a]
        return padded, env.state().astype(np.float32)

    def _reset_one(self, k):
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=self.generator))
        self.envs[k].reset(seed=seed)
        self.t[k] = 0

    def _gather(self):
        views = [self._views(env) for env in self.envs]
        device = self.task.device
        return (torch.from_numpy(np.stack([v[0] for v in views])).to(device),
                torch.from_numpy(np.stack([v[1] for v in views])).to(device))

    def reset(self, generator):
        self.generator = generator
        for k in range(self.num_envs):
            self._reset_one(k)
        return self._gather()

    def step(self, actions):
        actions = actions.detach().cpu().numpy().astype(np.float64)  # MuJoCo runs on the host
        reward, terminated = np.zeros(self.num_envs, dtype=np.float32), np.zeros(self.num_envs, dtype=bool)
        for k, env in enumerate(self.envs):
            _, r, term, _, _ = env.step({a: actions[k, i, : self.task.own_action_dims[i]] for i, a in enumerate(self.agents)})
            reward[k], terminated[k] = r[self.agents[0]], term[self.agents[0]]
        self.t += 1
        done = terminated | (self.t >= self.task.episode_limit)
        next_obs, next_state = self._gather()
        for k in np.flatnonzero(done):
            self._reset_one(k)
        obs, state = self._gather() if done.any() else (next_obs, next_state)
        device = self.task.device
        return {"next_obs": next_obs, "next_state": next_state, "reward": torch.from_numpy(reward).to(device),
                "terminated": torch.from_numpy(terminated).to(device), "done": torch.from_numpy(done).to(device),
                "obs": obs, "state": state}

    def state_dict(self):
        data = [env.single_agent_env.unwrapped.data for env in self.envs]
        return {"qpos": torch.tensor(np.stack([d.qpos for d in data])), "qvel": torch.tensor(np.stack([d.qvel for d in data])),
                "t": torch.tensor(self.t)}

    def load_state_dict(self, state):
        for k, env in enumerate(self.envs):
            env.reset(seed=0)
            env.single_agent_env.unwrapped.set_state(state["qpos"][k].numpy(), state["qvel"][k].numpy())
        self.t = state["t"].numpy().copy()
        return self._gather()


class MaMuJoCo:
    """Task family of one MaMuJoCo partition; the environment persists across iterations (`sample`
    returns None and the algorithm steps `make_env(num_envs)` itself)."""

    classification = False
    discrete = False

    def __init__(self, scenario="HalfCheetah", agent_conf="2x3", agent_obsk=0, episode_limit=1000, device="cpu"):
        if scenario not in SCENARIOS:
            raise ConfigError("task.scenario", scenario, "one of " + ", ".join(SCENARIOS))
        if not (isinstance(episode_limit, int) and not isinstance(episode_limit, bool) and episode_limit >= 1):
            raise ConfigError("task.episode_limit", episode_limit, "an integer >= 1")
        if not (agent_obsk is None or (isinstance(agent_obsk, int) and agent_obsk >= 0)):
            raise ConfigError("task.agent_obsk", agent_obsk, "null or an integer >= 0")
        self.scenario, self.agent_conf, self.agent_obsk = scenario, agent_conf, agent_obsk
        self.episode_limit, self.device = episode_limit, torch.device(device)
        probe = _make(scenario, agent_conf, agent_obsk)
        agents = probe.possible_agents
        if len(agents) < 2:
            raise ConfigError("task.agent_conf", agent_conf, "a partition into at least 2 agents (multi-agent RL)")
        self.n_agents = len(agents)
        self.own_action_dims = [probe.action_space(a).shape[0] for a in agents]
        if len(set(self.own_action_dims)) != 1:
            raise ConfigError("task.agent_conf", agent_conf, f"agents with equal action counts (shared actors); got {self.own_action_dims}")
        self.action_dim = self.own_action_dims[0]
        self.obs_dim = max(probe.observation_space(a).shape[0] for a in agents)
        self.state_dim = probe.state().shape[0]
        low, high = probe.action_space(agents[0]).low, probe.action_space(agents[0]).high
        self.action_low, self.action_high = torch.tensor(low, device=self.device), torch.tensor(high, device=self.device)
        self.input_shape, self.output_dim = (self.obs_dim,), self.action_dim
        probe.close()

    def model_sizes(self):
        return {"n_agents": self.n_agents, "state_dim": self.state_dim}

    def make_env(self, num_envs):
        return MaMuJoCoEnv(self, num_envs)

    def sample(self, n, generator, split):
        return None
