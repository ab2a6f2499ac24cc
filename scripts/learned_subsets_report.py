"""Run the learned-adapt-rule studies of issue 14 and write docs/learned_subsets.md.

    python scripts/learned_subsets_report.py                       # run both sweeps (quick scale), then the doc
    python scripts/learned_subsets_report.py --skip-runs           # only rebuild the doc from the sweeps on disk
    python scripts/learned_subsets_report.py --only linreg --no-doc  # run one study's sweep only
    python scripts/learned_subsets_report.py --skip-runs --docs /tmp/docs  # the page, figures and kept data elsewhere

Each sweep runs as a user would: `metarun -m +experiment=learned_subsets_<study> scale=<scale>
hydra.sweep.dir=<work-dir>/<study> hydra.launcher.n_jobs=1` (one job at a time, so it holds one
core). Omniglot reads the shared alphabets from `--data` (default
$METARUN_DATA). The speed section reads `<work-dir>/bench.json`, written by

    python scripts/bench_adapt_rules.py --threads 2 --json outputs/learned_subsets/bench.json   # the machine alone

Everything in the document that is a number comes from those runs: tables and figures from
metrics.jsonl / summary.json / the checkpoints, verdicts from metarun.stats on the seeds (linear
regression) or on the 600 test tasks, evaluated again here per task so that two arms are compared
task by task (paired: the same tasks for every arm; cached in <work-dir>/omniglot_per_task.json).
The prose is docs/src/learned_subsets.md.

The run data the page reads (metrics, summaries, configs, bench.json, the per-task cache and the
checkpoints the page loads) is kept beside it in docs/learned_subsets/runs.tar.xz after every build,
and unpacked into --work-dir when that is absent, so `--skip-runs` rebuilds the page on a fresh checkout.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from docgen import keep_runs, machine_text, md_table, render, restore_runs  # noqa: E402

from metarun import report as mr  # noqa: E402
from metarun import stats  # noqa: E402

STUDIES = {"linreg": "learned_subsets_linreg", "omniglot": "learned_subsets_omniglot"}
ARMS = ["maml", "anil", "meta_sgd", "meta_sgd_outer_lr", "sparse", "threshold", "sparse_closed"]
MASKS = ["sparse", "threshold", "sparse_closed"]
BODY, HEAD = "body.1.weight", "head.weight"  # model=linear's two tensors
PER_TASK = "omniglot_per_task.json"  # the Omniglot runs' per-task test accuracies, in the work dir
# The arms whose checkpoint.pt the page loads: truth_analysis (linear regression) and layer_values (Omniglot).
CHECKPOINT_ARMS = {"linreg": MASKS, "omniglot": ["sparse", "threshold", "meta_sgd"]}


# ------------------------------------------------------------------ running

def run_sweep(study, scale, sweep_dir, extra):
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    if study == "omniglot":  # its per-task cache is keyed by job: it would describe the deleted runs
        (sweep_dir.parent / PER_TASK).unlink(missing_ok=True)
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["metarun", "-m", f"+experiment={STUDIES[study]}", f"scale={scale}", f"hydra.sweep.dir={sweep_dir}",
           "hydra.launcher.n_jobs=1", *extra]
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(sweep_dir.parent / f"{study}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {study}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
    if rc:
        raise SystemExit(f"the {study} sweep failed (exit {rc}); see {sweep_dir.parent / f'{study}.log'}")


# ------------------------------------------------------------------ reading

def load_sweep(sweep_dir):
    runs = [mr.load_run(d) for d in mr.job_dirs(sweep_dir)]
    for r in runs:
        # a run launched alone with the preset's default scale groups with the sweep's runs of that scale
        r["overrides"].setdefault("scale", str(r["config"].get("scale", "quick")))
        r["arm"] = r["overrides"].get("arm", "maml")
        r["episode"] = r["overrides"].get("episode", "5w1s")
        r["seed"] = int(r["overrides"].get("seed", 0))
    bad = [r for r in runs if r["status"] != "completed"]
    return runs, bad


def last(run, column):
    m = run["metrics"]
    if column not in m or not m[column].notna().any():
        return math.nan
    return float(m[column].dropna().iloc[-1])


def by(runs, **keys):
    return [r for r in runs if all(r[k] == v for k, v in keys.items())]


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def ci(values, digits=3):
    mean, half, _ = stats.mean_ci(values)
    return stats.fmt_ci(mean, half, digits)


def diff_text(verdict, d, h, digits=2):
    return f"{d:+.{digits}g} ± {h:.{digits}g}" if math.isfinite(h) else f"{d:+.{digits}g}"


# ------------------------------------------------------------------ linear regression

def truth_analysis(run):
    """Where the learned features miss B*'s row space, and whether the open body columns cover it.

    Returns the residual direction's mass on the input coordinates whose body-mask column is mostly
    open, and that share of columns (the mass a random choice of that many columns would get)."""
    from metarun.tasks.linear_regression import LinearRegression

    cfg = run["config"]
    task = LinearRegression(input_dim=cfg.task.input_dim, features=cfg.task.features, truth_seed=cfg.task.truth_seed)
    state = torch.load(run["dir"] / "checkpoint.pt", weights_only=True)
    B = state["model"][BODY]
    basis = torch.linalg.qr(B.T)[0]
    residual = task.truth.T - basis @ (basis.T @ task.truth.T)  # the part of B*'s rows outside span(B)
    u, s, _ = torch.linalg.svd(residual)
    missing = u[:, 0] ** 2  # the worst-covered direction, per input coordinate (sums to 1)
    rule = state["algo"]["adapt_rule"]
    if cfg.algo.adapt_rule == "threshold":
        s_body = rule["values." + BODY.replace(".", "/")]
        mask = (B.abs() > torch.sigmoid(s_body)).float()
    else:
        mask = (rule["values." + BODY.replace(".", "/")] > 0).float()
    columns = mask.mean(0) > 0.5
    return {"missing_sine": float(s[0]), "mass_on_open": float(missing[columns].sum()), "open_share": float(columns.float().mean()),
            "mask": mask, "seed": run["seed"]}


def linreg_section(sweep_dir, figures_dir):
    runs, bad = load_sweep(sweep_dir)
    arms = [a for a in ARMS if by(runs, arm=a)]
    done = [r for r in runs if r["status"] == "completed"]
    finals = {a: {"dist": [last(r, "train/dist_to_opt") for r in by(done, arm=a)],
                  "loss": [r["summary"]["test/loss"] for r in by(done, arm=a)],
                  "body": [last(r, f"train/density/{BODY}") for r in by(done, arm=a)],
                  "head": [last(r, f"train/density/{HEAD}") for r in by(done, arm=a)],
                  "ratio": [last(r, f"train/lr_abs/{BODY}") / last(r, f"train/lr_abs/{HEAD}") for r in by(done, arm=a)],
                  "sec": [r["summary"]["time"] / r["summary"]["iteration"] for r in by(done, arm=a)]} for a in arms}
    anil = finals["anil"]["dist"]
    rows = []
    for a in arms:
        f = finals[a]
        row = {"arm": a, "seeds": len(f["dist"]), "final dist_to_opt": ci(f["dist"]), "meta-test loss": ci(f["loss"]),
               "ms / iteration": fmt(1000 * sum(f["sec"]) / len(f["sec"])) if f["sec"] else "-"}
        if a != "anil":
            v, d, h = stats.compare(f["dist"], anil, "greater")
            row["dist_to_opt - ANIL's"] = diff_text(v, d, h)
        else:
            row["dist_to_opt - ANIL's"] = "0"
        row["body share adapting"] = ci(f["body"]) if a in MASKS else ("1" if a != "anil" else "0")
        row["head share adapting"] = ci(f["head"]) if a in MASKS else "1"
        row["body / head mean abs rate"] = ci(f["ratio"]) if a.startswith("meta_sgd") else "-"
        rows.append(row)
    table = md_table(rows, ["arm", "seeds", "final dist_to_opt", "dist_to_opt - ANIL's", "meta-test loss", "body share adapting",
                            "head share adapting", "body / head mean abs rate", "ms / iteration"])

    verdicts = []
    for a in [x for x in MASKS if x in finals]:
        body_mean, body_half, _ = stats.mean_ci(finals[a]["body"])
        head_mean, head_half, _ = stats.mean_ci(finals[a]["head"])
        froze = body_mean + body_half < 0.05 and head_mean - head_half > 0.95
        kept = body_mean - body_half > 0.05
        word = "reproduced" if froze else ("not reproduced" if kept else "not resolved")
        verdicts.append(f"| {a}: head adapts, (almost) all of the body frozen (body share < 5%, head > 95%) | **{word}** | "
                        f"body {stats.fmt_ci(body_mean, body_half)}, head {stats.fmt_ci(head_mean, head_half)} |")
        v, d, h = stats.compare(finals[a]["dist"], anil, "greater")
        word = {"reproduced": "not reproduced: worse than ANIL", "contradicted": "reproduced: better than ANIL",
                "not resolved": "not resolved (the difference covers 0)"}[v]
        verdicts.append(f"| {a}: dist_to_opt no worse than ANIL's | **{word}** | {diff_text(v, d, h)} "
                        f"({ci(finals[a]['dist'])} vs {ci(anil)}) |")
    if "meta_sgd" in finals:
        mean, half, _ = stats.mean_ci(finals["meta_sgd"]["ratio"])
        v = "reproduced" if math.isfinite(half) and mean + half < 1 else ("contradicted" if math.isfinite(half) and mean - half > 1 else "not resolved")
        verdicts.append(f"| meta_sgd: body rates shrink relative to the head's (mean abs rate body / head < 1; 1 at the start) | "
                        f"**{v}** | {stats.fmt_ci(mean, half)} |")
        v, d, h = stats.compare(finals["meta_sgd"]["dist"], anil, "greater")
        word = {"reproduced": "not reproduced: worse than ANIL", "contradicted": "reproduced: better than ANIL",
                "not resolved": "not resolved (the difference covers 0)"}[v]
        verdicts.append(f"| meta_sgd: dist_to_opt no worse than ANIL's | **{word}** | {diff_text(v, d, h)} |")
    verdict_table = "| claim | verdict | evidence (mean ± 95% CI over seeds) |\n|---|---|---|\n" + "\n".join(verdicts)

    # Why: where the features miss the truth, and which body columns the masks keep open.
    why = []
    masks = {}
    for a in [x for x in MASKS if x in finals]:
        found = [truth_analysis(r) for r in by(done, arm=a)]
        masks[a] = found
        why.append({"arm": a, "seeds": len(found),
                    "sine of the worst-covered truth direction": ci([f["missing_sine"] for f in found]),
                    "share of input columns kept open": ci([f["open_share"] for f in found]),
                    "its mass on those columns": ci([f["mass_on_open"] for f in found])})
    why_table = md_table(why, ["arm", "seeds", "sine of the worst-covered truth direction", "share of input columns kept open",
                               "its mass on those columns"]) if why else "(no mask runs)"

    _, groups = mr.group_runs(runs, ["arm"])
    label = {lbl: g[0]["arm"] for lbl, g in groups.items()}
    figs = []
    curves = {lbl: g for lbl, g in groups.items()}
    figs.append(mr.plot_metric(curves, "train/dist_to_opt", figures_dir / "linreg_dist_to_opt.png",
                               "distance of the learned features to B*'s row space", 1, logy=True))
    figs.append(mr.plot_adapt_rule({lbl: g for lbl, g in groups.items() if label[lbl] in MASKS}, "train/density/",
                                   figures_dir / "linreg_adapted_share.png", "share that adapts"))
    figs.append(mr.plot_adapt_rule({lbl: g for lbl, g in groups.items() if label[lbl] == "meta_sgd"}, "train/lr_abs/",
                                   figures_dir / "linreg_meta_sgd_rates.png", "mean |learned inner lr|"))
    if masks:
        figs.append(plot_masks(masks, figures_dir / "linreg_masks.png"))
    notes = [f"- job {r['job']} ({r['arm']}, seed {r['seed']}): **{r['status']}** {r['error']}" for r in bad]
    cfg = runs[0]["config"]
    seeds = sorted({r["seed"] for r in runs})
    missing = [a for a in ARMS if a not in arms]
    n_seeds = len(str(cfg.scales[cfg.scale].seeds).split(","))
    walls = [r["summary"]["wall_time"] for r in done]
    partial = (f"; **not run** (the compute budget of this branch): arms {', '.join(missing)}, and seeds beyond "
               f"{', '.join(map(str, seeds))} of the preset's {cfg.scales[cfg.scale].seeds}: the full quick-scale sweep is "
               "`python scripts/learned_subsets_report.py --only linreg --no-doc` "
               f"(measured here: {sum(walls) / len(walls):.0f} s of wall time per run on one thread; "
               f"{len(ARMS) * n_seeds} runs)"
               if missing or len(seeds) < n_seeds else "")
    return {
        "linreg_protocol": (f"{len(runs)} runs: arms {', '.join(arms)} x seeds {', '.join(map(str, seeds))}; "
                            f"{int(cfg.iterations)} meta-iterations, meta-batch {cfg.meta_batch_size}, N = {cfg.algo.inner_steps} "
                            f"inner steps of alpha = {cfg.algo.inner_lr} with L2 {cfg.algo.inner_l2}, Adam {cfg.optim.lr}; "
                            f"meta-test on {cfg.eval_tasks} fixed tasks after N steps; one thread per run{partial}"),
        "linreg_table": table + ("\n\n" + "\n".join(notes) if notes else ""),
        "linreg_verdicts": verdict_table,
        "linreg_why": why_table,
        "linreg_figures": "\n\n".join(f"![{p.stem}](learned_subsets/{p.name})" for p in figs if p is not None),
    }


def plot_masks(masks, path):
    """The learned body masks (features x input coordinates), one row per rule, one column per seed."""
    arms = list(masks)
    seeds = max(len(v) for v in masks.values())
    fig, axes = plt.subplots(len(arms), seeds, figsize=(2.2 * seeds, 1.2 * len(arms) + 0.6), dpi=90, squeeze=False)
    for i, a in enumerate(arms):
        for j in range(seeds):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(masks[a]):
                ax.axis("off")
                continue
            f = masks[a][j]
            ax.imshow(f["mask"].numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"{a}, seed {f['seed']}: {f['mass_on_open']:.0%} on open", fontsize=6)
    fig.suptitle("learned body masks (black = adapts), rows: features, columns: input coordinates;\n"
                 "title: mass of the worst-covered truth direction on the mostly-open columns", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ Omniglot

LAYERS = [("conv 1", "body.0.0."), ("BN 1", "body.0.1."), ("conv 2", "body.1.0."), ("BN 2", "body.1.1."),
          ("conv 3", "body.2.0."), ("BN 3", "body.2.1."), ("conv 4", "body.3.0."), ("BN 4", "body.3.1."), ("head", "head.")]


def cache_key(run_dir):
    """A run's key in the per-task cache: "<sweep>/<job>", so that the cache holds wherever the work
    dir is (restored from the kept data, say); older caches keyed by absolute paths map to it too."""
    return "/".join(Path(run_dir).parts[-2:])


def per_task(run, cache):
    """Per-task test accuracy after 0..eval_steps steps of the run's tested checkpoint (cached)."""
    key = cache_key(run["dir"])
    if key not in cache:
        from metarun import checkpoint
        from metarun.evaluate import evaluate
        from metarun.learner import load_algo_state
        from metarun.train import build

        cfg = OmegaConf.load(run["dir"] / "config.yaml")
        cfg.device = "cpu"
        with torch.random.fork_rng(devices=[]):
            task, model, _, algo = build(cfg)
        state = checkpoint.load(run["dir"] / run["summary"].get("tested_checkpoint", "checkpoint.pt"))
        model.load_state_dict(state["model"])
        load_algo_state(algo, state, [])
        acc = evaluate(algo, task, "test", cfg.eval_tasks, cfg.eval_steps, cfg.eval_seed, cfg.eval_chunk)["accuracy"]
        # test/accuracy is after the run's test_steps (chosen on validation); its per-step figures are logged too.
        key_reported = f"test/accuracy_step{cfg.eval_steps}"
        reported = run["summary"].get(key_reported, run["summary"]["test/accuracy"])
        if abs(acc[-1].mean().item() - reported) > 1e-6:
            raise SystemExit(f"{run['dir']}: re-evaluated accuracy {acc[-1].mean().item()} != reported {key_reported} {reported}")
        cache[key] = acc.tolist()
    return torch.tensor(cache[key])


def layer_values(run, prefix):
    """{layer: size-weighted mean over the layer's tensors of the logged `prefix<name>` values}."""
    state = torch.load(run["dir"] / "checkpoint.pt", weights_only=True)["model"]
    out = {}
    for layer, start in LAYERS:
        names = [n for n in state if n.startswith(start)]
        values = [(last(run, f"{prefix}{n}"), state[n].numel()) for n in names]
        values = [(v, w) for v, w in values if math.isfinite(v)]
        if values:
            out[layer] = sum(v * w for v, w in values) / sum(w for _, w in values)
    return out


OMNIGLOT_COMMAND = ("metarun -m +experiment=learned_subsets_omniglot threads=1 progress=false hydra.launcher.n_jobs=1 "
                    "task.root=$METARUN_DATA hydra.sweep.dir=outputs/learned_subsets/omniglot")


def omniglot_not_run(sweep_dir):
    """The blocks of section 2 when its sweep is not on disk: say so, and how to run it."""
    why = (f"none: **the Omniglot sweep has not been run** (no {sweep_dir.name}/ under the work dir), so this section "
           f"has no numbers and no verdicts. Run it with `{OMNIGLOT_COMMAND}` (10 runs: 5 arms x 5w1s, 20w1s, seed 0), then "
           "`python scripts/learned_subsets_report.py --skip-runs`")
    return {"omniglot_protocol": why, "omniglot_table": "(not run)", "omniglot_verdicts": "(not run)", "omniglot_shares": "(not run)",
            "omniglot_rates": "(not run)", "omniglot_early_layers": "(not run: the claim is not checked here)",
            "omniglot_figures": "(not run)"}


def omniglot_section(sweep_dir, figures_dir, cache_path):
    if not sweep_dir.is_dir():
        return omniglot_not_run(sweep_dir)
    runs, bad = load_sweep(sweep_dir)
    cached_text = cache_path.read_text() if cache_path.is_file() else None
    cache = {cache_key(k): v for k, v in json.loads(cached_text).items()} if cached_text else {}
    done = [r for r in runs if r["status"] == "completed"]
    episodes = [e for e in ("5w1s", "20w1s") if by(done, episode=e)]
    arms = [a for a in ARMS if by(done, arm=a)]
    rows, verdicts, shares, rates = [], [], [], []
    for e in episodes:
        maml = by(done, episode=e, arm="maml")
        maml_tasks = torch.cat([per_task(r, cache) for r in maml], 1) if maml else None
        maml_sec = [r["summary"]["time"] / r["summary"]["iteration"] for r in maml]
        for a in arms:
            group = by(done, episode=e, arm=a)
            if not group:
                continue
            tasks = torch.cat([per_task(r, cache) for r in group], 1)  # (steps + 1, tasks x seeds)
            sec = [r["summary"]["time"] / r["summary"]["iteration"] for r in group]
            cost = [sum(v for k, v in r["summary"].items() if k.startswith("oracle/") and k.endswith("_params")) / r["summary"]["iteration"]
                    for r in group]
            row = {"episode": e, "arm": a, "runs": len(group),
                   "acc 1 step": ci(100 * tasks[1]), "acc 3 steps": ci(100 * tasks[-1]),
                   "s / iteration": fmt(sum(sec) / len(sec)), "x MAML": fmt(sum(sec) / sum(maml_sec) * len(maml_sec) / len(sec)) if maml_sec else "-",
                   "oracle cost / iteration": f"{sum(cost) / len(cost):.3g}", "threads": group[0]["summary"].get("threads")}
            if a != "maml" and maml_tasks is not None and maml_tasks.shape == tasks.shape:
                for k, name in ((1, "1 step"), (tasks.shape[0] - 1, "3 steps")):
                    diff = 100 * (tasks[k] - maml_tasks[k])
                    mean, half, _ = stats.mean_ci(diff.tolist())
                    v = "higher" if mean - half > 0 else ("lower" if mean + half < 0 else "not resolved")
                    row[f"- MAML, {name}"] = f"{mean:+.2g} ± {half:.2g}"
                    if k == tasks.shape[0] - 1:
                        verdicts.append(f"| {e} | {a} | {mean:+.2g} ± {half:.2g} | {v} |")
            rows.append(row)
            if a in ("sparse", "threshold"):
                shares.append({"episode": e, "arm": a, **{k: fmt(v, 2) for k, v in mean_layers(group, "train/density/").items()},
                               "all": ci([last(r, "train/density") for r in group], 2)})
            if a == "meta_sgd":
                init = group[0]["config"].algo.inner_lr
                rates.append({"episode": e, "arm": a, **{k: fmt(v / init, 2) for k, v in mean_layers(group, "train/lr_abs/").items()}})
    if json.dumps(cache) != cached_text:  # unchanged, it keeps its mtime and so the kept archive its bytes
        cache_path.write_text(json.dumps(cache))
    layer_names = [n for n, _ in LAYERS]
    table = md_table(rows, ["episode", "arm", "runs", "acc 1 step", "acc 3 steps", "- MAML, 1 step", "- MAML, 3 steps",
                            "s / iteration", "x MAML", "oracle cost / iteration", "threads"])
    share_table = md_table(shares, ["episode", "arm", *layer_names, "all"]) if shares else "(no mask runs)"
    rate_table = md_table(rates, ["episode", "arm", *layer_names]) if rates else "(no Meta-SGD runs)"
    verdict_table = ("| episode | arm | accuracy - MAML's after 3 steps (points, paired over the test tasks) | verdict |\n|---|---|---|---|\n"
                     + "\n".join(verdicts))
    claim = early_layers_claim(shares)
    _, groups = mr.group_runs(runs, ["arm", "episode"])
    figs = [mr.plot_adapt_rule({lbl: g for lbl, g in groups.items() if g[0]["arm"] in ("sparse", "threshold")}, "train/density/",
                               figures_dir / "omniglot_adapted_share.png", "share that adapts"),
            mr.plot_adapt_rule({lbl: g for lbl, g in groups.items() if g[0]["arm"] == "meta_sgd"}, "train/lr_abs/",
                               figures_dir / "omniglot_meta_sgd_rates.png", "mean |learned inner lr|"),
            plot_layer_shares(shares, rates, figures_dir / "omniglot_layers.png")]
    notes = [f"- job {r['job']} ({r['arm']}, {r['episode']}, seed {r['seed']}): **{r['status']}** {r['error']}" for r in bad]
    cfg = runs[0]["config"]
    iters = sorted({int(r["summary"].get("iteration", 0)) for r in done})
    return {
        "omniglot_protocol": (f"{len(runs)} runs: arms {', '.join(arms)} x episodes {', '.join(episodes)} x seeds "
                              f"{', '.join(sorted({str(r['seed']) for r in runs}))}; {', '.join(map(str, iters))} meta-iterations; "
                              f"inner lr {cfg.algo.inner_lr}, {cfg.algo.inner_steps} inner step in training, evaluation after "
                              f"1..{cfg.eval_steps} steps on {cfg.eval_tasks} fixed test tasks; Adam {cfg.optim.lr}; one thread per run"),
        "omniglot_table": table + ("\n\n" + "\n".join(notes) if notes else ""),
        "omniglot_verdicts": verdict_table,
        "omniglot_shares": share_table,
        "omniglot_rates": rate_table,
        "omniglot_early_layers": claim,
        "omniglot_figures": "\n\n".join(f"![{p.stem}](learned_subsets/{p.name})" for p in figs if p is not None),
    }


def mean_layers(group, prefix):
    per_run = [layer_values(r, prefix) for r in group]
    return {k: sum(p[k] for p in per_run) / len(per_run) for k in per_run[0]}


def early_layers_claim(shares):
    lines = []
    for s in shares:
        first, later = float(s["conv 1"]), max(float(s[k]) for k in ("conv 3", "conv 4"))
        holds = first < later and first < 0.5
        lines.append(f"- {s['episode']} {s['arm']}: conv 1 keeps {first:.0%} of its weights adapting, conv 3/4 up to {later:.0%}, "
                     f"the head {float(s['head']):.0%}: the claim **{'holds' if holds else 'does not hold'}** in this run.")
    return "\n".join(lines) if lines else "(no mask runs)"


def plot_layer_shares(shares, rates, path):
    if not shares and not rates:
        return None
    layers = [n for n, _ in LAYERS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), dpi=90)
    for ax, rows, ylabel in ((axes[0], shares, "share of the layer that adapts"), (axes[1], rates, "mean |alpha| / initial alpha")):
        for i, r in enumerate(rows):
            ax.plot(range(len(layers)), [float(r[k]) for k in layers], marker="o", label=f"{r['arm']} {r['episode']}")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, fontsize=7, rotation=30)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if rows is shares:
            ax.set_ylim(-0.02, 1.02)
        if rows:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle("what the learned rules let each conv4 layer adapt at the end of meta-training", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ speed

def bench_machine(bench):
    """The machine the benchmark had, as bench_adapt_rules.py measured it (docgen.machine_text)."""
    if bench.get("machine_share") is None:
        return "the machine it ran on not recorded"
    had = "the machine alone" if machine_text(bench) == "alone" else "the machine shared with other work"
    return (f"{had} (it had {bench['machine_share']:.0%} of the machine's busy CPU seconds; load average "
            f"{bench['load_start']:.1f} at the start, {bench['load_end']:.1f} at the end; {bench['cpu']})")


def speed_section(bench_path):
    if not bench_path.is_file():
        return {"speed": f"(no benchmark file {bench_path.name} in the work dir: run scripts/bench_adapt_rules.py with --json)"}
    b = json.loads(bench_path.read_text())
    rows = [{"adapt_rule": r, "median s / iteration": f"{b['median'][r]:.3f}", "x MAML": f"{b['ratio'][r]:.3f}",
             "min - max s": f"{min(b['seconds'][r]):.3f} - {max(b['seconds'][r]):.3f}",
             "target": {"meta_sgd": "<= 1.10", "sparse": "<= 1.15", "threshold": "<= 1.15"}.get(r, "-"),
             "met": {True: "yes", False: "**no**"}.get(b["met"].get(r), "-")} for r in b["median"]]
    head = (f"conv4, {b['ways']}-way 1-shot, meta-batch {b['meta_batch']}, {b['steps']} inner step, second order; "
            f"{b['threads']} threads, {bench_machine(b)}; median of {b['repeats']} steps per rule "
            f"after one warm-up, the rules taking turns. {b.get('note', '')}")
    return {"speed": head + "\n\n" + md_table(rows, ["adapt_rule", "median s / iteration", "min - max s", "x MAML", "target", "met"])}


# ------------------------------------------------------------------ run data kept in the repository

def kept_path(docs):
    """Where the page's run data is kept: beside its figures, <docs>/learned_subsets/runs.tar.xz."""
    return docs / "learned_subsets" / "runs.tar.xz"


def has_runs(work, studies=STUDIES):
    return any(any((work / study).glob("*/.hydra/overrides.yaml")) for study in studies)


def loaded_checkpoints(work):
    """{(study, job, "checkpoint.pt")} of the completed runs whose checkpoint the page loads."""
    loaded = set()
    for study, arms in CHECKPOINT_ARMS.items():
        if has_runs(work, [study]):
            runs, _ = load_sweep(work / study)
            loaded |= {(study, r["job"], "checkpoint.pt") for r in runs if r["status"] == "completed" and r["arm"] in arms}
    return loaded


def keep(work, kept):
    """Keep what the page reads (docgen.keep_runs): both sweeps' metrics, summaries, configs, .hydra and
    multirun.yaml, bench.json, the per-task cache, and the checkpoints in `loaded_checkpoints`. The
    other checkpoints are left out: per_task loads them only for runs missing from the kept cache, and
    the cache holds every run the page shows. Left out too: logs, W&B dirs, metarun-report's report/
    (the page does not read it) and anything else at the top of the work dir."""
    loaded = loaded_checkpoints(work)
    read_at_top = {*STUDIES, "bench.json", PER_TASK}

    def drop(parts):
        return ((len(parts) == 1 and parts[0] not in read_at_top) or "wandb" in parts or parts[-1].endswith(".log")
                or parts[1:] == ("report",) or (parts[-1].endswith(".pt") and parts not in loaded))
    return keep_runs(work, kept, drop=drop)


# ------------------------------------------------------------------ main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="quick", choices=["quick", "full"])
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "learned_subsets"))
    parser.add_argument("--data", default=os.environ.get("METARUN_DATA"), help="root of omniglot-py (default $METARUN_DATA)")
    parser.add_argument("--only", choices=list(STUDIES), default=None, help="run only this study's sweep")
    parser.add_argument("--skip-runs", action="store_true", help="use the sweeps already in --work-dir")
    parser.add_argument("--no-doc", action="store_true", help="only run the sweeps")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="write learned_subsets.md, its figures and its kept run data "
                        "(learned_subsets/runs.tar.xz) here")
    args = parser.parse_args()
    work, docs = Path(args.work_dir), Path(args.docs)
    kept, page = kept_path(docs), docs / "learned_subsets.md"
    # Restored before running too: a run redoes only the sweeps it runs (run_sweep deletes their dirs and
    # the Omniglot per-task cache), and the page still reads the rest (the other study with --only,
    # bench.json). Later it never would be: any run creates the work dir.
    restore_runs(kept, work, script="learned_subsets_report")
    if not args.skip_runs:
        for study in ([args.only] if args.only else STUDIES):
            extra = [f"task.root={args.data}"] if study == "omniglot" and args.data else []
            run_sweep(study, args.scale, work / study, extra)
    if args.no_doc:
        return
    if not has_runs(work):  # the sections would fail or say "not run", replacing the published page
        print(f"learned_subsets_report: no runs in {work} and no kept run data at {kept}, so {page} is left as it is; "
              "run the sweeps first (`python scripts/learned_subsets_report.py`)", file=sys.stderr)
        raise SystemExit(2)
    figures = docs / "learned_subsets"
    figures.mkdir(parents=True, exist_ok=True)
    blocks = {"scale": args.scale}
    blocks.update(linreg_section(work / "linreg", figures))
    blocks.update(omniglot_section(work / "omniglot", figures, work / PER_TASK))
    blocks.update(speed_section(work / "bench.json"))
    out = render(REPO / "docs" / "src" / "learned_subsets.md", page, blocks, script="learned_subsets_report.py")
    print(f"wrote {out}; its run data kept in {keep(work, kept)}")


if __name__ == "__main__":
    main()
