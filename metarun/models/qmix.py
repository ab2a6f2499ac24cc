"""QMIX networks (Rashid et al., 2018) as the Kaleidoscope reference configures them.

`RNNAgent`: every agent's utility network, fc1 -> GRU -> fc2 -> fc3 -> fc4 (hidden 64, ReLU; the
reference's `rnn_1R3` agent), input = the agent's observation and its one-hot id. `share` picks
how agents share it (metarun.nn.sharing): `full` (FuPS), `none` (NoPS: a network per agent) or
`kaleidoscope` (one set of weights, a learned mask per agent on fc1..fc4; the GRU is shared
unmasked). All agents run at once with a leading agent dim.

`QMixer`: Q_tot = w2(s) . elu(w1(s)^T Q + b1(s)) + V(s), with |w1|, |w2| from 2-layer hypernetworks
(embed 64) of the state, so Q_tot is monotone in every agent's Q.

`QMIXNet` holds both (what the optimizer trains and checkpoints save).
"""
import torch
import torch.nn.functional as F
from torch import nn

from metarun.nn.masks import MaskedLinear
from metarun.nn.sharing import MemberGRU, member_linear


class RNNAgent(nn.Module):
    def __init__(self, input_dim, n_actions, n_agents, share="full", hidden=64, threshold_init=(5.0, 5.0)):
        super().__init__()
        self.n_agents, self.hidden, self.share = n_agents, hidden, share

        def linear(i, o):
            return member_linear(share, i, o, n_agents, threshold_init)

        self.fc1 = linear(input_dim, hidden)
        self.rnn = MemberGRU(hidden, hidden, n_agents, shared=share != "none")
        self.fc2 = linear(hidden, hidden)
        self.fc3 = linear(hidden, hidden)
        self.fc4 = linear(hidden, n_actions)

    def masked_layers(self):
        """The layers with per-agent masks (fc1..fc4 under Kaleidoscope; none otherwise)."""
        return [m for m in (self.fc1, self.fc2, self.fc3, self.fc4) if isinstance(m, MaskedLinear)]

    def initial_state(self, batch, device=None):
        return torch.zeros(self.n_agents, batch, self.hidden, device=device)

    def forward(self, x, h):
        """x (agents, T, B, in), h (agents, B, hidden) -> Q (agents, T, B, actions), h after step T.

        Each layer runs once on all T steps (the GRU unrolls inside); the reference calls every layer
        once per time step, with the same result.
        """
        hs = self.rnn(F.relu(self.fc1(x)), h)
        q = self.fc4(F.relu(self.fc3(F.relu(self.fc2(hs)))))
        return q, hs[:, -1]


class QMixer(nn.Module):
    def __init__(self, n_agents, state_dim, embed=32, hypernet_embed=64):
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.hyper_w1 = nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed * n_agents))
        self.hyper_w2 = nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed))
        self.hyper_b1 = nn.Linear(state_dim, embed)
        self.value = nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, agent_qs, states):
        """agent_qs (..., agents), states (..., state_dim) -> Q_tot (...)."""
        w1 = self.hyper_w1(states).abs().unflatten(-1, (self.n_agents, self.embed))
        hidden = F.elu((agent_qs.unsqueeze(-2) @ w1).squeeze(-2) + self.hyper_b1(states))
        w2 = self.hyper_w2(states).abs()
        return (hidden * w2).sum(-1) + self.value(states).squeeze(-1)


class QMIXNet(nn.Module):
    """Agents + mixer. `input_shape` = (obs_dim,), `output_dim` = actions; the task supplies
    `n_agents` and `state_dim` (metarun.train fills them)."""

    def __init__(self, input_shape, output_dim, n_agents, state_dim, share="full", hidden=64, mixing_embed=32,
                 hypernet_embed=64, threshold_init=(5.0, 5.0)):
        super().__init__()
        self.n_agents, self.n_actions = n_agents, output_dim
        self.agent = RNNAgent(input_shape[0] + n_agents, output_dim, n_agents, share, hidden, tuple(threshold_init))
        self.mixer = QMixer(n_agents, state_dim, mixing_embed, hypernet_embed)

    def agent_inputs(self, obs):
        """obs (B, T, agents, obs_dim) -> agent-major inputs (agents, T, B, obs_dim + agents) with one-hot ids."""
        ids = torch.eye(self.n_agents, device=obs.device, dtype=obs.dtype).expand(*obs.shape[:-1], self.n_agents)
        return torch.cat([obs, ids], -1).permute(2, 1, 0, 3)

    def q_values(self, obs, h):
        """Per-agent Q for a (B, T, agents, obs_dim) stretch of observations: (B, T, agents, actions), next h."""
        q, h = self.agent(self.agent_inputs(obs), h)
        return q.permute(2, 1, 0, 3), h
