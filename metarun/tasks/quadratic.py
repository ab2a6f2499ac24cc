"""Quadratic meta-learning problems with a closed-form outer contraction (use with model=quadratic).

Parameters z = (w, u) in R^d: w = the head (task-specific block, head_dim entries), u = the
body (shared block). Task t has centre c_t and two quadratic losses,

    inner (support) loss  L_S(z) = 0.5 (z - c_t)^T A_S (z - c_t)
    outer (query) loss    L_D(z) = 0.5 (z - c_t)^T A_D (z - c_t),

with A_S = Q diag(support_curvature) Q^T and A_D = Q diag(query_curvature) Q^T (Q = I, or a
fixed random rotation that couples head and body). A negative support eigenvalue makes the
inner problem nonconvex; A_D must be positive definite so that the meta-objective is bounded.

Exact outer dynamics (derivation; also in docs/convergence.md). Let P be the 0/1 diagonal mask
of the adapted coordinates (w only: ANIL; all: MAML) and lambda = algo.inner_l2, whose penalty
lambda ||P z||^2 adds 2 lambda P to the inner curvature: G = A_S + 2 lambda P. One inner step
z <- z - alpha P (A_S (z - c_t) + 2 lambda z) is affine, so N steps give

    z_N = T z_0 + b(c_t),        T = (I - alpha P G)^N,   b linear in c_t.

The query loss after adaptation has gradient d/dz_0 = J^T A_D (z_N - c_t), with J = dz_N/dz_0 = T
(second order) or J = I (first order: inner gradients detached). The task centres come in
antithetic pairs (c, -c), so their batch mean is exactly 0 and the meta-gradient of a batch is

    H z_0,   H = T^T A_D T  (MAML/ANIL),   H = A_D T  (first order).

Plain SGD with outer step beta (optim=sgd, optim.lr=beta) is therefore the linear map
z_{k+1} = (I - beta H) z_k, its optimum is z* = 0, and the distance to it contracts per outer
iteration by rho = max_i |1 - beta eig_i(H)| asymptotically; exactly at every step in 1-D,
where rho = |1 - beta a_D (1 - alpha (a_S + 2 lambda))^(2N)|.
"""
import math

import torch

from metarun.config import ConfigError


class Quadratic:
    input_shape = (1,)
    classification = False

    def __init__(self, head_dim=1, body_dim=0, support_curvature=(1.0,), query_curvature=(1.0,),
                 rotation_seed=None, spread=1.0, device="cpu"):
        self.head_dim, self.body_dim, self.device = head_dim, body_dim, torch.device(device)
        d = self.output_dim = head_dim + body_dim
        support, query = list(support_curvature), list(query_curvature)
        for key, eig in (("task.support_curvature", support), ("task.query_curvature", query)):
            if len(eig) != d:
                raise ConfigError(key, eig, f"a list of head_dim + body_dim = {d} eigenvalues")
        if min(query) <= 0:
            raise ConfigError("task.query_curvature", query, "positive eigenvalues (the outer loss must be bounded below)")
        q = torch.eye(d, dtype=torch.float64)
        if rotation_seed is not None:
            g = torch.Generator().manual_seed(rotation_seed)
            q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
        self.support_matrix = q @ torch.diag(torch.tensor(support, dtype=torch.float64)) @ q.T
        self.query_matrix = q @ torch.diag(torch.tensor(query, dtype=torch.float64)) @ q.T
        self.spread = spread

    def loss_fn(self, outputs, targets):
        """0.5 (z - c)^T A (z - c), averaged over rows; A = A_S for support rows, A_D for query rows.

        A target row is (c, flag) with flag 0 on the support set and 1 on the query set, since
        the loss function sees only outputs and targets.
        """
        d = self.output_dim
        r = outputs - targets[..., :d]
        flag = targets[..., d:]
        a_s, a_d = self.support_matrix.to(r), self.query_matrix.to(r)  # the theory keeps float64 CPU copies
        quad = (1 - flag) * (r * (r @ a_s)).sum(-1, keepdim=True) + flag * (r * (r @ a_d)).sum(-1, keepdim=True)
        return 0.5 * quad.mean()

    def sample(self, n, generator, split="train"):
        # Antithetic centres (c, -c): the batch mean is exactly 0, so the outer step is exactly
        # the linear map of the module docstring. An odd n gets one centre at 0.
        half = self.spread * torch.randn(n // 2, self.output_dim, generator=generator, device="cpu").to(self.device)
        centres = torch.cat([half, -half, half.new_zeros(n % 2, self.output_dim)])[:, None, :]
        x = half.new_zeros(n, 1, 1)
        support_y = torch.cat([centres, half.new_zeros(n, 1, 1)], dim=-1)
        query_y = torch.cat([centres, half.new_ones(n, 1, 1)], dim=-1)
        return x, support_y, x, query_y

    def metrics(self, model):
        return {"dist_to_opt": model.vector().norm().item()}

    def outer_matrix(self, adapted_mask, inner_steps, inner_lr, inner_l2=0.0, first_order=False):
        """H with meta-gradient = H z (float64). `adapted_mask`: 0/1 per coordinate of z = (w, u)."""
        p = torch.diag(torch.as_tensor(adapted_mask, dtype=torch.float64))
        eye = torch.eye(self.output_dim, dtype=torch.float64)
        step = eye - inner_lr * p @ (self.support_matrix + 2 * inner_l2 * p)
        t = torch.linalg.matrix_power(step, inner_steps)
        return self.query_matrix @ t if first_order else t.T @ self.query_matrix @ t

    def contraction(self, adapted_mask, inner_steps, inner_lr, outer_lr, inner_l2=0.0, first_order=False):
        """rho = spectral radius of I - beta H: the asymptotic ratio |z_{k+1}| / |z_k| under outer SGD."""
        h = self.outer_matrix(adapted_mask, inner_steps, inner_lr, inner_l2, first_order)
        return torch.linalg.eigvals(torch.eye(self.output_dim, dtype=torch.float64) - outer_lr * h).abs().max().item()

    def smoothness(self, adapted_mask, inner_steps, inner_lr, inner_l2=0.0):
        """L_N = largest eigenvalue of the meta-Hessian T^T A_D T (the meta-gradient's Lipschitz constant)."""
        return torch.linalg.eigvalsh(self.outer_matrix(adapted_mask, inner_steps, inner_lr, inner_l2)).max().item()


def measured_contraction(distances, floor=1e-5):
    """Asymptotic ratio |z_k| / |z_{k-1}| from a sequence of distances to the optimum.

    Geometric mean of the ratios over the last third of the steps whose distances stay above
    `floor` times the first one (below it float32 rounding dominates). None if too few.
    """
    d = [float(v) for v in distances]
    valid = [k for k in range(1, len(d)) if d[k] > floor * d[0] and d[k - 1] > floor * d[0] and math.isfinite(d[k])]
    if not valid:
        return None
    tail = valid[-max(1, len(valid) // 3):]
    return math.exp(sum(math.log(d[k] / d[k - 1]) for k in tail) / len(tail))


def adapted_mask(task, adapted):
    """0/1 per coordinate of z = (w, u) from the algorithm's adapted parameter names."""
    return [1.0 if "head.w" in adapted else 0.0] * task.head_dim + [1.0 if "body.u" in adapted else 0.0] * task.body_dim


def theory(cfg):
    """(rho, L_N) for a composed run config that uses task=quadratic and optim=sgd; None otherwise."""
    from hydra.utils import instantiate

    from metarun.inner_loop import adapted_names
    from metarun.models.quadratic import QuadraticParams

    if not str(cfg.task.get("_target_", "")).endswith("quadratic.Quadratic") or "SGD" not in str(cfg.optim.get("_target_", "")):
        return None
    if cfg.optim.get("momentum", 0) or cfg.optim.get("weight_decay", 0):
        return None
    task = instantiate(cfg.task)
    model = QuadraticParams(task.input_shape, task.output_dim, head_dim=task.head_dim)
    mask = adapted_mask(task, adapted_names(model, list(cfg.algo.adapt)))
    algo = cfg.algo
    rho = task.contraction(mask, algo.inner_steps, algo.inner_lr, cfg.optim.lr, algo.get("inner_l2", 0.0), algo.get("first_order", False))
    smooth = task.smoothness(mask, algo.inner_steps, algo.inner_lr, algo.get("inner_l2", 0.0))
    return {"rho": rho, "smoothness": smooth, "log_rho": math.log(rho) if rho > 0 else -math.inf}
