"""Running mean/std normalisation of observations and rewards, as VecNormalize does it (OpenAI
baselines, Stable-Baselines3), for one environment stepped by the algorithm.

    observation:  clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs), the statistics
                  updated with every observation the policy is given (also the first one of an
                  episode), never with the final observation of an episode (normalised, not counted)
    reward:       R <- gamma R + r (reset to 0 at episode end); the statistics of R updated each step;
                  r / sqrt(var(R) + eps), clipped to +-clip_reward; rewards are scaled, not centred

The statistics are float64 numpy arrays on the CPU beside the simulator (the environment's side of
the loop), updated with Chan et al.'s parallel formula from a prior count of 1e-4, as both libraries
do. `state_dict()` / `load_state_dict()` carry everything an exact resume needs.
"""
import numpy as np
import torch


def merge_moments(mean, var, count, batch_mean, batch_var, batch_count):
    """Chan et al.'s parallel update of (mean, variance, count) by a batch's; numpy arrays or tensors alike."""
    delta = batch_mean - mean
    total = count + batch_count
    m2 = var * count + batch_var * batch_count + delta ** 2 * count * batch_count / total
    return mean + delta * batch_count / total, m2 / total, total


class RunningMeanStd:
    """Mean and (population) variance of a stream of batches along axis 0."""

    def __init__(self, shape=(), epsilon=1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, x):
        x = np.asarray(x, np.float64)
        self.update_from_moments(x.mean(0), x.var(0), x.shape[0])

    def update_from_moments(self, batch_mean, batch_var, batch_count):
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count, batch_mean, batch_var, batch_count)

    def state_dict(self):
        return {"mean": torch.tensor(np.asarray(self.mean, np.float64), device="cpu"),
                "var": torch.tensor(np.asarray(self.var, np.float64), device="cpu"), "count": float(self.count)}

    def load_state_dict(self, state):
        self.mean = state["mean"].numpy().astype(np.float64).copy()
        self.var = state["var"].numpy().astype(np.float64).copy()
        self.count = float(state["count"])


class Normalizer:
    """VecNormalize's observation and reward normalisation for a single environment."""

    def __init__(self, obs_shape, gamma=0.99, clip_obs=10.0, clip_reward=10.0, epsilon=1e-8, observations=True, rewards=True):
        self.obs_rms = RunningMeanStd(obs_shape) if observations else None
        self.ret_rms = RunningMeanStd(()) if rewards else None
        self.gamma, self.clip_obs, self.clip_reward, self.epsilon = gamma, clip_obs, clip_reward, epsilon
        self.ret = 0.0  # the discounted return so far of the running episode

    def observation(self, obs, update=True):
        """The normalised observation; `update` counts it in the statistics (training) or not (evaluation)."""
        if self.obs_rms is None:
            return np.asarray(obs, np.float64)
        if update:  # one observation: the batch update with mean x, variance 0, count 1, without numpy's reductions
            self.obs_rms.update_from_moments(np.asarray(obs, np.float64), 0.0, 1)
        return np.clip((obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon), -self.clip_obs, self.clip_obs)

    def reward(self, reward, done):
        """The scaled reward of one step; `done` ends the episode (its discounted return restarts)."""
        if self.ret_rms is None:
            return float(reward)
        self.ret = self.ret * self.gamma + reward
        self.ret_rms.update_from_moments(np.float64(self.ret), 0.0, 1)
        scaled = float(np.clip(reward / np.sqrt(self.ret_rms.var + self.epsilon), -self.clip_reward, self.clip_reward))
        if done:
            self.ret = 0.0
        return scaled

    def state_dict(self):
        return {"obs_rms": self.obs_rms.state_dict() if self.obs_rms else None,
                "ret_rms": self.ret_rms.state_dict() if self.ret_rms else None, "ret": float(self.ret)}

    def load_state_dict(self, state):
        if self.obs_rms:
            self.obs_rms.load_state_dict(state["obs_rms"])
        if self.ret_rms:
            self.ret_rms.load_state_dict(state["ret_rms"])
        self.ret = float(state["ret"])


class TorchRunningMeanStd:
    """Running mean and variance over the last dims' features, kept as tensors on the run's device
    (no host sync per update) with Chan et al.'s parallel update, as EPyMARL's `standardise_rewards`
    does it (its batch variance is torch's unbiased `var`). QMIX standardises rewards with it."""

    def __init__(self, shape=(), epsilon=1e-4, device="cpu"):
        self.mean = torch.zeros(shape, device=device)
        self.var = torch.ones(shape, device=device)
        self.count = torch.tensor(epsilon, device=device)  # a tensor: updates never sync with the host

    def update(self, x):
        x = x.reshape(-1, *self.mean.shape).float()
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count,
                                                        x.mean(0), x.var(0, correction=1), x.shape[0])

    def normalize(self, x):
        return (x - self.mean) / self.var.sqrt()

    def state_dict(self):
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state):
        device = self.mean.device
        self.mean, self.var, self.count = (state[k].to(device) for k in ("mean", "var", "count"))
