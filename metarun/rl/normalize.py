"""Running normalisation statistics."""
import torch


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
        batch_mean, batch_var, n = x.mean(0), x.var(0, correction=1), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta.square() * self.count * n / total) / total
        self.count = total

    def normalize(self, x):
        return (x - self.mean) / self.var.sqrt()

    def state_dict(self):
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state):
        device = self.mean.device
        self.mean, self.var, self.count = (state[k].to(device) for k in ("mean", "var", "count"))
