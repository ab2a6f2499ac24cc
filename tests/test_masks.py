"""metarun.nn.masks: the straight-through step, threshold masks and the masked linear layer."""
import pytest
import torch
from torch.func import grad, vmap

from metarun.nn.masks import MaskedLinear, binary_step, soft_threshold, threshold_mask


def test_binary_step_forward_is_the_indicator_and_backward_is_tanh_of_the_gradient():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-6, 3.0], requires_grad=True)
    upstream = torch.tensor([5.0, -0.3, 0.2, -40.0, 1.0])
    y = binary_step(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    y.backward(upstream)
    assert torch.equal(x.grad, torch.tanh(upstream))  # bounded: |grad| <= 1 whatever comes in


def test_identity_backward_passes_the_gradient_through_unchanged():
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    binary_step(x, backward="identity").backward(torch.tensor([7.0, -3.0]))
    assert x.grad.tolist() == [7.0, -3.0]


def test_binary_step_works_under_vmap_and_grad():
    weights = torch.arange(4.0)

    def f(x):
        return (binary_step(x) * weights).sum()

    xs = torch.randn(3, 4)
    assert torch.equal(vmap(grad(f))(xs), torch.tanh(weights).expand(3, 4))
    assert torch.equal(vmap(f)(xs), ((xs > 0).float() * weights).sum(1))


def test_unknown_backward_is_refused():
    with pytest.raises(ValueError, match="tanh, identity"):
        binary_step(torch.zeros(1), backward="sigmoid")


def test_threshold_mask_trains_only_the_thresholds():
    w = torch.tensor([[0.5, -0.05], [0.2, -2.0]], requires_grad=True)
    s = torch.zeros(2, 2, requires_grad=True)  # sigmoid(0) = 0.5: keeps |w| > 0.5
    m = threshold_mask(w, s)
    assert m.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    (m * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert w.grad is None
    # d m / d s = tanh(upstream) * d(-sigmoid(s))/ds = -tanh(upstream) * 0.25 at s = 0.
    assert torch.allclose(s.grad, -0.25 * torch.tanh(torch.tensor([[1.0, 2.0], [3.0, 4.0]])))


def test_soft_threshold_shrinks_towards_zero_by_sigmoid_of_the_threshold():
    w = torch.tensor([0.9, -0.9, 0.1])
    s = torch.tensor([0.0, 0.0, 0.0])
    assert torch.allclose(soft_threshold(w, s), torch.tensor([0.4, -0.4, 0.0]))


def test_masked_linear_applies_each_members_weight_to_its_own_inputs():
    torch.manual_seed(0)
    layer = MaskedLinear(3, 2, n_masks=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.3], [0.05, 0.6, -0.7]]))
        layer.bias.copy_(torch.tensor([0.1, -0.1]))
        layer.thresholds.copy_(torch.stack([torch.full((2, 3), -30.0), torch.zeros(2, 3)]))  # member 0 keeps all
    x = torch.randn(2, 5, 3)
    out = layer(x)
    w0 = layer.weight - torch.sign(layer.weight) * torch.sigmoid(torch.tensor(-30.0))
    w1 = torch.sign(layer.weight) * torch.relu(layer.weight.abs() - 0.5)  # [[0.5, -1.5, 0], [0, 0.1, -0.2]]
    assert torch.allclose(out[0], x[0] @ w0.T + layer.bias, atol=1e-6)
    assert torch.allclose(out[1], x[1] @ w1.T + layer.bias, atol=1e-6)
    assert layer.density().tolist() == pytest.approx([1.0, 4 / 6])


def test_masked_linear_threshold_gradient_matches_hand_computation():
    layer = MaskedLinear(1, 1, n_masks=1)
    with torch.no_grad():
        layer.weight.fill_(0.8)
        layer.bias.zero_()
        layer.thresholds.fill_(0.0)
    out = layer(torch.tensor([[[2.0]]]))  # 2 * (0.8 - sigmoid(0)) = 0.6
    assert out.item() == pytest.approx(0.6)
    out.sum().backward()
    # d out / d s = -2 * sigmoid'(0) = -0.5; d out / d W = 2 (relu active, sign +).
    assert layer.thresholds.grad.item() == pytest.approx(-0.5)
    assert layer.weight.grad.item() == pytest.approx(2.0)


def test_masked_linear_with_open_masks_equals_the_plain_linear_layer():
    torch.manual_seed(1)
    layer = MaskedLinear(4, 3, n_masks=3)
    with torch.no_grad():
        layer.thresholds.fill_(-60.0)  # sigmoid(-60) ~ 1e-26: nothing is pruned or shrunk in float32
    x = torch.randn(3, 7, 4)
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.allclose(layer(x), plain, atol=1e-6)


def test_masked_linear_initial_thresholds_prune_almost_nothing():
    torch.manual_seed(2)
    layer = MaskedLinear(64, 64, n_masks=4, threshold_init=(5.0, 5.0))
    assert layer.thresholds.max() <= -5.0 and layer.thresholds.min() >= -10.0
    assert layer.density().min() > 0.98
