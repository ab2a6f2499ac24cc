"""docs/kaleidoscope.md from the Kaleidoscope runs (template docs/src/kaleidoscope.md).

    python scripts/kaleidoscope_report.py [--root outputs/kaleidoscope] [--out docs/kaleidoscope.md]
    python scripts/kaleidoscope_report.py --time-quick   # first run the quick World sweep and time it (about 25 min)

Reads, under --root (each part is optional; a missing one is reported as not run yet, and with none at all the
page is not written):
  world/, spread/      metarun -m +experiment=kaleidoscope_{world,spread} scale=full sweeps (3 arms x seeds)
  peer_metarun/        FuPS QMIX with VMAS's actions on simple_spread (the peer check's metarun side)
  benchmarl/seed*.json scripts/benchmarl_qmix.py (the peer check's BenchMARL side)
  bench.json           scripts/bench_kaleidoscope.py
  halfcheetah/         metarun +experiment=kaleidoscope_halfcheetah scale=full (a single run dir)
  world_quick/         the quick -m preset as --time-quick ran it, with its wall-clock in timing.json
and writes the figures under docs/kaleidoscope/ and the tables, verdicts and measured numbers into the
template's placeholders. Every CI is a 95% t interval over seeds (metarun.stats), every verdict the
Welch interval of the difference of means.
The run data the page reads is kept beside it, in <out's folder>/kaleidoscope/runs.tar.xz (after every
build), and unpacked into --root when that folder is missing, so a fresh checkout rebuilds the page.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docgen import keep_runs, machine_text, md_table, render, restore_runs, timed_run  # noqa: E402

from metarun.report import ReportError, job_dirs, load_run  # noqa: E402
from metarun.stats import compare, fmt_ci, mean_ci  # noqa: E402

ARMS = {"kaleidoscope": "Kaleidoscope", "full": "FuPS", "none": "NoPS"}
COLORS = {"kaleidoscope": "tab:red", "full": "tab:blue", "none": "tab:green", "benchmarl": "tab:purple"}
SCENARIOS = {"world": "World (simple_world_comm, 4 adversaries vs 2 scripted prey)", "spread": "simple_spread (3 agents)"}
PAPER_STEPS = 3_050_000
SEEDS = (0, 1, 2)  # the presets' sweep
CLAIMS = []  # (scenario, baseline, measure, verdict) of every comparison made


def claim_block():
    """The paper's claim over all comparisons made, counted by verdict."""
    if not CLAIMS:
        return "*No comparison yet.*"
    lines = []
    for measure in ("final test return", "mean evaluation return over training"):
        found = [c for c in CLAIMS if c[2] == measure]
        counts = {v: sum(c[3] == v for c in found) for v in ("reproduced", "not resolved", "contradicted")}
        detail = "; ".join(f"{c[0]} vs {c[1]}: {c[3]}" for c in found)
        lines.append(f"- On the {measure}, of {len(found)} comparisons: {counts['reproduced']} reproduced, "
                     f"{counts['not resolved']} not resolved, {counts['contradicted']} contradicted ({detail}).")
    return "\n".join(lines)


def sweep_dirs(sweep):
    """The run dirs of a sweep dir; none when it is missing or holds no run yet."""
    try:
        return job_dirs(sweep)
    except ReportError:
        return []


def runs_of(sweep):
    """Completed runs of a sweep dir, each with its arm and seed."""
    out = []
    for d in sweep_dirs(sweep):
        r = load_run(d)
        if r["status"] != "completed" or r["config"] is None:
            continue
        r["arm"], r["seed"] = r["config"].algo.share, r["config"].seed
        out.append(r)
    return out


def coverage_block(root, runs_by_scenario):
    """What each sweep holds against its protocol (3 arms x 3 seeds), and the exact commands for the rest."""
    lines, complete = [], True
    for name, runs in runs_by_scenario.items():
        sweep = root / name
        done = {(r["arm"], r["seed"]) for r in runs}
        want = [(arm, seed) for arm in ARMS for seed in SEEDS]
        complete &= set(want) <= done
        have = [f"{ARMS[a]} {sum((a, s) in done for s in SEEDS)}/{len(SEEDS)}" for a in ARMS]
        lines.append(f"- {SCENARIOS[name]}: {len(done & set(want))} of {len(want)} runs completed ({', '.join(have)} seeds).")
        partial = []
        for d in sweep_dirs(sweep):
            r = load_run(d)
            if r["status"] != "completed" and r["config"] is not None:
                steps = r["metrics"]["train/env_steps"].max() if "train/env_steps" in r["metrics"] else 0
                partial.append((r["config"].algo.share, r["config"].seed, d, steps))
        started = {(a, s) for a, s, _, _ in partial}
        for arm, seed, d, steps in partial:
            lines.append(f"  - {ARMS[arm]} seed {seed} stopped at {steps:,.0f} env steps (not reported); finish it: "
                         f"`metarun resume=true run_dir={d}`")
        rest = [(a, s) for a, s in want if (a, s) not in done and (a, s) not in started]
        if rest:
            free = max([int(d.name) for d in sweep.iterdir() if d.name.isdigit()], default=-1) + 1 if sweep.is_dir() else 0
            for k, (arm, seed) in enumerate(rest):
                lines.append(f"  - {ARMS[arm]} seed {seed} not run: `metarun +experiment=kaleidoscope_{name} scale=full "
                             f"algo.share={arm} seed={seed} hydra.run.dir={sweep}/{free + k}`")
    intro = ("All of it ran:" if complete else
             "The CPU time given to this work did not cover all of it; what completed, what stopped part-way "
             "(only completed runs enter the figures and tables), and the exact commands for the rest:")
    return {"coverage": "\n".join(lines), "coverage_intro": intro,
            "finished": "every planned run finished" if complete else "not every planned run finished"}


def eval_curve(run):
    m = run["metrics"]
    rows = m[m["eval/return"].notna()].copy()
    rows["env_steps"] = rows["train/env_steps"].fillna(0) if "train/env_steps" in rows else 0
    return rows[["env_steps", "eval/return"]]


def band(ax, curves, color, label):
    """Mean and 95% CI over seeds of curves (list of Series indexed by env steps)."""
    # Seeds may log at different env steps (a resumed run, another logging grid): align on the union, in
    # order, each seed interpolated linearly inside its own range so every point has all the seeds it spans.
    frame = pd.concat([c[~c.index.duplicated(keep="last")] for c in curves], axis=1).sort_index()
    frame = frame.interpolate(method="index", limit_area="inside")
    stats = [mean_ci(row.dropna()) for _, row in frame.iterrows()]
    mean = [s[0] for s in stats]
    half = [0 if math.isnan(s[1]) else s[1] for s in stats]
    x = frame.index.to_numpy() / 1000
    ax.plot(x, mean, color=color, label=f"{label} (n={frame.shape[1]})")
    ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], color=color, alpha=0.2)


def by_arm(runs):
    arms = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    return {a: sorted(arms[a], key=lambda r: r["seed"]) for a in ARMS if a in arms}


def scripted_spread_return(episodes=100, seed=0):
    """A yardstick for simple_spread: each agent heads for its landmark in the assignment of least total
    distance (every agent can compute it from its own observation), damping its velocity. Returns the
    team return's mean and 95% CI half-width over `episodes` episodes."""
    import itertools

    from metarun.tasks.particle_world import _MOVE_DIRECTIONS, ParticleEnv, ParticleWorld

    task = ParticleWorld("simple_spread")
    env = ParticleEnv(task, episodes)
    obs = env.reset(torch.Generator().manual_seed(seed))
    n = task.n_agents
    perms = torch.tensor(list(itertools.permutations(range(n))))
    total = torch.zeros(episodes)
    for _ in range(task.episode_limit):
        vel, rel = obs[..., 0:2], obs[..., 4:4 + 2 * n].reshape(episodes, n, n, 2)  # (env, agent, landmark, xy)
        dist = rel.norm(dim=-1)
        best = perms[torch.stack([dist[:, torch.arange(n), p].sum(-1) for p in perms], 1).argmin(1)]
        target = rel[torch.arange(episodes)[:, None], torch.arange(n)[None], best]
        score = (target - 0.3 * vel) @ _MOVE_DIRECTIONS.T
        score[..., 0] = 0.02  # stay put once there
        obs, reward = env.step(score.argmax(-1))
        total += reward
    mean, half, _ = mean_ci(total.tolist())
    return mean, half


def scenario_blocks(name, runs, figures, root):
    arms = by_arm(runs)
    if not arms:
        cmd = f"metarun -m +experiment=kaleidoscope_{name} scale=full hydra.sweep.dir={root}/{name}"
        return {f"{name}_figure": f"*Not run yet:* `{cmd}` (what exists: see *What was run*)", f"{name}_table": "",
                f"{name}_verdicts": "", f"{name}_setup": "not run yet (see *What was run*)"}
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for arm, rs in arms.items():
        band(ax, [eval_curve(r).set_index("env_steps")["eval/return"] for r in rs], COLORS[arm], ARMS[arm])
    reference = scripted_spread_return() if name == "spread" else None
    if reference is not None:
        ax.axhline(reference[0], color="gray", linestyle="--", label="scripted assignment policy")
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel("evaluation return (100 greedy episodes)")
    ax.set_title(SCENARIOS[name])
    ax.legend()
    ax.grid(alpha=0.3)
    path = figures / f"{name}_return.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    rows, finals, aucs = [], {}, {}
    for arm, rs in arms.items():
        finals[arm] = [r["summary"]["test/return"] for r in rs]
        aucs[arm] = [eval_curve(r)["eval/return"].mean() for r in rs]
        minutes = [r["summary"]["time"] / 60 for r in rs]
        steps = rs[0]["metrics"]["train/env_steps"].max()
        rows.append({"arm": ARMS[arm], "seeds": ", ".join(str(r["seed"]) for r in rs), "env steps": f"{steps:,.0f}",
                     "final test return": fmt_ci(*mean_ci(finals[arm])[:2]),
                     "mean evaluation return over training": fmt_ci(*mean_ci(aucs[arm])[:2]),
                     "training minutes per run": fmt_ci(*mean_ci(minutes)[:2], digits=2)})
    table = md_table(rows, ["arm", "seeds", "env steps", "final test return", "mean evaluation return over training",
                            "training minutes per run"])
    if reference is not None:
        table += (f"\n\nA yardstick (dashed in the figure): a scripted policy that sends each agent to its landmark in the "
                  f"assignment of least total distance, which each agent can compute from its own observation, scores "
                  f"{fmt_ci(*reference)} over 100 episodes (`scripted_spread_return` in this script).")
    verdicts = []
    for other in ("full", "none"):
        if "kaleidoscope" not in arms or other not in arms:
            continue
        for what, data in (("final test return", finals), ("mean evaluation return over training", aucs)):
            v, d, h = compare(data["kaleidoscope"], data[other], "greater")
            CLAIMS.append((name, ARMS[other], what, v))
            verdicts.append(f"- Kaleidoscope > {ARMS[other]} on the {what}: difference {fmt_ci(d, h)} -> **{v}**")
    setup = rs[0]["config"]
    setup_line = (f"{len(runs)} runs; per run {setup.iterations} iterations x {setup.algo.episodes_per_iteration} episodes x "
                  f"{setup.task.episode_limit} steps = {setup.iterations * setup.algo.episodes_per_iteration * setup.task.episode_limit:,} "
                  f"env steps, evaluation every {setup.eval_every * setup.algo.episodes_per_iteration * setup.task.episode_limit:,} env steps "
                  f"on {setup.eval_tasks} greedy episodes, threads={setup.threads}")
    return {f"{name}_figure": f"![{name}](kaleidoscope/{path.name})", f"{name}_table": table,
            f"{name}_verdicts": "\n".join(verdicts) or "(needs all arms)", f"{name}_setup": setup_line}


def dead_share(run_dir):
    """Share of fc2..fc4's weights that every agent's mask prunes in the run's final parameters
    (what Kaleidoscope's resets would re-initialise, 10% of them per reset)."""
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    dead = total = 0
    for layer in ("fc2", "fc3", "fc4"):
        w, s = state[f"agent.{layer}.weight"], state[f"agent.{layer}.thresholds"]
        pruned = (w.abs()[None] <= torch.sigmoid(s)).all(0)
        dead, total = dead + int(pruned.sum()), total + pruned.numel()
    return dead / total


def mask_blocks(runs_by_scenario, figures):
    """Pairwise mask distance over training and the share of each layer each agent keeps (Kaleidoscope runs)."""
    lines, keep_tables, pair_tables = [], [], []
    fig, (ax, ax_pairs) = plt.subplots(1, 2, figsize=(11, 3.8))
    any_runs = False
    for name, runs in runs_by_scenario.items():
        kalei = [r for r in runs if r["arm"] == "kaleidoscope"]
        if not kalei:
            continue
        any_runs = True
        curves = []
        for r in kalei:
            m = r["metrics"].dropna(subset=["train/mask_distance"])
            curves.append(m.set_index("train/env_steps")["train/mask_distance"])
        band(ax, curves, "tab:red" if name == "world" else "tab:orange", SCENARIOS[name].split(" (")[0])
        last = [r["metrics"].dropna(subset=["train/mask_distance"]).iloc[-1] for r in kalei]
        keys = [k for k in last[0].index if k.startswith("train/keep_agent")]
        agents = sorted({k.split("_")[1] for k in keys})
        layers = sorted({k.split("_")[2] for k in keys})
        rows = []
        for a in agents:
            row = {"agent": a.replace("agent", "agent ") + (" (leader)" if name == "world" and a == "agent0" else "")}
            for lay in layers:
                row[lay] = fmt_ci(*mean_ci([float(x[f"train/keep_{a}_{lay}"]) for x in last])[:2])
            rows.append(row)
        keep_tables.append(f"**{SCENARIOS[name]}** (share of the layer's weights the agent's mask keeps, at the end):\n\n"
                           + md_table(rows, ["agent", *layers]))
        pairs = sorted(k for k in last[0].index if k.startswith("train/mask_distance_"))
        if name == "world":  # each pair of agents over training (agent 0 is the leader)
            for k, color in zip(pairs, plt.cm.tab10.colors):
                i, j = k.split("_")[-2:]
                band(ax_pairs, [r["metrics"].dropna(subset=[k]).set_index("train/env_steps")[k] for r in kalei], color,
                     f"{'leader' if i == '0' else 'agent ' + i} - agent {j}")
        prow = [{"agents": k.split("_")[-2] + "-" + k.split("_")[-1], "mask distance": fmt_ci(*mean_ci([float(x[k]) for x in last])[:2])}
                for k in pairs]
        pair_tables.append(f"**{SCENARIOS[name]}** (share of the masked weights two agents' masks disagree on, at the end):\n\n"
                           + md_table(prow, ["agents", "mask distance"]))
        dead = [dead_share(r["dir"]) for r in kalei]
        steps = kalei[0]["metrics"]["train/env_steps"].max()
        interval = kalei[0]["config"].algo.reset_interval
        resets = "no reset was due" if steps <= 2 * interval else "resets were due"
        lines.append(f"- {SCENARIOS[name]}: {fmt_ci(*mean_ci([100 * d for d in dead])[:2])}% of fc2..fc4's weights are pruned "
                     f"by every agent's mask at the end; in {steps:,.0f} env steps with resets every {interval:,} (never in "
                     f"the last interval) {resets}.")
    if not any_runs:
        plt.close(fig)
        return {"mask_figure": "*No Kaleidoscope runs yet.*", "mask_keep": "", "mask_pairs": "", "mask_dead": ""}
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel("mean pairwise mask distance")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_pairs.set_xlabel("env steps (thousands)")
    ax_pairs.set_ylabel("mask distance, World")
    ax_pairs.legend(fontsize=7)
    ax_pairs.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures / "mask_distance.png", dpi=110)
    plt.close(fig)
    return {"mask_figure": "![mask distance](kaleidoscope/mask_distance.png)", "mask_keep": "\n\n".join(keep_tables),
            "mask_pairs": "\n\n".join(pair_tables), "mask_dead": "\n".join(lines)}


def peer_blocks(root, figures):
    ours = [r for r in runs_of(root / "peer_metarun") if r["arm"] == "full"]
    theirs = [json.loads(p.read_text()) for p in sorted((root / "benchmarl").glob("seed*.json"))]
    if not ours or not theirs:
        return {"peer_table": "*Not run yet:* see the commands below.", "peer_verdict": "", "peer_figure": ""}
    fig, ax = plt.subplots(figsize=(6.4, 4))
    band(ax, [eval_curve(r).set_index("env_steps")["eval/return"] for r in ours], COLORS["full"], "metarun FuPS QMIX")
    curves = [pd.Series([sum(e["returns"]) / len(e["returns"]) for e in t["evaluations"]],
                        index=[e["frames"] for e in t["evaluations"]]) for t in theirs]
    band(ax, curves, COLORS["benchmarl"], "BenchMARL QMIX")
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel("evaluation team return (100 greedy episodes)")
    ax.set_title("simple_spread, VMAS actions")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures / "peer_check.png", dpi=110)
    plt.close(fig)
    a = [r["summary"]["test/return"] for r in ours]
    b = [sum(t["evaluations"][-1]["returns"]) / 100 for t in theirs]
    ma, ha, _ = mean_ci(a)
    mb, hb, _ = mean_ci(b)
    rate_a = [r["metrics"]["train/env_steps"].max() / r["summary"]["time"] for r in ours]
    rate_b = [t["frames_per_second"] for t in theirs]
    rows = [{"": "metarun FuPS QMIX", "seeds": len(a), "env steps": f"{ours[0]['metrics']['train/env_steps'].max():,.0f}",
             "final return": fmt_ci(ma, ha), "env steps/s (training, 1 thread)": fmt_ci(*mean_ci(rate_a)[:2])},
            {"": "BenchMARL QMIX", "seeds": len(b), "env steps": f"{theirs[0]['frames']:,}",
             "final return": fmt_ci(mb, hb), "env steps/s (training, 1 thread)": fmt_ci(*mean_ci(rate_b)[:2])}]
    inside = (abs(ma - mb) <= ha) and (abs(ma - mb) <= hb)
    v, d, h = compare(a, b, "greater")
    verdict = (f"Each final mean lies inside the other's 95% CI: **{'yes' if inside else 'no'}** "
               f"(metarun - BenchMARL = {fmt_ci(d, h)}, Welch 95% CI).")
    return {"peer_table": md_table(rows, ["", "seeds", "env steps", "final return", "env steps/s (training, 1 thread)"]),
            "peer_verdict": verdict, "peer_figure": "![peer check](kaleidoscope/peer_check.png)"}


def speed_blocks(root):
    path = root / "bench.json"
    if not path.is_file():
        return {"speed": "*Not run yet:* `python scripts/bench_kaleidoscope.py`"}
    b = json.loads(path.read_text())
    rows = [{"measure": f"env steps/s, {k.split('/')[0]}, {k.split('/')[1]} environments", "value": f"{v:,.0f}"} for k, v in b["env"].items()]
    for share, u in b["updates"].items():
        rows.append({"measure": f"QMIX updates/s, World, {ARMS[share]} (32 episodes per update)", "value": f"{u['updates_per_s']:.1f} ({u['update_ms']:.1f} ms)"})
        rows.append({"measure": f"training env steps/s, World, {ARMS[share]} (acting + one update per episode)", "value": f"{u['training_env_steps_per_s']:,.0f}"})
    f = b["forward"]
    rows.append({"measure": "agent forward, one update's batch: Kaleidoscope / FuPS (target <= 1.5x)",
                 "value": f"{f['ratio_forward']:.2f}x ({f['kaleidoscope']['forward_ms']:.2f} / {f['full']['forward_ms']:.2f} ms)"})
    rows.append({"measure": "agent forward + backward: Kaleidoscope / FuPS",
                 "value": f"{f['ratio_forward_backward']:.2f}x ({f['kaleidoscope']['forward_backward_ms']:.2f} / {f['full']['forward_backward_ms']:.2f} ms)"})
    note = b.get("note", "")
    return {"speed": md_table(rows, ["measure", "value"]) + (f"\n\n{note}" if note else "")}


def cost_blocks(runs_by_scenario):
    """Measured cost of the published runs and of the paper's protocol at the same per-step cost."""
    rows, total = [], 0.0
    for name, runs in runs_by_scenario.items():
        for arm, rs in by_arm(runs).items():
            seconds = [r["summary"]["time"] for r in rs]
            # Summaries written before wall_time was summed over resumes hold the last process's only;
            # a resumed run's whole cost is at least its training time.
            walls = [max(r["summary"]["wall_time"], r["summary"]["time"]) for r in rs]
            steps = rs[0]["metrics"]["train/env_steps"].max()
            per_step = sum(seconds) / len(seconds) / steps
            total += sum(walls)
            rows.append({"scenario": name, "arm": ARMS[arm], "runs": len(rs), "core-minutes (whole runs)": f"{sum(walls) / 60:.0f}",
                         "ms per env step (training)": f"{per_step * 1e3:.2f}",
                         "paper protocol, 3.05M steps x 5 seeds": f"{per_step * PAPER_STEPS * 5 / 3600:.1f} core-hours"})
    if not rows:
        return {"cost": "*No runs yet.*"}
    return {"cost": md_table(rows, ["scenario", "arm", "runs", "core-minutes (whole runs)", "ms per env step (training)",
                                    "paper protocol, 3.05M steps x 5 seeds"]) + f"\n\nTotal of these runs: {total / 3600:.2f} core-hours."}


def time_quick(sweep):
    """Run the quick World preset as a user would (`metarun -m`, its launcher's two jobs at a time) and
    write its wall-clock, with what the process can know of the machine, to <sweep>/timing.json."""
    cmd = ["metarun", "-m", "+experiment=kaleidoscope_world", f"hydra.sweep.dir={sweep}"]
    sweep.mkdir(parents=True, exist_ok=True)
    with open(sweep / "sweep.log", "w") as log:
        timing = timed_run(cmd, log, {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}, cwd=None)
    rc = timing["exit_code"]
    print(f"quick sweep: exit {rc} after {timing['wall_seconds'] / 60:.1f} min", flush=True)
    if rc:  # a failed or interrupted sweep's time is not the preset's duration: not recorded
        raise SystemExit(f"kaleidoscope_report: error: the quick sweep failed (exit {rc}); see {sweep / 'sweep.log'}")
    (sweep / "timing.json").write_text(json.dumps(timing, indent=2))


def quick_blocks(runs_by_scenario, sweep):
    """The quick -m preset's duration: measured (--time-quick) when it was, else estimated from the
    full World runs (each run's wall time up to 100k env steps)."""
    timing = sweep / "timing.json"
    if timing.is_file():
        t = json.loads(timing.read_text())
        runs = runs_of(sweep)
        had = machine_text(t)
        machine = (f"with the machine's {t['cpus']} cores to itself" if had == "alone" else
                   f"on a machine {had}" if had != "unknown" else "on a machine it may have shared (not recorded)")
        return {"quick_time": f"**{t['wall_seconds'] / 60:.1f} minutes** wall-clock for the {len(runs)} runs (target <= 30: "
                              f"**{'met' if t['wall_seconds'] <= 30 * 60 else 'missed'}**), measured {t['started']} with "
                              f"`{t['command']}` (the preset's two 1-thread jobs at a time) {machine} (load average "
                              f"{t['load_before']:.1f} before, {t['load_after']:.1f} after)"}
    runs = runs_by_scenario.get("world", [])
    if not runs:
        return {"quick_time": "*No World runs yet.*"}
    per_run = []
    for r in runs:
        m = r["metrics"]
        at = m[m["train/env_steps"] <= 100_000]["time"].max()  # training seconds up to 100k steps
        overhead = (r["summary"]["wall_time"] - r["summary"]["time"]) / (r["summary"]["iteration"] / r["config"].eval_every + 1)
        per_run.append(at + overhead * (125 / 25 + 1))
    arms = {}  # a missing seed counts as its arm's mean, a missing arm as the mean run
    for r, t in zip(runs, per_run):
        arms.setdefault(r["arm"], []).append(t)
    mean_run = sum(per_run) / len(per_run)
    total = sum(3 * sum(arms[a]) / len(arms[a]) if a in arms else 3 * mean_run for a in ARMS)
    return {"quick_time": f"{total / 60:.1f} core-minutes for the 9 runs, i.e. about {total / 2 / 60:.0f} minutes "
                          f"with two runs at a time on the 2 cores (estimated from the first 100k env steps of the "
                          f"{len(runs)} completed full World runs, each run's time measured with one thread while other "
                          f"jobs shared the machine; longest run {max(per_run) / 60:.1f} min)"}


def matd3_blocks(root, figures):
    d = root / "halfcheetah"
    if not (d / "summary.json").is_file():
        return {"matd3": f"*Not run yet:* `metarun +experiment=kaleidoscope_halfcheetah scale=full hydra.run.dir={d}`", "matd3_figure": ""}
    r = load_run(d)
    if r["status"] != "completed":  # running or stopped: not reported, say how to finish it
        steps = r["metrics"]["train/env_steps"].max() if "train/env_steps" in r["metrics"] else 0
        return {"matd3": f"*Not finished* ({r['status']}, {steps:,.0f} env steps so far): "
                         f"`metarun resume=true run_dir={d}`", "matd3_figure": ""}
    curve = eval_curve(r)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(curve["env_steps"] / 1000, curve["eval/return"], marker="o", color="tab:red")
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel("evaluation return")
    ax.set_title("Kaleidoscope MATD3, HalfCheetah 2x3 (one seed)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures / "halfcheetah.png", dpi=110)
    plt.close(fig)
    s, m = r["summary"], r["metrics"]
    last = m.dropna(subset=["train/critic_mask_distance"]).iloc[-1]
    warmup = r["config"].algo.warmup_steps
    learned = curve[curve["env_steps"] > warmup]
    rising = (": it rose, so the run shows the method learning, not where it ends"
              if learned["eval/return"].iloc[-1] > learned["eval/return"].iloc[0] else ": it did not rise")
    text = (f"{m['train/env_steps'].max():,.0f} env steps, {m['train/updates'].max():,.0f} updates in {s['time'] / 3600:.2f} h of training "
            f"({s['wall_time'] / 3600:.2f} h with evaluations, threads={s['threads']}); final test return "
            f"{fmt_ci(s['test/return'], s['test/return_ci95'])} (mean ± 95% CI over {r['config'].eval_tasks} episodes); "
            f"at the end the actors' masks differ on {last['train/actor_mask_distance']:.1%} of the weights and the critics' on "
            f"{last['train/critic_mask_distance']:.1%}. The evaluation return (validation episodes) went from "
            f"{learned['eval/return'].iloc[0]:.0f} at {learned['env_steps'].iloc[0]:,.0f} env steps, the first evaluation after the "
            f"{warmup:,} random warm-up steps, to {learned['eval/return'].iloc[-1]:.0f} at {learned['env_steps'].iloc[-1]:,.0f}"
            f"{rising}. At this cost ({s['time'] / m['train/env_steps'].max() * 1e3:.0f} ms per env "
            f"step) the reference's 10M env steps would take {s['time'] / m['train/env_steps'].max() * 10e6 / 3600:.0f} core-hours per run.")
    return {"matd3": text, "matd3_figure": "![halfcheetah](kaleidoscope/halfcheetah.png)"}


def has_run_data(root):
    """Whether anything the page reads exists under root (a page of "not run yet" would replace the published one)."""
    return (any(sweep_dirs(root / name) for name in (*SCENARIOS, "peer_metarun", "world_quick"))
            or any((root / "benchmarl").glob("seed*.json")) or (root / "bench.json").is_file()
            or (root / "halfcheetah" / "summary.json").is_file() or (root / "world_quick" / "timing.json").is_file())


def keep(root, kept, runs_by_scenario):
    """Keep what the page reads (docgen.keep_runs): every run's metrics, summary and .hydra dir, the sweeps'
    multirun.yaml, timing.json, bench.json, benchmarl/seed*.json, and the checkpoints of the completed
    Kaleidoscope runs (dead_share loads them); not the other checkpoints, the logs, W&B dirs or
    metarun-report's report/ dirs."""
    read = {Path(r["dir"]).relative_to(root).parts + ("checkpoint.pt",)
            for runs in runs_by_scenario.values() for r in runs if r["arm"] == "kaleidoscope"}

    def drop(parts):
        return ("wandb" in parts or parts[-1].endswith(".log") or (parts[-1].endswith(".pt") and parts not in read)
                or (len(parts) == 2 and parts[1] == "report"))
    return keep_runs(root, kept, drop=drop)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="outputs/kaleidoscope")
    parser.add_argument("--template", default="docs/src/kaleidoscope.md")
    parser.add_argument("--out", default="docs/kaleidoscope.md")
    parser.add_argument("--time-quick", action="store_true",
                        help="first run the quick World preset into <root>/world_quick and time it (give it the machine alone)")
    args = parser.parse_args()
    root, out = Path(args.root), Path(args.out)
    figures = out.parent / "kaleidoscope"
    kept = figures / "runs.tar.xz"
    restore_runs(kept, root, script="kaleidoscope_report")
    if args.time_quick:
        time_quick(root / "world_quick")
    if not has_run_data(root):
        print(f"kaleidoscope_report: no run data under {root} and no kept run data at {kept}, so {out} is left as it is; "
              f"run the sweeps first (`metarun -m +experiment=kaleidoscope_world scale=full hydra.sweep.dir={root}/world`, "
              f"the others: see this script's docstring)", file=sys.stderr)
        raise SystemExit(2)
    figures.mkdir(parents=True, exist_ok=True)
    CLAIMS.clear()  # this build's comparisons only (main may run twice in one process)
    runs_by_scenario = {name: runs_of(root / name) for name in SCENARIOS}
    blocks = {}
    for name, runs in runs_by_scenario.items():
        blocks.update(scenario_blocks(name, runs, figures, root))
    blocks["claim"] = claim_block()
    blocks.update(coverage_block(root, runs_by_scenario))
    blocks.update(mask_blocks(runs_by_scenario, figures))
    blocks.update(peer_blocks(root, figures))
    blocks.update(speed_blocks(root))
    blocks.update(cost_blocks(runs_by_scenario))
    blocks.update(quick_blocks(runs_by_scenario, root / "world_quick"))
    blocks.update(matd3_blocks(root, figures))
    render(args.template, out, blocks, script="kaleidoscope_report.py")
    print(f"written {out}; its run data kept in {keep(root, kept, runs_by_scenario)}")


if __name__ == "__main__":
    main()
