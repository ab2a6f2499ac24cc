"""Shared linear feature map plus a task-specific head, for meta linear regression.

With `head_hidden=0` the head is linear, so the inner loss (squared error plus `algo.inner_l2`)
is a strongly convex quadratic in the head. With `head_hidden>0` the head is two linear layers
with a tanh between them, and the inner problem is nonconvex.
"""
from math import prod

from torch import nn


class LinearFeatures(nn.Module):
    def __init__(self, input_shape, output_dim, features=5, head_hidden=0):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), features, bias=False))
        if head_hidden:
            self.head = nn.Sequential(
                nn.Linear(features, head_hidden, bias=False), nn.Tanh(), nn.Linear(head_hidden, output_dim, bias=False)
            )
        else:
            self.head = nn.Linear(features, output_dim, bias=False)

    def forward(self, x):
        return self.head(self.body(x))
