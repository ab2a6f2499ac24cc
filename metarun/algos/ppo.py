"""PPO (Schulman et al., 2017) as OpenAI baselines' ppo2 runs it on MuJoCo: the LIRPG paper's baseline.

    for each iteration (one update):
        roll out nsteps with pi_theta in the persistent environment
            (observations and rewards normalised as VecNormalize does, clip 10)
        A = GAE(gamma, lambda) with V (constants of rollout time), R = A + V
        for epoch = 1..epochs, for each of `minibatches` shuffled minibatches:
            L = E[max(-A' rho, -A' clip(rho, 1 - c, 1 + c))]                       rho = pi_theta(a|s) / pi_old(a|s)
                + vf_coef * 0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]
                - ent_coef * entropy                                               A' = A normalised in the minibatch
            theta <- Adam(theta, clip_by_global_norm(grad L, max_grad_norm))       (lr_alpha, eps 1e-5)

One iteration is one `step`: `iterations` = total env steps / nsteps. The reward the policy learns
from is the task's (delayed for mujoco_delayed); the logged `return` is the mean true return of the
last 100 training episodes (ppo2's and SB3's ep_rew_mean). Time-limit ends bootstrap from the value
of the final observation (Gymnasium's truncated; SB3 does the same), terminal states do not.
The runner's `optim` group is not used: the policy's Adam is `algo.lr_alpha` with eps 1e-5, as in
ppo2, so the defaults are the paper's without a preset (LIRPG's lookahead needs the same rule).
"""
import math

import numpy as np
import torch
from torch.func import functional_call

from metarun.config import ConfigError
from metarun.evaluate import split_seed
from metarun.models.actor_critic import ActorCritic
from metarun.rl.returns import gae
from metarun.rl.rollout import EnvRunner, episode_seed, run_episodes
from metarun.tasks import EnvTaskFamily

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(mean, log_std, actions):
    return (-0.5 * ((actions - mean) / log_std.exp()).pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def normalized(x):
    """Advantages standardised within a minibatch (population std, as ppo2)."""
    return (x - x.mean()) / (x.std(correction=0) + 1e-8)


def clipped_surrogate(logp, logp_old, adv, clip):
    """PPO's clipped policy loss, with the approximate KL and the clipped fraction for logging."""
    ratio = (logp - logp_old).exp()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    with torch.no_grad():
        kl = 0.5 * (logp - logp_old).pow(2).mean()
        clipped = ((ratio - 1).abs() > clip).float().mean()
    return loss, kl, clipped


def clipped_value_loss(values, values_old, returns, clip):
    clipped = values_old + (values - values_old).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns).pow(2), (clipped - returns).pow(2)).mean()


def check(key, value, ok, allowed):
    if not ok:
        raise ConfigError(key, value, allowed)


def is_int(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class PPO:
    adapted = []  # no parameter adapts at test time (mode=eval reads this)

    def __init__(self, model, optimizer, task, nsteps=2048, minibatches=32, epochs=10, gamma=0.99, lam=0.95, clip=0.2,
                 vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5, lr_alpha=3e-4, normalize=True, compile=False):
        if not isinstance(task, EnvTaskFamily):
            raise ConfigError("task", type(task).__name__, "a task family with one persistent environment: mujoco_delayed")
        if not isinstance(model, ActorCritic):
            raise ConfigError("model", type(model).__name__, "actor_critic (a Gaussian policy with a value network)")
        check("algo.nsteps", nsteps, is_int(nsteps, 2), "an integer >= 2")
        check("algo.minibatches", minibatches, is_int(minibatches, 1) and nsteps % minibatches == 0 and nsteps // minibatches >= 2,
              f"an integer >= 1 that divides algo.nsteps={nsteps} into minibatches of >= 2 steps")
        check("algo.epochs", epochs, is_int(epochs, 1), "an integer >= 1")
        for key, v in (("algo.gamma", gamma), ("algo.lam", lam)):
            check(key, v, is_number(v) and 0 < v <= 1, "a number in (0, 1]")
        for key, v in (("algo.clip", clip), ("algo.max_grad_norm", max_grad_norm), ("algo.lr_alpha", lr_alpha)):
            check(key, v, is_number(v) and v > 0, "a number > 0")
        for key, v in (("algo.vf_coef", vf_coef), ("algo.ent_coef", ent_coef)):
            check(key, v, is_number(v) and v >= 0, "a number >= 0")
        self.model, self.task = model, task
        self.nsteps, self.minibatches, self.epochs = nsteps, minibatches, epochs
        self.gamma, self.lam, self.clip, self.vf_coef, self.ent_coef = gamma, lam, clip, vf_coef, ent_coef
        self.max_grad_norm, self.lr_alpha = max_grad_norm, lr_alpha
        # torch.compile of the minibatch loss (forward and backward): 64-row minibatches of 64-64 MLPs
        # are all per-op overhead in eager mode. It pays for its compilation (about 20 s) in long runs.
        self.compiled = compile
        self.minibatch_loss = torch.compile(self.ppo_loss) if compile else self.ppo_loss
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr_alpha, eps=1e-5, fused=True)
        self.runner = EnvRunner(task.make_env(), gamma, normalize, action_low=task.action_low, action_high=task.action_high,
                                device=self.device)
        # Action noise, minibatch order and the environment's seed all follow from the run's seed
        # (train.build seeds torch before building the algorithm).
        seed = int(torch.randint(2 ** 31 - 1, (1,), device="cpu"))
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.runner.reset(seed)

    # ---- one iteration -----------------------------------------------------------------------

    def step(self, batch=None):
        data = self.rollout()
        self.advantages(data)
        stats = []
        for _ in range(self.epochs):
            order = torch.randperm(self.nsteps, generator=self.generator, device="cpu").to(self.device)
            for mb in order.split(self.nsteps // self.minibatches):
                stats.append(self.update(data, mb))
        return self.metrics(data, stats)

    def rollout(self):
        """nsteps of the current policy; log-probs and values of rollout time in one batched pass."""
        noise = torch.randn(self.nsteps, self.task.output_dim, generator=self.generator, device="cpu").to(self.device)

        def act(obs, t):
            mean, log_std = self.model(obs)
            return mean + log_std.exp() * noise[t]

        data = self.runner.collect(act, self.nsteps)
        with torch.no_grad():
            mean, log_std, data["values"] = self.model(data["obs"], value=True)
            data["logp"] = gaussian_log_prob(mean, log_std, data["actions"])
            data["next_values"] = self.model.value(data["next_obs"])
        return data

    def advantages(self, data):
        data["adv"] = gae(data["rewards"], data["values"], data["next_values"], data["dones"], self.gamma, self.lam,
                          terminated=data["terminated"])
        data["returns"] = data["adv"] + data["values"]

    def ppo_loss(self, params, data, mb, adv, returns):
        """PPO's loss on minibatch `mb` with the parameter dict `params` (None: the model's own)."""
        obs = data["obs"][mb]
        if params is None:
            mean, log_std, values = self.model(obs, value=True)
        else:
            mean, log_std, values = functional_call(self.model, params, (obs,), {"value": True}, tie_weights=False)
        logp = gaussian_log_prob(mean, log_std, data["actions"][mb])
        pg, kl, clipped = clipped_surrogate(logp, data["logp"][mb], normalized(adv), self.clip)
        vf = clipped_value_loss(values, data["values"][mb], returns, self.clip)
        entropy = (log_std + 0.5 * (LOG_2PI + 1)).sum(-1).mean()
        loss = pg + self.vf_coef * vf - self.ent_coef * entropy
        return loss, torch.stack([pg, vf, kl, clipped, entropy]).detach()

    def update(self, data, mb):
        loss, stats = self.minibatch_loss(None, data, mb, data["adv"][mb], data["returns"][mb])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return stats

    STATS = ("pg_loss", "vf_loss", "approx_kl", "clipfrac", "entropy")

    def metrics(self, data, stats):
        values = torch.stack(stats).mean(0).tolist()  # one device sync per iteration
        out = dict(zip(self.STATS, values))
        out["env_steps"] = self.runner.steps
        out["episodes"] = self.runner.episodes
        if self.runner.recent:
            out["return"] = float(np.mean(self.runner.recent))  # the true return, last 100 training episodes
        return out

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split, num_tasks, steps, seed, chunk=100):
        """{"return": (1, num_tasks)}: true returns of `num_tasks` episodes with the mean action.

        Each episode's environment is reset from a seed of (split_seed(seed, split), episode index)
        (validation apart from test), observations normalised with the training statistics frozen;
        `chunk` episodes are played side by side (figures do not depend on it). `steps` is unused.
        """
        base = split_seed(seed, split)
        seeds = [episode_seed(base, i) for i in range(num_tasks)]

        def act(obs):
            return self.model(obs)[0]

        returns = [run_episodes(lambda: self.task.make_env(delayed=False), act, self.runner.normalizer, seeds[i:i + chunk],
                                self.task.action_low, self.task.action_high, self.device) for i in range(0, num_tasks, chunk)]
        return {"return": torch.as_tensor(np.concatenate(returns), dtype=torch.float32, device=self.device)[None]}

    def oracle_calls(self, meta_batch_size):
        return {}  # not a meta-gradient method; env steps are logged as train/env_steps

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(), "runner": self.runner.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.runner.load_state_dict(state["runner"])
