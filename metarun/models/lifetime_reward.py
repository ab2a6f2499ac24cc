"""The meta-learned networks of learned intrinsic rewards (Zheng et al., 2020): reward r_eta and lifetime value V_phi.

Both read the lifetime history one transition at a time: x_t = [next state (one-hot), action
(one-hot), extrinsic reward, episode end], and the value also the share of the lifetime elapsed.
`recurrent=true` runs an LSTM (or GRU, `cell`) over the history, whose state persists across
episodes within a lifetime, so the reward can depend on what was found earlier; `recurrent=false`
is the feed-forward ablation (an MLP of the current transition only).

`forward` is not used: the algorithm calls `reward(x, state)` and `value(x, state)`, each
returning per-step outputs (B, T) and the recurrent state to carry to the next segment.
"""
import torch
from torch import nn

from metarun.config import ConfigError

ACTIONS = 4


class HistoryNet(nn.Module):
    """x (B, T, in) and a carried state -> outputs (B, T, 1 + extra) and the new state.

    `outputs(x, state)` also returns the head applied to the state *before* each step, which the
    value function needs (V at the start of each step); the reward needs only the outputs after.
    """

    def __init__(self, input_dim, hidden, recurrent=True, cell="lstm", bound=None):
        super().__init__()
        self.recurrent, self.cell_type, self.hidden, self.bound = recurrent, cell, hidden, bound
        if recurrent:
            rnn = nn.LSTM if cell == "lstm" else nn.GRU
            self.core = rnn(input_dim, hidden, batch_first=True)
        else:
            self.core = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def initial_state(self, batch, device):
        if not self.recurrent:
            return ()
        zeros = torch.zeros(1, batch, self.hidden, dtype=self.head.weight.dtype, device=device)
        return (zeros, zeros.clone()) if self.cell_type == "lstm" else (zeros,)

    def features(self, x, state):
        """Per-step features (B, T, hidden) after each step, and the carried state."""
        if not self.recurrent:
            return self.core(x), ()
        if self.cell_type == "lstm":
            out, (h, c) = self.core(x, state)
            return out, (h, c)
        out, h = self.core(x, state[0])
        return out, (h,)

    def forward(self, x, state):
        out, state = self.features(x, state)
        y = self.head(out)[..., 0]
        return (self.bound * torch.tanh(y) if self.bound else y), state

    def before_and_after(self, x, state):
        """Outputs at the start of each step (B, T) and after the last step (B,), and the new state (recurrent only)."""
        out, new_state = self.features(x, state)
        after = self.head(out)[..., 0]
        start = self.head(state[0][0])[:, 0]  # h before the segment
        return torch.cat([start[:, None], after[:, :-1]], 1), after[:, -1], new_state


def reset_state(state, mask):
    """Zero the recurrent state of the lifetimes in `mask` (B,) (new lifetimes start with an empty history)."""
    return tuple(torch.where(mask[None, :, None], torch.zeros_like(s), s) for s in state)


class LifetimeRewardNets(nn.Module):
    """`model=lifetime_reward`: the intrinsic reward (`reward`) and the lifetime value (`value`)."""

    def __init__(self, input_shape, output_dim, hidden=32, recurrent=True, cell="lstm", value_hidden=None, reward_bound=None):
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError("model", "lifetime_reward", f"a task with state-index observations (gridworld); input_shape is {tuple(input_shape)}")
        if cell not in ("lstm", "gru"):
            raise ConfigError("model.cell", cell, "lstm or gru")
        if not isinstance(recurrent, bool):
            raise ConfigError("model.recurrent", recurrent, "true or false")
        for key, value in (("model.hidden", hidden), ("model.value_hidden", hidden if value_hidden is None else value_hidden)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(key, value, "an integer >= 1")
        self.input_dim = input_shape[0] + output_dim + 2  # next state, action, extrinsic reward, episode end
        if reward_bound is not None and not (isinstance(reward_bound, (int, float)) and not isinstance(reward_bound, bool) and reward_bound > 0):
            raise ConfigError("model.reward_bound", reward_bound, "null or a number > 0")
        # reward_bound b: r_eta = b tanh(.), so the reward cannot blow up the agent's steps.
        self.reward = HistoryNet(self.input_dim, hidden, recurrent, cell, reward_bound)
        # The value always reads the history recurrently: the ablations change the reward only.
        self.value = HistoryNet(self.input_dim + 1, value_hidden or hidden, True, cell)
