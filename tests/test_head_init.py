"""algo.head_init=prototypes (Proto-MAML): each task's head starts from its support set's class means."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metarun.algos.maml import MAML
from metarun.config import ConfigError
from metarun.evaluate import evaluate
from metarun.inner_loop import prototype_head
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from test_inner_loop import CLASSIFICATION


def test_prototype_head_predicts_what_a_prototypical_network_predicts():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(7, 5, generator=g)
    labels = torch.tensor([2, 0, 1, 2, 0, 2, 1])  # unordered, unequal shots
    head = prototype_head(features, labels, 3)
    means = torch.stack([features[labels == k].mean(0) for k in range(3)])
    torch.testing.assert_close(head["head.weight"], 2 * means)
    torch.testing.assert_close(head["head.bias"], -(means ** 2).sum(1))
    queries = torch.randn(4, 5, generator=g)
    logits = F.linear(queries, head["head.weight"], head["head.bias"])
    torch.testing.assert_close(logits.softmax(-1), (-torch.cdist(queries, means) ** 2).softmax(-1))


def image_batch(tasks=3, ways=3, shots=2, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, 1, 12, 12, generator=g)
    qx = torch.randn(tasks, ways * query, 1, 12, 12, generator=g)
    # Support labels in a different order per task, so the prototypes cannot rely on sorted labels.
    sy = torch.stack([torch.arange(ways).repeat_interleave(shots)[torch.randperm(ways * shots, generator=g)] for _ in range(tasks)])
    qy = torch.arange(ways).repeat_interleave(query).expand(tasks, -1).contiguous()
    return sx, sy, qx, qy


def reference_meta_gradient(model, batch, adapted, steps, lr):
    """Proto-MAML written per task with autograd: prototypes by boolean masks, clone per step."""
    model.zero_grad()
    total = 0
    for sx, sy, qx, qy in zip(*batch):
        params = dict(model.named_parameters())
        feats = functional_call(model.body, {k[5:]: v for k, v in params.items() if k.startswith("body.")}, (sx,))
        protos = torch.stack([feats[sy == k].mean(0) for k in range(int(sy.max()) + 1)])
        # Clones: the inner gradient is the partial derivative in the adapted copy of each tensor, not
        # the total one through the prototypes (which depend on the same body weights).
        fast = {k: params[k].clone() for k in adapted}
        fast.update({"head.weight": 2 * protos, "head.bias": -(protos ** 2).sum(1)})
        for _ in range(steps):
            clone = copy.deepcopy(model)
            out = functional_call(clone, {**params, **fast}, (sx,))
            grads = torch.autograd.grad(F.cross_entropy(out, sy), list(fast.values()), create_graph=True)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, {**params, **fast}, (qx,)), qy)
    (total / len(batch[0])).backward()
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("patterns", [["*"], ["head.*"]])
def test_vmapped_proto_maml_meta_gradient_equals_the_per_task_reference(patterns):
    torch.manual_seed(0)
    model = Conv4((1, 12, 12), 3, channels=8, blocks=3, downsample="stride", global_pool=True)
    batch = image_batch()
    algo = MAML(model, None, CLASSIFICATION, patterns, 2, 0.3, head_init="prototypes")
    model.zero_grad()
    algo.meta_loss(batch)["loss"].backward()
    vmapped = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    reference = reference_meta_gradient(model, batch, algo.adapted, 2, 0.3)
    # The meta-learned head is never used: every task replaces it by its prototypes.
    assert vmapped["head.weight"] is None and vmapped["head.bias"] is None
    assert reference["head.weight"] is None
    for k, g in vmapped.items():
        if g is not None:
            torch.testing.assert_close(g, reference[k], rtol=1e-4, atol=1e-6)
    assert vmapped["body.0.0.weight"].abs().sum() > 0  # the body learns through the prototypes


@pytest.mark.parametrize("patterns", [["head.*"], ["*"]])
def test_proto_meta_gradient_equals_finite_differences(patterns):
    torch.manual_seed(1)
    model = MLP((4,), 3, hidden=(6,)).double()
    g = torch.Generator().manual_seed(2)
    sx, qx = torch.randn(2, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    sy = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 0, 1, 0]])
    batch = (sx, sy, qx, sy.flip(-1).contiguous())
    algo = MAML(model, None, CLASSIFICATION, patterns, 2, 0.5, head_init="prototypes")
    model.zero_grad()
    algo.meta_loss(batch)["loss"].backward()
    w = model.body[1].weight
    analytic = w.grad.clone()
    eps = 1e-6
    for index in [(0, 0), (3, 2), (5, 1)]:
        with torch.no_grad():
            w[index] += eps
            up = algo.meta_loss(batch)["loss"].item()
            w[index] -= 2 * eps
            down = algo.meta_loss(batch)["loss"].item()
            w[index] += eps
        assert analytic[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


class Clusters:
    """A 3-way classification family whose classes are well-separated Gaussian clusters in 2-D."""

    classification, loss_fn = True, staticmethod(F.cross_entropy)

    def sample(self, n, generator, split):
        centres = torch.randn(n, 3, 1, 2, generator=generator) * 4
        sx = (centres + torch.randn(n, 3, 2, 2, generator=generator) * 0.3).reshape(n, 6, 2)
        qx = (centres + torch.randn(n, 3, 2, 2, generator=generator) * 0.3).reshape(n, 6, 2)
        y = torch.arange(3).repeat_interleave(2).expand(n, -1).contiguous()
        return sx, y, qx, y


def test_evaluation_starts_from_the_prototypes_before_any_inner_step():
    torch.manual_seed(0)
    task = Clusters()
    model = MLP((2,), 3, hidden=())  # the body is the identity: the prototypes are the cluster means
    plain = evaluate(MAML(model, None, task, ["head.*"], 1, 0.1), task, "test", 50, 0, seed=0, chunk=50)
    proto = evaluate(MAML(model, None, task, ["head.*"], 1, 0.1, head_init="prototypes"), task, "test", 50, 0, seed=0, chunk=50)
    # A random head is at chance; nearest-mean classification of separated clusters is near perfect.
    assert plain["accuracy"][0].mean() < 0.6
    assert proto["accuracy"][0].mean() > 0.95


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_init="protos"), "learned, prototypes"),
    (dict(head_init="prototypes", adapt=["body.*"]), "head.weight and head.bias"),
    (dict(head_init="prototypes", head_hidden=8), "one linear layer"),
    (dict(head_init="prototypes", task=SimpleNamespace(loss_fn=F.mse_loss, classification=False)), "regression"),
])
def test_head_init_that_cannot_apply_is_a_config_error(kwargs, message):
    model = Conv4((1, 12, 12), 3, channels=8, blocks=3, head_hidden=kwargs.pop("head_hidden", 0))
    task = kwargs.pop("task", CLASSIFICATION)
    with pytest.raises(ConfigError, match="algo.head_init") as error:
        MAML(model, None, task, kwargs.pop("adapt", ["*"]), 1, 0.1, **kwargs)
    assert message in str(error.value)
