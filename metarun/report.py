"""`metarun-report SWEEP_DIR`: figures and tables for every run of a multirun.

    metarun-report outputs/multirun/2026-11-22/10-00-00 [--target 0.5] [--metric train/loss]
                   [--smooth 5] [--out DIR] [--wandb]

Reads `<sweep_dir>/<job>/` (basic or joblib launcher): `.hydra/overrides.yaml`, `metrics.jsonl`,
`summary.json`. Runs are grouped by the overrides that differ between runs, except the seed,
and averaged over seeds with pandas. Runs that are still going, failed or never wrote a summary
are kept and labelled with their status; a run whose summary says `running` but which has written
nothing for longer than two of its own checkpoint intervals (at least a minute) is `stale`
(killed, or its machine went away). Writes into `<sweep_dir>/report/` (or `--out`):

  train_loss.png, eval_<metric>.png (and dist_to_opt.png, contraction.png when logged)
      mean over seeds with a +-1 standard deviation band, against iterations, training seconds
      and oracle cost (gradient plus second-order evaluations, each weighted by the number of
      parameters it differentiates: the `oracle/*_params` counts);
  test_vs_inner_steps.png
      the final meta-test loss and accuracy (return for RL) against the number of inner steps at
      test time, mean over seeds with a 95% confidence band;
  adapted_share.png, learned_lr.png (learned adapt rules, algo.adapt_rule)
      per adapted tensor: the share its learned mask lets adapt, or Meta-SGD's mean learned rate;
  summary.md / summary.csv
      per setting: iterations, seconds and oracle calls to reach `--target` on `--metric`,
      the final meta-test metric with a 95% confidence interval over seeds, cost per iteration;
  runs.csv
      one row per run with its status.
"""
import argparse
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402



def oracle_columns(columns):
    """(calls, params): the logged `oracle/*` counts and their parameter-weighted `oracle/*_params` twins."""
    oracle = [c for c in columns if c.startswith("oracle/")]
    return [c for c in oracle if not c.endswith("_params")], [c for c in oracle if c.endswith("_params")]

NOT_GROUPED = {"seed", "resume", "run_dir", "progress"}
# Two-sided 97.5% Student t quantiles for 1..10 degrees of freedom (avoids a scipy dependency).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


class ReportError(Exception):
    """A user mistake (bad sweep dir, unknown metric): one line on stderr, exit code 2."""


# ---------------------------------------------------------------- reading runs

def job_dirs(sweep_dir):
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise ReportError(f"{sweep_dir} does not exist")
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory")
    if (sweep_dir / ".hydra" / "overrides.yaml").is_file():  # a single run dir
        return [sweep_dir]
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not dirs:
        raise ReportError(f"{sweep_dir} has no runs (no <job>/.hydra/overrides.yaml): is it a metarun multirun dir?")
    # Numbers inside names compare as numbers, so jobs come in job order: 2 before 10, s0_5 before s0_10.
    return sorted(dirs, key=lambda d: [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", d.name))])


def read_jsonl(path):
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a torn last line from a killed run
                pass
    return pd.DataFrame(rows)


STALE_MIN_SECONDS = 60           # a `running` run silent for less is never stale
STALE_UNKNOWN_SECONDS = 15 * 60  # the limit before a run has shown how long its checkpoint interval takes


def load_run(run_dir, now=None):
    overrides = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError:  # hand-edited or foreign: report the run without it
        summary = {}
    config_path = run_dir / ".hydra" / "config.yaml"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    status, error = summary.get("status", "no summary (not started or crashed)"), summary.get("error", "")
    if status == "running":
        silent, limit = staleness(run_dir, summary, metrics, now)
        if silent > limit:
            status = "stale"
            error = (f"says running, but nothing written for {duration(silent)} (limit {duration(limit)}); killed? "
                     f"last checkpoint at iteration {summary.get('checkpoint_iteration') or 0}: "
                     f"metarun resume=true run_dir={run_dir}")
    return {
        "dir": run_dir,
        "job": run_dir.name,
        "overrides": dict(o.lstrip("+~").split("=", 1) if "=" in o else (o, "") for o in overrides),
        "status": status,
        "error": error,
        "summary": summary,
        "metrics": metrics,
        "config": OmegaConf.load(config_path) if config_path.is_file() else None,
    }


def staleness(run_dir, summary, metrics, now=None):
    """(seconds since the run last wrote, the silence after which it is stale).

    The limit is two of the run's own checkpoint intervals (wall seconds between its last two
    checkpoints, evaluations included, from summary.json; else estimated from the training time
    per iteration in metrics.jsonl), and at least STALE_MIN_SECONDS.
    """
    now = time.time() if now is None else now
    written = [p.stat().st_mtime for p in (run_dir / "summary.json", run_dir / "metrics.jsonl", run_dir / "checkpoint.pt")
               if p.is_file()]
    silent = now - max(written) if written else 0.0
    interval = summary.get("checkpoint_seconds")
    if interval is None and not metrics.empty and {"iteration", "time"} <= set(metrics.columns):
        last = metrics.iloc[-1]
        if last["iteration"] > 0 and last["time"] > 0:
            interval = last["time"] / last["iteration"] * summary.get("checkpoint_every", 1000)
    limit = max(2 * interval, STALE_MIN_SECONDS) if interval else STALE_UNKNOWN_SECONDS
    return silent, limit


def duration(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def declared_sweep(sweep_dir):
    """(number of jobs, swept keys) that multirun.yaml declares, or (None, []) when it cannot tell."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None, []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    lines = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    keys = {line.split("=", 1)[0].lstrip("+~") for line in lines}
    lines += [f"{k}={v}" for k, v in params.items() if k not in keys]  # the command line wins
    try:
        parsed = [o for o in OverridesParser.create().parse_overrides(lines)]
        sizes = {o.get_key_element().lstrip("+~"): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in parsed}
    except Exception:  # noqa: BLE001 - a foreign or unresolvable multirun.yaml: just do not count
        return None, []
    return math.prod(sizes.values()), [k for k, n in sizes.items() if n > 1]


def group_runs(runs, declared=()):
    """{label: [runs]} grouped by the swept overrides (declared or differing between runs), except the seed."""
    keys = sorted({k for r in runs for k in r["overrides"]} | set(declared))
    swept = [k for k in keys if k not in NOT_GROUPED and not k.startswith("hydra")
             and (k in declared or len({r["overrides"].get(k) for r in runs}) > 1)]
    groups = {}
    for r in runs:
        label = ",".join(f"{k}={r['overrides'].get(k, '-')}" for k in swept) or "all runs"
        groups.setdefault(label, []).append(r)
    return swept, groups


# ---------------------------------------------------------------- averaging

def seed_average(group, column, smooth=1):
    """DataFrame indexed by iteration: mean and std of `column` over runs, mean time and oracle cost."""
    frames = []
    for i, r in enumerate(group):
        m = r["metrics"]
        if m.empty or column not in m:
            continue
        f = m[["iteration", column]].dropna().copy()
        if smooth > 1:
            f[column] = f[column].rolling(smooth, min_periods=1).mean()
        calls, params = oracle_columns(m.columns)
        f = f.merge(m[["iteration", "time", *calls, *params]], on="iteration", how="left")
        f["oracle_cost"] = f[params].sum(axis=1) if params else float("nan")
        f["oracle_calls"] = f[calls].sum(axis=1) if calls else float("nan")
        f["run"] = i
        frames.append(f)
    if not frames:
        return None
    data = pd.concat(frames)
    out = data.groupby("iteration").agg(
        mean=(column, "mean"), std=(column, "std"), n=(column, "count"),
        time=("time", "mean"), oracle_cost=("oracle_cost", "mean"), oracle_calls=("oracle_calls", "mean"))
    out["std"] = out["std"].fillna(0.0)
    return out


def t_ci95(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n < 2:
        return None
    s = pd.Series(values).std()
    return (T975[n - 2] if n - 1 <= len(T975) else 1.96) * s / math.sqrt(n)


def reach(curve, target, higher_is_better):
    """First row of `curve` whose seed mean reaches `target`, or None."""
    hit = curve[curve["mean"] >= target] if higher_is_better else curve[curve["mean"] <= target]
    return None if hit.empty else hit.iloc[0]


def status_text(group):
    counts = pd.Series([r["status"] for r in group]).value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


# ---------------------------------------------------------------- figures

AXES = [("iteration", "meta-iterations"), ("time", "training seconds"),
        ("oracle_cost", "oracle cost (derivative entries)")]


def line_styles(labels):
    """{label: (color, linestyle)}: with two or more swept keys the first one sets the line style."""
    parts = {label: label.split(",") for label in labels}
    split = all(len(p) >= 2 for p in parts.values()) and len({p[0] for p in parts.values()}) <= 4
    firsts = sorted({p[0] for p in parts.values()}) if split else [None]
    rests = list(dict.fromkeys(",".join(p[1:]) if split else label for label, p in parts.items()))
    colors = plt.cm.viridis([i / max(1, len(rests) - 1) * 0.9 for i in range(len(rests))])
    return {label: (colors[rests.index(",".join(p[1:]) if split else label)],
                    ["-", "--", ":", "-."][firsts.index(p[0]) if split else 0]) for label, p in parts.items()}


def plot_metric(groups, column, path, title, smooth=1, logy=False, dpi=90):
    """One row of three panels: `column` against iterations, seconds and oracle cost."""
    curves = {label: seed_average(g, column, smooth) for label, g in groups.items()}
    curves = {k: v for k, v in curves.items() if v is not None and not v.empty}
    if not curves:
        return None
    styles = line_styles(list(curves))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=dpi, sharey=True)
    for label, c in curves.items():
        color, linestyle = styles[label]
        group = groups[label]
        flag = "" if all(r["status"] == "completed" for r in group) else f" [{status_text(group)}]"
        for ax, (x, _) in zip(axes, AXES):
            xs = c.index.to_numpy() if x == "iteration" else c[x].to_numpy()
            ax.plot(xs, c["mean"], color=color, linestyle=linestyle, label=f"{label} (n={len(group)}){flag}" if ax is axes[0] else None)
            ax.fill_between(xs, c["mean"] - c["std"], c["mean"] + c["std"], color=color, alpha=0.2, linewidth=0)
    for ax, (_, xlabel) in zip(axes, AXES):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    axes[0].set_ylabel(column + (f" (rolling mean of {smooth})" if smooth > 1 else ""))
    fig.suptitle(title + ": mean over seeds, band = +-1 std", fontsize=10)
    fig.legend(loc="lower center", ncol=min(4, len(curves)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * math.ceil(len(curves) / 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def contraction_rows(groups):
    """Quadratic runs: closed-form and measured contraction per setting (empty for other tasks)."""
    from metarun.tasks.quadratic import measured_contraction, theory

    rows = []
    for label, group in groups.items():
        cfg = group[0]["config"]
        rate = theory(cfg) if cfg is not None else None
        curve = seed_average(group, "train/dist_to_opt")
        if rate is None or curve is None:
            continue
        measured = measured_contraction(curve["mean"].to_numpy())
        rows.append({"setting": label, "N": int(cfg.algo.inner_steps), "smoothness_L_N": rate["smoothness"],
                     "theory_rho": rate["rho"], "measured_rho": measured,
                     "rel_error": None if measured is None else abs(measured - rate["rho"]) / rate["rho"],
                     "curve": curve})
    return rows


def plot_contraction(groups, path, dpi=90):
    """Measured |z_k| / |z_{k-1}| per outer iteration (dots) beside the closed-form rate (dashed).

    One panel per setting of every swept key but N; colours are N.
    """
    rows = contraction_rows(groups)
    if not rows:
        return None
    panels = {}
    for row in rows:
        key = ",".join(p for p in row["setting"].split(",") if not p.startswith("algo.inner_steps=")) or "all runs"
        panels.setdefault(key, []).append(row)
    ns = sorted({row["N"] for row in rows})
    colors = dict(zip(ns, plt.cm.plasma([i / max(1, len(ns)) for i in range(len(ns))])))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), dpi=dpi, squeeze=False, sharey=True)
    for ax, (key, prows) in zip(axes.flat, panels.items()):
        for row in sorted(prows, key=lambda r: r["N"]):
            d = row["curve"]["mean"]
            ok = d > 1e-5 * d.iloc[0]
            ratio = (d / d.shift(1))[ok & ok.shift(1, fill_value=False)]
            ax.plot(ratio.index, ratio, "o", ms=2, color=colors[row["N"]], label=f"N={row['N']}")
            ax.axhline(row["theory_rho"], color=colors[row["N"]], linestyle="--", linewidth=1)
        ax.set_title(key, fontsize=7)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_xlabel("outer iteration k", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("|z_k - z*| / |z_(k-1) - z*|", fontsize=7)
    axes.flat[0].legend(fontsize=6, frameon=False)
    fig.suptitle("outer SGD contraction: measured (dots) vs closed form (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def steps_curve(group, metric):
    """DataFrame indexed by inner steps at test time: mean and 95% CI over the group's completed runs.

    With a single run the band is that run's own CI over its evaluation tasks.
    """
    per_run = []
    for r in group:
        if r["status"] != "completed":
            continue
        steps = {int(m.group(1)): v for k, v in r["summary"].items()
                 if (m := re.fullmatch(rf"test/{metric}_step(\d+)", k)) and isinstance(v, (int, float))}
        if steps:
            per_run.append((steps, r["summary"]))
    if not per_run:
        return None
    ks = sorted(set.intersection(*(set(steps) for steps, _ in per_run)))
    rows = []
    for k in ks:
        values = [steps[k] for steps, _ in per_run]
        ci = t_ci95(values) if len(values) > 1 else per_run[0][1].get(f"test/{metric}_step{k}_ci95")
        rows.append({"steps": k, "mean": sum(values) / len(values), "ci95": ci if ci is not None else 0.0, "n": len(values)})
    return pd.DataFrame(rows).set_index("steps") if rows else None


def plot_test_steps(groups, metrics, path, dpi=90):
    """Final meta-test metrics against the number of inner steps at test time, one panel per metric."""
    panels = {}
    for metric in metrics:
        curves = {label: steps_curve(g, metric) for label, g in groups.items()}
        curves = {k: v for k, v in curves.items() if v is not None and not v.empty}
        if curves:
            panels[metric] = curves
    if not panels:
        return None
    styles = line_styles(list(groups))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), dpi=dpi, squeeze=False)
    for ax, (metric, curves) in zip(axes[0], panels.items()):
        for label, c in curves.items():
            color, linestyle = styles[label]
            ax.plot(c.index, c["mean"], marker="o", ms=3, color=color, linestyle=linestyle,
                    label=f"{label} (n={int(c['n'].max())})" if ax is axes[0, 0] else None)
            ax.fill_between(c.index, c["mean"] - c["ci95"], c["mean"] + c["ci95"], color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("inner steps at test time")
        ax.set_ylabel(f"meta-test {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle("meta-test after k inner steps: mean over seeds, band = 95% CI", fontsize=10)
    fig.legend(loc="lower center", ncol=min(4, len(groups)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * math.ceil(len(groups) / 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_adapt_rule(groups, prefix, path, ylabel, dpi=90):
    """Learned adapt rules (algo.adapt_rule): one panel per setting, one line per adapted tensor.

    `prefix` selects the logged per-tensor columns: "train/density/" (the share of each tensor
    that the learned masks let adapt) or "train/lr/" (Meta-SGD's mean learned rate). Mean over
    seeds, band +-1 std, against meta-iterations. None when no run logged them.
    """
    panels = {}
    for label, group in groups.items():
        columns = sorted({c for r in group for c in r["metrics"].columns if c.startswith(prefix)})
        curves = {c[len(prefix):]: seed_average(group, c) for c in columns}
        curves = {k: v for k, v in curves.items() if v is not None and not v.empty}
        if curves:
            panels[label] = curves
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), dpi=dpi, squeeze=False, sharey=True)
    for ax, (label, curves) in zip(axes.flat, panels.items()):
        colors = plt.cm.viridis([i / max(1, len(curves) - 1) * 0.9 for i in range(len(curves))])
        for color, (name, c) in zip(colors, curves.items()):
            ax.plot(c.index, c["mean"], color=color, label=name)
            ax.fill_between(c.index, c["mean"] - c["std"], c["mean"] + c["std"], color=color, alpha=0.2, linewidth=0)
        ax.set_title(label, fontsize=7)
        ax.set_xlabel("meta-iterations", fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5, frameon=False, ncol=1 + len(curves) // 10)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=7)
    fig.suptitle(f"{ylabel} per adapted tensor: mean over seeds, band = +-1 std", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- table

def eval_metric(runs):
    """The meta-test metric: accuracy for classification runs, return for RL runs, else loss."""
    for r in runs:
        for metric in ("accuracy", "return"):
            if not r["metrics"].empty and f"eval/{metric}" in r["metrics"]:
                return metric
    return "loss"


def higher_is_better(metric):
    return metric.endswith(("accuracy", "return"))


def default_target(curves, higher_is_better):
    """The level every setting reaches: the worst final seed-mean value among the settings."""
    finals = [c["mean"].iloc[-1] for c in curves.values() if c is not None and not c.empty]
    if not finals:
        return None
    return min(finals) if higher_is_better else max(finals)


def summary_table(groups, metric, target, smooth, test_metric):
    higher = higher_is_better(metric)
    curves = {label: seed_average(g, metric, smooth) for label, g in groups.items()}
    if target is None:
        target = default_target(curves, higher)
    rows = []
    for label, group in groups.items():
        curve = curves[label]
        hit = reach(curve, target, higher) if curve is not None and target is not None else None
        finals = [r["summary"].get(f"test/{test_metric}") for r in group if r["status"] == "completed"]
        finals = [v for v in finals if v is not None]
        last = [r["metrics"].iloc[-1] for r in group if not r["metrics"].empty]
        iters = [row["iteration"] for row in last if row["iteration"] > 0]
        per_it = [row["time"] / row["iteration"] for row in last if row["iteration"] > 0]
        cost_it = [sum(row[c] for c in oracle_columns(row.index)[1]) / row["iteration"] for row in last if row["iteration"] > 0]
        calls_it = [sum(row[c] for c in oracle_columns(row.index)[0]) / row["iteration"] for row in last if row["iteration"] > 0]
        dist = [r["metrics"]["train/dist_to_opt"].dropna().iloc[-1] for r in group
                if "train/dist_to_opt" in r["metrics"] and r["metrics"]["train/dist_to_opt"].notna().any()]
        ci = t_ci95(finals)
        if ci is None and len(finals) == 1:  # one seed: the CI over evaluation tasks
            ci = next(r["summary"].get(f"test/{test_metric}_ci95") for r in group if r["status"] == "completed")
        rows.append({
            "setting": label,
            "runs": status_text(group),
            "iterations": int(max(iters)) if iters else 0,
            "iters_to_target": None if hit is None else int(hit.name),
            "seconds_to_target": None if hit is None else round(float(hit["time"]), 2),
            # NaN when the algorithm counts no oracle calls (RL that is not meta-gradient: ppo, qmix, matd3)
            "oracle_calls_to_target": None if hit is None or pd.isna(hit["oracle_calls"]) else int(hit["oracle_calls"]),
            "oracle_cost_to_target": None if hit is None or pd.isna(hit["oracle_cost"]) else int(hit["oracle_cost"]),
            f"final_test_{test_metric}": None if not finals else sum(finals) / len(finals),
            "ci95": ci,
            **({"final_dist_to_opt": sum(dist) / len(dist)} if dist else {}),
            "sec_per_iter": None if not per_it else sum(per_it) / len(per_it),
            "oracle_calls_per_iter": None if not calls_it else sum(calls_it) / len(calls_it),
            "oracle_cost_per_iter": None if not cost_it else sum(cost_it) / len(cost_it),
        })
    return pd.DataFrame(rows), target


def to_markdown(df):
    """A markdown table without the optional `tabulate` dependency of DataFrame.to_markdown."""
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.astype(object).itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------- W&B

def log_to_wandb(sweep_dir, runs, figures, table, markdown):
    """Figures and table to a summary run in the sweep's W&B group; offline without credentials."""
    import os

    import wandb

    from metarun.loggers import has_wandb_credentials

    cfg = next((r["config"] for r in runs if r["config"] is not None), None)
    wb = OmegaConf.select(cfg, "logger.wandb", default=None) if cfg is not None else None
    # WANDB_MODE wins (tests and CI set it), then the runs' logger.wandb.mode, then online only with credentials.
    mode = os.environ.get("WANDB_MODE") or (wb.mode if wb is not None and wb.get("mode", "auto") != "auto" else None)
    mode = mode or ("online" if has_wandb_credentials() else "offline")
    kwargs = dict(project=(wb.project if wb is not None else "metarun"), entity=(wb.entity if wb is not None else None),
                  group=Path(sweep_dir).resolve().name, name="report", job_type="report", dir=str(Path(sweep_dir)),
                  settings=wandb.Settings(init_timeout=60, silent=True))
    try:
        run = wandb.init(mode=mode, **kwargs)
    except Exception as e:  # noqa: BLE001 - network or auth failure: the report stays local
        warnings.warn(f"W&B could not start ({e}); logging offline")
        run = wandb.init(mode="offline", **kwargs)
    run.log({Path(f).stem: wandb.Image(str(f)) for f in figures})
    run.log({"summary_table": wandb.Table(dataframe=table.astype(object).where(table.notna(), None))})
    run.summary["report_markdown"] = markdown
    run.finish()
    return mode


# ---------------------------------------------------------------- main

def report(sweep_dir, out=None, metric=None, target=None, smooth=5, wandb_flag=False, dpi=90):
    sweep_dir = Path(sweep_dir)
    runs = [load_run(d) for d in job_dirs(sweep_dir)]
    if all(r["metrics"].empty for r in runs):
        which = f"the run {sweep_dir} has not" if len(runs) == 1 else f"none of the {len(runs)} runs in {sweep_dir} has"
        raise ReportError(f"nothing to report: {which} logged any metrics (metrics.jsonl is missing or empty); "
                          f"status: {status_text(runs)}")
    out = Path(out) if out else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    expected, declared = declared_sweep(sweep_dir)
    swept, groups = group_runs(runs, declared)
    known = {c for r in runs for c in r["metrics"].columns}
    test_metric = eval_metric(runs)
    # RL runs: the training curve is the post-adaptation return (TRPO's surrogate loss is ~0 by construction).
    train_metric = "train/return" if test_metric == "return" else "train/loss"
    metric = metric or train_metric
    if metric not in known and known:
        raise ReportError(f"--metric {metric} is not logged by these runs; logged: {', '.join(sorted(c for c in known if '/' in c and '_step' not in c))}")

    figures = [plot_metric(groups, train_metric, out / f"{train_metric.replace('/', '_')}.png",
                           "meta-training " + ("return after adaptation" if test_metric == "return" else "loss"), smooth, dpi=dpi),
               plot_metric(groups, f"eval/{test_metric}", out / f"eval_{test_metric}.png", f"meta-validation {test_metric} after adaptation", 1, dpi=dpi)]
    if "train/dist_to_opt" in known:
        figures.append(plot_metric(groups, "train/dist_to_opt", out / "dist_to_opt.png", "distance to the optimum", 1, logy=True, dpi=dpi))
        figures.append(plot_contraction(groups, out / "contraction.png", dpi=dpi))
    if "train/grad_sq_mean" in known:  # stationarity: the running mean of ||meta-gradient||^2 (MAML, ANIL)
        figures.append(plot_metric(groups, "train/grad_sq_mean", out / "grad_sq_mean.png",
                                   "running mean of the squared meta-gradient norm", 1, logy=True, dpi=dpi))
    figures.append(plot_test_steps(groups, ["return"] if test_metric == "return" else ["loss", "accuracy"],
                                   out / "test_vs_inner_steps.png", dpi=dpi))
    figures.append(plot_adapt_rule(groups, "train/density/", out / "adapted_share.png", "share that adapts", dpi=dpi))
    figures.append(plot_adapt_rule(groups, "train/lr/", out / "learned_lr.png", "mean learned inner lr", dpi=dpi))
    figures = [f for f in figures if f is not None]

    given_target = target
    smooth = smooth if metric.startswith("train/") else 1  # evaluation points are few and already averaged
    table, target = summary_table(groups, metric, target, smooth, test_metric)
    table.to_csv(out / "summary.csv", index=False)
    pd.DataFrame([{"job": r["job"], **{k: r["overrides"].get(k) for k in swept}, "seed": r["overrides"].get("seed"),
                   "status": r["status"], "error": r["error"],
                   "iteration": int(r["metrics"]["iteration"].max()) if not r["metrics"].empty else 0}
                  for r in runs]).to_csv(out / "runs.csv", index=False)
    notes = [f"Sweep: `{sweep_dir}`; {plural(len(runs), 'run')} in {plural(len(groups), 'setting')} "
             f"(grouped by {', '.join(swept) or 'nothing'}; averaged over seeds)."]
    if expected is not None and expected > len(runs):
        notes.append(f"**{expected - len(runs)} of {expected} declared jobs have no run dir (never started).**")
    bad = [r for r in runs if r["status"] != "completed"]
    for r in bad:
        setting = ",".join(f"{k}={r['overrides'].get(k)}" for k in swept)
        notes.append(f"- job {r['job']} ({setting}, seed {r['overrides'].get('seed', '-')}): **{r['status']}** {r['error']}".rstrip())
    for r in runs:
        if r["metrics"].empty:
            notes.append(f"- job {r['job']}: no metrics logged (no metrics.jsonl)")
    if target is not None:
        how = "given by --target" if given_target is not None else "default: the worst final level among the settings"
        smoothing = f", rolling mean of {smooth} logged points" if smooth > 1 else ""
        notes.append(f"Target: {metric} {'>=' if higher_is_better(metric) else '<='} {target:.4g} ({how}; on the seed-mean curve{smoothing}). "
                     "Oracle calls = gradient + second-order evaluations; oracle cost weights each by the number of parameters it differentiates.")
    markdown = "\n\n".join(notes) + "\n\n" + to_markdown(table) + "\n"
    if "train/dist_to_opt" in known:
        rates = pd.DataFrame([{k: v for k, v in row.items() if k != "curve"} for row in contraction_rows(groups)])
        if not rates.empty:
            rates.to_csv(out / "contraction.csv", index=False)
            markdown += ("\nOuter contraction per iteration (quadratic task, plain SGD): closed form rho = max|1 - beta eig(H)|, "
                         "measured = geometric mean of |z_k|/|z_(k-1)| over the last third of the iterations.\n\n" + to_markdown(rates) + "\n")
    (out / "summary.md").write_text(markdown)

    uses_wandb = wandb_flag or any(r["config"] is not None and "wandb" in (r["config"].get("logger") or {}) for r in runs)
    if uses_wandb:
        mode = log_to_wandb(sweep_dir, runs, figures, table, markdown)
        print(f"metarun-report: logged figures and table to W&B ({mode}), group {sweep_dir.resolve().name}")
    return {"runs": runs, "groups": groups, "table": table, "figures": figures, "markdown": markdown, "out": out, "target": target}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun dir (hydra.sweep.dir) or one run dir")
    parser.add_argument("--metric", default=None, help="curve for the time-to-target table (default train/loss; train/return for RL runs; "
                             "train/grad_sq_mean: the running mean of the squared meta-gradient norm)")
    parser.add_argument("--target", type=float, default=None,
                        help="level of --metric to reach (default: the worst final seed-mean level among the settings, which all reach)")
    parser.add_argument("--smooth", type=int, default=5, help="rolling mean over this many logged points for training curves (default 5)")
    parser.add_argument("--out", default=None, help="output dir (default <sweep_dir>/report)")
    parser.add_argument("--dpi", type=int, default=90)
    parser.add_argument("--wandb", action="store_true", help="log figures and table to W&B (automatic when runs used logger=wandb)")
    args = parser.parse_args(argv)
    try:
        if args.smooth < 1:
            raise ReportError(f"--smooth must be >= 1, got {args.smooth}")
        result = report(args.sweep_dir, args.out, args.metric, args.target, args.smooth, args.wandb, args.dpi)
    except ReportError as e:
        print(f"metarun-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(result["markdown"])
    written = [p.name for p in result["figures"]] + ["summary.md", "summary.csv", "runs.csv"]
    print(f"metarun-report: wrote {', '.join(written)} to {result['out']}")


if __name__ == "__main__":
    main()
