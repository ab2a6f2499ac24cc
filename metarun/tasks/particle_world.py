"""Multi-agent particle worlds (MPE) as batched torch environments on VMAS.

`task.scenario`:
    simple_world_comm  "World" of the Kaleidoscope paper: 4 learning adversaries (one a leader that
                       also chooses one of 4 messages, 20 actions) chase 2 faster prey; forests hide,
                       food attracts prey. 3 more obstacles-and-food landmarks as in MPE.
    simple_tag         3 learning adversaries chase 1 faster prey among 2 obstacles.
    simple_spread      3 cooperative agents cover 3 landmarks without colliding.

The paper's prey were pretrained MADDPG policies, which are not available: here the prey are
**scripted** (`prey_policy`): each picks the move that best flees its nearest adversary while
keeping inside [-0.8, 0.8]^2 (MPE's prey are penalised for leaving [-0.9, 0.9]).

Agents act as in MPE with 5 discrete moves (stay, -x, +x, -y, +y; the leader: move + 5 * message;
`task.actions=vmas`: VMAS's own 9 moves, 3 per axis, diagonals included, as BenchMARL uses them),
observe MPE's observation vectors (zero-padded to the longest one) and the team reward is the sum
of the learning agents' rewards, as in the reference (EPyMARL's gymma wrapper). Episodes last
`episode_limit` = 25 steps.

VMAS's own versions of these scenarios (pinned vmas 1.5.2) differ from MPE; the subclasses below
restore MPE's observations and rewards (each difference is tested in tests/test_particle_world.py
against `mpe2` on the same states and listed in docs/kaleidoscope.md):
  * simple_world_comm: the adversaries' distance shaping is 0 (|a - a| instead of |a - agent|);
    `in_forest` is always -1 and no adversary but the leader ever sees another agent (writes into
    advanced-indexing copies); positions/velocities are repeated per forest and velocities of
    adversaries included (60/56-dim observations instead of MPE's 34/28); the prey's boundary
    penalty is missing.
  * simple_tag: the prey's boundary penalty is missing.
  * simple_spread: the reward is N x (global) - 2 x collisions per agent instead of MPE's
    0.5 x global + 0.5 x local; observations start with position instead of velocity and lack the
    (always zero) communication of the others; agents push with force 1 instead of MPE's 5.
Physics stay VMAS's (contact forces and integration order; walls at +-1 in simple_tag).

Random draws (initial positions) come from a CPU generator the caller owns, never from VMAS's
or torch's global RNG, so a seed fixes the episodes on any device and evaluation cannot disturb
training.
"""
import math

import torch

from metarun.config import ConfigError

SCENARIOS = ("simple_world_comm", "simple_tag", "simple_spread")
ACTIONS = {"mpe": 5, "vmas": 9}  # MPE: stay, -x, +x, -y, +y; VMAS: {stay, -u, +u} per axis
# MPE move -> VMAS multi-discrete index per axis (0 stay, 1 -u, 2 +u).
_MOVE_TO_AXES = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 1], [0, 2]])
_MOVE_DIRECTIONS = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


def _vmas():
    try:
        import vmas  # noqa: F401
        from vmas.scenarios.mpe import simple_spread, simple_tag, simple_world_comm
    except ImportError:
        raise ConfigError("task", "particle_world", "needs VMAS: pip install -e '.[marl]'") from None
    return simple_world_comm, simple_tag, simple_spread


def bound_penalty(pos):
    """MPE's prey boundary penalty bound(|x|), summed over the 2 coordinates (simple_world_comm doubles it)."""
    x = pos.abs()
    return torch.where(x < 0.9, torch.zeros_like(x), torch.where(x < 1.0, (x - 0.9) * 10, torch.exp(2 * x - 2).clamp_max(10))).sum(-1)


def _scenarios():
    """The MPE-faithful subclasses of VMAS's scenarios (built lazily: VMAS is optional)."""
    world_comm, tag, spread = _vmas()

    class _Cached:
        """Computes every agent's observation and reward once per step (VMAS asks agent by agent)."""

        generator = None  # a CPU torch.Generator set by the task's env before each reset

        def reset_world_at(self, env_index=None):
            n = self.world.batch_dim if env_index is None else 1
            for entity in self.world.agents:
                entity.set_pos(self._uniform(n, 1.0), batch_index=env_index)
            for entity in self.world.landmarks:
                entity.set_pos(self._uniform(n, self.landmark_range), batch_index=env_index)
            self._fresh = None

        def _uniform(self, n, half):
            draw = torch.rand(n, self.world.dim_p, generator=self.generator, device="cpu") * 2 - 1
            return (half * draw).to(self.world.device)

        def post_step(self):
            self._fresh = None

        def _state(self):
            if getattr(self, "_fresh", None) is None:
                self._fresh = self.compute()
            return self._fresh

        def observation(self, agent):
            return self._state()[0][self.world.agents.index(agent)]

        def reward(self, agent):
            return self._state()[1][self.world.agents.index(agent)]

    def positions(entities):
        return torch.stack([e.state.pos for e in entities], 1)

    def radii(entities, device):
        return torch.tensor([e.shape.radius for e in entities], device=device)

    def collisions(a, b):
        """(B, |a|, |b|) contact indicator: centre distance < sum of radii (MPE's is_collision)."""
        dist = (positions(a)[:, :, None] - positions(b)[:, None]).norm(dim=-1)
        return dist < radii(a, dist.device)[:, None] + radii(b, dist.device)[None]

    class WorldComm(_Cached, world_comm.Scenario):
        landmark_range = 0.9

        def compute(self):
            agents, world = self.world.agents, self.world
            adv = torch.tensor([a.adversary for a in agents], device=world.device)
            leader = torch.tensor([a.leader for a in agents], device=world.device)
            p = positions(agents)
            v = torch.stack([a.state.vel for a in agents], 1)
            rel_land = positions(world.landmarks)[:, None] - p[:, :, None]  # (B, agents, landmarks, 2)
            inf = collisions(agents, world.forests)  # (B, agents, forests)
            same_forest = (inf[:, :, None] & inf[:, None]).any(-1)  # (B, observer, other)
            outside = ~inf.any(-1)
            seen = same_forest | (outside[:, :, None] & outside[:, None]) | leader[None, :, None]
            rel = (p[:, None] - p[:, :, None]) * seen[..., None]  # [b, i, j] = p_j - p_i if seen
            vel = v[:, None] * seen[..., None]
            comm = agents[0].state.c
            forest_flag = inf.float() * 2 - 1
            obs, rews = [], []
            prey = [j for j, a in enumerate(agents) if not a.adversary]
            caught = collisions([agents[j] for j in prey], [a for a in agents if a.adversary])  # (B, prey, adv)
            food = collisions([agents[j] for j in prey], world.food)  # (B, prey, food)
            food_dist = (positions(world.food)[:, None] - p[:, prey, None]).norm(dim=-1).min(-1).values  # (B, prey)
            prey_dist = (p[:, prey][:, None] - p[:, :, None]).norm(dim=-1).min(-1).values  # (B, agents)
            for i, a in enumerate(agents):
                others = [j for j in range(len(agents)) if j != i]
                good_others = [j for j in others if not adv[j]]
                parts = [v[:, i], p[:, i], rel_land[:, i].flatten(1), rel[:, i, others].flatten(1)]
                if a.adversary:
                    parts += [vel[:, i, good_others].flatten(1), forest_flag[:, i], comm]
                    rews.append(-0.1 * prey_dist[:, i] + 5 * caught.sum((1, 2)))
                else:
                    parts += [forest_flag[:, i], vel[:, i, good_others].flatten(1)]
                    k = prey.index(i)
                    rews.append(-5 * caught[:, k].sum(-1) - 2 * bound_penalty(p[:, i]) + 2 * food[:, k].sum(-1) - 0.05 * food_dist[:, k])
                obs.append(torch.cat(parts, -1))
            return obs, rews

    class Tag(_Cached, tag.Scenario):
        landmark_range = 0.9

        def compute(self):
            agents = self.world.agents
            adversaries = [a for a in agents if a.adversary]
            obs = [tag.Scenario.observation(self, a) for a in agents]
            p = positions(agents)
            prey = [j for j, a in enumerate(agents) if not a.adversary]
            caught = collisions([agents[j] for j in prey], adversaries)  # (B, prey, adv)
            rews = [10 * caught.sum((1, 2)).float() if a.adversary else
                    -10 * caught[:, prey.index(i)].sum(-1) - bound_penalty(p[:, i]) for i, a in enumerate(agents)]
            return obs, rews

    class Spread(_Cached, spread.Scenario):
        landmark_range = 1.0
        local_ratio = 0.5  # mpe2 simple_spread_v3's default
        force = 5.0  # MPE's default sensitivity (accel None); VMAS's agents push with 1

        def make_world(self, batch_dim, device, **kwargs):
            world = super().make_world(batch_dim, device, **kwargs)
            for agent in world.agents:
                agent.action._u_multiplier = self.force
                agent.action._u_multiplier_tensor = None
            return world

        def compute(self):
            agents, world = self.world.agents, self.world
            p = positions(agents)
            v = torch.stack([a.state.vel for a in agents], 1)
            rel_land = positions(world.landmarks)[:, None] - p[:, :, None]
            covered = -rel_land.norm(dim=-1).min(1).values.sum(-1)  # -sum over landmarks of the closest agent's distance
            touch = collisions(agents, agents) & ~torch.eye(len(agents), dtype=torch.bool, device=p.device)
            obs, rews = [], []
            for i in range(len(agents)):
                others = [j for j in range(len(agents)) if j != i]
                comm = torch.zeros(p.shape[0], 2 * len(others), device=p.device)  # silent agents: MPE's zero messages
                obs.append(torch.cat([v[:, i], p[:, i], rel_land[:, i].flatten(1), (p[:, others] - p[:, i, None]).flatten(1), comm], -1))
                rews.append((1 - self.local_ratio) * covered - self.local_ratio * touch[:, i].sum(-1))
            return obs, rews

    return {"simple_world_comm": WorldComm, "simple_tag": Tag, "simple_spread": Spread}


def scripted_prey(prey_pos, adversary_pos, margin=0.8):
    """MPE move indices (..., prey) fleeing the nearest adversary and steering back inside +-margin.

    prey_pos (..., prey, 2), adversary_pos (..., adversaries, 2). The desired direction is the unit
    vector away from the nearest adversary plus, per coordinate beyond `margin`, a pull back of
    5 x the excess; the move with the largest dot product with it is taken (stay when it is 0).
    """
    away = prey_pos[..., :, None, :] - adversary_pos[..., None, :, :]
    nearest = away.norm(dim=-1).argmin(-1)
    flee = torch.gather(away, -2, nearest[..., None, None].expand(*nearest.shape, 1, 2)).squeeze(-2)
    flee = flee / flee.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    back = -torch.sign(prey_pos) * (prey_pos.abs() - margin).clamp_min(0) * 5
    score = (flee + back) @ _MOVE_DIRECTIONS.to(prey_pos.device).T  # (..., prey, moves)
    return score.argmax(-1)


class ParticleEnv:
    """`num_envs` copies of a scenario stepped together; the learning agents' view of it.

    reset(generator) -> obs (envs, agents, obs_dim);
    step(actions (envs, agents) long) -> obs, team reward (envs,).
    Episodes have a fixed length (`task.episode_limit`); the caller counts the steps.
    """

    def __init__(self, task, num_envs):
        import vmas

        self.task, self.num_envs = task, num_envs
        self.scenario = task.scenario_class()
        self.vmas = vmas.make_env(self.scenario, num_envs=num_envs, device=task.device, continuous_actions=False,
                                  multidiscrete_actions=True, seed=0, **task.scenario_kwargs)
        agents = self.vmas.agents
        self.learners = [i for i, a in enumerate(agents) if task.learns(a)]
        self.prey = [i for i in range(len(agents)) if i not in self.learners]
        self.says = [not agents[i].silent for i in range(len(agents))]
        self.axes = _MOVE_TO_AXES.to(task.device)

    def _observe(self, obs):
        views = [obs[i] for i in self.learners]
        width = self.task.obs_dim
        return torch.stack([torch.nn.functional.pad(o, (0, width - o.shape[-1])) for o in views], 1)

    def reset(self, generator):
        self.scenario.generator = generator
        return self._observe(self.vmas.reset())

    def step(self, actions):
        agents = self.vmas.agents
        full = [None] * len(agents)
        for k, i in enumerate(self.learners):
            full[i] = actions[:, k]
        if self.prey:
            pos = torch.stack([a.state.pos for a in agents], 1)
            hunters = [i for i, a in enumerate(agents) if a.adversary]
            moves = scripted_prey(pos[:, self.prey], pos[:, hunters])
            for k, i in enumerate(self.prey):
                full[i] = moves[:, k]
        vmas_actions, moves = [], self.task.n_moves
        for i, a in enumerate(full):
            move = a % moves if i in self.learners else a  # the scripted prey move as MPE agents
            axes = self.axes[move] if moves == 5 or i not in self.learners else torch.stack([move // 3, move % 3], -1)
            vmas_actions.append(torch.cat([axes, (a // moves)[:, None]], -1) if self.says[i] else axes)
        obs, rewards, _, _ = self.vmas.step(vmas_actions)
        team = torch.stack([rewards[i] for i in self.learners], -1).sum(-1)
        return self._observe(obs), team


class ParticleWorld:
    """Task family of one particle scenario; the environment persists across iterations, so
    `sample` returns None and the algorithm steps `make_env(num_envs)` itself."""

    classification = False
    discrete = True

    def __init__(self, scenario="simple_world_comm", episode_limit=25, actions="mpe", device="cpu", **scenario_kwargs):
        if scenario not in SCENARIOS:
            raise ConfigError("task.scenario", scenario, "one of " + ", ".join(SCENARIOS))
        if actions not in ACTIONS:
            raise ConfigError("task.actions", actions, "mpe (5 moves) or vmas (9 moves)")
        self.n_moves = ACTIONS[actions]
        if not (isinstance(episode_limit, int) and not isinstance(episode_limit, bool) and episode_limit >= 1):
            raise ConfigError("task.episode_limit", episode_limit, "an integer >= 1")
        self.name, self.episode_limit, self.device = scenario, episode_limit, torch.device(device)
        self.scenario_class = _scenarios()[scenario]
        self.scenario_kwargs = {k: v for k, v in scenario_kwargs.items() if v is not None}
        counts = {"simple_world_comm": ("num_adversaries", "num_good_agents"), "simple_tag": ("num_adversaries", "num_good_agents"),
                  "simple_spread": ("n_agents",)}[scenario]
        for key in counts:
            value = self.scenario_kwargs.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"task.{key}", value, "an integer >= 1")
        probe = ParticleEnv(self, 1)
        agents = probe.vmas.agents
        learners = [agents[i] for i in probe.learners]
        if len(learners) < 2:
            key = "task.n_agents" if scenario == "simple_spread" else "task.num_adversaries"
            raise ConfigError(key, len(learners), "at least 2 learning agents (multi-agent RL)")
        obs = probe.vmas.reset()
        self.n_agents = len(learners)
        self.obs_dim = max(obs[i].shape[-1] for i in probe.learners)
        # Actions beyond an agent's own count are unavailable (the leader has 20, the others 5).
        own = torch.tensor([self.n_moves * (probe.vmas.world.dim_c if not a.silent else 1) for a in learners])
        self.n_actions = int(own.max())
        self.avail_actions = (torch.arange(self.n_actions)[None] < own[:, None]).to(self.device)
        self.state_dim = self.n_agents * self.obs_dim  # the reference's state: all agents' observations
        self.input_shape, self.output_dim = (self.obs_dim,), self.n_actions

    def learns(self, agent):
        return agent.adversary if self.name != "simple_spread" else True

    def model_sizes(self):
        return {"n_agents": self.n_agents, "state_dim": self.state_dim}

    def make_env(self, num_envs):
        return ParticleEnv(self, num_envs)

    def sample(self, n, generator, split):
        return None
