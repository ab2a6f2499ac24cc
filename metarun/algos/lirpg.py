"""LIRPG: learning intrinsic rewards for policy gradient (Zheng, Oh and Singh, NeurIPS 2018), PPO + LIRPG
as its reference code runs it (Hwhitetooth/lirpg: baselines/ppo2 with MlpPolicyIntrinsicReward).

    theta = the policy pi_theta and V_mix (value of the mixed reward): the model (actor_critic)
    eta   = the intrinsic reward r_in(s, a; eta) = tanh(MLP([s, a])) and V_ex (value of the extrinsic return)

    for each iteration:
        roll out nsteps with pi_theta (the extrinsic reward r_ex delayed, normalised)
        A_ex = GAE(r_ex; V_ex), R_ex = A_ex + V_ex                                        (constants)
        for epoch = 1..epochs, for each shuffled minibatch B:
            delta_mix = r_in_coef r_in(s, a; eta) + r_ex_coef r_ex + gamma V_mix(s') (1 - d) - V_mix(s)   (all steps)
            A_mix[B] = sum_j (gamma lambda)^(j - i) delta_mix_j within the episode, R_mix = A_mix + V_mix_old
            L_in(theta; eta) = PPO loss on B with A_mix (normalised in B) and R_mix
            theta'(eta) = one Adam step on L_in from the optimizer's state, gradient clipped to norm 0.5
                          [metarun.inner_loop.adapt(..., rule=Adam(state), max_grad_norm)]
            L_ex(eta) = PPO's clipped surrogate of pi_theta'(eta) / pi_old with A_ex[B] (normalised)
                        + vf_coef * clipped V_ex loss
            eta   <- Adam(lr_beta)(eta, clip(grad_eta L_ex, 0.5))
            theta <- theta' (torch.optim.Adam's step with the same clipped gradient)

Only r_in depends on eta inside the mixed GAE, and the GAE is linear: A_mix[B] = const[B] + r_in_coef
(W^T r_in)[B], with W the discount matrix of metarun.rl.returns kept for the whole iteration (the
reference builds the same rows, COEF_MAT, per minibatch). `meta_step=false` freezes eta at its random
initialisation: PPO on the mixed reward with a fixed random r_in (the control arm). As in the
reference, the second moment of the simulated Adam step sees a detached gradient
(`detach_second_moment`), so the meta-gradient flows through the first moment.
"""
from functools import partial

import torch
from torch import nn
from torch.func import functional_call

from metarun.algos.ppo import PPO, clipped_surrogate, clipped_value_loss, gaussian_log_prob, normalized
from metarun.config import ConfigError
from metarun.inner_loop import Adam, adapt
from metarun.models.actor_critic import mlp
from metarun.rl.returns import discount_matrix, gae


class IntrinsicReward(nn.Module):
    """eta: r_in(s, a) = tanh(MLP([s, a])) and the extrinsic value V_ex(s), 64-64 tanh each."""

    def __init__(self, obs_dim, action_dim, hidden=(64, 64)):
        super().__init__()
        self.reward_net = mlp([obs_dim + action_dim, *hidden, 1])
        self.value_net = mlp([obs_dim, *hidden, 1])

    def reward(self, obs, actions):
        return torch.tanh(self.reward_net(torch.cat([obs, actions], -1))[..., 0])

    def value(self, obs):
        return self.value_net(obs)[..., 0]


class LookaheadAdam(Adam):
    """The simulated Adam step; it keeps the (clipped) gradient it stepped with, so the real
    optimizer step reuses it instead of differentiating the inner loss a second time."""

    def step(self, fast, grads, state, lr):
        self.grads = grads
        return super().step(fast, grads, state, lr)


class LIRPG(PPO):
    # Per minibatch: the outer losses, and the KL / clipped fraction of the updated policy pi_theta' vs pi_old.
    STATS = ("outer_pg_loss", "v_ex_loss", "approx_kl_new", "clipfrac_new")

    def __init__(self, model, optimizer, task, r_ex_coef=0.0, r_in_coef=1.0, lr_beta=1e-4, meta_step=True,
                 detach_second_moment=True, intrinsic_hidden=(64, 64), **ppo):
        super().__init__(model, optimizer, task, **ppo)
        for key, v in (("algo.r_ex_coef", r_ex_coef), ("algo.r_in_coef", r_in_coef)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ConfigError(key, v, "a number >= 0")
        if not (isinstance(lr_beta, (int, float)) and lr_beta > 0):
            raise ConfigError("algo.lr_beta", lr_beta, "a number > 0")
        self.r_ex_coef, self.r_in_coef, self.meta_step = r_ex_coef, r_in_coef, meta_step
        if not meta_step:
            self.STATS = PPO.STATS
        self.detach_second_moment = detach_second_moment
        self.intrinsic = IntrinsicReward(task.input_shape[0], task.output_dim, list(intrinsic_hidden)).to(self.device)
        self.eta_optimizer = torch.optim.Adam(self.intrinsic.parameters(), lr=lr_beta, eps=1e-5, fused=True)
        # compile: the whole meta objective (r_in, the lookahead with its inner gradient by torch.func.grad,
        # the outer loss) becomes one graph, and its backward another; about 1 min of compilation,
        # then the per-minibatch meta update takes about half the eager time (scripts/bench_lirpg.py).
        self.objective = torch.compile(partial(self.meta_objective, functional=True)) if self.compiled else self.meta_objective

    def advantages(self, data):
        with torch.no_grad():
            eta = self.intrinsic
            v_ex, next_v_ex = eta.value(data["obs"]), eta.value(data["next_obs"])
            data["v_ex"] = v_ex
            data["adv_ex"] = gae(data["rewards"], v_ex, next_v_ex, data["dones"], self.gamma, self.lam, terminated=data["terminated"])
            data["ret_ex"] = data["adv_ex"] + v_ex
            data["r_in"] = eta.reward(data["obs"], data["actions"])
            # The mixed advantage without r_in: a constant of this rollout. With eta frozen, r_in is one too.
            rewards = self.r_ex_coef * data["rewards"] + (0 if self.meta_step else self.r_in_coef * data["r_in"])
            data["adv"] = gae(rewards, data["values"], data["next_values"], data["dones"], self.gamma, self.lam,
                              terminated=data["terminated"])
            data["returns"] = data["adv"] + data["values"]
            if self.meta_step:  # rows t of W^T: the GAE weights of every step j on step t's advantage
                data["gae_rows"] = discount_matrix(self.nsteps, self.gamma * self.lam, data["dones"], data["rewards"].dtype,
                                                   self.device).T.contiguous()

    def update(self, data, mb):
        if not self.meta_step:
            return super().update(data, mb)  # the frozen control: PPO on the mixed reward
        outer_loss, inner_grad, stats = self.objective(data, mb, self.adam_state())
        eta = list(self.intrinsic.parameters())
        for p, g in zip(eta, torch.autograd.grad(outer_loss, eta)):  # with respect to eta only (not theta's leaf)
            p.grad = g
        torch.nn.utils.clip_grad_norm_(self.intrinsic.parameters(), self.max_grad_norm)
        self.eta_optimizer.step()
        # The policy's real step from the same state with the same clipped gradient: theta <- theta'.
        for p, g in zip(self.model.parameters(), self.unflatten(inner_grad.detach()).values()):
            p.grad = g
        self.optimizer.step()
        return stats

    def meta_objective(self, data, mb, adam_state, functional=False):
        """(L_ex(eta) on minibatch `mb` through theta'(eta), the clipped inner gradient, stats).

        `adam_state` is the policy optimizer's state before this step (`adam_state()`); the inner
        gradient is taken by torch.autograd.grad, or by torch.func.grad with `functional` (what
        torch.compile traces): the same derivatives."""
        eta = self.intrinsic
        # The inner loss as a function of eta: the mixed advantage through r_in of every step.
        r_in = eta.reward(data["obs"], data["actions"])
        adv_mix = data["adv"][mb] + self.r_in_coef * (data["gae_rows"][mb] @ r_in)
        ret_mix = adv_mix + data["values"][mb]
        # theta as one flat vector: the simulated Adam step and the clip are then a few tensor ops,
        # not a few per parameter tensor (the same arithmetic, less per-op overhead).
        theta = {"theta": torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])}
        rule = LookaheadAdam(eps=1e-5, state=adam_state, detach_second_moment=self.detach_second_moment)
        theta_new = adapt(lambda p: self.ppo_loss(self.unflatten(p["theta"]), data, mb, adv_mix, ret_mix)[0], theta, 1,
                          self.lr_alpha, rule=rule, max_grad_norm=self.max_grad_norm, functional=functional)
        # The outer loss: the extrinsic PPO objective of the updated policy, and V_ex's loss.
        mean, log_std = functional_call(self.model, self.unflatten(theta_new["theta"]), (data["obs"][mb],), tie_weights=False)
        logp = gaussian_log_prob(mean, log_std, data["actions"][mb])
        outer_pg, kl, clipped = clipped_surrogate(logp, data["logp"][mb], normalized(data["adv_ex"][mb]), self.clip)
        v_ex_loss = clipped_value_loss(eta.value(data["obs"][mb]), data["v_ex"][mb], data["ret_ex"][mb], self.clip)
        return outer_pg + self.vf_coef * v_ex_loss, rule.grads["theta"], torch.stack([outer_pg, v_ex_loss, kl, clipped]).detach()

    def unflatten(self, flat):
        """The model's parameter dict from a flat vector (views)."""
        names, shapes = zip(*[(n, p.shape) for n, p in self.model.named_parameters()])
        return {n: x.view(s) for n, x, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}

    def adam_state(self):
        """The policy optimizer's state before this step, flattened like theta (zeros before the first
        step, where torch.optim.Adam starts: one structure, so a compiled objective compiles once)."""
        params = list(self.model.parameters())
        state = self.optimizer.state
        if not state:
            zeros = [torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=self.device) for _ in range(2)]
            return {"theta": {"exp_avg": zeros[0], "exp_avg_sq": zeros[1], "step": torch.zeros((), device=self.device)}}
        flat = {k: torch.cat([state[p][k].reshape(-1) for p in params]) for k in ("exp_avg", "exp_avg_sq")}
        return {"theta": {**flat, "step": state[params[0]]["step"]}}

    def metrics(self, data, stats):
        out = super().metrics(data, stats)
        out["r_in"] = data["r_in"].mean().item()
        return out

    def oracle_calls(self, meta_batch_size):
        # Per iteration, one per minibatch update: the inner gradient (theta), the outer gradient
        # (eta) and, through the lookahead, one second-order product (the outer gradient's pass
        # back through the inner gradient). The frozen control takes PPO's steps only.
        n = self.epochs * self.minibatches
        return {"inner_grad": n, "outer_grad": n if self.meta_step else 0, "second_order": n if self.meta_step else 0}

    def state_dict(self):
        return {**super().state_dict(), "intrinsic": self.intrinsic.state_dict(), "eta_optimizer": self.eta_optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.intrinsic.load_state_dict(state["intrinsic"])
        self.eta_optimizer.load_state_dict(state["eta_optimizer"])
