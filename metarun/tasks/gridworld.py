"""Gridworld lifetimes (Zheng et al., 2020, "What Can Learned Intrinsic Rewards Capture?").

A lifetime is `lifetime_episodes` episodes of one task with one freshly initialised agent. A task
is drawn per lifetime; the layout is fixed. Episodes end when the agent collects an object (or
reaches the goal, or opens a box) or after `horizon` steps; the next episode starts at S at once.
Actions: 0 up, 1 down, 2 left, 3 right; walking into a wall leaves the agent in place.

    empty_rooms        four rooms (9x9 with walls); an invisible goal (+1) fixed within a lifetime,
                       uniform over the open cells other than S across lifetimes
    random_abc         objects A ~ U[-1, 1], B ~ U[-0.5, 0], C ~ U[0, 0.5], drawn per lifetime
    key_box            boxes A, B, C (rewards as random_abc) open only with the key K (-0.1), which
                       the agent picks up by walking on it; opening a box ends the episode
    nonstationary_abc  A = +-1 (sign drawn per lifetime), B = -0.5, C = -A; A and C swap their
                       rewards every `swap_every` episodes

The paper gives neither grid sizes nor horizons: the layouts below and the defaults in
`DEFAULTS` are this reimplementation's choices (documented in docs/lifetime_rewards.md). The
observation is the agent's state as an index: its cell among the open cells, plus whether it
holds the key (key_box). Objects stay at fixed cells, so the state tells which object was
collected; the agent never sees rewards (the algorithm decides which reward it learns from).

`sample(n, generator, split)` draws n lifetimes' tasks from the CPU generator as a tuple
`(values (n, K), cells (n, K), seeds (n,))` on `device`: object rewards, object cells and a seed
per lifetime for its policy initialisation and action noise (metarun.rl.streams). `env(lifetimes)`
is the batched environment: every lifetime steps at once as torch tensors.
"""
import torch

from metarun.config import ConfigError

UP, DOWN, LEFT, RIGHT = range(4)
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))

LAYOUTS = {
    "empty_rooms": ("#########",
                    "#S..#...#",
                    "#.......#",
                    "#...#...#",
                    "##.###.##",
                    "#...#...#",
                    "#.......#",
                    "#...#...#",
                    "#########"),
    "abc": ("#######",
            "#A...B#",
            "#.....#",
            "#..S..#",
            "#.....#",
            "#C....#",
            "#######"),
    "key_box": ("#######",
                "#A...B#",
                "#.....#",
                "#..S..#",
                "#..K..#",
                "#C....#",
                "#######"),
}

# env: (layout, lifetime_episodes, horizon). Lifetimes of the paper where it gives them (Empty Rooms
# 200 episodes, Non-stationary ABC 1000); the rest are this reimplementation's choices.
DEFAULTS = {
    "empty_rooms": ("empty_rooms", 200, 30),
    "random_abc": ("abc", 50, 20),
    "key_box": ("key_box", 100, 30),
    "nonstationary_abc": ("abc", 1000, 20),
}
ENVS = tuple(DEFAULTS)
OBJECTS = "ABC"


class Gridworld:
    """Task family: lifetimes of one gridworld environment; `sample` draws their tasks."""

    classification = False
    output_dim = 4  # actions

    def __init__(self, env="random_abc", lifetime_episodes=None, horizon=None, swap_every=250, key_reward=-0.1, device="cpu"):
        if env not in DEFAULTS:
            raise ConfigError("task.env", env, "one of " + ", ".join(ENVS))
        layout, default_episodes, default_horizon = DEFAULTS[env]
        lifetime_episodes = default_episodes if lifetime_episodes is None else lifetime_episodes
        horizon = default_horizon if horizon is None else horizon
        for key, value in (("task.lifetime_episodes", lifetime_episodes), ("task.horizon", horizon), ("task.swap_every", swap_every)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(key, value, "an integer >= 1 (a lifetime is at least one episode of at least one step)")
        if not isinstance(key_reward, (int, float)) or isinstance(key_reward, bool):
            raise ConfigError("task.key_reward", key_reward, "a number")
        self.env_name, self.episodes, self.horizon = env, lifetime_episodes, horizon
        self.swap_every = swap_every if env == "nonstationary_abc" else 0
        self.key_reward = float(key_reward)
        self.device = torch.device(device)
        self.rows = LAYOUTS[layout]
        self._parse()

    def _parse(self):
        cells = [(r, c) for r, row in enumerate(self.rows) for c, ch in enumerate(row) if ch != "#"]
        index = {rc: i for i, rc in enumerate(cells)}
        self.cells_rc = cells  # open cell i -> (row, col), for plots
        self.n_open = len(cells)
        self.has_key = any("K" in row for row in self.rows)
        self.states = self.n_open * (2 if self.has_key else 1)
        self.input_shape = (self.states,)
        where = {ch: index[(r, c)] for r, row in enumerate(self.rows) for c, ch in enumerate(row) if ch not in "#."}
        self.start = where["S"]
        self.key_cell = where.get("K", -1)
        self.object_names = ["G"] if self.env_name == "empty_rooms" else list(OBJECTS)
        self.fixed_cells = None if self.env_name == "empty_rooms" else [where[o] for o in OBJECTS]
        moves = []
        for r, c in cells:
            moves.append([index.get((r + dr, c + dc), index[(r, c)]) for dr, dc in MOVES])
        self.next_cell = torch.tensor(moves, dtype=torch.long, device=self.device)  # (n_open, 4)
        self.distance = self._distances(moves)  # (n_open, n_open) shortest-path lengths, for the hand-designed reward
        self.swap_mask = torch.tensor([True, False, True], device=self.device)  # the objects a swap negates: A, C
        # Goals of empty_rooms: any open cell but the start.
        self.goal_cells = torch.tensor([i for i in range(self.n_open) if i != self.start], dtype=torch.long, device="cpu")

    def _distances(self, moves):
        """Shortest-path lengths between open cells (breadth-first search from each)."""
        n = len(moves)
        dist = torch.full((n, n), float(n), device="cpu")
        for source in range(n):
            dist[source, source] = 0
            frontier, d = [source], 0
            while frontier:
                d += 1
                reached = [j for i in frontier for j in moves[i] if dist[source, j] > d]
                for j in reached:
                    dist[source, j] = d
                frontier = reached
        return dist.to(self.device)

    @property
    def num_objects(self):
        return len(self.object_names)

    def sample(self, n, generator, split="train"):
        """n lifetimes' tasks: (values (n, K), cells (n, K), seeds (n,)). Every split has the same distribution."""
        g = generator
        u = torch.rand(n, 3, generator=g, device="cpu")
        if self.env_name == "empty_rooms":
            values = torch.ones(n, 1, device="cpu")
            pick = torch.randint(len(self.goal_cells), (n,), generator=g, device="cpu")
            cells = self.goal_cells[pick][:, None]
        else:
            if self.env_name == "nonstationary_abc":
                a = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
                values = torch.stack([a, torch.full_like(a, -0.5), -a], 1)
            else:  # random_abc, key_box: A ~ U[-1, 1], B ~ U[-0.5, 0], C ~ U[0, 0.5]
                values = torch.stack([2 * u[:, 0] - 1, -0.5 * u[:, 1], 0.5 * u[:, 2]], 1)
            cells = torch.tensor(self.fixed_cells, dtype=torch.long, device="cpu").expand(n, -1).clone()
        seeds = torch.randint(0, 2 ** 31 - 1, (n,), generator=g, device="cpu")
        return values.to(self.device), cells.to(self.device), seeds.to(self.device)

    def env(self, lifetimes, start_episode=None):
        """A batched environment for the lifetimes `(values, cells, seeds)` of `sample`."""
        return BatchedGrid(self, *lifetimes, start_episode=start_episode)

    def swap_sign(self, episode):
        """+1, or -1 where A's and C's rewards are swapped at this episode (nonstationary_abc)."""
        if not self.swap_every:
            return torch.ones_like(episode, dtype=torch.float32)
        return 1.0 - 2.0 * ((episode // self.swap_every) % 2).to(torch.float32)


class BatchedGrid:
    """The state of B lifetimes. `step` moves every agent, pays rewards, ends and restarts episodes.

    A lifetime that has finished its episodes is frozen: its steps are invalid (reward 0) until
    `restart` gives the slot a new lifetime.
    """

    FIELDS = ("values", "cells", "seeds", "pos", "key", "t", "episode", "clock")

    def __init__(self, task, values, cells, seeds, start_episode=None):
        self.task = task
        b = values.shape[0]
        self.values, self.cells, self.seeds = values, cells, seeds
        device = values.device
        self.pos = torch.full((b,), task.start, dtype=torch.long, device=device)
        self.key = torch.zeros(b, dtype=torch.bool, device=device)
        self.t = torch.zeros(b, dtype=torch.long, device=device)  # steps into the episode
        self.episode = torch.zeros(b, dtype=torch.long, device=device) if start_episode is None else start_episode.clone()
        self.clock = torch.zeros(b, dtype=torch.long, device=device)  # steps into the lifetime (random-stream counter)

    @property
    def alive(self):
        return self.episode < self.task.episodes

    def state(self):
        """State index: open cell, plus n_open when holding the key."""
        return self.pos + self.task.n_open * self.key.long()

    def step(self, action):
        """Move; returns the transition as a dict of (B,) tensors (`next_state` before any episode restart)."""
        task = self.task
        valid = self.alive
        new = torch.where(valid, task.next_cell[self.pos, action], self.pos)
        hit = new[:, None] == self.cells  # (B, K)
        if task.has_key:
            hit = hit & self.key[:, None]  # boxes open only with the key
        values = self.values
        if task.swap_every:  # A and C swap their rewards every swap_every episodes; B keeps its own
            values = torch.where(task.swap_mask, values * task.swap_sign(self.episode)[:, None], values)
        reward = (hit * values).sum(-1)
        terminal = hit.any(-1) & valid
        event = torch.where(terminal, hit.to(torch.long).argmax(-1), torch.full_like(new, -1))
        if task.has_key:
            got_key = valid & (new == task.key_cell) & ~self.key
            reward = reward + task.key_reward * got_key
            self.key = self.key | got_key
            event = torch.where(got_key, torch.full_like(event, task.num_objects), event)
        reward = reward * valid
        self.pos = new
        next_state = self.state()
        self.t = self.t + valid
        self.clock = self.clock + valid
        end = valid & (terminal | (self.t >= task.horizon))
        out = {"next_state": next_state, "reward": reward, "end": end, "event": event, "valid": valid,
               "episode": self.episode.clone()}
        # The next episode starts at S.
        self.pos = torch.where(end, torch.full_like(self.pos, task.start), self.pos)
        self.key = self.key & ~end
        self.t = torch.where(end, torch.zeros_like(self.t), self.t)
        self.episode = self.episode + end
        out["lifetime_end"] = end & ~self.alive
        return out

    def restart(self, mask, values, cells, seeds, start_episode=None):
        """Give the slots in `mask` new lifetimes (tasks `values, cells, seeds`), from episode 0 or `start_episode`."""
        m = mask[:, None]
        self.values = torch.where(m, values, self.values)
        self.cells = torch.where(m, cells, self.cells)
        self.seeds = torch.where(mask, seeds, self.seeds)
        self.pos = torch.where(mask, torch.full_like(self.pos, self.task.start), self.pos)
        self.key = self.key & ~mask
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        first = torch.zeros_like(self.episode) if start_episode is None else start_episode
        self.episode = torch.where(mask, first, self.episode)
        self.clock = torch.where(mask, torch.zeros_like(self.clock), self.clock)

    def state_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    def load_state_dict(self, state):
        for k in self.FIELDS:
            setattr(self, k, state[k])


class HandDesignedReward:
    """`algo.reward=oracle`: a reward written with knowledge of the environment family, an upper reference.

    The extrinsic reward plus potential-based shaping towards a target, Phi(s) = -shaping * (grid
    distance from s to the target), r = r_ext + gammabar Phi(s') - Phi(s) (Phi = 0 once an object is
    collected), which keeps the optimal policy of the episode's reward while pointing the agent at the target:
    empty_rooms  before the goal is found, +novelty for entering a cell never entered in this lifetime
                 (systematic exploration); once found, the goal is the target.
    ABC family   the target is the object worth most by what this lifetime has shown: an object not
                 yet collected counts at the top of its range (optimism: A 1, C 0.5), B never (B <= 0
                 in every task); in nonstationary_abc the designer also knows C = -A, so one
                 disappointing collection after a swap moves the target to the other object.
    key_box      the box chosen as above, by way of the key while the agent does not hold it.
    The state is per lifetime: `init(b, device)` gives it, `reset` clears slots, `__call__` steps it.
    """

    def __init__(self, task, gamma=0.9, shaping=0.1, novelty=0.1):
        self.task, self.gamma, self.shaping, self.novelty = task, gamma, shaping, novelty
        self.optimistic = torch.tensor([1.0, -1.0, 0.5], device=task.device)  # A, B (never a target), C

    def init(self, b, device):
        k = self.task.num_objects
        return {"visited": torch.zeros(b, self.task.n_open, dtype=torch.bool, device=device),
                "found": torch.zeros(b, dtype=torch.bool, device=device),
                "goal": torch.zeros(b, dtype=torch.long, device=device),
                "known": torch.zeros(b, k, dtype=torch.bool, device=device),
                "value": torch.zeros(b, k, device=device),
                "phase": torch.zeros(b, dtype=torch.long, device=device)}

    def reset(self, state, mask):
        return {k: torch.where(mask.view(-1, *[1] * (v.dim() - 1)), torch.zeros_like(v), v) for k, v in state.items()}

    def target(self, state, cells):
        """The target cell of each lifetime (B,): the goal once found, else the object worth most."""
        task = self.task
        if task.env_name == "empty_rooms":
            return state["goal"]
        known, value = state["known"], state["value"]
        if task.swap_every:  # C = -A: what was seen of one tells the other
            a = torch.where(known[:, 0], value[:, 0], torch.where(known[:, 2], -value[:, 2], torch.ones_like(value[:, 0])))
            c = torch.where(known[:, 0] | known[:, 2], -a, torch.ones_like(a))
            worth = torch.stack([a, -torch.ones_like(a), c], 1)
        else:
            worth = torch.where(known, value, self.optimistic)
            worth = torch.cat([worth[:, :1], -torch.ones_like(worth[:, 1:2]), worth[:, 2:]], 1)
        return cells.gather(1, worth.argmax(1, keepdim=True))[:, 0]

    def potential(self, cell, key, target):
        """-shaping * the length of the path left: via the key while the agent does not hold it (key_box)."""
        dist = self.task.distance
        if self.task.has_key:
            via_key = dist[cell, self.task.key_cell] + dist[self.task.key_cell, target]
            return -self.shaping * torch.where(key, dist[cell, target], via_key)
        return -self.shaping * dist[cell, target]

    def __call__(self, state, out, cells):
        task = self.task
        cell, before = out["next_state"] % task.n_open, out["state"] % task.n_open
        key_before = out["state"] >= task.n_open
        r_ext, event, valid = out["reward"], out["event"], out["valid"]
        # Phi = 0 after a collection ends the episode; a time-out keeps Phi (else timing out far away would pay).
        live = ~(out["end"] & (event >= 0) & (event < task.num_objects))
        key_after = out["next_state"] >= task.n_open
        phi_before = self.potential(before, key_before, self.target(state, cells))
        # What this step showed (the goal's cell, an object's reward) counts from the next step on.
        k = task.num_objects
        hit = torch.nn.functional.one_hot(event.clamp(0, k), k + 1)[:, :k].bool() & ((event >= 0) & (event < k) & valid)[:, None]
        if task.env_name == "empty_rooms":
            seen = state["visited"].gather(1, cell[:, None])[:, 0]
            bonus = torch.where(state["found"], torch.zeros_like(r_ext), self.novelty * (~seen).to(torch.float32))
            visited = state["visited"] | (torch.nn.functional.one_hot(cell, task.n_open).bool() & valid[:, None])
            new = {**state, "visited": visited, "found": state["found"] | (event == 0),
                   "goal": torch.where(event == 0, cell, state["goal"])}
            phi_after = self.potential(cell, key_after, self.target(new, cells))
            shaping = torch.where(state["found"], self.gamma * phi_after * live - phi_before, torch.zeros_like(r_ext))
            return (r_ext + bonus + shaping) * valid, new
        known = state["known"]
        if task.swap_every:  # the designer knows the schedule: after a swap, what was seen of A and C is stale
            phase = out["episode"] // task.swap_every
            known = known & (phase == state["phase"])[:, None]
            state = {**state, "phase": phase}
        new = {**state, "known": known | hit, "value": torch.where(hit, r_ext[:, None], state["value"])}
        phi_after = self.potential(cell, key_after, self.target(new, cells))
        return (r_ext + self.gamma * phi_after * live - phi_before) * valid, new


class LifetimeRecord:
    """What happened in B evaluation lifetimes, episode by episode, for the docs' figures.

    Per lifetime: its task's object rewards and cells (`values`, `cells`). Per lifetime and episode: the extrinsic
    return, the length, the outcome (the object whose collection ended it: 0..K-1, or -1 for a
    time-out), the number of distinct cells entered, the agent's reward summed at each kind of event
    (collecting object k; K = the key) with its count, and summed over the other steps with their count.
    Per lifetime, phase (`bins` equal parts of the lifetime) and cell: the agent's reward summed on
    entering the cell, and its count. `add` takes one segment (B, T) at a time.
    """

    def __init__(self, task, values, cells, bins=10):
        e, k, c = task.episodes, task.num_objects, task.n_open
        b, device = values.shape[0], values.device
        self.task, self.bins, self.values, self.cells = task, bins, values, cells
        z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.episode_return, self.episode_length = z(b, e + 1), z(b, e + 1)  # column e: steps past the last episode (none)
        self.outcome = torch.full((b, e + 1), -1, dtype=torch.long, device=device)
        self.event_reward, self.event_count = z(b, e * (k + 1) + 1), z(b, e * (k + 1) + 1)
        self.cell_reward, self.cell_count = z(b, bins * c), z(b, bins * c)
        self.step_reward, self.step_count = z(b, e + 1), z(b, e + 1)
        self.entered = torch.zeros(b, e * c + 1, dtype=torch.bool, device=device)

    def add(self, traj, rewards):
        task = self.task
        e, k, c = task.episodes, task.num_objects, task.n_open
        valid = traj["valid"]
        vf = valid.to(torch.float32)
        ep = torch.where(valid, traj["episode"].clamp_max(e - 1), torch.full_like(traj["episode"], e))
        self.episode_return.scatter_add_(1, ep, traj["reward"] * vf)
        self.episode_length.scatter_add_(1, ep, vf)
        self.outcome.scatter_(1, torch.where(traj["end"], ep, torch.full_like(ep, e)), traj["event"])
        self.outcome[:, e] = -1
        has_event = valid & (traj["event"] >= 0)
        slot = torch.where(has_event, ep * (k + 1) + traj["event"].clamp_min(0), torch.full_like(ep, e * (k + 1)))
        self.event_reward.scatter_add_(1, slot, rewards * has_event)
        self.event_count.scatter_add_(1, slot, has_event.to(torch.float32))
        plain = valid & (traj["event"] < 0)
        self.step_reward.scatter_add_(1, ep, rewards * plain)
        self.step_count.scatter_add_(1, ep, plain.to(torch.float32))
        cell = traj["next_state"] % c
        phase = torch.div(ep.clamp_max(e - 1) * self.bins, e, rounding_mode="floor")
        self.cell_reward.scatter_add_(1, phase * c + cell, rewards * vf)
        self.cell_count.scatter_add_(1, phase * c + cell, vf)
        self.entered.scatter_(1, torch.where(valid, ep * c + cell, torch.full_like(ep, e * c)), True)

    def result(self):
        task = self.task
        e, k, c, b = task.episodes, task.num_objects, task.n_open, self.outcome.shape[0]
        return {"values": self.values, "cells": self.cells, "episode_return": self.episode_return[:, :e], "episode_length": self.episode_length[:, :e],
                "step_reward": self.step_reward[:, :e], "step_count": self.step_count[:, :e],
                "outcome": self.outcome[:, :e], "cells_entered": self.entered[:, :e * c].view(b, e, c).sum(-1).to(torch.float32),
                "event_reward": self.event_reward[:, :-1].view(b, e, k + 1), "event_count": self.event_count[:, :-1].view(b, e, k + 1),
                "cell_reward": self.cell_reward.view(b, self.bins, c), "cell_count": self.cell_count.view(b, self.bins, c)}

    @staticmethod
    def merge(records):
        parts = [r.result() for r in records]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
