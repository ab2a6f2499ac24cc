"""Replay buffers: whole episodes (QMIX's recurrent agents) and n-step transitions (TD3-style learners).

Both keep their tensors on one device, overwrite the oldest data when full (a ring), are sampled
with indices drawn from a CPU generator the caller owns, and save/restore exactly through
`state_dict()` / `load_state_dict()` (only the filled part is saved).
"""
import torch


class EpisodeReplay:
    """Fixed-length episodes: each field stored as (capacity, length, ...) (EPyMARL's ReplayBuffer).

    `fields` maps a name to (shape of one step, dtype); `length` is the number of steps stored
    per episode (QMIX keeps T + 1: the last observation bootstraps the final transition).
    """

    def __init__(self, capacity, length, fields, device="cpu"):
        self.capacity, self.length, self.device = capacity, length, torch.device(device)
        self.data = {k: torch.zeros(capacity, length, *shape, dtype=dtype, device=self.device) for k, (shape, dtype) in fields.items()}
        self.next, self.size = 0, 0

    def __len__(self):
        return self.size

    def add(self, episodes):
        """Insert a batch of episodes: a dict of tensors (n, length, ...)."""
        n = next(iter(episodes.values())).shape[0]
        slots = (self.next + torch.arange(n, device=self.device)) % self.capacity
        for k, v in self.data.items():
            v[slots] = episodes[k].to(v.dtype)
        self.next = (self.next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n, generator):
        """n distinct episodes, uniformly (EPyMARL samples without replacement)."""
        if n > self.size:
            raise ValueError(f"cannot sample {n} episodes from a buffer holding {self.size}")
        index = torch.randperm(self.size, generator=generator, device="cpu")[:n].to(self.device)
        return {k: v[index] for k, v in self.data.items()}

    def state_dict(self):
        return {"next": self.next, "size": self.size, "data": {k: v[: self.size].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state):
        self.next, self.size = state["next"], state["size"]
        for k, v in self.data.items():
            v.zero_()
            v[: self.size] = state["data"][k].to(self.device)


class TransitionReplay:
    """Transitions of `envs` parallel environments, stored time-major as (capacity, envs, ...).

    A step of all environments is added at once. `sample` draws (time, env) pairs uniformly and
    returns n-step targets as HARL's off-policy buffer computes them: rewards are summed along the
    same environment until an episode ends (`done`: terminated or truncated) or the newest stored
    step, whichever comes first; `next_*` fields and `terminated` come from that last step, and
    `discount` = gamma^(number of rewards summed).
    """

    def __init__(self, capacity, envs, fields, device="cpu"):
        self.rows, self.envs, self.device = max(1, capacity // envs), envs, torch.device(device)
        self.data = {k: torch.zeros(self.rows, envs, *shape, dtype=dtype, device=self.device) for k, (shape, dtype) in fields.items()}
        for k in ("reward", "done", "terminated"):
            if k not in self.data:
                raise ValueError(f"TransitionReplay needs a {k!r} field")
        self.next, self.size = 0, 0  # in rows (steps of all environments)

    def __len__(self):
        return self.size * self.envs

    def add(self, step):
        """One step of every environment: a dict of tensors (envs, ...)."""
        for k, v in self.data.items():
            v[self.next] = step[k].to(v.dtype)
        self.next = (self.next + 1) % self.rows
        self.size = min(self.size + 1, self.rows)

    def sample(self, n, generator, n_step=1, gamma=0.99):
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        flat = torch.randint(self.size * self.envs, (n,), generator=generator, device="cpu").to(self.device)
        # Row r of the filled part, counted from the oldest stored step.
        age, env = flat // self.envs, flat % self.envs
        oldest = (self.next - self.size) % self.rows
        newest = self.size - 1
        reward = torch.zeros(n, device=self.device)
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        last, count = age.clone(), torch.zeros(n, device=self.device)
        for k in range(n_step):
            rows = (oldest + age + k) % self.rows
            use = alive & (age + k <= newest)
            reward = reward + use * gamma ** k * self.data["reward"][rows, env].float()
            count = count + use
            last = torch.where(use, age + k, last)
            alive = use & ~self.data["done"][rows, env].bool()
        first, final = (oldest + age) % self.rows, (oldest + last) % self.rows
        out = {k: v[first, env] for k, v in self.data.items() if not k.startswith("next_")}
        out.update({k: v[final, env] for k, v in self.data.items() if k.startswith("next_")})
        out.update(reward=reward, terminated=self.data["terminated"][final, env], discount=gamma ** count)
        return out

    def state_dict(self):
        # Saved oldest-first, so a resumed buffer holds the same rows in the same ring order.
        order = (torch.arange(self.size, device=self.device) + (self.next - self.size)) % self.rows
        return {"size": self.size, "data": {k: v[order].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state):
        self.size = state["size"]
        self.next = self.size % self.rows
        for k, v in self.data.items():
            v.zero_()
            v[: self.size] = state["data"][k].to(self.device)
