"""QMIX (Rashid et al., 2018) with full, no or Kaleidoscope parameter sharing (Li, Pan and Zhang, 2024).

    one iteration:
        run `episodes_per_iteration` episodes at once, epsilon-greedy (epsilon: 1 -> 0.05 over 50k steps)
        store them in the episode buffer (5000 episodes)
        for each new episode (the reference trains once per episode):
            Kaleidoscope: every `reset_interval` env steps (never in the last interval), re-initialise
                          with probability `reset_ratio` the fc2..fc4 weights that every agent's mask prunes
            sample 32 episodes; unroll the agents' GRUs over them (online and target networks)
            y = r + gamma Q_tot'(s', argmax_a Q(s', a))          (double Q; r standardised by a running std)
            L = mean (Q_tot(s, a) - y)^2                          (+ c L_div under Kaleidoscope)
            Adam step, gradient norm clipped at 10; copy to the target every 200 updates

`share` (metarun.models.qmix): `full` (FuPS: one network, agent id in the input), `none` (NoPS:
a network per agent), `kaleidoscope` (one network seen through a learned mask per agent). The
Kaleidoscope diversity loss L_div (metarun.nn.masks.diversity_loss, layer weights 1, 2, 4, 8) is
added with c = |div_coef * mean(last 100 TD losses) / mean(last 100 L_div)|.

As in the reference (EPyMARL's gymma wrapper), reaching the episode limit counts as termination:
the last transition is not bootstrapped. The team reward is the sum of the agents' rewards.
"""
import copy
import math

import torch

from metarun.config import ConfigError
from metarun.evaluate import split_seed
from metarun.nn.masks import diversity_loss, mask_distances
from metarun.nn.sharing import SHARES
from metarun.rl.normalize import TorchRunningMeanStd
from metarun.rl.replay import EpisodeReplay
from metarun.tasks import MultiAgentTaskFamily


def check(checks):
    for key, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(key, value, allowed)


def integer(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def number(v, low=0.0, high=math.inf):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high


def bootstrap_values(online_q, target_q, avail, double_q=True):
    """Each agent's next-state value: the target network's Q of the online network's greedy available
    action (double Q), or the target's own max. Q tensors (..., agents, actions), avail (agents, actions)."""
    target_q = target_q.masked_fill(~avail, -math.inf)
    if not double_q:
        return target_q.max(-1).values
    best = online_q.masked_fill(~avail, -math.inf).argmax(-1, keepdim=True)
    return target_q.gather(-1, best).squeeze(-1)


class QMIX:
    def __init__(self, model, optimizer, task, share="full", gamma=0.99, buffer_size=5000, batch_size=32,
                 episodes_per_iteration=32, target_update_interval=200, epsilon_start=1.0, epsilon_finish=0.05,
                 epsilon_anneal_steps=50000, grad_norm_clip=10.0, double_q=True, standardise_rewards=True,
                 div_coef=0.5, div_history=100, layer_weights=(1.0, 2.0, 4.0, 8.0), reset_interval=200000,
                 reset_ratio=0.1, reset_threshold_init=(5.0, 5.0), total_iterations=None):
        check([("algo.share", share, share in SHARES, "one of " + ", ".join(SHARES)),
               ("task", type(task).__name__, isinstance(task, MultiAgentTaskFamily) and task.discrete,
                "a multi-agent task with discrete actions (task=particle_world)"),
               ("algo.gamma", gamma, number(gamma, 0, 1), "a number in [0, 1]"),
               ("algo.buffer_size", buffer_size, integer(buffer_size, 1), "an integer >= 1"),
               ("algo.batch_size", batch_size, integer(batch_size, 1) and batch_size <= buffer_size if integer(buffer_size, 1) else False,
                f"an integer in [1, algo.buffer_size={buffer_size}]"),
               ("algo.episodes_per_iteration", episodes_per_iteration, integer(episodes_per_iteration, 1), "an integer >= 1"),
               ("algo.target_update_interval", target_update_interval, integer(target_update_interval, 1), "an integer >= 1"),
               ("algo.epsilon_start", epsilon_start, number(epsilon_start, 0, 1), "a number in [0, 1]"),
               ("algo.epsilon_finish", epsilon_finish, number(epsilon_finish, 0, 1), "a number in [0, 1]"),
               ("algo.epsilon_anneal_steps", epsilon_anneal_steps, integer(epsilon_anneal_steps, 1), "an integer >= 1"),
               ("algo.grad_norm_clip", grad_norm_clip, number(grad_norm_clip) and grad_norm_clip > 0, "a number > 0"),
               ("algo.div_coef", div_coef, number(div_coef), "a number >= 0"),
               ("algo.div_history", div_history, integer(div_history, 1), "an integer >= 1"),
               ("algo.reset_interval", reset_interval, integer(reset_interval, 1), "an integer >= 1"),
               ("algo.reset_ratio", reset_ratio, number(reset_ratio, 0, 1), "a number in [0, 1]")])
        self.model, self.optimizer, self.task = model, optimizer, task
        self.adapted = frozenset()  # no parameter adapts at test time (what mode=eval asks)
        self.masked = model.agent.masked_layers()
        if share == "kaleidoscope" and not self.masked:
            raise ConfigError("algo.share", share, "a model with masked layers (model=qmix_rnn with share=kaleidoscope); "
                              "this model has none: use algo.share=full or none")
        if share != "kaleidoscope" and self.masked:
            raise ConfigError("algo.share", share, "kaleidoscope for a model with masked layers (model.share, by default ${algo.share})")
        if self.masked and len(layer_weights) != len(self.masked):
            raise ConfigError("algo.layer_weights", list(layer_weights), f"{len(self.masked)} numbers, one per masked layer")
        self.share, self.gamma, self.batch_size = share, gamma, batch_size
        self.episodes_per_iteration, self.target_update_interval = episodes_per_iteration, target_update_interval
        self.epsilon_schedule = (epsilon_start, epsilon_finish, epsilon_anneal_steps)
        self.grad_norm_clip, self.double_q, self.standardise_rewards = grad_norm_clip, double_q, standardise_rewards
        self.div_coef, self.layer_weights = div_coef, list(layer_weights)
        self.reset_interval, self.reset_ratio, self.reset_threshold_init = reset_interval, reset_ratio, tuple(reset_threshold_init)
        self.device = next(model.parameters()).device
        self.limit = task.episode_limit
        self.total_steps = None if total_iterations is None else total_iterations * episodes_per_iteration * self.limit
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.avail = task.avail_actions.to(self.device)
        self.buffer = EpisodeReplay(buffer_size, self.limit + 1, {
            "obs": ((task.n_agents, task.obs_dim), torch.float32),
            "actions": ((task.n_agents,), torch.long),
            "reward": ((), torch.float32)}, self.device)
        self.reward_stats = TorchRunningMeanStd(device=self.device)
        # Kaleidoscope's adaptive coefficient: rings of the last `div_history` TD and diversity losses.
        self.history = torch.zeros(2, div_history, device=self.device)
        self.history_count = 0
        # Exploration, buffer sampling and environment resets draw from CPU generators seeded from the
        # seeded global RNG, so a seed fixes a run; they are saved for an exact resume.
        seeds = torch.randint(2 ** 62, (2,)).tolist()
        self.rng = torch.Generator().manual_seed(seeds[0])
        self.env_rng = torch.Generator().manual_seed(seeds[1])
        self.env = task.make_env(episodes_per_iteration)
        self.eval_envs = {}
        self.env_steps, self.updates, self.last_target_update, self.last_reset = 0, 0, 0, 0

    def epsilon(self):
        start, finish, steps = self.epsilon_schedule
        return max(finish, start - (start - finish) * self.env_steps / steps)

    # ---- acting ----------------------------------------------------------------------------------

    @torch.no_grad()
    def run_episodes(self, env, generator, epsilon):
        """One episode in each of env's copies; returns the stored fields (n, T+1, ...) and the returns (n,)."""
        n, agents = env.num_envs, self.task.n_agents
        obs = env.reset(generator)
        h = self.model.agent.initial_state(n, self.device)
        if epsilon > 0:  # all the episode's random numbers in one draw from the CPU generator
            draws = torch.rand(2, self.limit, n, agents, generator=self.rng).to(self.device)
        own = self.avail.sum(-1)  # an agent's actions are the first `own` ones (the leader's 20, the others' 5)
        all_obs, all_actions, rewards = [obs], [], []
        for t in range(self.limit):
            q, h = self.model.q_values(obs[:, None], h)
            actions = q[:, 0].masked_fill(~self.avail, -math.inf).argmax(-1)
            if epsilon > 0:
                random = (draws[1, t] * own).long()
                actions = torch.where(draws[0, t] < epsilon, random, actions)
            obs, reward = env.step(actions)
            all_obs.append(obs)
            all_actions.append(actions)
            rewards.append(reward)
        pad = torch.zeros_like
        episodes = {"obs": torch.stack(all_obs, 1),
                    "actions": torch.stack(all_actions + [pad(all_actions[0])], 1),
                    "reward": torch.stack(rewards + [pad(rewards[0])], 1)}
        return episodes, episodes["reward"].sum(1)

    # ---- learning --------------------------------------------------------------------------------

    def td_loss(self, batch):
        obs, actions, reward = batch["obs"], batch["actions"][:, :-1], batch["reward"][:, :-1]
        if self.standardise_rewards:
            self.reward_stats.update(reward)
            reward = self.reward_stats.normalize(reward)
        state = obs.flatten(-2)  # the reference's state: all agents' observations
        h0 = self.model.agent.initial_state(obs.shape[0], self.device)
        q, _ = self.model.q_values(obs, h0)  # (B, T+1, agents, actions)
        chosen = q[:, :-1].gather(-1, actions[..., None]).squeeze(-1)
        with torch.no_grad():
            target_q, _ = self.target.q_values(obs, h0)
            next_q = bootstrap_values(q.detach()[:, 1:], target_q[:, 1:], self.avail, self.double_q)
            next_tot = self.target.mixer(next_q, state[:, 1:])
            not_last = torch.ones_like(next_tot)
            not_last[:, -1] = 0  # the episode limit counts as termination (see the module docstring)
            y = reward + self.gamma * not_last * next_tot
        q_tot = self.model.mixer(chosen, state[:, :-1])
        return (q_tot - y).pow(2).mean(), chosen, y

    def update(self):
        if self.masked and self.total_steps is not None and self.env_steps - self.last_reset > self.reset_interval \
                and self.total_steps - self.env_steps > self.reset_interval:
            for layer in self.masked[1:]:  # fc2..fc4
                layer.reset_pruned(self.reset_ratio, self.reset_threshold_init)
            self.last_reset = self.env_steps
        td, chosen, _ = self.td_loss(self.buffer.sample(self.batch_size, self.rng))
        loss, div, coef = td, torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        if self.masked:
            div = diversity_loss(self.masked, self.layer_weights)
            self.history[:, self.history_count % self.history.shape[1]] = torch.stack([td.detach(), div.detach()])
            self.history_count += 1
            means = self.history[:, :min(self.history_count, self.history.shape[1])].mean(1)
            coef = torch.where(means[1] != 0, (self.div_coef * means[0] / means[1]).abs(), torch.full_like(means[1], self.div_coef))
            loss = td + coef * div
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_norm_clip)
        self.optimizer.step()
        self.updates += 1
        if self.updates - self.last_target_update >= self.target_update_interval:
            self.target.load_state_dict(self.model.state_dict())
            self.last_target_update = self.updates
        return torch.stack([td.detach(), div.detach(), coef, grad_norm, chosen.detach().mean()])

    def step(self, batch=None):
        epsilon = self.epsilon()
        episodes, returns = self.run_episodes(self.env, self.env_rng, epsilon)
        self.buffer.add(episodes)
        self.env_steps += self.episodes_per_iteration * self.limit
        stats = [self.update() for _ in range(self.episodes_per_iteration) if len(self.buffer) >= self.batch_size]
        metrics = {"return": returns.mean(), "epsilon": epsilon, "env_steps": self.env_steps, "updates": self.updates}
        if stats:
            names = ("td_loss", "div_loss", "div_coef", "grad_norm", "q_taken")
            metrics.update(zip(names, torch.stack(stats).mean(0)))
        if self.masked:
            metrics.update(self.mask_metrics())
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in metrics.values()])
        return dict(zip(metrics, values.tolist()))  # one host sync per iteration

    def mask_metrics(self):
        """Mean pairwise mask distance between agents (all masked layers) and each agent's kept share per layer."""
        d = mask_distances(self.masked)
        n = d.shape[0]
        out = {"mask_distance": d.sum() / (n * (n - 1))}
        for k in range(n):
            for j, layer in enumerate(self.masked):
                out[f"keep_agent{k}_fc{j + 1}"] = layer.density()[k]
        for i in range(n):
            for j in range(i + 1, n):
                out[f"mask_distance_{i}_{j}"] = d[i, j]
        return out

    # ---- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split, num_tasks, steps, seed, chunk=100):
        """{"return": (1, num_tasks)}: greedy team returns of `num_tasks` test episodes (the reference: 100).

        The episodes' initial states come from a generator seeded by `split_seed`, so every run and
        every evaluation of a run meets the same episodes; they run in batches of `chunk`, and the
        set does not depend on `chunk` (one generator, drawn in order). `steps` is unused.
        """
        generator = torch.Generator().manual_seed(split_seed(seed, split))
        returns = []
        for start in range(0, num_tasks, chunk):
            n = min(chunk, num_tasks - start)
            if n not in self.eval_envs:
                self.eval_envs[n] = self.task.make_env(n)
            returns.append(self.run_episodes(self.eval_envs[n], generator, 0.0)[1])
        return {"return": torch.cat(returns)[None]}

    def oracle_calls(self, meta_batch_size):
        return {}

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "target": self.target.state_dict(), "buffer": self.buffer.state_dict(),
                "reward_stats": self.reward_stats.state_dict(), "history": self.history.clone(), "history_count": self.history_count,
                "rng": self.rng.get_state(), "env_rng": self.env_rng.get_state(), "env_steps": self.env_steps, "updates": self.updates,
                "last_target_update": self.last_target_update, "last_reset": self.last_reset}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.target.load_state_dict(state["target"])
        self.buffer.load_state_dict(state["buffer"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.history = state["history"].to(self.device)
        self.rng.set_state(state["rng"])
        self.env_rng.set_state(state["env_rng"])
        for key in ("history_count", "env_steps", "updates", "last_target_update", "last_reset"):
            setattr(self, key, state[key])
