"""MAML for reinforcement learning (Finn et al., 2017, Algorithm 3), with a TRPO or Adam outer step.

    for each meta-iteration:
        sample a meta-batch of tasks T_i (goals)
        for each T_i (batched):
            for k = 1..N:  sample trajectories D_i^{k-1} with the current (adapted) policy
                           phi_i <- phi_i - alpha * grad REINFORCE(phi_i; D_i^{k-1})   [metarun.inner_loop.adapt]
            sample post-adaptation trajectories D_i' with pi_{phi_i}
        outer step on sum_i L(phi_i(theta); D_i'):  TRPO (natural gradient, mean-KL trust region,
        Fisher-vector products through the adaptation) or a first-order optimizer (Adam)

The inner objective is REINFORCE with a linear feature baseline fitted per task (rllab's
LinearFeatureBaseline) and advantages standardised per task. As in the reference implementation,
the dependence of the sampling distribution of D_i on theta is ignored (the inner data are constants).
Rollouts of all tasks x trajectories run as one batch: the per-task (adapted) policies are applied
with ``vmap(functional_call)`` over the task dim; the only Python loop is over time steps.
`inner_steps=0` is plain (joint, multi-task) policy optimisation: the "pretrained" baseline.
"""
import math
from functools import partial

import torch
from torch.func import vmap

from metarun.config import ConfigError
from metarun.evaluate import split_seed
from metarun.inner_loop import adapt, adapted_names, task_functions
from metarun.rl.returns import discounted_returns
from metarun.tasks import RLTaskFamily

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(mean, log_std, actions):
    """log N(actions; mean, exp(log_std)^2 I), summed over the action dim."""
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean0, log_std0, mean1, log_std1):
    """KL(N0 || N1) of diagonal Gaussians, summed over the action dim."""
    var0, var1 = (2 * log_std0).exp(), (2 * log_std1).exp()
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


def masked_mean(x, mask, dims):
    return (x * mask).sum(dims) / mask.sum(dims).clamp_min(1)


def baseline_features(obs):
    """rllab's LinearFeatureBaseline features: obs, obs^2, t/100, (t/100)^2, (t/100)^3, 1."""
    obs = obs.clamp(-10, 10)
    t = (torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0).expand(*obs.shape[:-1])[..., None]
    return torch.cat([obs, obs.pow(2), t, t.pow(2), t.pow(3), torch.ones_like(t)], -1)


def fit_linear_baseline(features, returns, mask, reg=1e-5):
    """Ridge least squares per task: features (T, ..., F), returns/mask (T, ...). Returns (T, F) coefficients.

    Solves (X^T X + reg I) w = X^T y over the valid (unmasked) samples of each task, in float64
    as the features up to (t/100)^3 make X^T X ill-conditioned in float32.
    """
    t, f = features.shape[0], features.shape[-1]
    x = (features * mask[..., None]).reshape(t, -1, f).double()
    y = (returns * mask).reshape(t, -1, 1).double()
    gram = x.transpose(1, 2) @ x + reg * torch.eye(f, dtype=torch.float64, device=x.device)
    return torch.linalg.solve(gram, x.transpose(1, 2) @ y)[..., 0].to(features.dtype)


def conjugate_gradient(matvec, b, iters, tol=1e-10):
    """Approximately solve A x = b for symmetric positive definite A given by `matvec`.

    Returns (x, A x). A x = b - r is tracked by the iteration itself, so TRPO's step length
    x^T A x costs no extra matrix-vector product (one Fisher-vector product in eleven).
    """
    x, r = torch.zeros_like(b), b.clone()
    ax = torch.zeros_like(b)
    p, rr = r.clone(), r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r, ax = x + alpha * p, r - alpha * ap, ax + alpha * ap
        new_rr = r @ r
        if new_rr < tol:
            break
        p, rr = r + (new_rr / rr) * p, new_rr
    return x, ax


def line_search(set_params, evaluate, old, full_step, loss_before, max_kl, max_steps, backtrack):
    """Try old - backtrack^i * full_step for i = 0, 1, ...; keep the first point where the loss falls
    and the KL bound holds, else restore `old`. Returns (accepted fraction or 0.0, loss, kl, trials)."""
    for i in range(max_steps):
        fraction = backtrack ** i
        set_params(old - fraction * full_step)
        loss, kl = evaluate()
        if loss < loss_before and kl <= max_kl:
            return fraction, loss, kl, i + 1
    set_params(old)
    return 0.0, loss_before, 0.0, max_steps


class MAMLRL:
    def __init__(self, model, optimizer, task, adapt, inner_steps, inner_lr, outer="trpo", first_order=False,
                 trajectories=20, discount=0.99, baseline_reg=1e-5, max_kl=0.01, cg_iters=10, cg_damping=1e-5,
                 ls_max_steps=15, ls_backtrack=0.8, fisher_subsample=1.0, eval_lr_decay=0.5, eval_trajectories=None,
                 inner_l2=0.0):
        if outer not in ("trpo", "adam"):
            raise ConfigError("algo.outer", outer, "one of trpo, adam")
        if not isinstance(task, RLTaskFamily):
            raise ConfigError("task", type(task).__name__, "an RL task family with an env: navigation2d, half_cheetah_vel, half_cheetah_dir")
        def integer(v, low):
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        def number(v, low, high=math.inf, low_open=True, high_open=False):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return False
            return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

        checks = [("algo.trajectories", trajectories, integer(trajectories, 1), "an integer >= 1"),
                  ("algo.inner_steps", inner_steps, integer(inner_steps, 0), "an integer >= 0"),
                  ("algo.inner_lr", inner_lr, number(inner_lr, 0), "a number > 0"),
                  ("algo.discount", discount, number(discount, 0, 1), "a number in (0, 1]"),
                  ("algo.baseline_reg", baseline_reg, number(baseline_reg, 0), "a number > 0"),
                  ("algo.max_kl", max_kl, number(max_kl, 0), "a number > 0"),
                  ("algo.cg_iters", cg_iters, integer(cg_iters, 1), "an integer >= 1"),
                  ("algo.cg_damping", cg_damping, number(cg_damping, 0, low_open=False), "a number >= 0"),
                  ("algo.ls_max_steps", ls_max_steps, integer(ls_max_steps, 1), "an integer >= 1"),
                  ("algo.ls_backtrack", ls_backtrack, number(ls_backtrack, 0, 1, high_open=True), "a number in (0, 1)"),
                  ("algo.fisher_subsample", fisher_subsample, number(fisher_subsample, 0, 1), "a number in (0, 1]"),
                  ("algo.eval_lr_decay", eval_lr_decay, number(eval_lr_decay, 0), "a number > 0"),
                  ("algo.eval_trajectories", eval_trajectories, eval_trajectories is None or integer(eval_trajectories, 1),
                   "null (= algo.trajectories) or an integer >= 1"),
                  ("algo.first_order", first_order, isinstance(first_order, bool), "true or false")]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(key, value, allowed)
        with torch.no_grad():
            out = model(torch.zeros(1, *task.input_shape, device=next(model.parameters()).device))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ConfigError("model", type(model).__name__, "a Gaussian policy returning (mean, log_std), such as gaussian_mlp")
        self.model, self.optimizer, self.task = model, optimizer, task
        self.adapted = adapted_names(model, adapt)
        self.inner_steps, self.inner_lr, self.inner_l2, self.first_order = inner_steps, inner_lr, inner_l2, first_order
        self.outer, self.trajectories, self.discount, self.baseline_reg = outer, trajectories, discount, baseline_reg
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.ls_max_steps, self.ls_backtrack, self.eval_lr_decay = ls_max_steps, ls_backtrack, eval_lr_decay
        self.fisher_subsample = fisher_subsample
        self.eval_trajectories = eval_trajectories or trajectories
        self.last = {"fvp": cg_iters, "trials": 1}  # counts of the last step, for oracle_calls

    # ---- per-task functions (vmapped over the task dim) ------------------------------------

    def act(self, params, fast, obs):
        """(mean, log_std) of one task's policy with adapted parameters `fast` at observations `obs`."""
        prepare, predict = task_functions(self.model, params, self.adapted)
        return predict(fast, prepare(obs))

    def inner_step(self, params, fast, data, lr):
        """One REINFORCE step on one task's trajectories, through metarun.inner_loop.adapt."""
        prepare, predict = task_functions(self.model, params, self.adapted)
        h = prepare(data["obs"])  # ANIL: the frozen body runs once, not once per inner step

        def reinforce(p):
            logp = gaussian_log_prob(*predict(p, h), data["act"])
            return -masked_mean(logp * data["adv"], data["mask"], (0, 1))

        return adapt(reinforce, fast, 1, lr, self.inner_l2, self.first_order)

    def policies(self, fast_dim):
        """``act`` for a batch of tasks; fast_dim None: every task uses the shared theta (no step yet)."""
        return vmap(self.act, in_dims=(None, fast_dim, 0))

    # ---- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, params, fast, fast_dim, goals, generator=None, trajectories=None):
        """`trajectories` episodes per goal with each task's policy; tensors of shape (tasks, trajectories, horizon, ...)."""
        n, horizon = trajectories or self.trajectories, self.task.horizon
        # Detached copies: vmap over tensors that carry an autograd graph is several times slower.
        params = {k: v.detach() for k, v in params.items()}
        fast = {k: v.detach() for k, v in fast.items()}
        env = self.task.env(goals[:, None].expand(-1, n, -1))
        obs = env.reset(generator)
        alive = torch.ones(obs.shape[:-1], device=obs.device)
        policy = self.policies(fast_dim)
        steps = []
        for _ in range(horizon):
            mean, log_std = policy(params, fast, obs)
            # Noise from the CPU generator (a seed gives the same trajectories on every device), then moved.
            noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
            action = mean + log_std.exp() * noise
            next_obs, reward, terminated = env.step(action)
            steps.append((obs, action, reward * alive, alive))
            alive = alive * ~terminated
            obs = next_obs
            if not alive.any():
                break
        # When every episode ended early the time dim is shorter than the horizon: nothing is padded,
        # so the later passes over these trajectories skip the steps that no episode reached.
        obs, act, rew, mask = (torch.stack(x, 2) for x in zip(*steps))
        data = {"obs": obs, "act": act, "rew": rew, "mask": mask}
        data["adv"] = self.advantages(data)
        return data

    def advantages(self, data):
        """Discounted return minus the task's fitted linear baseline, standardised per task."""
        returns = discounted_returns(data["rew"], self.discount)
        features = baseline_features(data["obs"])
        coeffs = fit_linear_baseline(features, returns, data["mask"], self.baseline_reg)
        baseline = torch.einsum("tnhf,tf->tnh", features, coeffs)
        adv, mask = (returns - baseline) * data["mask"], data["mask"]
        mean = masked_mean(adv, mask, (1, 2))[:, None, None]
        var = masked_mean((adv - mean).pow(2), mask, (1, 2))[:, None, None]
        return (adv - mean) / (var.sqrt() + 1e-8) * mask

    @staticmethod
    def episode_return(data):
        """Undiscounted return per task, averaged over its trajectories: (tasks,)."""
        return data["rew"].sum(2).mean(1)

    def adapt_on(self, params, fast, fast_dim, data, lr):
        """One inner step for every task at once; the result has a task dim (in_dims 0)."""
        return vmap(partial(self.inner_step, lr=lr), in_dims=(None, fast_dim, 0))(params, fast, data), 0

    @torch.no_grad()
    def sample_and_adapt(self, params, goals, generator=None):
        """Trajectories for each inner step and the post-adaptation ones (no graph: sampling only)."""
        params = {k: v.detach() for k, v in params.items()}
        fast, dim = {k: params[k] for k in self.adapted}, None
        inner = []
        for _ in range(self.inner_steps):
            inner.append(self.rollout(params, fast, dim, goals, generator))
            fast, dim = self.adapt_on(params, fast, dim, inner[-1], self.inner_lr)
        return inner, self.rollout(params, fast, dim, goals, generator)

    def readapt(self, params, inner):
        """The adapted parameters as a function of `params`, on the already sampled inner trajectories."""
        fast, dim = {k: params[k] for k in self.adapted}, None
        for data in inner:
            fast, dim = self.adapt_on(params, fast, dim, data, self.inner_lr)
        return fast, dim

    def post_policy(self, params, inner, obs):
        """(mean, log_std) of the adapted policies at the post-adaptation observations: a function of theta."""
        fast, dim = self.readapt(params, inner)
        return self.policies(dim)(params, fast, obs)

    # ---- outer step --------------------------------------------------------------------------

    @staticmethod
    def surrogate(mean, log_std, post, old):
        """Mean over tasks of -E[ratio * adv] on the post-adaptation data, and the mean KL(old || new)."""
        logp = gaussian_log_prob(mean, log_std, post["act"])
        ratio = (logp - gaussian_log_prob(*old, post["act"])).exp()
        loss = -masked_mean(ratio * post["adv"], post["mask"], (1, 2)).mean()
        kl = masked_mean(gaussian_kl(*old, mean, log_std), post["mask"], (1, 2)).mean()
        return loss, kl

    def step(self, goals):
        params = dict(self.model.named_parameters())
        inner, post = self.sample_and_adapt(params, goals)
        metrics = {"return_pre": self.episode_return(inner[0] if inner else post).mean().item(),
                   "return": self.episode_return(post).mean().item()}
        # The outer objective goes through the adaptation with torch.func (vjp / jvp), not through
        # autograd-tracked parameters: the same inner steps recorded by autograd run ~4x slower.
        theta = {k: v.detach() for k, v in params.items()}
        old, pullback = torch.func.vjp(lambda th: self.post_policy(th, inner, post["obs"]), theta)
        metrics["std"] = old[1].exp().mean().item()  # post-adaptation action std: exploration left
        outputs = tuple(o.detach().requires_grad_() for o in old)
        loss, _ = self.surrogate(*outputs, post, old)
        grad = pullback(torch.autograd.grad(loss, outputs))[0]  # d loss / d theta, through the inner steps
        if self.outer == "adam":
            for name, p in params.items():
                p.grad = grad[name]
            self.optimizer.step()
            self.last = {"fvp": 0, "trials": 0}
            return {"loss": loss.item(), **metrics}
        return {**self.trpo(params, inner, post, loss.item(), grad, old, pullback), **metrics}

    def fisher_vector_product(self, params, inner, post, old, pullback=None):
        """v -> F v + cg_damping v, F the Hessian at theta_old of the mean KL between the old and new
        post-adaptation policies, as a function of theta through the inner steps.

        Computed in the Gauss-Newton form F = J^T M J, which is exact at theta_old (the KL's gradient
        with respect to the policy outputs vanishes there): J is the Jacobian of the post-adaptation
        (mean, log_std) with respect to theta through the inner steps, M the Gaussian's Fisher in
        (mean, log_std) coordinates (1/sigma^2 and 2), weighted as the mean KL weights each sample.
        J^T is a stored vjp (`pullback`), J v the vjp of that linear map. This avoids the third-order
        terms that differentiating the KL gradient twice would build.

        `fisher_subsample` < 1 uses a random subset of the tasks (rllab's subsample_factor).
        """
        theta = {k: v.detach() for k, v in params.items()}
        t = post["mask"].shape[0]
        if self.fisher_subsample < 1 or pullback is None:
            keep = torch.randperm(t, device="cpu")[:max(1, round(self.fisher_subsample * t))].to(post["mask"].device)
            inner = [{k: v[keep] for k, v in d.items()} for d in inner]
            post = {k: v[keep] for k, v in post.items()}
            old = tuple(o[keep] for o in old)
            _, pullback = torch.func.vjp(lambda th: self.post_policy(th, inner, post["obs"]), theta)
        mask = post["mask"]
        weight = (mask / mask.sum((1, 2), keepdim=True).clamp_min(1) / mask.shape[0])[..., None]
        fisher = (weight / (2 * old[1]).exp(), 2 * weight.expand_as(old[1]))
        _, push = torch.func.vjp(pullback, tuple(torch.zeros_like(o) for o in old))  # v -> J v
        names = list(theta)
        sizes, shapes = [theta[n].numel() for n in names], [theta[n].shape for n in names]
        calls = []

        def product(v):
            calls.append(1)
            jv = push(({n: x.view(s) for n, x, s in zip(names, v.split(sizes), shapes)},))[0]
            jt = pullback(tuple(m * d for m, d in zip(fisher, jv)))[0]
            return torch.cat([jt[n].reshape(-1) for n in names]) + self.cg_damping * v

        return product, calls

    def trpo(self, params, inner, post, loss, grad, old, pullback):
        """Natural-gradient step of size sqrt(2 max_kl / s^T F s), then a backtracking line search."""
        plist = list(params.values())
        grad = torch.cat([grad[n].reshape(-1) for n in params])
        fvp, calls = self.fisher_vector_product(params, inner, post, old, pullback)
        direction, f_direction = conjugate_gradient(fvp, grad, self.cg_iters)
        shs = direction @ f_direction
        full_step = direction * torch.sqrt(2 * self.max_kl / shs.clamp_min(1e-12))
        old_vector = torch.cat([p.detach().reshape(-1) for p in plist])

        def set_params(vector):
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(vector, plist)

        @torch.no_grad()
        def evaluate():
            new_loss, new_kl = self.surrogate(*self.post_policy(params, inner, post["obs"]), post, old)
            return new_loss.item(), new_kl.item()

        fraction, new_loss, new_kl, trials = line_search(set_params, evaluate, old_vector, full_step, loss,
                                                         self.max_kl, self.ls_max_steps, self.ls_backtrack)
        self.last = {"fvp": len(calls), "trials": trials}
        return {"loss": new_loss, "kl": new_kl, "step_fraction": fraction}

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split, num_tasks, steps, seed, chunk=100):
        """{"return": (steps+1, num_tasks)}: average return per task after 0..steps inner steps.

        Step 1 uses inner_lr, later steps inner_lr * eval_lr_decay (0.1 then 0.05 in the paper);
        every step samples `eval_trajectories` fresh trajectories per goal. Goals and action noise
        come from a generator seeded by `split_seed` (`seed` for test, `seed + 1` for val), so every
        run is evaluated on the same goals with the same noise, and validation during training never
        sees the test goals. All goals roll out as one batch (a rollout's memory is small), so the
        figures cannot depend on `chunk`, which RL evaluation does not use.
        """
        generator = torch.Generator(device="cpu").manual_seed(split_seed(seed, split))
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        goals = self.task.sample(num_tasks, generator, split)
        fast, dim = {k: params[k] for k in self.adapted}, None
        returns = []
        for k in range(steps + 1):
            data = self.rollout(params, fast, dim, goals, generator, self.eval_trajectories)
            returns.append(self.episode_return(data))
            if k < steps:
                lr = self.inner_lr if k == 0 else self.inner_lr * self.eval_lr_decay
                fast, dim = self.adapt_on(params, fast, dim, data, lr)
        return {"return": torch.stack(returns)}

    def oracle_calls(self, meta_batch_size):
        # Per meta-iteration with T tasks and K inner steps (line-search trials and Fisher-vector
        # products are those of the last step; the FVPs touch fisher_subsample * T tasks):
        #   inner_grad   K*T inner REINFORCE gradients for sampling, K*T more for the graph of the
        #                outer pass (torch.func.vjp), and K*T per line-search trial (re-adaptation).
        #   outer_grad   T: the surrogate's gradient through the adaptation (TRPO and Adam).
        #   second_order one per task per Fisher-vector product (a second-order product of the mean
        #                KL), and, unless first_order, one inner Hessian-vector product per inner step
        #                for each pass through the adaptation's derivative: the outer gradient and,
        #                per FVP, J v and J^T (J v).
        #   inner_grad   also K per subsampled task when fisher_subsample < 1: the FVPs re-run the
        #                adaptation on their subset to record its vjp.
        #   jacobian_vector  when some parameters do not adapt (ANIL-RL), each of those inner
        #                Hessian-vector products also needs a mixed product d^2 L / d(frozen) d(adapted) . v,
        #                as in supervised ANIL; `_params` charges one pass through the frozen part per
        #                task per pass through the adaptation.
        t, k = meta_batch_size, self.inner_steps
        fvp, trials = self.last["fvp"], self.last["trials"]
        fisher_tasks = max(1, round(self.fisher_subsample * t)) if self.outer == "trpo" else 0
        refit = fisher_tasks if self.outer == "trpo" and self.fisher_subsample < 1 else 0
        inner = k * (t * (2 + trials) + refit)
        outer = t
        passes = t + 2 * fisher_tasks * fvp  # task-passes back through the adaptation's derivative
        inner_hvp = 0 if self.first_order else k * passes
        second = fisher_tasks * fvp + inner_hvp
        dim = sum(p.numel() for name, p in self.model.named_parameters() if name in self.adapted)
        total = sum(p.numel() for p in self.model.parameters())
        mixed = inner_hvp if total > dim and k else 0
        return {"inner_grad": inner, "outer_grad": outer, "second_order": second, "jacobian_vector": mixed,
                "inner_grad_params": inner * dim, "second_order_params": second * dim,
                "jacobian_vector_params": passes * (total - dim) if mixed else 0, "outer_grad_params": outer * total}

    def state_dict(self):
        # TRPO keeps no state between steps; the Adam outer step does.
        return {"optimizer": self.optimizer.state_dict() if self.optimizer else None, "last": dict(self.last)}

    def load_state_dict(self, state):
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.last = dict(state["last"])
