"""MATD3 (Ackermann et al., 2019) with Kaleidoscope actors and a masked critic ensemble (Li, Pan and Zhang, 2024).

    one iteration (the reference: HARL's off-policy runner with 10 environments, train_interval 50):
        step `envs` environments `steps_per_iteration` times: a = pi_i(o_i) + N(0, 0.1) (uniform
        random actions for the first `warmup_steps` env steps), into the transition buffer
        then, once past the warm-up, `updates_per_iteration` updates, each:
            critic:  y = R^(n) + gamma^k min_j Q'_j(s', pi'(o') + clip(N(0, 0.2), +-0.5)) (1 - terminated)
                     L = sum_j mean (Q_j(s, a) - y)^2 (+ c_Q L_div over the critics' masks)
                     every `critic_reset_interval` env steps one critic's thresholds are redrawn, round-robin
            every `policy_freq` updates, actors: for agent i in turn (HARL's fixed order), one Adam step on
                     -mean_j Q_j(s, a_{-i}, pi_i(o_i)) (+ c L_div over the agents' masks),
                     every `reset_interval` env steps re-initialising weights all masks prune (prob. reset_ratio);
                     then Polyak averaging (0.005) of the target critics and, once per agent as HARL
                     does with a shared actor, of the target actor

n-step returns (n = 10) are summed along each environment until its episode ends (metarun.rl.replay).
The diversity coefficients are c = |div_coef * mean(last losses) / mean(last L_div)| as in QMIX.
`share` (actors) and `critic_share` (critics) take full | none | kaleidoscope (metarun.models.matd3);
share=full with critic_share=none and n_critics=2 is plain MATD3 with shared actors.
"""
import copy

import torch

from metarun.algos.qmix import check, integer, number
from metarun.config import ConfigError
from metarun.evaluate import split_seed
from metarun.nn.masks import diversity_loss, mask_distances
from metarun.nn.sharing import SHARES
from metarun.rl.replay import TransitionReplay
from metarun.tasks import MultiAgentTaskFamily


class AdaptiveCoefficient:
    """c = |beta * mean(last task losses) / mean(last diversity losses)| over a ring of `length` pairs (on the device)."""

    def __init__(self, beta, length, device):
        self.beta, self.ring, self.count = beta, torch.zeros(2, length, device=device), 0

    def __call__(self, loss, div):
        self.ring[:, self.count % self.ring.shape[1]] = torch.stack([loss.detach(), div.detach()])
        self.count += 1
        means = self.ring[:, :min(self.count, self.ring.shape[1])].mean(1)
        return torch.where(means[1] != 0, (self.beta * means[0] / means[1]).abs(), torch.full_like(means[1], self.beta))

    def state_dict(self):
        return {"ring": self.ring.clone(), "count": self.count}

    def load_state_dict(self, state):
        self.ring, self.count = state["ring"].to(self.ring.device), state["count"]


class MATD3:
    def __init__(self, model, optimizer, task, share="kaleidoscope", critic_share="kaleidoscope", n_critics=5, gamma=0.99,
                 n_step=10, batch_size=1000, buffer_size=1000000, envs=10, steps_per_iteration=50, updates_per_iteration=50,
                 warmup_steps=10000, actor_lr=5e-4, critic_lr=1e-3, polyak=0.005, policy_freq=2, expl_noise=0.1,
                 policy_noise=0.2, noise_clip=0.5, div_coef=0.1, div_history=100, layer_weights=(1.0, 2.0, 4.0),
                 reset_interval=1000000, reset_ratio=0.5, critic_div_coef=0.1, critic_div_history=100,
                 critic_reset_interval=800000, total_iterations=None):
        check([("algo.share", share, share in SHARES, "one of " + ", ".join(SHARES)),
               ("algo.critic_share", critic_share, critic_share in SHARES, "one of " + ", ".join(SHARES)),
               ("task", type(task).__name__, isinstance(task, MultiAgentTaskFamily) and not task.discrete,
                "a multi-agent task with continuous actions (task=mamujoco)"),
               ("algo.n_critics", n_critics, integer(n_critics, 1), "an integer >= 1"),
               ("algo.gamma", gamma, number(gamma, 0, 1), "a number in [0, 1]"),
               ("algo.n_step", n_step, integer(n_step, 1), "an integer >= 1"),
               ("algo.batch_size", batch_size, integer(batch_size, 1), "an integer >= 1"),
               ("algo.buffer_size", buffer_size, integer(buffer_size, 1), "an integer >= 1"),
               ("algo.envs", envs, integer(envs, 1), "an integer >= 1"),
               ("algo.steps_per_iteration", steps_per_iteration, integer(steps_per_iteration, 1), "an integer >= 1"),
               ("algo.updates_per_iteration", updates_per_iteration, integer(updates_per_iteration, 0), "an integer >= 0"),
               ("algo.warmup_steps", warmup_steps, integer(warmup_steps, 0), "an integer >= 0"),
               ("algo.actor_lr", actor_lr, number(actor_lr) and actor_lr > 0, "a number > 0"),
               ("algo.critic_lr", critic_lr, number(critic_lr) and critic_lr > 0, "a number > 0"),
               ("algo.polyak", polyak, number(polyak, 0, 1), "a number in [0, 1]"),
               ("algo.policy_freq", policy_freq, integer(policy_freq, 1), "an integer >= 1"),
               ("algo.reset_ratio", reset_ratio, number(reset_ratio, 0, 1), "a number in [0, 1]"),
               ("algo.reset_interval", reset_interval, integer(reset_interval, 1), "an integer >= 1"),
               ("algo.critic_reset_interval", critic_reset_interval, integer(critic_reset_interval, 1), "an integer >= 1")])
        self.model, self.task = model, task
        self.adapted = frozenset()  # no parameter adapts at test time (what mode=eval asks)
        self.actor_masks, self.critic_masks = model.actor.masked_layers(), model.critic.masked_layers()
        if (share == "kaleidoscope") != bool(self.actor_masks):
            raise ConfigError("algo.share", share, "the model's actor sharing (model.share, by default ${algo.share}): "
                              "kaleidoscope needs masked actor layers and only kaleidoscope uses them")
        if (critic_share == "kaleidoscope") != bool(self.critic_masks):
            raise ConfigError("algo.critic_share", critic_share, "the model's critic sharing (model.critic_share, by default ${algo.critic_share})")
        if critic_share == "kaleidoscope" and n_critics < 2:
            raise ConfigError("algo.n_critics", n_critics, "an integer >= 2 with critic_share=kaleidoscope (masks of one critic cannot diverge)")
        self.gamma, self.n_step, self.batch_size, self.envs = gamma, n_step, batch_size, envs
        self.steps_per_iteration, self.updates_per_iteration, self.warmup_steps = steps_per_iteration, updates_per_iteration, warmup_steps
        self.polyak, self.policy_freq = polyak, policy_freq
        self.expl_noise, self.policy_noise, self.noise_clip = expl_noise, policy_noise, noise_clip
        self.layer_weights, self.reset_interval, self.reset_ratio = list(layer_weights), reset_interval, reset_ratio
        self.critic_reset_interval = critic_reset_interval
        self.device = next(model.parameters()).device
        with torch.no_grad():
            model.action_low.copy_(task.action_low)
            model.action_high.copy_(task.action_high)
        self.scale = (model.action_high - model.action_low) / 2
        self.total_steps = None if total_iterations is None else total_iterations * steps_per_iteration * envs
        # Two optimizers with their own rates (the `optim` group is not used): the reference's actor 5e-4, critic 1e-3.
        self.actor_optimizer = torch.optim.Adam(model.actor.parameters(), lr=actor_lr)
        self.critic_optimizer = torch.optim.Adam(model.critic.parameters(), lr=critic_lr)
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.actor_coef = AdaptiveCoefficient(div_coef, div_history * task.n_agents, self.device)
        self.critic_coef = AdaptiveCoefficient(critic_div_coef, critic_div_history * policy_freq, self.device)
        a, d = task.n_agents, task.action_dim
        self.buffer = TransitionReplay(buffer_size, envs, {
            "obs": ((a, task.obs_dim), torch.float32), "state": ((task.state_dim,), torch.float32),
            "actions": ((a, d), torch.float32), "reward": ((), torch.float32), "done": ((), torch.bool),
            "terminated": ((), torch.bool), "next_obs": ((a, task.obs_dim), torch.float32),
            "next_state": ((task.state_dim,), torch.float32)}, self.device)
        seeds = torch.randint(2 ** 62, (2,)).tolist()
        self.rng = torch.Generator().manual_seed(seeds[0])
        self.env_rng = torch.Generator().manual_seed(seeds[1])
        self.env = task.make_env(envs)
        self.obs, self.state = self.env.reset(self.env_rng)
        self.episode_return = torch.zeros(envs, device=self.device)
        self.finished = []  # returns of training episodes that ended in the current iteration
        self.eval_env = None
        self.env_steps, self.updates, self.critic_reset_member = 0, 0, 0
        self.last_reset, self.last_critic_reset = 0, 0

    def noise(self, shape, std):
        return torch.randn(shape, generator=self.rng).to(self.device) * std

    # ---- acting ----------------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self):
        for _ in range(self.steps_per_iteration):
            if self.env_steps < self.warmup_steps:
                u = torch.rand(self.envs, self.task.n_agents, self.task.action_dim, generator=self.rng).to(self.device)
                actions = self.model.action_low + u * (self.model.action_high - self.model.action_low)
            else:
                actions = self.model.act(self.obs) + self.noise(self.obs.shape[:2] + (self.task.action_dim,), self.expl_noise) * self.scale
                actions = actions.clamp(self.model.action_low, self.model.action_high)
            out = self.env.step(actions)
            self.buffer.add({**out, "obs": self.obs, "state": self.state, "actions": actions})  # out's obs/state are after resets
            self.episode_return += out["reward"]
            if out["done"].any():
                self.finished.append(self.episode_return[out["done"]])
                self.episode_return = self.episode_return * ~out["done"]
            self.obs, self.state = out["obs"], out["state"]
            self.env_steps += self.envs

    # ---- learning --------------------------------------------------------------------------------

    def due(self, last, interval):
        """Kaleidoscope's reset rule: `interval` env steps since the last reset, and not within the last interval."""
        return self.env_steps - last > interval and (self.total_steps is None or self.total_steps - self.env_steps > interval)

    def update_critic(self, b):
        with torch.no_grad():
            noise = self.noise(b["actions"].shape, self.policy_noise).clamp(-self.noise_clip, self.noise_clip) * self.scale
            next_actions = (self.target.act(b["next_obs"]) + noise).clamp(self.model.action_low, self.model.action_high)
            next_q = self.target.q_values(b["next_state"], next_actions).min(0).values
            y = b["reward"] + b["discount"] * next_q * ~b["terminated"]
        if self.critic_masks and self.due(self.last_critic_reset, self.critic_reset_interval):
            for layer in self.critic_masks:
                layer.reset_member(self.critic_reset_member)
            self.critic_reset_member = (self.critic_reset_member + 1) % self.model.n_critics
            self.last_critic_reset = self.env_steps
        loss = (self.model.q_values(b["state"], b["actions"]) - y).pow(2).mean(1).sum()
        total, div = loss, torch.zeros((), device=self.device)
        if self.critic_masks:
            div = diversity_loss(self.critic_masks, self.layer_weights)
            total = loss + self.critic_coef(loss, div) * div
        self.critic_optimizer.zero_grad()
        total.backward()
        self.critic_optimizer.step()
        return loss.detach(), div.detach()

    def update_actors(self, b):
        if self.actor_masks and self.due(self.last_reset, self.reset_interval):
            for layer in self.actor_masks:
                layer.reset_pruned(self.reset_ratio)
            self.last_reset = self.env_steps
        self.model.critic.requires_grad_(False)
        losses = []
        for i in range(self.task.n_agents):  # one agent at a time, the others' actions from the buffer (HARL)
            own = self.model.act(b["obs"])[:, i]
            actions = torch.cat([b["actions"][:, :i], own[:, None], b["actions"][:, i + 1:]], 1)
            loss = -self.model.q_values(b["state"], actions).mean()
            total = loss
            if self.actor_masks:
                div = diversity_loss(self.actor_masks, self.layer_weights)
                total = loss + self.actor_coef(loss, div) * div
            self.actor_optimizer.zero_grad()
            total.backward()
            self.actor_optimizer.step()
            losses.append(loss.detach())
        self.model.critic.requires_grad_(True)
        # HARL soft-updates every agent's actor; with one shared actor that is N updates of it per step.
        actor_rate = 1 - (1 - self.polyak) ** self.task.n_agents
        with torch.no_grad():
            for target, online in zip(self.target.actor.parameters(), self.model.actor.parameters()):
                target.lerp_(online, actor_rate)
            for target, online in zip(self.target.critic.parameters(), self.model.critic.parameters()):
                target.lerp_(online, self.polyak)
        return torch.stack(losses).mean()

    def step(self, batch=None):
        self.finished = []
        self.collect()
        stats = []
        if self.env_steps > self.warmup_steps:
            for _ in range(self.updates_per_iteration):
                b = self.buffer.sample(self.batch_size, self.rng, self.n_step, self.gamma)
                critic_loss, critic_div = self.update_critic(b)
                self.updates += 1
                actor_loss = self.update_actors(b) if self.updates % self.policy_freq == 0 else torch.full_like(critic_loss, float("nan"))
                stats.append(torch.stack([critic_loss, critic_div, actor_loss]))
        metrics = {"env_steps": self.env_steps, "updates": self.updates}
        if self.finished:
            metrics["return"] = torch.cat(self.finished).mean()
        if stats:
            s = torch.stack(stats)
            metrics.update(critic_loss=s[:, 0].mean(), critic_div_loss=s[:, 1].mean(), actor_loss=s[:, 2].nanmean())
        for name, layers in (("actor", self.actor_masks), ("critic", self.critic_masks)):
            if layers:
                d = mask_distances(layers)
                n = d.shape[0]
                metrics[f"{name}_mask_distance"] = d.sum() / (n * (n - 1))
                metrics[f"{name}_keep"] = torch.stack([l.density() for l in layers]).mean()
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in metrics.values()])
        return dict(zip(metrics, values.tolist()))

    # ---- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split, num_tasks, steps, seed, chunk=100):
        """{"return": (1, num_tasks)}: returns of `num_tasks` deterministic episodes (the reference: 40),
        `chunk` environments at a time, reset from a generator seeded by `split_seed`. `steps` is unused."""
        generator = torch.Generator().manual_seed(split_seed(seed, split))
        returns = []
        for start in range(0, num_tasks, chunk):
            n = min(chunk, num_tasks - start)
            if self.eval_env is None or self.eval_env.num_envs != n:
                self.eval_env = self.task.make_env(n)
            obs, _ = self.eval_env.reset(generator)
            total = torch.zeros(n, device=self.device)
            running = torch.ones(n, dtype=torch.bool, device=self.device)
            while running.any():  # each environment's first episode only
                out = self.eval_env.step(self.model.act(obs))
                total += out["reward"] * running
                running &= ~out["done"]
                obs = out["obs"]
            returns.append(total)
        return {"return": torch.cat(returns)[None]}

    def oracle_calls(self, meta_batch_size):
        return {}

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self):
        return {"actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "target": self.target.state_dict(), "buffer": self.buffer.state_dict(), "env": self.env.state_dict(),
                "actor_coef": self.actor_coef.state_dict(), "critic_coef": self.critic_coef.state_dict(),
                "rng": self.rng.get_state(), "env_rng": self.env_rng.get_state(), "episode_return": self.episode_return.clone(),
                "env_steps": self.env_steps, "updates": self.updates, "critic_reset_member": self.critic_reset_member,
                "last_reset": self.last_reset, "last_critic_reset": self.last_critic_reset}

    def load_state_dict(self, state):
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.target.load_state_dict(state["target"])
        self.buffer.load_state_dict(state["buffer"])
        self.actor_coef.load_state_dict(state["actor_coef"])
        self.critic_coef.load_state_dict(state["critic_coef"])
        self.rng.set_state(state["rng"])
        self.env_rng.set_state(state["env_rng"])
        self.obs, self.state = self.env.load_state_dict(state["env"])
        self.env.generator = self.env_rng
        self.episode_return = state["episode_return"].to(self.device)
        for key in ("env_steps", "updates", "critic_reset_member", "last_reset", "last_critic_reset"):
            setattr(self, key, state[key])
