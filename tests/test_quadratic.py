"""The quadratic task family: closed-form meta-gradient and outer contraction against the real algorithms."""
import math

import pytest
import torch
from hydra import compose, initialize_config_module

from metarun.config import ConfigError
from metarun.tasks.quadratic import Quadratic, adapted_mask, measured_contraction, theory
from metarun.train import build


def preset(*overrides):
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=["+experiment=quadratic_1d", *overrides])


def outer_distances(cfg, iterations):
    """|z_k - z*| for k = 0..iterations, training with the real algorithm and outer SGD."""
    task, model, _, algo = build(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    distances = [model.vector().norm().item()]
    for _ in range(iterations):
        algo.step(task.sample(cfg.meta_batch_size, generator, "train"))
        distances.append(model.vector().norm().item())
    return distances


@pytest.mark.parametrize("geometry,algo,steps,iterations", [
    ("convex_1d", "anil", 5, 12),
    ("nonconvex_1d", "maml", 10, 12),
    ("nonconvex_1d", "anil", 20, 8),    # beta > 2 / L_N: the closed form predicts divergence
    ("convex_4d", "anil", 5, 60),       # d-dim: the ratio converges to the spectral radius
])
def test_measured_contraction_matches_closed_form(geometry, algo, steps, iterations):
    cfg = preset(f"geometry={geometry}", f"algo={algo}", f"algo.inner_steps={steps}")
    rho = theory(cfg)["rho"]
    measured = measured_contraction(outer_distances(cfg, iterations))
    assert measured == pytest.approx(rho, rel=0.05)


def test_one_dimensional_rate_is_the_textbook_formula():
    # rho = |1 - beta a_D (1 - alpha a_S)^(2N)| with a_S = 1, a_D = 1, alpha = 0.05, beta = 0.5, N = 5.
    cfg = preset("geometry=convex_1d", "algo.inner_steps=5")
    assert theory(cfg)["rho"] == pytest.approx(1 - 0.5 * 0.95 ** 10, rel=1e-12)
    assert theory(cfg)["smoothness"] == pytest.approx(0.95 ** 10, rel=1e-12)
    # Every single step contracts by exactly rho in 1-D, not only asymptotically.
    d = outer_distances(cfg, 6)
    for before, after in zip(d, d[1:]):
        assert after / before == pytest.approx(1 - 0.5 * 0.95 ** 10, rel=1e-4)


@pytest.mark.parametrize("algo,first_order", [("anil", False), ("maml", False), ("anil", True), ("maml", True)])
def test_meta_gradient_is_H_times_z(algo, first_order):
    """The autograd meta-gradient of a meta-batch equals the closed-form H z (H = T^T A_D T, or A_D T first order)."""
    cfg = preset("geometry=nonconvex_4d", f"algo={algo}", "algo.inner_steps=3", f"algo.first_order={str(first_order).lower()}",
                 "algo.inner_l2=0.1")
    task, model, _, algo_obj = build(cfg)
    batch = task.sample(6, torch.Generator().manual_seed(1), "train")
    model.zero_grad()
    algo_obj.meta_loss(batch)["loss"].backward()
    grad = torch.cat([model.head.w.grad, model.body.u.grad]).double()
    h = task.outer_matrix(adapted_mask(task, algo_obj.adapted), 3, cfg.algo.inner_lr, 0.1, first_order)
    assert torch.allclose(grad, h @ model.vector().double(), atol=1e-5)


def test_loss_uses_support_and_query_curvatures_and_centres_are_antithetic():
    task = Quadratic(head_dim=1, body_dim=1, support_curvature=[-2.0, 3.0], query_curvature=[1.0, 4.0])
    x, sy, qx, qy = task.sample(5, torch.Generator().manual_seed(0))
    assert torch.allclose(sy[..., :2].sum(0), torch.zeros(1, 2), atol=1e-6)
    assert (sy[..., 2] == 0).all() and (qy[..., 2] == 1).all()
    z = torch.tensor([[1.0, 2.0]])
    c = sy[0, :, :2]
    r = z - c
    assert task.loss_fn(z, sy[0]).item() == pytest.approx(0.5 * (-2 * r[0, 0] ** 2 + 3 * r[0, 1] ** 2).item(), rel=1e-6)
    assert task.loss_fn(z, qy[0]).item() == pytest.approx(0.5 * (r[0, 0] ** 2 + 4 * r[0, 1] ** 2).item(), rel=1e-6)


def test_bad_curvatures_are_config_errors():
    with pytest.raises(ConfigError, match="task.support_curvature"):
        Quadratic(head_dim=2, body_dim=0, support_curvature=[1.0], query_curvature=[1.0, 1.0])
    with pytest.raises(ConfigError, match="task.query_curvature"):
        Quadratic(head_dim=1, support_curvature=[1.0], query_curvature=[-1.0])


def test_measured_contraction_ignores_float_floor():
    d = [0.5 ** k for k in range(40)] + [1e-30, 1e-31]
    assert measured_contraction(d) == pytest.approx(0.5)
    assert math.isclose(measured_contraction([1.0, 2.0, 4.0]), 2.0)
