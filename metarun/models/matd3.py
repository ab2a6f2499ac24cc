"""MATD3 networks with Kaleidoscope sharing (the reference's HARL-based Kalei_MATD3).

`MemberMLP`: an MLP [in, 256, 256, out] for N members (metarun.nn.sharing), optional LayerNorm after
the hidden layers (the critics have it), ReLU, optional tanh at the output.

`MATD3Net`:
  * `actor`: deterministic policies of all agents: one MLP shared by the agents with a learned mask
    each (`share=kaleidoscope`), or shared plainly (`full`), or one per agent (`none`);
    actions = tanh(...) scaled onto the action box.
  * `critic`: an ensemble of `n_critics` Q(s, a_1..a_N) networks: one MLP with a learned mask per
    critic (`critic_share=kaleidoscope`; thresholds -U(0,1)*20, so masks start far apart), or
    independent critics (`none`, TD3's twin critics with n_critics=2).
"""
import torch
import torch.nn.functional as F
from torch import nn

from metarun.nn.masks import MaskedLinear
from metarun.nn.sharing import member_linear


class MemberMLP(nn.Module):
    def __init__(self, sizes, n_members, share, layer_norm=False, tanh_output=False, threshold_init=(5.0, 5.0)):
        super().__init__()
        self.layers = nn.ModuleList(member_linear(share, i, o, n_members, tuple(threshold_init)) for i, o in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(o) for o in sizes[1:-1]) if layer_norm else None
        self.tanh_output = tanh_output

    def masked_layers(self):
        return [m for m in self.layers if isinstance(m, MaskedLinear)]

    def forward(self, x):
        """x (members, ..., in) -> (members, ..., out)."""
        for k, layer in enumerate(self.layers[:-1]):
            x = layer(x)
            x = F.relu(self.norms[k](x) if self.norms is not None else x)
        x = self.layers[-1](x)
        return torch.tanh(x) if self.tanh_output else x


class MATD3Net(nn.Module):
    """`input_shape` = (obs_dim,), `output_dim` = actions per agent; the task fills n_agents, state_dim."""

    def __init__(self, input_shape, output_dim, n_agents, state_dim, share="kaleidoscope", critic_share="kaleidoscope",
                 n_critics=5, hidden=(256, 256), threshold_init=(5.0, 5.0), critic_threshold_init=(20.0, 0.0)):
        super().__init__()
        self.n_agents, self.action_dim, self.n_critics = n_agents, output_dim, n_critics
        hidden = list(hidden)
        self.actor = MemberMLP([input_shape[0], *hidden, output_dim], n_agents, share, tanh_output=True, threshold_init=threshold_init)
        self.critic = MemberMLP([state_dim + n_agents * output_dim, *hidden, 1], n_critics, critic_share, layer_norm=True,
                                threshold_init=critic_threshold_init)
        # The action box; the task sets it (MaMuJoCo's is [-1, 1]).
        self.register_buffer("action_low", -torch.ones(output_dim))
        self.register_buffer("action_high", torch.ones(output_dim))

    def act(self, obs):
        """obs (B, agents, obs_dim) -> deterministic actions (B, agents, actions) in the box."""
        u = self.actor(obs.transpose(0, 1)).transpose(0, 1)
        return self.action_low + (u + 1) * (self.action_high - self.action_low) / 2

    def q_values(self, state, actions):
        """state (B, state_dim), actions (B, agents, actions) -> every critic's Q: (critics, B)."""
        x = torch.cat([state, actions.flatten(1)], -1)
        return self.critic(x.expand(self.n_critics, *x.shape)).squeeze(-1)
