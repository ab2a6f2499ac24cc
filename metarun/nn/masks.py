"""Binary masks learned through a straight-through estimator: the one implementation in metarun.

Kaleidoscope (Li, Pan and Zhang, 2024) shares one weight W among agents and gives agent i a mask
over it through learned thresholds s_i; Sparse-MAML (von Oswald et al., 2021) and threshold adapt
rules mask which parameters the inner loop moves. All of them use `binary_step`:

    forward   1[x > 0]
    backward  tanh(grad)   (Kaleidoscope's estimator: bounded, so a huge upstream gradient cannot
              identity     flip every threshold at once)   or the plain straight-through estimator
                           (Sparse-MAML).
"""
import math

import torch
from torch import nn


class _Step(torch.autograd.Function):
    generate_vmap_rule = True  # so it works under torch.func's vmap and grad

    @staticmethod
    def forward(x, backward):
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.backward = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return (torch.tanh(grad) if ctx.backward == "tanh" else grad), None


BACKWARDS = ("tanh", "identity")


def binary_step(x, backward="tanh"):
    """1[x > 0] as a float tensor, with the straight-through backward `backward` ("tanh" or "identity")."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, not {backward!r}")
    return _Step.apply(x, backward)


def threshold_mask(weight, thresholds, backward="tanh"):
    """m = 1[|W| - sigmoid(s) > 0]: which weights survive thresholds `s` (broadcast against W).

    |W| is detached, so the estimator trains only the thresholds (as Kaleidoscope's masks do).
    """
    return binary_step(weight.detach().abs() - torch.sigmoid(thresholds), backward)


def soft_threshold(weight, thresholds):
    """sign(W) * relu(|W| - sigmoid(s)): Kaleidoscope's masked weight, differentiable in W and s."""
    return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(thresholds))


def init_thresholds(shape, scale, bias, generator=None, device=None):
    """s = -(U(0, 1) * scale + bias): Kaleidoscope's initialisation (actors 5, 5: nearly nothing pruned)."""
    return -(torch.rand(shape, generator=generator, device=device) * scale + bias)


class MaskedLinear(nn.Module):
    """A linear layer shared by `n_masks` members (agents, critics), each seeing it through its own mask.

    Member i uses W_i = sign(W) * relu(|W| - sigmoid(s_i)) and the shared, unmasked bias b.
    `forward(x)` takes x of shape (n_masks, ..., in_features) and applies every member's weight
    to its own slice at once (one einsum, not a weight gathered per sample).
    """

    def __init__(self, in_features, out_features, n_masks, threshold_init=(5.0, 5.0), bias=True):
        super().__init__()
        base = nn.Linear(in_features, out_features, bias=bias)  # torch's default init for W and b
        self.weight = base.weight
        self.bias = base.bias
        self.n_masks, self.threshold_init = n_masks, tuple(threshold_init)
        self.thresholds = nn.Parameter(init_thresholds((n_masks, out_features, in_features), *self.threshold_init))

    def masked_weights(self):
        """(n_masks, out, in): every member's effective weight."""
        return soft_threshold(self.weight, self.thresholds)

    def forward(self, x):
        if x.shape[0] != self.n_masks:
            raise ValueError(f"MaskedLinear expects a leading dim of {self.n_masks} members, got shape {tuple(x.shape)}")
        out = torch.einsum("m...i,moi->m...o", x, self.masked_weights())
        return out if self.bias is None else out + self.bias

    def masks(self, backward="tanh"):
        """(n_masks, out, in) binary masks 1[|W| > sigmoid(s_i)], straight-through in the thresholds."""
        return threshold_mask(self.weight, self.thresholds, backward)

    def density(self):
        """(n_masks,) share of the weights each member keeps."""
        with torch.no_grad():
            return self.masks().flatten(1).mean(1)

    def extra_repr(self):
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, n_masks={self.n_masks}"

    @torch.no_grad()
    def reset_pruned(self, ratio, threshold_init=None):
        """Revive weights that every mask prunes (Kaleidoscope's periodic reset).

        Each weight pruned by all members is picked with probability `ratio`; a picked weight is
        re-drawn from torch's default Linear initialisation and its thresholds, for every member,
        from `init_thresholds` (`threshold_init`, default the layer's own). Weights some member
        still uses are never touched. Returns the (out, in) boolean tensor of reset weights.
        """
        dead = self.masks().sum(0) == 0
        picked = dead & (torch.rand(self.weight.shape, device=self.weight.device) < ratio)
        fresh = torch.empty_like(self.weight)
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))  # what nn.Linear draws its weights from
        self.weight.copy_(torch.where(picked, fresh, self.weight))
        scale, bias = threshold_init or self.threshold_init
        redrawn = init_thresholds(self.thresholds.shape, scale, bias, device=self.thresholds.device)
        self.thresholds.copy_(torch.where(picked, redrawn, self.thresholds))
        return picked

    @torch.no_grad()
    def reset_member(self, member, threshold_init=None):
        """Redraw one member's thresholds from the initial distribution (a critic of the ensemble restarts)."""
        scale, bias = threshold_init or self.threshold_init
        self.thresholds[member] = init_thresholds(self.thresholds.shape[1:], scale, bias, device=self.thresholds.device)


def diversity_loss(layers, layer_weights):
    """Kaleidoscope's mask diversity loss, to be minimised (it is minus a distance):

        L_div = - sum_l lambda_l sum_{i != j} || |W_l| (m_i - m_j) ||_1 / (N (N - 1) P)

    over the MaskedLinear `layers` (all with the same N members), m_i the binary masks
    (straight-through: only the thresholds get gradients), |W_l| detached, P the total number of
    masked weights of all layers. With binary masks it lies in [-max_l lambda_l * max|W|, 0].
    """
    n = layers[0].n_masks
    if n < 2:
        raise ValueError("the diversity loss needs at least 2 masks")
    total, count = 0.0, 0
    for layer, lam in zip(layers, layer_weights, strict=True):
        weighted = layer.masks() * layer.weight.detach().abs()
        total = total + lam * (weighted[None] - weighted[:, None]).abs().sum()
        count += layer.weight.numel()
    return -total / (n * (n - 1) * count)


@torch.no_grad()
def mask_distances(layers):
    """(N, N): share of the masked weights (all `layers` together) on which members i and j differ."""
    masks = torch.cat([layer.masks().flatten(1) for layer in layers], 1)
    return (masks[None] != masks[:, None]).float().mean(-1)
