"""Gaussian actor-critic for PPO on MuJoCo, as OpenAI baselines' ppo2 MlpPolicy builds it.

    policy:  mean = body -> head.mean (hidden tanh layers; last layer orthogonal with gain 0.01),
             head.log_std: a state-independent learned log-std, initialised to 0
    value:   a separate MLP of the same hidden sizes -> 1 (last layer gain 1)

Hidden layers are orthogonally initialised with gain sqrt(2), biases 0. `forward` returns
(mean, log_std) like `gaussian_mlp`; `value(obs)` the state value.
"""
import math

import torch
from torch import nn

from metarun.config import ConfigError
from metarun.models.gaussian_mlp import GaussianHead

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(sizes, activation="tanh", out_gain=1.0):
    """Linear layers of `sizes` with `activation` between them (none after the last), orthogonal init."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    def __init__(self, input_shape, output_dim, hidden=(64, 64), activation="tanh"):
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError("model", "actor_critic", f"a task with flat observations; this task's input_shape is {tuple(input_shape)}")
        if not (len(hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in hidden)):
            raise ConfigError("model.hidden", list(hidden), "a non-empty list of integers >= 1")
        if activation not in ACTIVATIONS:
            raise ConfigError("model.activation", activation, "one of " + ", ".join(ACTIVATIONS))
        sizes = [input_shape[0], *hidden]
        self.body = nn.Sequential(*mlp(sizes, activation, out_gain=math.sqrt(2)), ACTIVATIONS[activation]())
        self.head = GaussianHead(sizes[-1], output_dim, init_std=1.0)
        nn.init.orthogonal_(self.head.mean.weight, 0.01)
        nn.init.zeros_(self.head.mean.bias)
        self.critic = mlp([*sizes, 1], activation, out_gain=1.0)

    def forward(self, x, value=False):
        """(mean, log_std), and the state value too with `value=True` (one functional_call for PPO's loss)."""
        mean, log_std = self.head(self.body(x))
        return (mean, log_std, self.value(x)) if value else (mean, log_std)

    def value(self, x):
        return self.critic(x)[..., 0]
