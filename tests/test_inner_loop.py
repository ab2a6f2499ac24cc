"""The functional inner loop: meta-gradients against hand-derived values, batching, subsets."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metarun.algos.maml import MAML
from metarun.config import ConfigError
from metarun.inner_loop import adapt, adapted_names, task_functions
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP

REGRESSION = SimpleNamespace(loss_fn=lambda out, y: F.mse_loss(out, y), classification=False)
CLASSIFICATION = SimpleNamespace(loss_fn=F.cross_entropy, classification=True)


class LinearHead(nn.Module):
    """f(x) = w . x: the inner loss is an exact quadratic with Hessian 2/n X^T X."""

    def __init__(self, d):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(d, 1, bias=False)

    def forward(self, x):
        return self.head(self.body(x))


def quadratic_batch(tasks=3, n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tasks, n, *s, generator=g, dtype=torch.float64) for s in ((d,), (1,), (d,), (1,)))


def hand_maml_gradient(w, batch, alpha, steps, l2, first_order):
    """d/dw mean_i L_q,i(w_N,i) for MSE, derived by hand: prod_k (I - alpha H_i) grad L_q(w_N)."""
    grads = []
    for sx, sy, qx, qy in zip(*batch):
        n, d = sx.shape
        hessian = 2 / n * sx.T @ sx + 2 * l2 * torch.eye(d, dtype=w.dtype)
        b = 2 / n * sx.T @ sy[:, 0]
        v = w.clone()
        for _ in range(steps):
            v = v - alpha * (hessian @ v - b)
        g_query = 2 / qx.shape[0] * qx.T @ (qx @ v - qy[:, 0])
        jacobian = torch.linalg.matrix_power(torch.eye(d, dtype=w.dtype) - alpha * hessian, steps)
        grads.append(g_query if first_order else jacobian @ g_query)
    return torch.stack(grads).mean(0)


@pytest.mark.parametrize("steps,l2", [(1, 0.0), (3, 0.0), (2, 0.5)])
def test_maml_meta_gradient_matches_hand_derivation(steps, l2):
    torch.manual_seed(0)
    model = LinearHead(4).double()
    batch = quadratic_batch()
    w = model.head.weight.detach()[0].clone()
    results = {}
    for first_order in (False, True):
        algo = MAML(model, None, REGRESSION, ["*"], steps, 0.1, l2, first_order)
        model.zero_grad()
        algo.meta_loss(batch)["loss"].backward()
        results[first_order] = model.head.weight.grad[0].clone()
        expected = hand_maml_gradient(w, batch, 0.1, steps, l2, first_order)
        torch.testing.assert_close(results[first_order], expected, rtol=1e-10, atol=1e-12)
    # For one step the two differ by exactly the Hessian term -alpha * H grad L_q(w_1).
    if steps == 1 and l2 == 0:
        hessian_terms = []
        for sx, sy, qx, qy in zip(*batch):
            h = 2 / sx.shape[0] * sx.T @ sx
            w1 = w - 0.1 * (h @ w - 2 / sx.shape[0] * sx.T @ sy[:, 0])
            hessian_terms.append(-0.1 * h @ (2 / qx.shape[0] * qx.T @ (qx @ w1 - qy[:, 0])))
        torch.testing.assert_close(results[False] - results[True], torch.stack(hessian_terms).mean(0))
        assert (results[False] - results[True]).abs().max() > 1e-3  # the term is not trivially zero


def test_zero_inner_steps_is_plain_query_loss():
    model = LinearHead(4).double()
    batch = quadratic_batch()
    algo = MAML(model, None, REGRESSION, ["*"], 0, 0.1)
    loss = algo.meta_loss(batch)["loss"]
    expected = torch.stack([F.mse_loss(model(qx), qy) for _, _, qx, qy in zip(*batch)]).mean()
    torch.testing.assert_close(loss, expected)


def clone_loop_meta_gradient(model, batch, adapted, steps, lr):
    """Reference MAML written the learn2learn way: per task, clone the module, autograd.grad(create_graph)."""
    model.zero_grad()
    total = 0
    for sx, sy, qx, qy in zip(*batch):
        params = dict(model.named_parameters())
        fast = {k: params[k] for k in adapted}
        for _ in range(steps):
            clone = copy.deepcopy(model)
            out = torch.func.functional_call(clone, {**params, **fast}, (sx,))
            grads = torch.autograd.grad(F.cross_entropy(out, sy), list(fast.values()), create_graph=True)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(torch.func.functional_call(model, {**params, **fast}, (qx,)), qy)
    (total / len(batch[0])).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def image_batch(tasks=3, ways=3, shots=2, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, ways * (shots + query), 1, 12, 12, generator=g)
    y = torch.arange(ways).repeat_interleave(shots + query).expand(tasks, -1)
    s = ways * shots
    return x[:, :s], y[:, :s].contiguous(), x[:, s:], y[:, s:].contiguous()


@pytest.mark.parametrize("patterns, downsample, global_pool", [
    (["*"], "maxpool", False), (["head.*"], "maxpool", False), (["body.2.*", "head.*"], "maxpool", False),
    (["*"], "stride", True), (["head.*"], "stride", True), (["*"], "stride", False)])
def test_vmapped_batch_equals_per_task_clone_loop(patterns, downsample, global_pool):
    torch.manual_seed(0)
    model = Conv4((1, 12, 12), 3, channels=8, blocks=3, downsample=downsample, global_pool=global_pool)
    batch = image_batch()
    algo = MAML(model, None, CLASSIFICATION, patterns, 2, 0.3)
    model.zero_grad()
    metrics = algo.meta_loss(batch)
    metrics["loss"].backward()
    vmapped = {k: p.grad.clone() for k, p in model.named_parameters()}
    # The same per-task function without vmap, one task at a time.
    params = dict(model.named_parameters())
    per_task = [algo.task_loss(params, algo.inner_lr, *(t[i] for t in batch))["loss"] for i in range(3)]
    torch.testing.assert_close(metrics["loss"], torch.stack(per_task).mean(), rtol=1e-5, atol=1e-6)
    reference = clone_loop_meta_gradient(model, batch, algo.adapted, 2, 0.3)
    for k in vmapped:
        torch.testing.assert_close(vmapped[k], reference[k], rtol=1e-4, atol=1e-6)


def test_anil_adapts_only_the_head_and_runs_the_body_once():
    torch.manual_seed(0)
    model = Conv4((1, 12, 12), 3, channels=8, blocks=2)
    params = dict(model.named_parameters())
    adapted = adapted_names(model, ["head.*"])
    assert adapted == ["head.weight", "head.bias"]
    sx, sy, _, _ = (t[0] for t in image_batch())
    calls = []
    model.body.register_forward_hook(lambda *a: calls.append(1))
    prepare, predict = task_functions(model, params, adapted)
    features = prepare(sx)
    fast = adapt(lambda p: F.cross_entropy(predict(p, features), sy), {k: params[k] for k in adapted}, 5, 0.5)
    assert set(fast) == {"head.weight", "head.bias"}
    assert len(calls) == 1  # five inner steps, one body pass
    assert not torch.equal(fast["head.weight"], params["head.weight"])
    # The head-only path on precomputed features equals the whole model run on the raw input with the
    # adapted head in place (the path MAML takes when some body parameter adapts).
    whole = torch.func.functional_call(model, {**params, **fast}, (sx,))
    torch.testing.assert_close(predict(fast, features), whole)
    _, whole_model_predict = task_functions(model, params, adapted + ["body.0.0.weight"])
    torch.testing.assert_close(whole_model_predict({**fast, "body.0.0.weight": params["body.0.0.weight"]}, sx), whole)
    manual = {k: params[k].detach().clone().requires_grad_() for k in adapted}
    for _ in range(5):
        loss = F.cross_entropy(torch.func.functional_call(model, {**params, **manual}, (sx,)), sy)
        grads = torch.autograd.grad(loss, list(manual.values()))
        manual = {k: (v - 0.5 * g).detach().requires_grad_() for (k, v), g in zip(manual.items(), grads)}
    for k in adapted:
        torch.testing.assert_close(fast[k], manual[k], rtol=1e-5, atol=1e-6)


def test_anil_body_passes_do_not_grow_with_inner_steps():
    model = Conv4((1, 12, 12), 3, channels=8, blocks=2)
    calls = []
    model.body.register_forward_hook(lambda *a: calls.append(1))
    counts = {}
    for patterns in (["head.*"], ["*"]):
        for steps in (1, 4):
            calls.clear()
            MAML(model, None, CLASSIFICATION, patterns, steps, 0.1).meta_loss(image_batch())
            counts[patterns[0], steps] = len(calls)
    assert counts["head.*", 1] == counts["head.*", 4] == 2  # support and query, once each
    assert counts["*", 4] > counts["*", 1]


def test_pattern_that_matches_nothing_lists_parameter_names():
    model = MLP((1,), 1)
    with pytest.raises(ConfigError) as err:
        adapted_names(model, ["head.*", "decoder.*"])
    message = str(err.value)
    assert "algo.adapt" in message and "decoder.*" in message and "body.1.weight" in message and "head.bias" in message


def test_adapted_subset_by_patterns_keeps_model_order():
    model = Conv4((1, 12, 12), 3, channels=8, blocks=3)
    assert adapted_names(model, ["head.*", "body.2.*"]) == ["body.2.0.weight", "body.2.0.bias", "body.2.1.weight", "body.2.1.bias", "head.weight", "head.bias"]


def test_batchnorm_uses_per_task_batch_statistics_under_vmap():
    model = Conv4((1, 12, 12), 3, channels=8, blocks=2)
    x = image_batch()[0]
    params = dict(model.named_parameters())
    vmapped = vmap(lambda xi: torch.func.functional_call(model, params, (xi,)))(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(vmapped[i], model(x[i]), rtol=1e-5, atol=1e-6)
    assert dict(model.named_buffers()) == {}  # no running statistics to leak between tasks


def test_task_batchnorm_equals_torch_batchnorm_in_training_mode():
    from metarun.models.conv4 import TaskBatchNorm2d

    torch.manual_seed(0)
    ours, theirs = TaskBatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
            m.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 1.0]))
    x = torch.randn(6, 4, 5, 5, requires_grad=True)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(out_ours)
    g_ours = torch.autograd.grad((out_ours * w).sum(), [x, ours.weight, ours.bias])
    g_theirs = torch.autograd.grad((out_theirs * w).sum(), [x, theirs.weight, theirs.bias])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_vmap_gives_the_same_meta_gradient():
    torch.manual_seed(0)
    model = Conv4((1, 12, 12), 3, channels=8, blocks=2)
    grads = []
    for chunk in (None, 2):
        model.zero_grad()
        MAML(model, None, CLASSIFICATION, ["*"], 2, 0.3, vmap_chunk=chunk).meta_loss(image_batch(tasks=5))["loss"].backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5)


def _toy_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"a": torch.randn(3, 2, generator=g, dtype=torch.float64), "b": torch.randn(2, generator=g, dtype=torch.float64)}
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)

    def loss(p):
        return ((x @ p["a"] + p["b"] - y) ** 2).mean() * 40  # large gradients, so clipping bites

    return params, loss


def test_functional_adam_steps_equal_torch_optim_adam_from_the_same_state():
    from metarun.inner_loop import Adam

    params, loss = _toy_problem()
    real = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.Adam(real.values(), lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    for _ in range(3):  # build up a non-trivial optimizer state first
        opt.zero_grad()
        loss(real).backward()
        opt.step()
    state = {k: opt.state[p] for k, p in real.items()}
    start = {k: v.detach().clone() for k, v in real.items()}
    ours = adapt(loss, start, 2, 0.05, rule=Adam(betas=(0.8, 0.95), eps=1e-6, state=state))
    for _ in range(2):
        opt.zero_grad()
        loss(real).backward()
        opt.step()
    for k in params:
        torch.testing.assert_close(ours[k], real[k].detach(), rtol=1e-12, atol=1e-14)


def test_global_norm_clip_equals_clip_grad_norm_then_sgd_and_is_differentiable():
    params, loss = _toy_problem(1)
    real = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss(real).backward()
    torch.nn.utils.clip_grad_norm_(real.values(), 0.5)
    expected = {k: v.detach() - 0.1 * v.grad for k, v in real.items()}
    ours = adapt(loss, params, 1, 0.1, max_grad_norm=0.5)
    for k in params:
        torch.testing.assert_close(ours[k], expected[k], rtol=1e-12, atol=1e-14)
    # The clipped step stays differentiable in the starting point (second order through the clip).
    assert torch.autograd.gradcheck(lambda a: adapt(loss, {"a": a, "b": params["b"]}, 1, 0.1, max_grad_norm=0.5)["a"].sum(),
                                    (params["a"].clone().requires_grad_(),))


def test_per_parameter_learning_rates_scale_each_entry_and_carry_their_gradient():
    params, loss = _toy_problem(2)
    rates = {"a": torch.full((3, 2), 0.1, dtype=torch.float64, requires_grad=True), "b": torch.zeros(2, dtype=torch.float64)}
    g = torch.func.grad(loss)(params)
    fast = adapt(loss, params, 1, rates)
    torch.testing.assert_close(fast["a"], params["a"] - 0.1 * g["a"])
    torch.testing.assert_close(fast["b"], params["b"])  # rate 0: frozen
    # d fast_a / d rate_a = -g_a, entry by entry.
    rate_grad, = torch.autograd.grad(fast["a"].sum(), rates["a"])
    torch.testing.assert_close(rate_grad, -g["a"])


def test_step_logs_the_meta_gradient_norm_and_the_running_mean_of_its_square():
    # Plain SGD with lr 0 keeps w fixed, so every step's meta-gradient is the hand-derived one for its batch.
    torch.manual_seed(0)
    model = LinearHead(4).double()
    w = model.head.weight.detach()[0].clone()
    algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.0), REGRESSION, ["*"], 2, 0.1, 0.0)
    norms = []
    for seed in range(3):
        batch = quadratic_batch(seed=seed)
        metrics = algo.step(batch)
        expected = torch.linalg.vector_norm(hand_maml_gradient(w, batch, 0.1, 2, 0.0, False)).item()
        assert metrics["grad_norm"] == pytest.approx(expected, rel=1e-6)
        norms.append(expected)
        assert metrics["grad_sq_mean"] == pytest.approx(sum(n * n for n in norms) / len(norms), rel=1e-6)
    assert len({round(n, 6) for n in norms}) == 3  # different batches, different gradients
    # The running sum is part of the algorithm's state, so a resumed run continues the same mean.
    state = algo.state_dict()
    other = MAML(model, torch.optim.SGD(model.parameters(), lr=0.0), REGRESSION, ["*"], 2, 0.1, 0.0)
    other.load_state_dict(state)
    batch = quadratic_batch(seed=3)
    assert other.step(batch)["grad_sq_mean"] == pytest.approx(algo.step(batch)["grad_sq_mean"], rel=1e-12)


@pytest.mark.parametrize("size, global_pool, expected", [(28, True, 64), (28, False, 64 * 2 * 2), (56, True, 64),
                                                         (56, False, 64 * 4 * 4), (84, False, 64 * 6 * 6)])
def test_strided_conv4_shapes(size, global_pool, expected):
    """Stride-2 3x3 convolutions with padding 1 halve (rounding up) each side: 28 -> 14 -> 7 -> 4 -> 2, as in
    Finn et al.'s Omniglot net and learn2learn's OmniglotCNN; global_pool averages the last map into 64 features."""
    model = Conv4((1, size, size), 20, downsample="stride", global_pool=global_pool)
    x = torch.rand(5, 1, size, size)
    assert model.body(x).shape == (5, expected) and model(x).shape == (5, 20)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    strides = [m.stride for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [(2, 2)] * 4
    # The same parameter names as the max-pool net: checkpoints and adapt patterns mean the same layers.
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in Conv4((1, size, size), 20).named_parameters()]
    if global_pool:  # the head sees the mean of the last feature map over positions
        last = model.body[:-1](x)
        torch.testing.assert_close(model.body(x), last.mean(dim=(2, 3)))


def test_conv4_options_are_config_errors():
    with pytest.raises(ConfigError, match="model.downsample"):
        Conv4((1, 28, 28), 5, downsample="avgpool")
    with pytest.raises(ConfigError, match="model.global_pool"):
        Conv4((1, 28, 28), 5, global_pool="mean")
