"""Lake, Salakhutdinov and Tenenbaum (2015)'s one-shot classification runs on Omniglot.

A run: 20 characters of one alphabet; one support image of each, all by one drawer, and one query
image of each, all by another drawer; each query is classified among the 20 after adapting to the
support set. A run's error is the share of its 20 queries misclassified; the figure is the mean
over runs with a 95% CI.

metarun builds the runs as episodes of the Omniglot task family with the `LAKE` settings
(within_alphabet, drawers=disjoint, no rotations or distortions) on its validation and test
splits, drawn as every evaluation set is (`metarun.evaluate`: `eval_tasks` runs from `eval_seed`,
validation runs from eval_seed + 1), so every model meets the same runs, whatever `eval_chunk`.
Held-out alphabets make them Lake's test: new alphabets and, within a run, new drawers.
"""
from contextlib import contextmanager

import pandas as pd
from omegaconf import OmegaConf

from metarun.checkpoint import atomic_write
from metarun.config import ConfigError
from metarun.evaluate import task_descriptions
from metarun.stats import mean_ci

LAKE = {"ways": 20, "shots": 1, "query": 1, "episodes": "within_alphabet", "drawers": "disjoint", "rotations": "none",
        "augment": "none", "build_splits": ["val", "test"]}


def lake_config(task_cfg):
    """The task config of Lake's runs on the splits of the Omniglot config `task_cfg`."""
    target = str(task_cfg.get("_target_", ""))
    if not target.endswith("omniglot.Omniglot"):
        raise ConfigError("eval_protocol", "lake", f"only with task=omniglot (the task is {target.rsplit('.', 1)[-1]})")
    plain = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))  # not struct: LAKE adds build_splits
    return OmegaConf.merge(plain, LAKE)


@contextmanager
def lake_errors():
    """Say in terms of Lake's runs why a split cannot hold them (the family reports it as task.ways=20)."""
    try:
        yield
    except ConfigError as e:
        if e.key != "task.ways":
            raise
        raise ConfigError("eval_protocol", "lake", "validation and test splits whose alphabets hold 20 characters each "
                          f"(a run takes 20 characters of one alphabet); here 20 ways are {e.allowed}") from None


def lake_runs(task, per_task, split, num_tasks, seed):
    """One row per run: its alphabet, drawers, characters and error after each number of inner steps."""
    rows = []
    errors = 1 - per_task["accuracy"]  # (steps + 1, runs)
    for i, run in enumerate(task_descriptions(task, split, num_tasks, seed)):
        (support,), (query,) = {d for ds in run["support_drawers"] for d in ds}, {d for ds in run["query_drawers"] for d in ds}
        rows.append({"run": i, "alphabet": run["alphabets"][0], "support_drawer": support, "query_drawer": query,
                     **{f"error_step{k}": e for k, e in enumerate(errors[:, i].tolist())},
                     "characters": " ".join(c.rsplit("/", 1)[-1] for c in run["characters"])})
    return pd.DataFrame(rows)


def lake_summary(per_task, task, cfg, steps, out_dir, split="test"):
    """`lake/error` (mean over runs after `steps` inner steps), its 95% CI and the number of runs; writes
    <out_dir>/lake_runs.csv with every run's alphabet, drawers, characters and errors."""
    table = lake_runs(task, per_task, split, cfg.eval_tasks, cfg.eval_seed)
    text = table.to_csv(index=False)
    atomic_write(f"{out_dir}/lake_runs.csv", lambda f: f.write(text.encode()))
    mean, ci, n = mean_ci(table[f"error_step{steps}"])
    return {"lake/error": mean, "lake/error_ci95": ci, "lake/runs": n, "lake/alphabets": sorted(set(table["alphabet"]))}
