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


# ---- Kaleidoscope's diversity loss, resets and mask distances ------------------------------------

from metarun.nn.masks import diversity_loss, mask_distances  # noqa: E402


def two_layer_masks():
    """Two 1x2 layers with 3 members and masks set by hand through the thresholds (sigmoid(0) = 0.5)."""
    a, b = MaskedLinear(2, 1, n_masks=3), MaskedLinear(2, 1, n_masks=3)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[0.8, -0.6]]))
        b.weight.copy_(torch.tensor([[0.9, 0.7]]))
        keep, drop = -30.0, 0.0  # sigmoid(-30) ~ 0 keeps a weight, sigmoid(0) = 0.5 ... drops |w| < 0.5 only
        a.thresholds.copy_(torch.tensor([[[keep, keep]], [[keep, 5.0]], [[5.0, 5.0]]]))  # masks 11, 10, 00
        b.thresholds.copy_(torch.tensor([[[keep, keep]], [[keep, keep]], [[5.0, keep]]]))  # masks 11, 11, 01
    return a, b


def test_diversity_loss_on_a_tiny_case_by_hand():
    a, b = two_layer_masks()
    assert a.masks().squeeze(1).tolist() == [[1, 1], [1, 0], [0, 0]]
    assert b.masks().squeeze(1).tolist() == [[1, 1], [1, 1], [0, 1]]
    # Layer a, |W| = (0.8, 0.6): pairs (0,1): 0.6, (0,2): 1.4, (1,2): 0.8 -> ordered pairs 2 * 2.8 = 5.6.
    # Layer b, |W| = (0.9, 0.7): (0,1): 0, (0,2): 0.9, (1,2): 0.9 -> 2 * 1.8 = 3.6.
    # L = -(1 * 5.6 + 2 * 3.6) / (N (N - 1) P) with N = 3, P = 4 weights.
    loss = diversity_loss([a, b], [1.0, 2.0])
    assert loss.item() == pytest.approx(-(5.6 + 7.2) / (3 * 2 * 4))


def test_diversity_loss_trains_only_the_thresholds_through_tanh_of_the_gradient():
    a, b = two_layer_masks()
    (100.0 * diversity_loss([a, b], [1.0, 2.0])).backward()
    assert a.weight.grad is None and b.weight.grad is None
    # d L / d m for layer a, member 0, weight 0 (|w| = 0.8, masks 1, 1, 0 over members):
    # sum_j 2 sign(m_0 - m_j) |w| = 2 * (0 + 1) * 0.8, times -100 / 24 -> upstream g; the step's
    # backward passes tanh(g), then d m / d s = -sigmoid'(s) (s = -30: ~ e^-30).
    g = -100.0 / 24 * 2 * 0.8
    s = torch.tensor(-30.0)
    expected = torch.tanh(torch.tensor(g)) * -(torch.sigmoid(s) * (1 - torch.sigmoid(s)))
    assert a.thresholds.grad[0, 0, 0].item() == pytest.approx(expected.item(), rel=1e-5)
    # Member 1, weight 1 of layer a (s = 5, mask 0; masks 1, 0, 0): sum_j 2 sign(0 - m_j) |w| = -2 * 0.6.
    g = -100.0 / 24 * -2 * 0.6
    s = torch.tensor(5.0)
    expected = torch.tanh(torch.tensor(g)) * -(torch.sigmoid(s) * (1 - torch.sigmoid(s)))
    assert a.thresholds.grad[1, 0, 1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_diversity_loss_needs_two_members_and_a_weight_per_layer():
    with pytest.raises(ValueError, match="at least 2"):
        diversity_loss([MaskedLinear(2, 2, n_masks=1)], [1.0])
    with pytest.raises(ValueError):
        diversity_loss([MaskedLinear(2, 2, n_masks=2)], [1.0, 2.0])


def test_reset_touches_only_weights_pruned_by_every_mask():
    torch.manual_seed(3)
    layer = MaskedLinear(6, 5, n_masks=3)
    with torch.no_grad():
        layer.thresholds.fill_(-30.0)  # keep everything ...
        layer.thresholds[:, :2, :3] = 5.0  # ... except a 2x3 block every member prunes
        layer.thresholds[0, 3, :] = 5.0  # and a row only member 0 prunes
    weight, thresholds = layer.weight.detach().clone(), layer.thresholds.detach().clone()
    picked = layer.reset_pruned(ratio=1.0, threshold_init=(1.0, 2.0))
    dead = torch.zeros(5, 6, dtype=torch.bool)
    dead[:2, :3] = True
    assert torch.equal(picked, dead)
    assert torch.equal(layer.weight[~dead], weight[~dead]) and torch.equal(layer.thresholds[:, ~dead], thresholds[:, ~dead])
    assert not torch.equal(layer.weight[dead], weight[dead])
    bound = 1 / 6 ** 0.5  # nn.Linear's init range for 6 inputs
    assert layer.weight[dead].abs().max() <= bound
    redrawn = layer.thresholds[:, dead]
    assert redrawn.min() >= -3.0 and redrawn.max() <= -2.0  # -(U * 1 + 2)
    # ratio 0 resets nothing; a ratio in between picks a subset of the dead weights only.
    assert not layer.reset_pruned(ratio=0.0).any()


def test_reset_ratio_picks_a_random_share_of_the_dead_weights():
    torch.manual_seed(4)
    layer = MaskedLinear(100, 100, n_masks=2)
    with torch.no_grad():
        layer.thresholds.fill_(5.0)  # sigmoid(5) = 0.993 > every |W| <= 0.1: all dead
    picked = layer.reset_pruned(ratio=0.25)
    assert 0.2 < picked.float().mean().item() < 0.3


def test_reset_member_redraws_one_members_thresholds():
    torch.manual_seed(5)
    layer = MaskedLinear(4, 3, n_masks=3, threshold_init=(20.0, 0.0))
    before = layer.thresholds.detach().clone()
    layer.reset_member(1)
    assert torch.equal(layer.thresholds[0], before[0]) and torch.equal(layer.thresholds[2], before[2])
    assert not torch.equal(layer.thresholds[1], before[1])
    assert layer.thresholds[1].min() >= -20.0 and layer.thresholds[1].max() <= 0.0


def test_mask_distances_count_the_weights_two_members_disagree_on():
    a, b = two_layer_masks()
    d = mask_distances([a, b])
    # Over the 4 weights: members 0/1 differ on 1, 0/2 on 3, 1/2 on 2.
    assert d.tolist() == [[0.0, 0.25, 0.75], [0.25, 0.0, 0.5], [0.75, 0.5, 0.0]]
