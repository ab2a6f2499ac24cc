"""Reptile (Nichol, Achiam and Schulman, 2018), batched over tasks.

    for each meta-iteration:
        sample a meta-batch of tasks T_i
        for each T_i (vmapped):  phi_i = k steps of SGD on L_{T_i} from theta  [adapted subset]
        theta <- theta + epsilon * (mean_i phi_i - theta)

No gradient flows through the inner loop and the outer optimizer is not used: the update is
Reptile's own interpolation with step size `epsilon`.
"""
import torch
from torch.func import vmap

from metarun.inner_loop import accuracy, adapt, adapted_names, task_functions


class Reptile:
    def __init__(self, model, optimizer, task, adapt, inner_steps, inner_lr, epsilon, inner_l2=0.0, vmap_chunk=None):
        self.model, self.task, self.vmap_chunk = model, task, vmap_chunk
        self.adapted = adapted_names(model, adapt)
        self.inner_steps, self.inner_lr, self.inner_l2, self.epsilon = inner_steps, inner_lr, inner_l2, epsilon

    def adapt_task(self, params, support_x, support_y, query_x, query_y):
        """Adapted parameters of one task, with its support loss before and query loss after."""
        prepare, predict = task_functions(self.model, params, self.adapted)
        hs, hq = prepare(support_x), prepare(query_x)
        fast = {k: params[k] for k in self.adapted}
        support_loss = lambda p: self.task.loss_fn(predict(p, hs), support_y)  # noqa: E731
        phi = adapt(support_loss, fast, self.inner_steps, self.inner_lr, self.inner_l2, first_order=True)
        out = predict(phi, hq)
        metrics = {"loss": self.task.loss_fn(out, query_y), "support_loss": support_loss(fast)}
        if self.task.classification:
            metrics["accuracy"] = accuracy(out, query_y)
        return phi, metrics

    @torch.no_grad()
    def step(self, batch):
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        phi, metrics = vmap(self.adapt_task, in_dims=(None, 0, 0, 0, 0), randomness="same", chunk_size=self.vmap_chunk)(params, *batch)
        named = dict(self.model.named_parameters())
        for k, p in phi.items():
            named[k].add_(self.epsilon * (p.mean(0) - named[k]))
        return {k: v.mean().item() for k, v in metrics.items()}

    def oracle_calls(self, meta_batch_size):
        n = self.inner_steps * meta_batch_size
        dim = sum(p.numel() for name, p in self.model.named_parameters() if name in self.adapted)
        return {"inner_grad": n, "outer_grad": 0, "second_order": 0, "jacobian_vector": 0, "inner_grad_params": n * dim,
                "second_order_params": 0, "jacobian_vector_params": 0, "outer_grad_params": 0}
