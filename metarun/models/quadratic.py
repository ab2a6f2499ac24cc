"""The parameter vector z = (w, u) itself, for the quadratic task family (`task=quadratic`).

The "network" ignores its input values and outputs z once per input row: `head` holds the
task-specific block w (adapted by ANIL), `body` the shared block u. This lets the ordinary
inner loop and algorithms run on an exactly quadratic loss 0.5 (z - c)^T A (z - c).
"""
import torch
from torch import nn


class Shared(nn.Module):
    """body(x) = u, one copy per row of x."""

    def __init__(self, dim, init_scale):
        super().__init__()
        self.u = nn.Parameter(init_scale * torch.randn(dim)) if dim else None
        self.dim = dim

    def forward(self, x):
        if self.u is None:
            return x.new_zeros(x.shape[0], 0)
        return self.u.expand(x.shape[0], self.dim)


class TaskSpecific(nn.Module):
    """head(h) = (w, h): the adapted block first, then the body's output."""

    def __init__(self, dim, init_scale):
        super().__init__()
        self.w = nn.Parameter(init_scale * torch.randn(dim))

    def forward(self, h):
        return torch.cat([self.w.expand(h.shape[0], self.w.shape[0]), h], dim=-1)


class QuadraticParams(nn.Module):
    def __init__(self, input_shape, output_dim, head_dim=1, init_scale=1.0):
        super().__init__()
        # Initialised from torch's global generator, which `train.build` seeds with cfg.seed.
        self.head = TaskSpecific(head_dim, init_scale)
        self.body = Shared(output_dim - head_dim, init_scale)

    def forward(self, x):
        return self.head(self.body(x))

    def vector(self):
        """z = (w, u) as one flat tensor."""
        return self.forward(self.head.w.new_zeros(1, 1))[0].detach()
