"""Fully connected network, as used for sinusoid regression in Finn et al. (2017): 1-40-40-1, ReLU."""
from math import prod

from torch import nn


class MLP(nn.Module):
    def __init__(self, input_shape, output_dim, hidden=(40, 40)):
        super().__init__()
        layers, width = [nn.Flatten()], prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, output_dim)

    def forward(self, x):
        return self.head(self.body(x))
