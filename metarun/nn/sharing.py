"""Layers for N members (agents, critics) called the same way, whatever they share.

Every layer takes x of shape (N, ..., in) and returns (N, ..., out), member i's slice through
member i's weights:

    share=full          one nn.Linear for all members (parameter sharing; agents differ by their id input)
    share=none          `IndependentLinear`: a weight and a bias per member (no sharing)
    share=kaleidoscope  `MaskedLinear`: one weight, a learned mask per member (metarun.nn.masks)

`MemberGRU` is the recurrent layer with the same convention: one shared torch GRU, or one per
member (share=none). Kaleidoscope shares its GRU unmasked, as the reference does.
"""
import math

import torch
from torch import nn

from metarun.nn.masks import MaskedLinear

SHARES = ("full", "none", "kaleidoscope")


class IndependentLinear(nn.Module):
    """N separate linear layers stored as one (N, out, in) weight, applied with one einsum."""

    def __init__(self, in_features, out_features, n_members, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n_members, out_features)) if bias else None
        bound = 1 / math.sqrt(in_features)
        for i in range(n_members):  # each member drawn as torch draws an nn.Linear
            nn.init.kaiming_uniform_(self.weight.data[i], a=math.sqrt(5))
            if bias:
                nn.init.uniform_(self.bias.data[i], -bound, bound)

    def forward(self, x):
        out = torch.einsum("m...i,moi->m...o", x, self.weight)
        if self.bias is None:
            return out
        return out + self.bias.view(self.bias.shape[0], *([1] * (x.dim() - 2)), -1)


def member_linear(share, in_features, out_features, n_members, threshold_init=(5.0, 5.0)):
    """A linear layer for `n_members` members with the given sharing (see the module docstring)."""
    if share == "full":
        return nn.Linear(in_features, out_features)
    if share == "none":
        return IndependentLinear(in_features, out_features, n_members)
    if share == "kaleidoscope":
        return MaskedLinear(in_features, out_features, n_members, threshold_init=threshold_init)
    raise ValueError(f"share must be one of {', '.join(SHARES)}, not {share!r}")


class MemberGRU(nn.Module):
    """A GRU for N members over a whole sequence: x (N, T, B, in), h (N, B, hidden) -> (N, T, B, hidden).

    shared=True runs one torch.nn.GRU on all members' sequences at once; shared=False gives every
    member its own torch.nn.GRU (the fused multi-step kernel per member is faster on the CPU than
    the GRU equations written out for batched per-member weights).
    """

    def __init__(self, input_size, hidden_size, n_members, shared=True):
        super().__init__()
        self.hidden_size, self.shared = hidden_size, shared
        self.grus = nn.ModuleList(nn.GRU(input_size, hidden_size) for _ in range(1 if shared else n_members))

    def forward(self, x, h):
        n, t, b, _ = x.shape
        if self.shared:
            out, _ = self.grus[0](x.permute(1, 0, 2, 3).reshape(t, n * b, -1), h.reshape(1, n * b, -1))
            return out.view(t, n, b, -1).permute(1, 0, 2, 3)
        return torch.stack([gru(x[m], h[m][None])[0] for m, gru in enumerate(self.grus)])  # x[m]: (T, B, in)
