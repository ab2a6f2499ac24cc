"""Returns and advantages along the last (time) dim, batched over any leading dims, differentiable.

`dones[..., t] = 1` means the episode ended after step t: nothing is propagated from t + 1 back to
t. Sums are one matrix product with weights factor^(j - t) on j >= t, cut where an episode ends
(the reference LIRPG code builds the same (gamma lambda)^(j - i) matrix), so gradients flow to
every input, e.g. to a learned intrinsic reward inside the rewards.
"""
import torch


def discount_matrix(h, factor, dones=None, dtype=torch.float32, device="cpu"):
    """W[..., j, t] = factor^(j - t) for j >= t when no episode ends in [t, j - 1], else 0.

    `discounted_sum(x, factor, dones)` is x @ W: an algorithm that needs some entries of the sum
    many times for changing x (LIRPG's minibatches of a GAE in eta) can keep W and take rows of W^T.
    """
    powers = factor ** torch.arange(h, device=device).to(dtype)
    # A Toeplitz matrix: with padded[h - 1 + k] = factor^k (0 for k < 0), W^T[t, j] = padded[h - 1 + j - t].
    # Its rows read backwards are overlapping windows of `padded` (a strided view), so the h x h
    # matrix costs one copy instead of h^2 powers.
    padded = torch.cat([torch.zeros(h - 1, dtype=dtype, device=device), powers])
    weights = padded.as_strided((h, h), (1, 1)).flip(0).T  # [j, t], a fresh tensor
    if dones is None:
        return weights
    # Episode index of each step: ends[t] = number of episode ends strictly before t. Step j counts
    # for t only if no episode ended in [t, j - 1], i.e. ends[j] == ends[t].
    ends = torch.cumsum(dones.to(dtype), -1) - dones.to(dtype)
    other = ends[..., :, None] != ends[..., None, :]  # [..., j, t]
    if other.dim() == 2:
        return weights.masked_fill_(other, 0)
    return weights.masked_fill(other, 0)


def discounted_sum(x, factor, dones=None):
    """y_t = sum_{j >= t} factor^(j - t) x_j, stopping after the first episode end at or after t."""
    weights = discount_matrix(x.shape[-1], factor, dones, x.dtype, x.device)
    if dones is None:
        return x @ weights
    return (x[..., None, :] @ weights)[..., 0, :]


def discounted_returns(rewards, discount, dones=None):
    """R_t = sum_{j >= t} discount^(j - t) r_j within each episode."""
    return discounted_sum(rewards, discount, dones)


def gae(rewards, values, next_values, dones, gamma, lam, terminated=None):
    """Generalised advantage estimates (Schulman et al., 2016).

    delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t), A_t = sum_j (gamma lam)^(j - t) delta_j
    within the episode. `terminated` (default: `dones`) says where not to bootstrap; `dones` also
    counts time-limit ends, where the next state's value is still a fair bootstrap.
    """
    stop = dones if terminated is None else terminated
    deltas = rewards + gamma * next_values * (1 - stop.to(rewards.dtype)) - values
    return discounted_sum(deltas, gamma * lam, dones)


def n_step_returns(rewards, values, gamma, n, dones=None):
    """n-step TD targets G_t = sum_{k < n} gamma^k r_{t+k} + gamma^n V(s_{t+n}).

    `values` has one more step than `rewards` (its last entry bootstraps the segment's end); near
    the end of the segment fewer than n rewards are summed. After an episode end nothing is added
    or bootstrapped.
    """
    h = rewards.shape[-1]
    if values.shape[-1] != h + 1:
        raise ValueError(f"values needs {h + 1} steps (one per reward plus the bootstrap), got {values.shape[-1]}")
    dones = torch.zeros_like(rewards) if dones is None else dones.to(rewards.dtype)
    target = torch.zeros_like(rewards)
    alive = torch.ones_like(rewards)
    scale = torch.ones_like(rewards)
    t = torch.arange(h, device=rewards.device)
    for k in range(n):
        inside = (t + k < h).to(rewards.dtype)
        index = (t + k).clamp_max(h - 1).expand_as(rewards)
        target = target + scale * alive * inside * rewards.gather(-1, index)
        alive = alive * (1 - inside * dones.gather(-1, index))
        scale = scale * torch.where(inside.bool(), torch.full_like(scale, gamma), torch.ones_like(scale))
    last = (t + n).clamp_max(h).expand(*rewards.shape[:-1], h)
    return target + scale * alive * values.gather(-1, last)
