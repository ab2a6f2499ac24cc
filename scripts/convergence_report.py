"""Run the convergence presets and write docs/convergence.md from the template docs/src/convergence.md.

    python scripts/convergence_report.py                          # every preset, then the doc
    python scripts/convergence_report.py --presets omniglot_anil_nonconvex --no-doc
    python scripts/convergence_report.py --skip-runs              # rebuild reports and the doc only (from the kept run data)
    python scripts/convergence_report.py --presets anil_nonconvex --scale full --resume --no-doc  # hours; resumable

Each preset runs as a user would: `metarun -m +experiment=<preset> scale=<scale>
hydra.sweep.dir=<work-dir>/<preset>` (`<work-dir>/full/<preset>` for scale=full; Omniglot presets
with METARUN_DATA=<--data>), and the sweep's wall-clock, threads, concurrent jobs and load
average go to `<sweep>/timing.json`. Then `metarun-report` runs on the sweep, once on the training loss and once on the running mean of the
squared meta-gradient norm (`--metric train/grad_sq_mean`). Each sweep's run data is kept in the
repository, `docs/convergence/sweeps/<scale>/<preset>.tar.xz` (written after every sweep or part of
one, interrupted ones included); a work dir that lacks a sweep gets it from there, so the page can be
rebuilt, and a full sweep continued, on a fresh checkout. The document's prose lives in
docs/src/convergence.md; this script supplies only computed blocks (tables, verdicts, figure
links, measured numbers) through scripts/docgen.py. Verdicts come from the 95% interval of the
shift between two settings' times to a target over seeds (Hodges-Lehmann with the exact
Mann-Whitney interval, metarun/stats.py), counting runs that never reach it as censored: "not
resolved" when it covers 0. Runs that diverged (metarun.train stopped them on a non-finite loss or
gradient) count as censored too, not as absent; runs that failed otherwise are left out and listed.
"""
import argparse
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from docgen import keep_runs, machine_text, md_table, render, restore_runs, timed_run  # noqa: E402

from metarun import report as mr  # noqa: E402
from metarun import stats  # noqa: E402

LINREG = ["anil_strongly_convex", "anil_nonconvex", "anil_vs_maml", "step_size", "adapted_subsets"]
OMNIGLOT = [f"omniglot_{p}" for p in LINREG]
# Claim 3 on linear regression again, at a common inner step size chosen on validation (MAML diverges at
# anil_vs_maml's): the selection sweep, quick scale only, then the comparison at the step it selects.
LR_SELECTION, SELECTED_LR = "anil_vs_maml_lr_selection", "anil_vs_maml_selected_lr"
PRESETS = ["quadratic_1d", *LINREG, LR_SELECTION, SELECTED_LR, *OMNIGLOT]
DATA = {**{p: "linear regression" for p in [*LINREG, LR_SELECTION, SELECTED_LR]}, **{p: "Omniglot" for p in OMNIGLOT}}
DATA["adapted_subsets"] = "sinusoid"
AXES = {"iteration": "iterations", "time": "seconds", "oracle_cost": "oracle cost"}
# (name, logged column, rolling mean over logged points): the curves a target is set on.
MEASURES = {"loss": ("train/loss", 5), "grad_sq_mean": ("train/grad_sq_mean", 1), "dist_to_opt": ("train/dist_to_opt", 1)}
MEASURE_TEXT = {"loss": "training loss", "grad_sq_mean": "mean ‖meta-gradient‖²", "dist_to_opt": "dist_to_opt"}
PLATEAU_BAND = 0.1     # a curve is flat once it stays within 10% of its total change from its final level
LAST_PART = 0.2        # a run's last fifth: a curve flat only there has not flattened (plateau); its settled ||g||^2 (late_grad_sq)
MIN_TRAIN_SECONDS = 30
SWEEP_MINUTES = 20
SCALES = ("quick", "full")


def sweep_path(work, preset, scale):
    """Where a preset's sweep of one scale lives: <work>/<preset> (quick), <work>/full/<preset> (full)."""
    return work / preset if scale == "quick" else work / "full" / preset


# ---------------------------------------------------------------- running

def run_sweep(preset, scale, sweep_dir, data, seeds=None, launcher=None, resume=False):
    """metarun -m on one preset (or on some of its seeds: a part of the sweep, added to `sweep_dir`);
    with `resume`, continues the sweep in `sweep_dir` (`metarun -m ... resume=true`: killed jobs resume
    from their checkpoints, finished ones are skipped), as a `scale=full` sweep spread over sessions needs.

    Appends to <sweep_dir>/timing.json what the process can know of the conditions: wall-clock,
    jobs at once, and what docgen.timed_run measures of the machine (the sweep's share of its busy CPU, the load).
    """
    resume = resume and (sweep_dir / "multirun.yaml").is_file()  # --resume on a sweep never started starts it
    if resume and seeds is None and finished_jobs(sweep_dir) >= declared_jobs(preset, scale):
        print(f"  {preset}: every job of {sweep_dir} has finished; nothing to resume", flush=True)
        return None
    if seeds is None and sweep_dir.exists() and not resume:
        shutil.rmtree(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # Job dirs named by seed and job number, so that parts of a sweep run separately never collide.
    cmd = ["metarun", "-m", f"+experiment={preset}", f"scale={scale}", "threads=1", f"hydra.sweep.dir={sweep_dir}",
           "hydra.sweep.subdir=s${seed}_${hydra.job.num}"]
    cmd += [f"seed={seeds}"] if seeds is not None else []
    cmd += [f"hydra/launcher={launcher}"] if launcher else []
    cmd += ["resume=true"] if resume else []
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "METARUN_DATA": str(data)}
    with open(sweep_dir.parent / f"{preset}.log", "a") as log:
        timing = timed_run(cmd, log, env, cwd=REPO)
    multirun = OmegaConf.load(sweep_dir / "multirun.yaml") if (sweep_dir / "multirun.yaml").is_file() else None
    target = OmegaConf.select(multirun, "hydra.launcher._target_", default="") if multirun is not None else ""
    jobs = OmegaConf.select(multirun, "hydra.launcher.n_jobs", default=None) if "Joblib" in target else 1
    part = {"seeds": seeds or "all", **timing, "jobs_at_once": jobs, **({"resumed": True} if resume else {})}
    path = sweep_dir / "timing.json"
    parts = json.loads(path.read_text()) if (seeds is not None or resume) and path.is_file() else []
    # a resumed part adds to the part it continues; a part run anew replaces the one with its seeds
    path.write_text(json.dumps([p for p in parts if resume or p["seeds"] != part["seeds"]] + [part], indent=2))
    print(f"  {preset}: exit {part['exit_code']} after {part['wall_seconds']:.0f} s", flush=True)
    if part["interrupted"]:  # recorded, so that a sweep resumed later counts this part's wall-clock too
        raise KeyboardInterrupt
    return part


REPORTS = {"report": [], "report_grad": ["--metric", "train/grad_sq_mean", "--smooth", "1"]}  # dir in the sweep: metarun-report's extra args


def run_reports(sweep_dir):
    for out, extra in REPORTS.items():
        cmd = [sys.executable, "-m", "metarun.report", str(sweep_dir), "--dpi", "80", "--out", str(sweep_dir / out), *extra]
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- run data kept in the repository

def archive_path(docs, preset, scale):
    """Where a sweep's run data is kept: <docs>/convergence/sweeps/<scale>/<preset>.tar.xz."""
    return docs / "convergence" / "sweeps" / scale / f"{preset}.tar.xz"


def archive_sweep(sweep_dir, path):
    """Keep a sweep's run data beside the page it feeds (docgen.keep_runs), so that the page can be
    rebuilt from it (`--skip-runs`) and a full sweep spread over sessions goes on (`--resume`) on any
    checkout: what metarun-report and a resumed sweep read (overrides, configs, metrics, summaries,
    multirun.yaml, timing.json), and the checkpoints of the jobs that have not finished, so that they
    resume exactly rather than from the start. Left out: finished jobs' checkpoints, the reports
    (run_reports rebuilds them) and W&B dirs."""
    finished = {r["job"] for r in sweep_runs(sweep_dir) if counted(r)}  # none yet: only multirun.yaml, timing.json
    return keep_runs(sweep_dir, path, drop=lambda parts: parts[0] in REPORTS or "wandb" in parts
                     or (parts[0] in finished and parts[-1].endswith(".pt")))


def restore_sweep(path, sweep_dir):
    """Unpack a kept sweep into `sweep_dir` unless the work dir has it (docgen.restore_runs)."""
    return restore_runs(path, sweep_dir, script="convergence_report")


# ---------------------------------------------------------------- analysis (pure: tested in tests/test_convergence_report.py)

def run_curve(run, column, smooth=1):
    """One run's logged `column` (rolling mean of `smooth` points) with its iteration, seconds and oracle cost."""
    m = run["metrics"]
    if m.empty or column not in m:
        return None
    rows = m[m[column].notna()]
    _, params = mr.oracle_columns(m.columns)
    return pd.DataFrame({"iteration": rows["iteration"].to_numpy(), "time": rows["time"].to_numpy(),
                         "oracle_cost": rows[params].sum(axis=1).to_numpy() if params else math.nan,
                         "value": rows[column].rolling(smooth, min_periods=1).mean().to_numpy()})


def first_reach(curve, target, axis):
    """The `axis` value (iteration, time, oracle_cost) from which the curve stays at or below `target`.

    "Stays" rather than "first touches": a curve that starts below the level and rises (a running
    mean of squared gradient norms often does) has not converged to it at its first point.
    +inf when the curve ends above the target: the run is censored at its end.
    """
    above = (curve["value"] > target).to_numpy()
    if above[-1]:
        return math.inf
    last_above = max((i for i, a in enumerate(above) if a), default=-1)
    return float(curve[axis].iloc[last_above + 1])


def target_level(*settings):
    """The highest finite one of the settings' median final levels (each a list of curves), or None.

    More than half the runs of every setting end at or below it, so each setting's median time to it
    is finite; the runs that end above it are censored. For an even number of runs the upper of the
    two middle levels is the median used, so that "more than half" holds there too. A setting whose
    median final level is +inf (more than half its runs diverged; with an even number of runs, half)
    has no level that more than half its runs reach: it sets no target, and its runs are mostly
    censored against the others' target. None when no setting has a finite median.
    """
    medians = [statistics.median_high(final(c) for c in curves) for curves in settings]
    finite = [m for m in medians if math.isfinite(m)]
    return max(finite) if finite else None


def final(curve):
    """A curve's final level: +inf for a run that diverged (see `curves_of`)."""
    return curve["value"].iloc[-1]


def has_diverged(curve):
    # Completed runs log only finite values (metarun.train stops a run at its first non-finite
    # metric), so a final level of +inf marks a diverged run's curve.
    return math.isinf(final(curve))


def spike_share(curve):
    """The share of a run's sum of squared meta-gradient norms (running mean x iterations) that falls in
    its largest logging window after the first; nan for a diverged run or one with a single window.
    Near 1 when the running mean records one spike (a single meta-batch's meta-gradient)
    rather than the level training settled at. The first window is left out: it holds the start's
    transient, which the paper's average over iterations rightly counts."""
    if has_diverged(curve) or len(curve) < 2:
        return math.nan
    sums = (curve["value"] * curve["iteration"]).to_numpy(dtype=float)
    return max(b - a for a, b in zip(sums, sums[1:])) / sums[-1] if sums[-1] > 0 else math.nan


# More than half of a run's sum of ||g||^2 in one logging window: the running mean is that spike's
# record, so a gradient-norm verdict whose settings' median run is so (claim_rows) is withheld.
SPIKE_SHARE = 0.5


def median_spike_share(curves):
    """The median `spike_share` over the runs that did not diverge; nan when all did."""
    shares = [x for x in map(spike_share, curves) if not math.isnan(x)]
    return float(statistics.median(shares)) if shares else math.nan


def late_grad_sq(run, last=LAST_PART):
    """The median of the squared meta-gradient norms logged (`train/grad_norm`, one meta-batch each) over
    the run's last fifth: a level that one spike cannot set. +inf for a diverged run, nan when not logged."""
    if diverged(run):
        return math.inf
    c = run_curve(run, "train/grad_norm")
    if c is None or c.empty:
        return math.nan
    late = c[c["iteration"] >= (1 - last) * c["iteration"].iloc[-1]]
    return float((late["value"] ** 2).median())


def compare_to_target(curves_a, curves_b, claimed):
    """Claim: setting A reaches a common target with `claimed` ("less"/"greater") x than B, on every axis.

    The target is `target_level(A, B)`; a run that does not end at or below it is censored (x = +inf on
    every axis), and so is a run that diverged. Each run gives one x per axis; the verdict is on the
    95% interval of the Hodges-Lehmann shift of x_A against x_B (metarun.stats.compare_shift): "not
    resolved" whenever it covers 0, and always when there are too few runs for a 95% interval. "a"
    and "b" are the settings' median x; "assumed" counts the pairs whose order only the +inf
    convention decides (`assumed_order_pairs`). When neither setting has a finite median final level
    (most runs of both diverged) the target is None and there is no verdict: no axis entries.
    """
    target = target_level(curves_a, curves_b)
    out = {"target": target, "n": (len(curves_a), len(curves_b)),
           "diverged": tuple(int(sum(has_diverged(c) for c in cs)) for cs in (curves_a, curves_b))}
    if target is None:
        return out
    # "censored" counts the runs that ran to the end and stopped above the target; diverged runs apart.
    out["censored"] = tuple(int(sum(target < final(c) < math.inf for c in cs)) for cs in (curves_a, curves_b))
    for axis in AXES:
        xa = [first_reach(c, target, axis) for c in curves_a]
        xb = [first_reach(c, target, axis) for c in curves_b]
        verdict, estimate, low, high = stats.compare_shift(xa, xb, claimed)
        out[axis] = {"verdict": verdict, "estimate": estimate, "low": low, "high": high,
                     "a": statistics.median(xa), "b": statistics.median(xb),
                     "assumed": assumed_order_pairs(curves_a, curves_b, target, axis)}
    return out


def assumed_order_pairs(curves_a, curves_b, target, axis):
    """Pairs (a run of each setting) in which one run is censored where it stopped on `axis` and the
    other reached the target only after that point: +inf counts the censored run as the slower one,
    which the data do not show. None when the runs stop at the same point, as the +inf rule assumes;
    some when settings run different numbers of iterations (the linear-regression presets do). A
    diverged run stops at +inf on every axis (`curves_of`): it would never have reached the target,
    so its order is not assumed."""
    def count(censored_side, other_side):
        stops = [c[axis].iloc[-1] for c in censored_side if final(c) > target]
        reached = [first_reach(c, target, axis) for c in other_side]
        return sum(stop < x < math.inf for stop in stops for x in reached)
    return int(count(curves_a, curves_b) + count(curves_b, curves_a))


def plateau(iterations, values, band=PLATEAU_BAND):
    """First iteration from which `values` stay within `band` x (total change) of their final level,
    or None when that happens only in the run's last part (LAST_PART: the curve has not flattened)."""
    values = pd.Series(list(values), dtype=float)
    iterations = list(iterations)
    if len(values) < 5:
        return None
    end = values.iloc[-max(2, len(values) // 10):].mean()  # the final level, averaged over the last tenth
    tolerance = band * abs(values.iloc[0] - end)
    outside = [i for i, v in enumerate(values) if abs(v - end) > tolerance]
    start = 0 if not outside else outside[-1] + 1
    if start >= len(values) or iterations[start] > (1 - LAST_PART) * iterations[-1]:
        return None
    return iterations[start]


def select(runs, **overrides):
    """The runs whose overrides match (values compared as strings)."""
    return [r for r in runs if all(str(r["overrides"].get(k)) == str(v) for k, v in overrides.items())]


def diverged(run):
    """Whether metarun.train stopped the run because a training metric became non-finite (summary.json's
    `failure` is "non_finite"); other failures (an exception in the code, a missing file) are not this."""
    if run["status"] != "failed":
        return False
    if "failure" in run["summary"]:
        return run["summary"]["failure"] == "non_finite"
    # summaries written before train.py wrote `failure`: its NonFiniteLoss message
    error = run.get("error") or ""
    return error.startswith("training stopped at iteration") and "non-finite" in error


def counted(run):
    """Whether the verdicts count the run: it completed, or it diverged (then as censored)."""
    return run["status"] == "completed" or diverged(run)


# Where a diverged run's curve ends: it never stays at or below any level, on no axis, however low it
# got before it blew up. At +inf on every axis it is censored (first_reach), its final level is +inf
# (target_level) and no pair with it counts as an assumed order (assumed_order_pairs).
DIVERGED_END = {"iteration": math.inf, "time": math.inf, "oracle_cost": math.inf, "value": math.inf}


def curves_of(runs, measure):
    """The curves of the completed and the diverged runs; other runs (failed for another reason,
    interrupted, still running) are left out (`excluded`). Nothing when no run logs the measure
    (dist_to_opt on Omniglot); where they do, a diverged run counts even if it blew up before its
    first logged point."""
    column, smooth = MEASURES[measure]
    if not any(column in r["metrics"] for r in runs):
        return []
    curves = []
    for r in runs:
        c = run_curve(r, column, smooth) if counted(r) else None
        if diverged(r):
            logged = [c] if c is not None and not c.empty else []
            curves.append(pd.concat([*logged, pd.DataFrame([DIVERGED_END])], ignore_index=True))
        elif c is not None and not c.empty:
            curves.append(c)
    return curves


def excluded(runs):
    """The runs the verdicts leave out: neither completed nor diverged."""
    return [r for r in runs if not counted(r)]


def cell(result, axis):
    """'**verdict**: estimate [low, high]', or why there is no interval."""
    if result["target"] is None or result.get("spike"):
        return "no verdict"
    r, (n_a, n_b) = result[axis], result["n"]
    if stats.mann_whitney_critical(n_a, n_b) == 0:
        return f"**{r['verdict']}**: {fmt(r['estimate'])}, no 95% interval from {n_a}+{n_b} runs"
    text = f"**{r['verdict']}**: {fmt(r['estimate'])} [{fmt(r['low'])}, {fmt(r['high'])}]"
    return text + (f"; order of {r['assumed']}/{n_a * n_b} pairs assumed" if r["assumed"] else "")


def target_cell(result, measure):
    if result["target"] is None:
        return f"{MEASURE_TEXT[measure]}: no target, most runs of both settings diverged"
    if result.get("spike"):
        shares = ", ".join(f"{label} {fmt(x, 2)}" for label, x in result["spike"].items())
        return f"{MEASURE_TEXT[measure]}: no verdict, a running mean set by one spike (median largest-window share {shares})"
    return f"{MEASURE_TEXT[measure]} <= {fmt(result['target'])}"


def seeds_cell(result):
    """'5+5 (0+4 diverged, 0+1 censored)': diverged runs apart from the runs censored at their end
    (the diverged part only when some run diverged)."""
    (n_a, n_b), (d_a, d_b) = result["n"], result["diverged"]
    parts = [f"{d_a}+{d_b} diverged"] if d_a or d_b else []
    if "censored" in result:
        parts.append(f"{result['censored'][0]}+{result['censored'][1]} censored")
    return f"{n_a}+{n_b} ({', '.join(parts)})" if parts else f"{n_a}+{n_b}"


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.{digits}e}" if abs(v) >= 1e6 else f"{v:.0f}"
    return str(v)


# ---------------------------------------------------------------- claims

def claim_rows(runs_by_preset, unmatched=()):
    """The verdict table: one row per (claim, data set, N or pair, measure), one column per axis; the
    seconds cells of the presets in `unmatched` (timed in parts on processors that differ or were not
    recorded) marked so."""
    rows = []
    specs = [("1. strongly convex: faster with larger N", "anil_strongly_convex", "less"),
             ("2. nonconvex: slower with larger N", "anil_nonconvex", "greater")]
    for claim, base, claimed in specs:
        for preset in (base, f"omniglot_{base}"):
            runs = runs_by_preset.get(preset)
            if not runs:
                continue
            ns = sorted({int(r["overrides"]["algo.inner_steps"]) for r in runs})
            small, large = ns[0], ns[-1]
            for measure in ("loss", "grad_sq_mean", "dist_to_opt"):
                a = curves_of(select(runs, **{"algo.inner_steps": large}), measure)
                b = curves_of(select(runs, **{"algo.inner_steps": small}), measure)
                if len(a) >= 2 and len(b) >= 2:
                    result = compare_to_target(a, b, claimed)
                    if measure == "grad_sq_mean":
                        shares = {f"N={large}": median_spike_share(a), f"N={small}": median_spike_share(b)}
                        result["spike"] = shares if any(x > SPIKE_SHARE for x in shares.values()) else None
                    rows.append(verdict_row(claim, preset, f"N={large} - N={small}", measure, result, preset in unmatched))
    for preset in ("anil_vs_maml", SELECTED_LR, "omniglot_anil_vs_maml"):
        runs = runs_by_preset.get(preset)
        if not runs:
            continue
        # the selected step is named in the row: the data set column alone would not tell it from anil_vs_maml's
        alpha = f", alpha={runs[0]['config'].algo.inner_lr:g}" if preset == SELECTED_LR else ""
        for n in sorted({int(r["overrides"]["algo.inner_steps"]) for r in runs}):
            for measure in ("loss", "dist_to_opt"):
                a = curves_of(select(runs, method="anil", **{"algo.inner_steps": n}), measure)
                b = curves_of(select(runs, method="maml", **{"algo.inner_steps": n}), measure)
                if len(a) >= 2 and len(b) >= 2:
                    rows.append(verdict_row("3. ANIL cheaper than MAML", preset, f"ANIL - MAML, N={n}{alpha}", measure,
                                            compare_to_target(a, b, "less"), preset in unmatched))
    return rows


def final_val_loss(run):
    """A run's last validation loss (`eval/loss`, on the validation tasks): +inf for a run that diverged,
    nan for one that has not completed or never evaluated."""
    if diverged(run):
        return math.inf
    c = run_curve(run, "eval/loss") if run["status"] == "completed" else None
    return math.nan if c is None or c.empty else float(c["value"].iloc[-1])


def select_inner_lr(runs):
    """anil_vs_maml_lr_selection's rule: among the alphas none of whose runs diverged, the one whose worst
    N has the lowest median `final_val_loss` (the larger alpha on a tie). Returns (alpha, rows): one row
    per alpha for the page; alpha is None while a run has not finished, or when a run diverged at
    every alpha."""
    ns = sorted({int(r["overrides"]["algo.inner_steps"]) for r in runs})
    rows = []
    for alpha in sorted({float(r["overrides"]["algo.inner_lr"]) for r in runs}):
        row, medians, diverged_runs = {"alpha": fmt(alpha), "_alpha": alpha}, [], 0
        for n in ns:
            losses = [final_val_loss(r) for r in select(runs, **{"algo.inner_steps": n}) if float(r["overrides"]["algo.inner_lr"]) == alpha]
            medians.append(statistics.median(losses) if losses and not any(map(math.isnan, losses)) else math.nan)
            diverged_here = sum(map(math.isinf, losses))
            diverged_runs += diverged_here
            row[f"N={n}"] = f"{fmt(medians[-1])} ({diverged_here} of {len(losses)} diverged)"
        row["_worst"] = math.nan if any(map(math.isnan, medians)) else max(medians)
        row["_diverged"] = diverged_runs
        row["worst N"] = fmt(row["_worst"])
        rows.append(row)
    eligible = [r for r in rows if r["_diverged"] == 0]
    if any(math.isnan(r["_worst"]) for r in rows) or not eligible:
        return None, rows
    return min(eligible, key=lambda r: (r["_worst"], -r["_alpha"]))["_alpha"], rows


def selection_text(runs):
    """The selection sweep's table, the alpha the rule selects and whether SELECTED_LR runs at it."""
    alpha, rows = select_inner_lr(runs)
    used = float(preset_config(SELECTED_LR, "quick").algo.inner_lr)
    if alpha is None:
        pick = ("The rule selects no alpha: " + ("a run of the sweep has not finished." if any(math.isnan(r["_worst"]) for r in rows)
                else "a run diverged at every alpha."))
    else:
        pick = (f"The rule selects **alpha = {fmt(alpha)}**; `{SELECTED_LR}` runs at alpha = {fmt(used)}"
                + (", the selected one." if math.isclose(alpha, used) else
                   ", **not the selected one**: its verdicts are not on the step this sweep chose."))
    return ("\n\nStep selection: MAML's final validation loss (the last `eval/loss`, on validation tasks), median over the "
            "sweep's seeds, per alpha and N; a diverged run counts as inf. Of the alphas at which no run diverged, the rule "
            "takes the one whose worst N is lowest. " + pick + "\n\n" + md_table(rows, [c for c in rows[0] if not c.startswith("_")]))


UNMATCHED = " *(parts on unmatched processors)*"  # a seconds cell from a sweep whose parts ran on other or unknown CPUs


def verdict_row(claim, preset, comparison, measure, result, unmatched=False):
    cells = {AXES[x]: cell(result, x) for x in AXES}
    if unmatched and cells["seconds"] != "no verdict":
        cells["seconds"] += UNMATCHED
    return {"claim": claim, "data set": DATA[preset], "comparison": comparison, "target": target_cell(result, measure),
            **cells, "seeds": seeds_cell(result)}


def cost_ratio_rows(runs):
    """ANIL against MAML per N: oracle calls and oracle cost per iteration (exact), seconds per iteration (mean ± CI).

    Diverged runs count here: what an iteration costs is measured as well before a run blows up as in
    a run that completes (and without them a setting whose runs all diverged would have no row)."""
    rows = []
    for n in sorted({int(r["overrides"]["algo.inner_steps"]) for r in runs}):
        per = {}
        for method in ("anil", "maml"):
            group = [r for r in select(runs, method=method, **{"algo.inner_steps": n})
                     if counted(r) and last_logged(r) is not None]
            if not group:
                break
            last = last_logged(group[0])
            calls, params = mr.oracle_columns(last.index)
            per[method] = {"calls": sum(last[c] for c in calls) / last["iteration"], "cost": sum(last[c] for c in params) / last["iteration"],
                           "sec": [seconds_per_iteration(r) for r in group]}
        if len(per) < 2:
            continue
        sec_a, sec_a_ci, _ = stats.mean_ci(per["anil"]["sec"])
        sec_m, sec_m_ci, _ = stats.mean_ci(per["maml"]["sec"])
        rows.append({"N": n, "oracle calls/iter ANIL": fmt(per["anil"]["calls"]), "oracle calls/iter MAML": fmt(per["maml"]["calls"]),
                     "oracle cost/iter ANIL": fmt(per["anil"]["cost"]), "oracle cost/iter MAML": fmt(per["maml"]["cost"]),
                     "cost ratio MAML/ANIL": fmt(per["maml"]["cost"] / per["anil"]["cost"]),
                     "s/iter ANIL": stats.fmt_ci(sec_a, sec_a_ci), "s/iter MAML": stats.fmt_ci(sec_m, sec_m_ci)})
    return rows


def last_logged(run):
    """The run's last logged training point (cumulative oracle counts and seconds), None before its first."""
    m = run["metrics"]
    if m.empty or "iteration" not in m:
        return None
    logged = m[m["iteration"] > 0]
    return None if logged.empty else logged.iloc[-1]


def seconds_per_iteration(run):
    # A completed run's summary has its training time; a diverged run's has none, so its last logged point.
    if run["status"] == "completed":
        return run["summary"]["time"] / run["summary"]["iteration"]
    last = last_logged(run)
    return last["time"] / last["iteration"]


# ---------------------------------------------------------------- per-preset blocks

def load_runs(sweep_dir):
    return [mr.load_run(d) for d in mr.job_dirs(sweep_dir)]


def sweep_runs(sweep_dir):
    """load_runs, or [] when the sweep has no runs yet (no sweep dir, or no job started in it)."""
    try:
        return load_runs(sweep_dir)
    except mr.ReportError:
        return []


def settings_of(runs, sweep_dir):
    _, groups = mr.group_runs(runs, mr.declared_sweep(sweep_dir)[1])
    return groups


def plateau_rows(groups):
    rows = []
    for label, group in groups.items():
        # Completed runs only, as in the verdicts: a diverged run's curve stops where it blew up.
        done = [r for r in group if r["status"] == "completed"]
        curve = mr.seed_average(done, "train/loss", smooth=5) if done else None
        if curve is None:
            continue
        it = plateau(curve.index, curve["mean"])
        seconds = None if it is None else curve.loc[it, "time"]
        rows.append({"setting": label, "iterations run": int(curve.index[-1]),
                     "plateau from iteration": "not flat yet" if it is None else int(it),
                     "at seconds": "-" if seconds is None else f"{seconds:.1f}", "curve": curve, "plateau": it})
    return rows


def plot_plateaus(rows, path, title):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), dpi=80, sharey=True)
    colors = plt.cm.viridis([i / max(1, len(rows) - 1) * 0.9 for i in range(len(rows))])
    for row, color in zip(rows, colors):
        c = row["curve"]
        for ax, x in zip(axes, (c.index.to_numpy(), c["time"].to_numpy())):
            ax.plot(x, c["mean"], color=color, label=row["setting"] if ax is axes[0] else None)
            if row["plateau"] is not None:
                at = list(c.index).index(row["plateau"])
                ax.plot(x[at], c["mean"].iloc[at], "o", color=color, ms=7, mfc="none")
    axes[0].set_xlabel("meta-iterations")
    axes[1].set_xlabel("training seconds")
    axes[0].set_ylabel("train/loss (seed mean, rolling 5)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title}: circles mark where each curve reaches its plateau", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@functools.lru_cache  # asked by run_sweep, shown_scale, timing_row and the step selection; each ask composes the config
def preset_config(preset, scale):
    """The preset's config as `metarun -m +experiment=<preset> scale=<scale>` composes it, hydra's included."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import metarun.config  # noqa: F401  registers ${pick:}

    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=[f"+experiment={preset}", f"scale={scale}"], return_hydra_config=True)


def declared_jobs(preset, scale):
    """How many jobs the preset's own sweep declares (hydra.sweeper.params), to show a sweep that is not complete."""
    params = OmegaConf.select(preset_config(preset, scale), "hydra.sweeper.params") or {}
    return math.prod(len(str(v).split(",")) for v in params.values())


def finished_jobs(sweep_dir):
    """How many jobs of a sweep have run to their end: completed or diverged (`counted`), what a
    resumed sweep skips (metarun.cli.sweep_job_step); a job that failed otherwise would run again."""
    return sum(map(counted, sweep_runs(sweep_dir)))


def timing_row(preset, runs, sweep_dir, scale="quick"):
    """The conditions a sweep ran under and its timings: from timing.json (one entry per part) and the runs."""
    path = sweep_dir / "timing.json"
    parts = json.loads(path.read_text()) if path.is_file() else []
    done = [r for r in runs if r["status"] == "completed"]
    train = [r["summary"]["time"] for r in done]
    threads = sorted({r["summary"].get("threads") for r in done})
    minutes = sum(p["wall_seconds"] for p in parts) / 60 if parts else math.nan
    declared = declared_jobs(preset, scale)
    failed = sum(r["status"] == "failed" for r in runs)   # the sweep ran them: not a partial sweep
    n_diverged = sum(map(diverged, runs))
    return {"preset": preset, "scale": scale, "runs": f"{len(done)} completed" + (f", {n_diverged} diverged" if n_diverged else "")
            + (f", {failed - n_diverged} failed" if failed > n_diverged else "") + f" of {declared} declared"
            + (" (partial sweep)" if len(done) + failed < declared else ""),
            "jobs at once": ",".join(sorted({str(p["jobs_at_once"]) for p in parts})) or "?",
            "threads per job": ",".join(map(str, threads)),
            "machine": ",".join(sorted({machine_text(p) for p in parts})) or "unknown",
            "processor": "; ".join(sorted({p.get("cpu") or "not recorded" for p in parts})) or "not recorded",
            "sweep wall-clock (min)": fmt(minutes) + (f" in {len(parts)} parts" if len(parts) > 1 else ""),
            "train s per run (min-max)": f"{min(train):.0f}-{max(train):.0f}" if train else "-",
            "runs >= 30 s": f"{sum(t >= MIN_TRAIN_SECONDS for t in train)}/{len(train)}",
            "load before": ",".join(f"{p['load_before']:.1f}" for p in parts) or "-",
            "started": min((p["started"] for p in parts), default="-"),
            "_minutes": minutes, "_min_train": min(train) if train else math.nan, "_alone": all(machine_text(p) == "alone" for p in parts),
            "_jobs": {p["jobs_at_once"] for p in parts},
            "_unmatched": len(parts) > 1 and (len({p.get("cpu") for p in parts}) > 1 or any(p.get("cpu") is None for p in parts))}


SPIKE_TEXT = ("The last two columns say whether a running mean measures where training went. \"Largest-window share\": the "
              "share of a run's sum of ‖g‖² that falls in its largest logging window (`log_every` iterations) after the first, "
              "which holds the start's transient (diverged runs left out). Near 1, one spike (a single meta-batch's meta-gradient) "
              "sets the running mean, and its level and the iterations to a target say little about stationarity. The median of "
              "the ‖g‖² logged over the run's last fifth (one meta-batch each) is a level no single spike sets.")


def stationarity_table(groups):
    """Per setting: how many runs' running mean of the squared meta-gradient norm ends at or below a
    common target (`target_level` over all settings, so a setting most of whose runs diverged sets
    none), and the median iterations, seconds and oracle cost from which it stays there (a run that
    never does, or that diverged, counts as +inf, censored)."""
    curves = {label: curves_of(group, "grad_sq_mean") for label, group in groups.items()}
    curves = {label: c for label, c in curves.items() if c}
    if not curves:
        return ""
    target = target_level(*curves.values())
    rows = []
    for label, cs in curves.items():
        row = {"setting": label, "runs": len(cs), "diverged": int(sum(has_diverged(c) for c in cs)),
               "median final mean ‖g‖²": fmt(statistics.median_high(final(c) for c in cs))}
        if target is not None:
            row["reached"] = int(sum(final(c) <= target for c in cs))
            for axis, name in AXES.items():
                row[f"median {name} to target"] = fmt(statistics.median(first_reach(c, target, axis) for c in cs))
        row["median largest-window share"] = fmt(median_spike_share(cs), 2)
        late = [x for x in (late_grad_sq(r) for r in groups[label] if counted(r)) if not math.isnan(x)]
        row["median ‖g‖², last fifth"] = fmt(statistics.median_high(late)) if late else "-"
        rows.append(row)
    if target is None:
        return ("\n\nStationarity: no target, most runs of every setting diverged (a diverged run's final level "
                f"counts as inf). {SPIKE_TEXT}\n\n" + md_table(rows, list(rows[0])))
    return (f"\n\nStationarity: from where each run's running mean of the squared meta-gradient norm stays at or below "
            f"{fmt(target)} (the highest finite one of the settings' median final levels; for an even number of runs, the upper "
            f"middle one), median over seeds. \"reached\": the runs that end at or below it; the others are censored "
            f"and count as inf, as does a run that diverged (its final level is inf). {SPIKE_TEXT}\n\n" + md_table(rows, list(rows[0])))


def section(preset, sweep_dir, figures, runs=None):
    """(text, runs, groups) of a preset's section from its sweep in `sweep_dir`; `runs`: that sweep's
    runs when the caller has read them already."""
    report_dir = sweep_dir / "report"
    if not (report_dir / "summary.csv").is_file():
        data = "METARUN_DATA=../shared/data " if preset.startswith("omniglot_") else ""
        return (f"*Not run for this version of the page* (no sweep in the work dir). It runs with "
                f"`{data}python scripts/convergence_report.py --presets {preset} --no-doc`, or as a user would with "
                f"`{data}metarun -m +experiment={preset}`.", None, None)
    runs = load_runs(sweep_dir) if runs is None else runs
    groups = settings_of(runs, sweep_dir)
    notes = repo_relative((report_dir / "summary.md").read_text().split("\n\n|")[0], sweep_dir)
    table = pd.read_csv(report_dir / "summary.csv")
    cols = [c for c in ["setting", "runs", "iterations", "final_test_loss", "final_test_accuracy", "ci95", "final_dist_to_opt",
                        "sec_per_iter", "oracle_calls_per_iter", "oracle_cost_per_iter"] if c in table]
    images = []
    for png in sorted(report_dir.glob("*.png")):
        if png.name == "contraction.png":
            continue
        dest = figures / f"{preset}_{png.name}"
        shutil.copy(png, dest)
        images.append(dest.name)
    prow = plateau_rows(groups)
    if prow:
        plot_plateaus(prow, figures / f"{preset}_plateau.png", preset)
        images.append(f"{preset}_plateau.png")
    grad_table = stationarity_table(groups)
    text = (notes + "\n\n" + md_table(table.map(fmt_cell), cols) + grad_table
            + "\n\nWhere the seed-mean training loss (rolling mean of 5 logged points) flattens: the first iteration from which it stays "
            + f"within {PLATEAU_BAND:.0%} of its total change from its final level (\"not flat yet\": only in the last fifth of the run, or never).\n\n"
            + md_table(prow, ["setting", "iterations run", "plateau from iteration", "at seconds"]) + "\n\n"
            + "\n\n".join(f"![{name}](convergence/{name})" for name in images))
    return text, runs, groups


def repo_relative(text, sweep_dir):
    """`text` with paths relative to the checkout: this one's, or the one whose outputs/ holds the
    sweep (a worktree's doc may be built from the sweeps of the main checkout)."""
    roots = [REPO, *(d.parent for d in sweep_dir.parents if d.name == "outputs")]
    for root in roots:
        text = text.replace(f"{root}/", "")
    return text


def fmt_cell(v):
    return fmt(v) if isinstance(v, float) else v


# ---------------------------------------------------------------- document

def failure_notes(groups_by_preset):
    """Which runs diverged, per setting (censored in the verdicts and stationarity tables), and which
    runs are left out of them (failed for another reason, interrupted, still running)."""
    counted, left_out = [], []
    for preset, groups in groups_by_preset.items():
        counts = [f"{label}: {sum(map(diverged, group))} of {len(group)}" for label, group in groups.items() if any(map(diverged, group))]
        if counts:
            counted.append(f"- `{preset}`: " + "; ".join(counts))
        for label, group in groups.items():
            left_out += [f"- `{preset}` job {r['job']} ({label}, seed {r['overrides'].get('seed', '-')}): **{r['status']}** "
                         f"{r['error']}".rstrip() for r in excluded(group)]
    return ("Runs that diverged, counted as censored:\n\n" + ("\n".join(counted) or "- none")
            + "\n\nRuns left out (failed for another reason than divergence, interrupted or unfinished):\n\n"
            + ("\n".join(left_out) or "- none"))


def sweep_target(row):
    """The issue's Omniglot target, judged only when the sweep ran as the target states it."""
    train = f"shortest run trained {row['_min_train']:.0f} s (target >= {MIN_TRAIN_SECONDS}: {'met' if row['_min_train'] >= MIN_TRAIN_SECONDS else 'missed'})"
    if row["_alone"] and row["_jobs"] == {2}:
        verdict = "met" if row["_minutes"] <= SWEEP_MINUTES else "missed"
        return f"- `{row['preset']}`: sweep {fmt(row['_minutes'])} min, two jobs at once, alone (target <= {SWEEP_MINUTES} min: {verdict}); {train}"
    return (f"- `{row['preset']}`: sweep {fmt(row['_minutes'])} min, not measured as the target states it (two jobs at once on the "
            f"machine alone), so the {SWEEP_MINUTES}-minute target is not judged here; {train}")


def shown_scale(preset, work):
    """(scale, note, runs): the scale a preset's section shows, with a line that says which and why, and
    the full sweep's runs when that is the one shown (read once, here), else None. Full once its full
    sweep has finished every declared job (`counted`, as `finished_jobs` counts) and been reported, else
    quick, with how far the full sweep has got. A full sweep spans sessions (`--resume`), so it is often
    partial."""
    full = sweep_path(work, preset, "full")
    if preset == LR_SELECTION:
        return "quick", "Scale: quick (a selection sweep: it runs at quick scale only).", None
    if not full.is_dir():
        return "quick", "Scale: quick (`scale=full` not run yet).", None
    runs = sweep_runs(full)
    ran, declared = sum(map(counted, runs)), declared_jobs(preset, "full")
    if ran >= declared and (full / "report" / "summary.csv").is_file():
        return "full", f"Scale: **full** (`scale=full`, {declared} runs). The verdicts table also has this preset's quick rows.", runs
    return "quick", (f"Scale: quick. The full sweep (`scale=full`) has run {ran} of its {declared} runs; "
                     "this section shows it once all have."), None


def kept_text(work, docs):
    """Which sweeps behind the page have their run data kept, and which do not (run before it was
    kept, or not run): the sentence that says how far `--skip-runs` can rebuild this page."""
    sweeps = [(p, s) for p in PRESETS for s in SCALES if (sweep_path(work, p, s) / "multirun.yaml").is_file()]
    kept = [(p, s) for p in PRESETS for s in SCALES if archive_path(docs, p, s).is_file()]
    if not sweeps and not kept:
        return "No sweep has run yet."
    name = lambda p, s: f"`{p}`" + (" (full)" if s == "full" else "")  # noqa: E731
    lost = [name(p, s) for p, s in sweeps if (p, s) not in kept]
    size = sum(archive_path(docs, p, s).stat().st_size for p, s in kept) / 1e6
    return (f"Kept: {mr.plural(len(kept), 'sweep')} ({size:.1f} MB)" + (f": {', '.join(name(p, s) for p, s in kept)}." if kept else ".")
            + (f" Not kept (in this work dir only): {', '.join(lost)}." if lost else ""))


def write_doc(work, docs):
    """docs/convergence.md from the sweeps in `work`: each preset's section at the scale `shown_scale`
    picks; the verdicts and timings at every scale with a complete sweep (quick always)."""
    figures = docs / "convergence"
    figures.mkdir(parents=True, exist_ok=True)
    for png in figures.glob("*.png"):
        png.unlink()
    blocks, groups_by_sweep, timing_rows, shown = {}, {}, [], {}
    runs_by_scale = {scale: {} for scale in SCALES}

    def record(preset, scale, runs, groups):
        runs_by_scale[scale][preset] = runs
        groups_by_sweep[preset if scale == "quick" else f"{preset} scale={scale}"] = groups
        timing_rows.append(timing_row(preset, runs, sweep_path(work, preset, scale), scale))

    for preset in PRESETS[1:]:
        scale, note, full_runs = shown_scale(preset, work)
        shown[preset] = scale
        text, runs, groups = section(preset, sweep_path(work, preset, scale), figures, full_runs)
        blocks[preset] = f"{note}\n\n{text}" + (selection_text(runs) if preset == LR_SELECTION and runs is not None else "")
        if runs is not None:
            record(preset, scale, runs, groups)
        quick = sweep_path(work, preset, "quick")
        if scale == "full" and (quick / "report" / "summary.csv").is_file():  # a preset shown at full keeps its quick verdicts
            quick_runs = load_runs(quick)
            record(preset, "quick", quick_runs, settings_of(quick_runs, quick))
    blocks["kept"] = kept_text(work, docs)
    full_shown = [p for p, s in shown.items() if s == "full"]
    blocks["scales"] = ("Every section shows its quick sweep: no full sweep has run to its end yet." if not full_shown else
                        f"Sections shown at full scale: {', '.join(f'`{p}`' for p in full_shown)}; the others show their quick sweep.")
    # The quadratic: exact dynamics, so its rate table is the point (32 settings of loss curves are unreadable).
    rates_csv = work / "quadratic_1d" / "report" / "contraction.csv"
    if rates_csv.is_file():
        rates = pd.read_csv(rates_csv)
        shutil.copy(work / "quadratic_1d" / "report" / "contraction.png", figures / "quadratic_1d_contraction.png")
        blocks["quadratic_1d"] = (md_table(rates.map(fmt_cell), ["setting", "smoothness_L_N", "theory_rho", "measured_rho", "rel_error"])
                                  + "\n\n![quadratic_1d_contraction.png](convergence/quadratic_1d_contraction.png)")
        blocks["quadratic_error"] = (f"largest relative error {fmt(rates['rel_error'].max(), 2)} over the {len(rates)} settings "
                                     f"({fmt(rates[rates.setting.str.contains('_1d')]['rel_error'].max(), 2)} in 1-D)")
    else:
        blocks["quadratic_1d"] = blocks["quadratic_error"] = "*(not run)*"
    # Quick and full rows of one claim and data set side by side, quick first.
    rows = {s: claim_rows(runs_by_scale[s], {r["preset"] for r in timing_rows if r["scale"] == s and r["_unmatched"]}) for s in SCALES}
    order = dict.fromkeys((r["claim"], r["data set"]) for s in SCALES for r in rows[s])
    verdicts = [{**r, "scale": s} for key in order for s in SCALES for r in rows[s] if (r["claim"], r["data set"]) == key]
    blocks["verdicts"] = md_table(verdicts, ["claim", "data set", "scale", "comparison", "target", "iterations", "seconds", "oracle cost",
                                             "seeds"]) if verdicts else "*(no claim sweeps run)*"
    blocks["failed_runs"] = failure_notes(groups_by_sweep) if groups_by_sweep else "*(no sweeps run)*"
    quick_runs = runs_by_scale["quick"]
    ratios = {p: cost_ratio_rows(quick_runs[p]) for p in ("anil_vs_maml", "omniglot_anil_vs_maml") if p in quick_runs}
    blocks["claim3_costs"] = "\n\n".join(
        f"{DATA[p]}:\n\n" + md_table(rows, list(rows[0])) for p, rows in ratios.items() if rows) or "*(not run)*"
    blocks["timings"] = md_table(timing_rows, ["preset", "scale", "runs", "jobs at once", "threads per job", "machine", "processor",
                                               "sweep wall-clock (min)",
                                               "train s per run (min-max)", "runs >= 30 s", "load before", "started"]) if timing_rows else "*(not run)*"
    # The targets are on the quick sweeps (a full run is as long as its curves need).
    quick_rows = [r for r in timing_rows if r["scale"] == "quick"]
    blocks["targets"] = "\n".join(sweep_target(r) for r in quick_rows if r["preset"].startswith("omniglot_")) or "*(no Omniglot sweep run)*"
    others = [r for r in quick_rows if not r["preset"].startswith("omniglot_")]
    linreg_short = [r for r in others if not r["_min_train"] >= MIN_TRAIN_SECONDS]
    blocks["targets"] += "\n" + ("- no linear-regression or sinusoid sweep run" if not others else
                                 f"- every run of {', '.join(r['preset'] for r in others)} trained >= 30 s" if not linreg_short else "\n".join(
        f"- `{r['preset']}`: shortest run trained {r['_min_train']:.0f} s (target >= {MIN_TRAIN_SECONDS}: missed)" for r in linreg_short))
    template = REPO / "docs" / "src" / "convergence.md"
    template = template.relative_to(REPO) if Path.cwd().resolve() == REPO else template  # a repo-relative name in the header
    out = render(template, docs / "convergence.md", blocks, script="convergence_report.py")
    print(f"wrote {out} and {len(list(figures.glob('*.png')))} figures")


def default_data():
    if os.environ.get("METARUN_DATA"):
        return os.environ["METARUN_DATA"]
    found = [p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()]
    return str(found[0] if found else REPO.parent / "shared" / "data")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--scale", default="quick", choices=SCALES, help="the scale of the sweeps to run (the doc shows each "
                        "preset at full once its full sweep is complete, else at quick)")
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "convergence"),
                        help="quick sweeps in <work-dir>/<preset>, full ones in <work-dir>/full/<preset>")
    parser.add_argument("--data", default=default_data(), help="METARUN_DATA for the Omniglot presets (default: $METARUN_DATA, "
                        "else the first ../shared/data above the repository)")
    parser.add_argument("--docs", default=str(REPO / "docs"))
    parser.add_argument("--skip-runs", action="store_true", help="reuse the sweeps already in --work-dir")
    parser.add_argument("--no-doc", action="store_true", help="run sweeps and reports only")
    parser.add_argument("--seeds", default=None, help="run only these seeds (e.g. 0,1) and add them to the sweep dir")
    parser.add_argument("--resume", action="store_true", help="continue the sweeps in --work-dir (metarun -m ... resume=true) "
                        "instead of starting them anew: killed jobs resume, finished ones are skipped; a sweep not started yet starts")
    parser.add_argument("--launcher", default=None, choices=["basic", "joblib"], help="override the presets' launcher (basic: one job at a time)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops a sweep as Ctrl-C does: its time so far recorded
    work, docs = Path(args.work_dir).resolve(), Path(args.docs).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The kept run data of each sweep the work dir lacks: every sweep when the page is written (it reads
    # them all), else only those this call runs or reports.
    needed = [(p, s) for p in PRESETS for s in SCALES] if not args.no_doc else [(p, args.scale) for p in args.presets]
    restored = set()
    for preset, scale in needed:
        kept, sweep_dir = archive_path(docs, preset, scale), sweep_path(work, preset, scale)
        if restore_sweep(kept, sweep_dir):  # says so on one line
            run_reports(sweep_dir)
            restored.add(sweep_dir)
    for preset in args.presets:
        sweep_dir = sweep_path(work, preset, args.scale)
        if not args.skip_runs:
            try:
                run_sweep(preset, args.scale, sweep_dir, args.data, args.seeds, args.launcher, args.resume)
            finally:  # an interrupted sweep too: what it ran is kept, and resumes on another checkout
                if sweep_dir.is_dir():
                    print(f"  {preset}: run data kept in {archive_sweep(sweep_dir, archive_path(docs, preset, args.scale))}", flush=True)
        if sweep_dir.is_dir() and (args.seeds is None or args.skip_runs) and not (args.skip_runs and sweep_dir in restored):
            run_reports(sweep_dir)  # not for a part of a sweep (it waits for the rest), nor again for one just restored
    if not args.no_doc:
        write_doc(work, docs)


def cli():
    """main(), with an interruption (Ctrl-C, or `kill`: see the SIGTERM handler) told in one line and
    exit 130 instead of a traceback: the sweep's run data and its time so far are already kept."""
    try:
        main()
    except KeyboardInterrupt:
        print("convergence_report: interrupted; the run data so far is kept (continue with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
