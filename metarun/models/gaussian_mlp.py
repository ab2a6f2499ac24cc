"""Gaussian MLP policy (as in Finn et al., 2017, for RL): mean = MLP(obs), state-independent log-std.

body = hidden layers (Linear + ReLU), head = the mean layer and the learned log-std, so
``algo.adapt=["head.*"]`` adapts exactly the output distribution (ANIL-style). ``forward``
returns ``(mean, log_std)``, log_std broadcast to the mean's shape.
"""
import math

import torch
from torch import nn

from metarun.config import ConfigError


class GaussianHead(nn.Module):
    def __init__(self, width, action_dim, init_std=1.0):
        super().__init__()
        self.mean = nn.Linear(width, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, h):
        mean = self.mean(h)
        return mean, self.log_std.expand_as(mean)


class GaussianMLP(nn.Module):
    def __init__(self, input_shape, output_dim, hidden=(100, 100), init_std=1.0):
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError("model", "gaussian_mlp", f"a task with flat observations; this task's input_shape is {tuple(input_shape)}")
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ConfigError("model.hidden", list(hidden), "a list of integers >= 1")
        if not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ConfigError("model.init_std", init_std, "a number > 0")
        layers, width = [], input_shape[0]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        # No Flatten: observations come as (..., obs_dim) with any leading (task, trajectory, time) dims.
        self.body = nn.Sequential(*layers)
        self.head = GaussianHead(width, output_dim, init_std)
        # rllab's initialisation (Xavier-uniform weights, zero biases), which the reference numbers used.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.body(x))
