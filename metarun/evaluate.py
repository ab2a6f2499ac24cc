"""Held-out evaluation: query loss (and accuracy) after 0..K inner steps, mean and 95% CI.

The evaluation tasks are a fixed set drawn from a generator seeded with `eval_seed`, so the
numbers of different runs compare task for task.
"""
import math

import torch
from torch.func import vmap

from metarun.inner_loop import adapt_and_evaluate


@torch.no_grad()
def evaluate(algo, task, split, num_tasks, steps, seed, chunk=100, lr=None):
    # Same signature as an algorithm's own `evaluate(split, num_tasks, steps, seed, chunk)` after binding algo, task.
    """Return {"loss": (steps+1, num_tasks) tensor, "accuracy": ... } of per-task results."""
    generator = torch.Generator().manual_seed(seed)
    params = {k: v.detach() for k, v in algo.model.named_parameters()}
    lr = algo.inner_lr if lr is None else lr

    def one_task(sx, sy, qx, qy):
        return adapt_and_evaluate(algo.model, params, algo.adapted, task.loss_fn, (sx, sy), (qx, qy),
                                  steps, lr, algo.inner_l2, task.classification)

    results = []
    for start in range(0, num_tasks, chunk):
        batch = task.sample(min(chunk, num_tasks - start), generator, split)
        results.append(vmap(one_task, randomness="same")(*batch))
    return {k: torch.cat([r[k] for r in results]).T for k in results[0]}


def summarize(per_task, prefix):
    """Flatten per-task results into `<prefix>/<metric>_step<k>` means and `_ci95` half-widths.

    `<prefix>/<metric>` (no step) is the value after the last step.
    """
    out = {}
    for name, values in per_task.items():
        n = values.shape[1]
        means = values.mean(1)
        ci = 1.96 * values.std(1, correction=1 if n > 1 else 0) / math.sqrt(n)
        for k in range(values.shape[0]):
            out[f"{prefix}/{name}_step{k}"] = means[k].item()
            out[f"{prefix}/{name}_step{k}_ci95"] = ci[k].item()
        out[f"{prefix}/{name}"] = means[-1].item()
        out[f"{prefix}/{name}_ci95"] = ci[-1].item()
    return out
