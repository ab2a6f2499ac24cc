"""Held-out evaluation: query loss (and accuracy) after 0..K inner steps, mean and 95% CI.

The evaluation tasks are a fixed set: test tasks come from `eval_seed`, validation tasks from
`eval_seed + 1` (`split_seed`), so validation and model selection never see a test task, and the
numbers of different runs compare task for task.

Task i of a set is a function of (seed, i) alone: tasks are drawn in blocks of `DRAW_BLOCK`, each
from its own generator seeded by (seed, block). So the set does not depend on `eval_chunk` (how
many tasks are evaluated at once, a memory knob) and a larger set extends a smaller one.
"""
import math

import numpy as np
import torch
from torch.func import vmap

from metarun.inner_loop import adapt_and_evaluate

DRAW_BLOCK = 50


def split_seed(seed, split):
    """The seed of a split's evaluation set: `seed` for test, `seed + 1` for validation."""
    if split not in ("val", "test"):
        raise ValueError(f"evaluation split must be val or test, not {split!r}")
    return seed if split == "test" else seed + 1


def block_generator(seed, block):
    """An independent CPU generator for block `block` of the set drawn with `seed`."""
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def task_set(task, split, num_tasks, seed, chunk):
    """Yield the `num_tasks` evaluation tasks of `split` in batches of at most `chunk`."""
    seed = split_seed(seed, split)
    pending, block = None, 0
    for start in range(0, num_tasks, chunk):
        end = min(start + chunk, num_tasks)
        # Draw whole blocks until they cover [start, end); `pending` holds the drawn tasks from `start` on.
        while pending is None or len(pending[0]) < end - start:
            drawn = task.sample(DRAW_BLOCK, block_generator(seed, block), split)
            block += 1
            pending = drawn if pending is None else tuple(torch.cat([p, d]) for p, d in zip(pending, drawn))
        yield tuple(p[: end - start] for p in pending)
        pending = tuple(p[end - start:] for p in pending)


def task_descriptions(task, split, num_tasks, seed):
    """`task.describe(...)` of the same `num_tasks` tasks `task_set` yields: one dict per task, in order."""
    seed = split_seed(seed, split)
    rows = []
    for block in range(math.ceil(num_tasks / DRAW_BLOCK)):
        rows += task.describe(DRAW_BLOCK, block_generator(seed, block), split)
    return rows[:num_tasks]


@torch.no_grad()
def evaluate(algo, task, split, num_tasks, steps, seed, chunk=100, lr=None):
    # Same signature as an algorithm's own `evaluate(split, num_tasks, steps, seed, chunk)` after binding algo, task.
    """Return {"loss": (steps+1, num_tasks) tensor, "accuracy": ... } of per-task results."""
    params = {k: v.detach() for k, v in algo.model.named_parameters()}
    lr = algo.inner_lr if lr is None else lr
    inner_lr = algo.adapt_rule.learning_rates(params, lr)  # a float, or per-parameter rates (Meta-SGD, masks)

    def one_task(sx, sy, qx, qy):
        return adapt_and_evaluate(algo.model, params, algo.adapted, task.loss_fn, (sx, sy), (qx, qy),
                                  steps, inner_lr, algo.inner_l2, task.classification, algo.head_init)

    results = [vmap(one_task, randomness="same")(*batch) for batch in task_set(task, split, num_tasks, seed, chunk)]
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
        for k, (m, c) in enumerate(zip(means.tolist(), ci.tolist())):
            out[f"{prefix}/{name}_step{k}"] = m
            out[f"{prefix}/{name}_step{k}_ci95"] = c
        out[f"{prefix}/{name}"] = means[-1].item()
        out[f"{prefix}/{name}_ci95"] = ci[-1].item()
    return out
