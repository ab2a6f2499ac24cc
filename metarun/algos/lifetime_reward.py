"""Learned intrinsic rewards over lifetimes (Zheng, Oh, Hessel, Xu, Kroiss, van Hasselt, Silver and Singh, ICML 2020).

    initialise the intrinsic reward eta and the lifetime value phi
    repeat  (one meta-iteration = one unroll of N inner updates, B lifetimes as one batch):
        for k = 1..N:                                  (tau_k was collected by theta_{k-1})
            r_k = r_eta(tau_k | lifetime history)      recurrent over next state, action, r_ext, episode end
            theta_k = theta_{k-1} + alpha grad sum_t Gbar_t log pi_theta(a_t|s_t)    [inner_loop.adapt, vmapped]
                      Gbar_t = sum_j gammabar^(j-t) r_k,j within the episode (the agent never sees r_ext)
            lifetimes that ended within tau_k restart: new task, fresh theta ~ Theta, empty history
            collect tau_{k+1} with pi_{theta_k}
        G_t = n-step extrinsic return across episodes, bootstrapped with V_phi(history)   [rl.returns.n_step_returns]
        eta <- eta + beta grad_eta sum_k sum_{t in tau_{k+1}} (G_t - V_phi) log pi_{theta_k(eta)}(a_t|s_t)
               (truncated: the gradient goes through the last N inner updates only)
        phi <- phi - beta grad_phi (G_t - V_phi)^2
        carry theta_N, tau_{N+1} and the recurrent states, detached, to the next unroll

`reward` chooses what the agent learns from: `learned` (r_eta, meta-trained as above) or a
baseline with nothing to meta-train: `extrinsic_ep` (r_ext, episodic return with gammabar),
`extrinsic_life` (r_ext, return across episodes with gamma), `count` (r_ext + count_bonus /
sqrt(lifetime visits of the next state)), `oracle` (the hand-designed reward of
metarun.tasks.gridworld.HandDesignedReward). Ablations: `model.recurrent=false` (feed-forward
reward), `objective=episodic` (the meta-return stops at episode ends), `value=false` (no lifetime
value: the meta-return is cut at the end of the unroll and has no baseline).

The agent is a softmax policy over the gridworld state (`policy_hidden=[]`: linear in the one-hot
state, i.e. tabular), initialised per lifetime from its seed (metarun.rl.streams), updated by
REINFORCE on segments of `segment` steps, its returns minus their mean over the segment (`baseline`). Lifetimes in training run continuously: each of the B
slots starts a new lifetime as soon as its lifetime ends (at a segment boundary), and the first
lifetimes start staggered across the lifetime so that every meta-batch mixes early and late phases.
"""
import math

import torch
import torch.nn.functional as F
from torch.func import vmap

from metarun.config import ConfigError
from metarun.evaluate import task_set
from metarun.inner_loop import adapt
from metarun.models.lifetime_reward import reset_state
from metarun.rl.returns import discounted_returns, n_step_returns
from metarun.rl.streams import uniform
from metarun.tasks.gridworld import HandDesignedReward, LifetimeRecord

REWARDS = ("learned", "extrinsic_ep", "extrinsic_life", "count", "oracle")
ACTION_STREAM, INIT_STREAM = 1, 100


def policy_logits(params, x):
    """Softmax-policy logits; params with or without a leading lifetime dim, x (..., T, states)."""
    n = len(params) // 2
    for i in range(n):
        x = x @ params[f"w{i}"].transpose(-1, -2) + params[f"b{i}"].unsqueeze(-2)
        if i < n - 1:
            x = torch.relu(x)
    return x


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp_min(1)


class LifetimeReward:
    def __init__(self, model, optimizer, task, reward="learned", unroll=4, segment=16, inner_lr=1.0, inner_gamma=0.9,
                 gamma=0.99, n_step=16, objective="lifetime", value=True, value_coef=0.5, policy_hidden=(), entropy=0.0,
                 count_bonus=0.1, max_grad_norm=1.0, stagger=True, baseline=True):
        checks = [("algo.reward", reward, reward in REWARDS, "one of " + ", ".join(REWARDS)),
                  ("algo.unroll", unroll, _int(unroll, 1), "an integer >= 1 (N, the inner updates the meta-gradient goes through)"),
                  ("algo.segment", segment, _int(segment, 1), "an integer >= 1"),
                  ("algo.n_step", n_step, _int(n_step, 1), "an integer >= 1"),
                  ("algo.inner_lr", inner_lr, _num(inner_lr) and inner_lr > 0, "a number > 0"),
                  ("algo.inner_gamma", inner_gamma, _num(inner_gamma) and 0 <= inner_gamma <= 1, "a number in [0, 1]"),
                  ("algo.gamma", gamma, _num(gamma) and 0 <= gamma <= 1, "a number in [0, 1]"),
                  ("algo.objective", objective, objective in ("lifetime", "episodic"), "lifetime or episodic"),
                  ("algo.value", value, isinstance(value, bool), "true or false"),
                  ("algo.stagger", stagger, isinstance(stagger, bool), "true or false"),
                  ("algo.baseline", baseline, isinstance(baseline, bool), "true or false"),
                  ("algo.value_coef", value_coef, _num(value_coef) and value_coef >= 0, "a number >= 0"),
                  ("algo.entropy", entropy, _num(entropy) and entropy >= 0, "a number >= 0"),
                  ("algo.count_bonus", count_bonus, _num(count_bonus) and count_bonus >= 0, "a number >= 0"),
                  ("algo.max_grad_norm", max_grad_norm, max_grad_norm is None or (_num(max_grad_norm) and max_grad_norm > 0), "null or a number > 0"),
                  ("algo.policy_hidden", list(policy_hidden), all(_int(h, 1) for h in policy_hidden), "a list of integers >= 1")]
        for key, val, ok, allowed in checks:
            if not ok:
                raise ConfigError(key, val, allowed)
        if not hasattr(task, "episodes") or not hasattr(model, "reward"):
            raise ConfigError("task", type(task).__name__, "task=gridworld with model=lifetime_reward")
        self.model, self.optimizer, self.task = model, optimizer, task
        self.reward, self.unroll, self.segment, self.inner_lr = reward, unroll, segment, inner_lr
        self.inner_gamma, self.gamma, self.n_step, self.objective = inner_gamma, gamma, n_step, objective
        self.use_value, self.value_coef, self.entropy = value, value_coef, entropy
        self.count_bonus, self.max_grad_norm, self.stagger, self.baseline = count_bonus, max_grad_norm, stagger, baseline
        self.layers = [task.states, *policy_hidden, task.output_dim]
        self.device = task.device
        self.hand = HandDesignedReward(task, inner_gamma) if reward == "oracle" else None
        # New lifetimes during training come from this generator (seeded from the run's seed), whose state is checkpointed.
        self.generator = torch.Generator(device="cpu").manual_seed(int(torch.randint(2 ** 62, (1,), device="cpu")))
        self.life = None  # the B training lifetimes in progress (created by the first step)
        self.env_steps = 0
        self.cache = {}

    # ---- the agent ---------------------------------------------------------------------------

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def features(self, state):
        """One-hot states (..., states) in the networks' dtype."""
        return F.one_hot(state, self.task.states).to(self.dtype)

    def fresh_policy(self, seeds):
        """theta_0 ~ Theta for each lifetime: uniform(+-1/sqrt(fan_in)) weights from the lifetime's seed, zero biases."""
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            counter = torch.arange(fan_out * fan_in, device=self.device).view(fan_out, fan_in)
            u = uniform(seeds[:, None, None], counter, INIT_STREAM + i)
            params[f"w{i}"] = ((2 * u - 1) / math.sqrt(fan_in)).to(self.dtype)
            params[f"b{i}"] = torch.zeros(len(seeds), fan_out, dtype=self.dtype, device=self.device)
        return params

    def inner_loss(self, params, obs, actions, returns, mask):
        """One lifetime's REINFORCE loss on one segment: -sum_t Gbar_t log pi(a_t|s_t) (minus an optional entropy bonus)."""
        logp = torch.log_softmax(policy_logits(params, obs), -1)
        loss = -(returns * logp.gather(-1, actions[:, None])[:, 0] * mask).sum()
        if self.entropy:
            loss = loss + self.entropy * ((logp.exp() * logp).sum(-1) * mask).sum()
        return loss

    def inner_update(self, theta, traj, returns):
        """theta_k = theta_{k-1} - alpha grad inner_loss: one metarun.inner_loop.adapt step per lifetime, vmapped."""
        def one_lifetime(params, obs, actions, ret, mask):
            return adapt(lambda p: self.inner_loss(p, obs, actions, ret, mask), params, 1, self.inner_lr)

        return vmap(one_lifetime)(theta, self.features(traj["state"]), traj["action"], returns, traj["valid"])

    def log_prob(self, theta, traj):
        logp = torch.log_softmax(policy_logits(theta, self.features(traj["state"])), -1)
        return logp.gather(-1, traj["action"][..., None])[..., 0]

    # ---- lifetimes -----------------------------------------------------------------------------

    def new_lifetimes(self, lifetimes, start_episode=None):
        """Environment, policies, recurrent states and baseline-reward memories of new lifetimes."""
        env = self.task.env(lifetimes, start_episode)
        b = len(lifetimes[2])
        life = {"env": env, "theta": self.fresh_policy(env.seeds),
                "h_reward": self.model.reward.initial_state(b, self.device),
                "h_value": self.model.value.initial_state(b, self.device),
                "counts": torch.zeros(b, self.task.states, device=self.device)}
        if self.hand:
            life["hand"] = self.hand.init(b, self.device)
        return life

    @torch.no_grad()
    def rollout(self, life, theta):
        """`segment` steps of every lifetime with pi_theta: a dict of (B, T) tensors."""
        env, task, t_len = life["env"], self.task, self.segment
        theta = {k: v.detach() for k, v in theta.items()}
        # The random stream counter is the step within the lifetime, so the noise is per lifetime.
        noise = uniform(env.seeds[:, None], env.clock[:, None] + torch.arange(t_len, device=self.device), ACTION_STREAM)
        steps = []
        for t in range(t_len):
            state = env.state()
            probs = torch.softmax(policy_logits(theta, self.features(state)[:, None])[:, 0], -1)
            action = (noise[:, t, None] > probs.cumsum(-1)).sum(-1).clamp_max(task.output_dim - 1)
            out = env.step(action)
            out["state"], out["action"] = state, action
            out["r_agent"] = self.baseline_reward(life, out)
            steps.append(out)
        return {k: torch.stack([s[k] for s in steps], 1) for k in steps[0] if steps[0][k] is not None}

    def baseline_reward(self, life, out):
        """The reward a baseline agent learns from at this step (None for the learned reward)."""
        valid = out["valid"].to(torch.float32)
        if self.reward in ("extrinsic_ep", "extrinsic_life"):
            return out["reward"]
        if self.reward == "count":
            life["counts"] = life["counts"] + F.one_hot(out["next_state"], self.task.states) * valid[:, None]
            visits = life["counts"].gather(1, out["next_state"][:, None])[:, 0]
            return out["reward"] + self.count_bonus * valid / visits.clamp_min(1).sqrt()
        if self.reward == "oracle":
            reward, life["hand"] = self.hand(life["hand"], out, life["env"].cells)
            return reward
        return None

    def history(self, traj):
        """The reward's input per step: [next state one-hot, action one-hot, r_ext, episode end]: (B, T, in)."""
        return torch.cat([self.features(traj["next_state"]), F.one_hot(traj["action"], self.task.output_dim).to(self.dtype),
                          traj["reward"][..., None].to(self.dtype), traj["end"][..., None].to(self.dtype)], -1)

    def agent_rewards(self, life, traj):
        """What the agent maximises on this segment: r_eta (carrying the graph to eta) or the baseline's reward."""
        if self.reward != "learned":
            return traj["r_agent"]
        r, life["h_reward"] = self.model.reward(self.history(traj), life["h_reward"])
        return r * traj["valid"]

    def agent_returns(self, traj, rewards):
        """The agent's returns Gbar_t on a segment, minus their mean over the segment's valid steps (a baseline)."""
        if self.reward == "extrinsic_life":  # the return runs across episodes, to the lifetime's end
            returns = discounted_returns(rewards, self.gamma, traj["lifetime_end"])
        else:
            returns = discounted_returns(rewards, self.inner_gamma, traj["end"])
        if self.baseline:
            valid = traj["valid"].to(returns.dtype)
            returns = (returns - (returns * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp_min(1)) * valid
        return returns

    def restart(self, life, theta, done):
        """Slots whose lifetime ended start a new one: new task, fresh policy, empty history and memories."""
        new = self.task.sample(len(done), self.generator, "train")  # drawn every time: the same stream whatever ended
        env = life["env"]
        env.restart(done, *new)
        fresh = self.fresh_policy(env.seeds)
        theta = {k: torch.where(done.view(-1, *[1] * (v.dim() - 1)), fresh[k], v) for k, v in theta.items()}
        life["h_reward"] = reset_state(life["h_reward"], done)
        life["h_value"] = reset_state(life["h_value"], done)
        life["counts"] = life["counts"] * ~done[:, None]
        if self.hand:
            life["hand"] = self.hand.reset(life["hand"], done)
        return theta

    # ---- meta-training -----------------------------------------------------------------------

    def start(self):
        """The B training lifetimes, staggered through the lifetime, and their first segment tau_1."""
        b = self.meta_batch
        lifetimes = self.task.sample(b, self.generator, "train")
        first = (torch.arange(b, device=self.device) * self.task.episodes) // b if self.stagger else None
        life = self.new_lifetimes(lifetimes, first)
        life["traj"] = self.rollout(life, life["theta"])
        return life

    def meta_loss(self, life):
        """Run one unroll of N inner updates (state in `life` advances); return the losses with their graphs."""
        theta, traj = life["theta"], life["traj"]
        logps, window = [], []
        values, last_value = [], None
        for _ in range(self.unroll):
            rewards = self.agent_rewards(life, traj)
            theta = self.inner_update(theta, traj, self.agent_returns(traj, rewards))
            theta = self.restart(life, theta, traj["lifetime_end"].any(1))
            traj = self.rollout(life, theta)
            logps.append(self.log_prob(theta, traj))
            window.append(traj)
            if self.use_value:
                v, last_value, life["h_value"] = self.model.value.before_and_after(self.value_input(traj), life["h_value"])
                values.append(v)
        life["theta"] = {k: v.detach() for k, v in theta.items()}
        life["traj"] = traj
        life["h_reward"] = tuple(h.detach() for h in life["h_reward"])
        life["h_value"] = tuple(h.detach() for h in life["h_value"])
        data = {k: torch.cat([w[k] for w in window], 1) for k in ("reward", "end", "lifetime_end", "valid")}
        valid, rewards = data["valid"].to(self.dtype), data["reward"].to(self.dtype)
        dones = data["lifetime_end"] if self.objective == "lifetime" else data["end"]
        if self.use_value:
            v = torch.cat(values + [last_value[:, None]], 1)
            target = n_step_returns(rewards, v.detach(), self.gamma, self.n_step, dones)
            advantage = target - v[:, :-1].detach()
            value_loss = 0.5 * masked_mean((target - v[:, :-1]).pow(2), valid)
        else:
            advantage = discounted_returns(rewards, self.gamma, dones)
            value_loss = torch.zeros((), device=self.device)
        policy_loss = -masked_mean(advantage * torch.cat(logps, 1), valid)
        data.update(window=window, advantage=advantage, target=target if self.use_value else advantage)
        return policy_loss, value_loss, data

    def value_input(self, traj):
        progress = traj["episode"].to(self.dtype) / self.task.episodes
        return torch.cat([self.history(traj), progress[..., None]], -1)

    def step(self, batch):
        # `batch` (the runner's draw) is not used: lifetimes persist across meta-iterations and new ones
        # come from self.generator when old ones end.
        if self.reward != "learned":
            return {}  # a baseline has nothing to meta-train
        if self.life is None:
            self.meta_batch = len(batch[2])
            self.life = self.start()
        policy_loss, value_loss, data = self.meta_loss(self.life)
        self.optimizer.zero_grad(set_to_none=True)
        (policy_loss + self.value_coef * value_loss).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.reward.parameters(), self.max_grad_norm or math.inf)
        self.optimizer.step()
        valid = data["valid"].to(torch.float32)
        episodes = data["end"].sum()
        stats = torch.stack([policy_loss.detach(), value_loss.detach(), norm, valid.sum(), episodes,
                             (data["reward"] * valid).sum() / episodes.clamp_min(1), data["lifetime_end"].sum()]).tolist()
        self.env_steps += int(stats[3])
        return {"loss": stats[0], "value_loss": stats[1], "grad_norm": stats[2], "return": stats[5],
                "lifetimes_ended": stats[6], "env_steps": self.env_steps}

    def oracle_calls(self, meta_batch_size):
        # Per meta-iteration: N inner policy gradients per lifetime, one outer gradient (through the
        # N updates: N Hessian-vector products per lifetime, second order through the inner steps).
        if self.reward != "learned":
            return {}
        n = self.unroll * meta_batch_size
        return {"inner_grad": n, "outer_grad": meta_batch_size, "second_order": n}

    # ---- evaluation --------------------------------------------------------------------------

    def run_lifetimes(self, lifetimes, record=False):
        """Run whole lifetimes from their start with the reward frozen; lifetime extrinsic returns (B,), and a record."""
        life = self.new_lifetimes(lifetimes)
        env, theta = life["env"], life["theta"]
        log = LifetimeRecord(self.task, lifetimes[0], lifetimes[1]) if record else None
        total = torch.zeros(len(lifetimes[2]), device=self.device)
        limit = math.ceil(self.task.episodes * self.task.horizon / self.segment)
        for _ in range(limit):
            traj = self.rollout(life, theta)
            total = total + (traj["reward"] * traj["valid"]).sum(1)
            with torch.no_grad():  # the reward is frozen; the agent's own gradient (torch.func.grad) still runs
                rewards = self.agent_rewards(life, traj)
                if log is not None:
                    log.add(traj, rewards)
                theta = self.inner_update(theta, traj, self.agent_returns(traj, rewards))
            if not env.alive.any():
                break
        return total, log

    def lifetimes(self, split, num_tasks, seed, chunk=100, record=False):
        """`num_tasks` evaluation lifetimes of `split` (drawn once with split_seed, run `chunk` at a time)."""
        totals, logs = [], []
        for lifetimes in task_set(self.task, split, num_tasks, seed, chunk):
            total, log = self.run_lifetimes(lifetimes, record)
            totals.append(total)
            logs.append(log)
        result = {"return": torch.cat(totals)}
        if record:
            result.update(LifetimeRecord.merge(logs))
        return result

    def evaluate(self, split, num_tasks, steps, seed, chunk=100):
        """{"return": (1, num_tasks)}: the extrinsic return summed over each fresh lifetime, reward frozen.

        Lifetimes come from `split_seed(seed, split)` via metarun.evaluate.task_set (validation apart
        from test); each lifetime's policy initialisation and action noise come from its own seed, so
        the figures depend neither on `chunk` nor on the other lifetimes. `steps` does not apply.
        """
        key = (split, num_tasks, seed, chunk)
        if self.reward != "learned" and key in self.cache:  # nothing changes between a baseline's evaluations
            return self.cache[key]
        result = {"return": self.lifetimes(split, num_tasks, seed, chunk)["return"][None]}
        if self.reward != "learned":
            self.cache[key] = result
        return result

    # ---- checkpoints ---------------------------------------------------------------------------

    def state_dict(self):
        state = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(), "env_steps": self.env_steps}
        if self.life is not None:
            life = self.life
            state["life"] = {"env": life["env"].state_dict(), "theta": life["theta"], "traj": life["traj"],
                             "h_reward": list(life["h_reward"]), "h_value": list(life["h_value"]), "counts": life["counts"],
                             "hand": life.get("hand", {}), "meta_batch": self.meta_batch}
        return state

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.env_steps = state["env_steps"]
        if "life" in state:
            saved = state["life"]
            self.meta_batch = saved["meta_batch"]
            env = saved["env"]
            life = self.new_lifetimes((env["values"], env["cells"], env["seeds"]))
            life["env"].load_state_dict(env)
            life.update(theta=saved["theta"], traj=saved["traj"], h_reward=tuple(saved["h_reward"]),
                        h_value=tuple(saved["h_value"]), counts=saved["counts"])
            if self.hand:
                life["hand"] = saved["hand"]
            self.life = life


def _int(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)
