"""Sinusoid regression (Finn et al., 2017): y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]."""
import math

import torch
import torch.nn.functional as F


class Sinusoid:
    input_shape = (1,)
    output_dim = 1
    classification = False

    def __init__(self, shots=10, query=10, amplitude_min=0.1, amplitude_max=5.0, phase_max=math.pi, x_min=-5.0, x_max=5.0,
                 device="cpu"):
        self.shots, self.query, self.device = shots, query, torch.device(device)
        self.amplitude = (amplitude_min, amplitude_max)
        self.phase_max = phase_max
        self.x_range = (x_min, x_max)

    @staticmethod
    def loss_fn(outputs, targets):
        return F.mse_loss(outputs, targets)

    def sample(self, n, generator, split="train"):
        # Every split draws from the same task distribution; evaluation uses its own seeded generator.
        # Drawn on the CPU (the generator's device), so a seed gives the same tasks on every device.
        def uniform(low, high, *shape):
            return (low + (high - low) * torch.rand(*shape, generator=generator, device="cpu")).to(self.device)

        amplitude = uniform(*self.amplitude, n, 1, 1)
        phase = uniform(0.0, self.phase_max, n, 1, 1)
        x = uniform(*self.x_range, n, self.shots + self.query, 1)
        y = amplitude * torch.sin(x - phase)
        return x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :]
