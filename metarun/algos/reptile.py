"""Reptile (Nichol, Achiam and Schulman, 2018), batched over tasks.

    for iteration t = 1..T:
        epsilon_t = epsilon * (1 - (t - 1) / T)                    [schedule=linear; constant: epsilon]
        sample a meta-batch of tasks T_i
        for each T_i (vmapped):  phi_i = k steps of SGD on L_{T_i} from theta, one minibatch of the
                                 task's data per step                [inner_data=all: support and query]
        theta <- theta + epsilon_t * (mean_i phi_i - theta)

As in the paper, the inner steps see all of a task's examples (`inner_data=all`), in minibatches of
`inner_batch` drawn without replacement (reshuffled each pass), and epsilon falls linearly to 0 over
the run (`schedule=linear`). `inner_data=support` with `schedule=constant` gives the simpler
variant that steps on the support set only. No gradient flows through the inner loop and the
outer optimizer is unused: the update is Reptile's own interpolation.

Reptile moves only what adapts: a parameter outside `algo.adapt` would never be trained, so a
partial `algo.adapt` is refused (use `algo=anil` for a frozen-body method).
"""
import torch
from torch.func import vmap

from metarun.config import ConfigError
from metarun.inner_loop import FixedRule, accuracy, adapt, adapted_names, task_functions


class Reptile:
    def __init__(self, model, optimizer, task, adapt, inner_steps, inner_lr, epsilon, inner_l2=0.0, vmap_chunk=None,
                 inner_data="all", inner_batch=None, schedule="linear", iterations=None):
        self.model, self.task, self.vmap_chunk = model, task, vmap_chunk
        self.adapted = adapted_names(model, adapt)
        frozen = [n for n, _ in model.named_parameters() if n not in self.adapted]
        if frozen:
            raise ConfigError("algo.adapt", list(adapt), "['*'] for Reptile: it moves theta toward the adapted weights, so "
                              f"parameters that do not adapt ({', '.join(frozen[:4])}) would never train")
        if inner_data not in ("all", "support"):
            raise ConfigError("algo.inner_data", inner_data, "all (support and query, as in the paper) or support")
        if schedule not in ("linear", "constant"):
            raise ConfigError("algo.schedule", schedule, "linear (epsilon falls to 0 over the run, as in the paper) or constant")
        if inner_batch is not None and not (isinstance(inner_batch, int) and inner_batch >= 1):
            raise ConfigError("algo.inner_batch", inner_batch, "null (the whole task's data per step) or an integer >= 1")
        if schedule == "linear" and not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError("iterations", iterations, "an integer >= 1 for algo.schedule=linear")
        self.inner_steps, self.inner_lr, self.inner_l2, self.epsilon = inner_steps, inner_lr, inner_l2, epsilon
        self.inner_data, self.inner_batch, self.schedule, self.iterations = inner_data, inner_batch, schedule, iterations
        self.adapt_rule = FixedRule()
        self.head_init = "learned"  # evaluation and load_learner start each task from the meta-learned head
        self.done = 0  # meta-iterations taken: sets epsilon's schedule (checkpointed)

    def epsilon_now(self):
        if self.schedule == "constant":
            return self.epsilon
        return self.epsilon * max(0.0, 1 - self.done / self.iterations)

    def minibatches(self, tasks, examples, device):
        """(tasks, steps, batch) example indices: passes over a fresh permutation of each task's examples."""
        batch = min(self.inner_batch or examples, examples)
        passes = -(-self.inner_steps * batch // examples)
        # Global torch RNG (seeded by the run and checkpointed), drawn on the CPU so a seed gives the
        # same minibatches on any device.
        order = torch.rand(tasks, passes, examples, device="cpu").argsort(-1).flatten(1)
        return order[:, : self.inner_steps * batch].view(tasks, self.inner_steps, batch).to(device)

    def adapt_task(self, params, inner_x, inner_y, order, support_x, support_y, query_x, query_y):
        """Adapted parameters of one task, with its support loss before and query loss after."""
        prepare, predict = task_functions(self.model, params, self.adapted)
        fast = {k: params[k] for k in self.adapted}
        loss_fn = self.task.loss_fn
        for step in range(self.inner_steps):
            x, y = inner_x[order[step]], inner_y[order[step]]
            fast = adapt(lambda p: loss_fn(predict(p, prepare(x)), y), fast, 1, self.inner_lr, self.inner_l2, first_order=True)
        out = predict(fast, prepare(query_x))
        metrics = {"loss": loss_fn(out, query_y), "support_loss": loss_fn(predict({k: params[k] for k in self.adapted},
                                                                                   prepare(support_x)), support_y)}
        if self.task.classification:
            metrics["accuracy"] = accuracy(out, query_y)
        return fast, metrics

    @torch.no_grad()
    def step(self, batch):
        support_x, support_y, query_x, query_y = batch
        if self.inner_data == "all":
            inner_x, inner_y = torch.cat([support_x, query_x], 1), torch.cat([support_y, query_y], 1)
        else:
            inner_x, inner_y = support_x, support_y
        order = self.minibatches(inner_x.shape[0], inner_x.shape[1], inner_x.device)
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        phi, metrics = vmap(self.adapt_task, in_dims=(None, 0, 0, 0, 0, 0, 0, 0), randomness="same",
                            chunk_size=self.vmap_chunk)(params, inner_x, inner_y, order, *batch)
        epsilon = self.epsilon_now()
        named = dict(self.model.named_parameters())
        for k, p in phi.items():
            named[k].add_(epsilon * (p.mean(0) - named[k]))
        self.done += 1
        names = list(metrics)
        values = torch.stack([metrics[k].mean() for k in names]).tolist()
        return {**dict(zip(names, values)), "epsilon": epsilon}

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, state):
        self.done = state["done"]

    def oracle_calls(self, meta_batch_size):
        n = self.inner_steps * meta_batch_size
        dim = sum(p.numel() for name, p in self.model.named_parameters() if name in self.adapted)
        return {"inner_grad": n, "outer_grad": 0, "second_order": 0, "jacobian_vector": 0, "inner_grad_params": n * dim,
                "second_order_params": 0, "jacobian_vector_params": 0, "outer_grad_params": 0}
