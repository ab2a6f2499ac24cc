"""Meta linear regression with a known optimum.

Task t: x ~ N(0, I_d) and y = w_t . (B* x) + noise, where B* (k x d, orthonormal rows) is shared
by all tasks and w_t ~ N(0, I_k) is the task's own. The learner is a shared linear feature map
plus a task-specific head (`model=linear`), so the best shared map spans the row space of B*.
`metrics(model)` reports the distance to that optimum: the sine of the largest principal angle
between the learned feature subspace and B*'s row space (0 at the optimum, 1 at worst).
"""
import torch
import torch.nn.functional as F


class LinearRegression:
    output_dim = 1
    classification = False

    def __init__(self, input_dim=20, features=5, shots=10, query=10, noise=0.1, truth_seed=1234, device="cpu"):
        self.input_shape = (input_dim,)
        self.shots, self.query, self.noise, self.device = shots, query, noise, torch.device(device)
        g = torch.Generator().manual_seed(truth_seed)
        # B* has orthonormal rows: the ground-truth representation, fixed by `truth_seed`.
        self.truth = torch.linalg.qr(torch.randn(input_dim, features, generator=g))[0].T.contiguous().to(self.device)

    @staticmethod
    def loss_fn(outputs, targets):
        return F.mse_loss(outputs, targets)

    def sample(self, n, generator, split="train"):
        k, d = self.truth.shape
        # Drawn on the CPU (the generator's device), then moved: the same tasks on every device.
        heads = torch.randn(n, k, 1, generator=generator, device="cpu").to(self.device)
        x = torch.randn(n, self.shots + self.query, d, generator=generator, device="cpu").to(self.device)
        noise = torch.randn(n, self.shots + self.query, 1, generator=generator, device="cpu").to(self.device)
        y = x @ self.truth.T @ heads + self.noise * noise
        return x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :]

    def metrics(self, model):
        learned = model.body[-1].weight.detach()  # (features, d)
        basis = torch.linalg.qr(learned.T)[0]  # orthonormal basis of the learned row space
        residual = basis - self.truth.T @ (self.truth @ basis)
        return {"dist_to_opt": torch.linalg.matrix_norm(residual, ord=2).item()}
