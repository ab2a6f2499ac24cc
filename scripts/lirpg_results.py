"""docs/lirpg.md from finished runs: LIRPG vs PPO on delayed-reward MuJoCo, the SB3 peer check, speed.

    python scripts/lirpg_results.py [--runs outputs] [--peer outputs/lirpg/peer] [--bench outputs/lirpg/bench.json]
                                    [--out docs/lirpg.md] [--kept docs/lirpg/runs.tar.xz]

Reads every run under --runs whose config.yaml is a `task=mujoco_delayed` run of algo=ppo / lirpg at
the paper's budget (488 updates of 2048 steps); completed runs make the tables, verdicts and mean curves,
stopped runs (killed before the end) are drawn alone, dashed, and listed with the command that resumes
them, failed runs are listed with their error. The arm follows from
its config: PPO; LIRPG with r_ex_coef 0, r_in_coef 1 (r_in only); LIRPG with r_ex_coef 1, r_in_coef
0.01 (mixed); LIRPG with meta_step false (frozen random r_in). Curves are the training-episode true
return (mean of the last 100 episodes, logged every update) against env steps, mean and 95% t
interval over seeds; the final return is the last update's. Claims are judged on the Welch 95% CI of
the difference of means (metarun.stats). Fills docs/src/lirpg.md into docs/lirpg.md, figures into
docs/lirpg/.

The files the page read (each listed run's config, summary and metrics, the peer JSONs and the benchmark,
when under --runs) are kept beside it in --kept, so a checkout without them rebuilds the page: when --runs
has none of the page's inputs, the archive is unpacked into --runs/lirpg/kept and the page is read from there.
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
import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from docgen import keep_runs, md_table, render, restore_runs  # noqa: E402

from metarun.stats import compare, fmt_ci, mean_ci  # noqa: E402

ITERATIONS = 488  # the paper's 1M env steps in updates of 2048 (--iterations: to try the script on short runs)
ARMS = {"ppo": "PPO (delayed reward)", "lirpg": "PPO + LIRPG, r_in only", "lirpg_mixed": "PPO + LIRPG, mixed (r_ex + 0.01 r_in)",
        "lirpg_frozen": "frozen random r_in (no meta step)"}
PROTOCOL_ENVS, PROTOCOL_SEEDS = ("Hopper-v5", "HalfCheetah-v5"), range(5)  # the protocol (delay 20)
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl")  # what read_runs reads of a run dir: all it keeps
COLORS = {"ppo": "tab:blue", "lirpg": "tab:red", "lirpg_mixed": "tab:orange", "lirpg_frozen": "tab:gray"}


def arm_of(cfg):
    algo = cfg["algo"]
    target = algo["_target_"].rsplit(".", 1)[-1]
    if target == "PPO":
        return "ppo"
    if target != "LIRPG":
        return None
    if not algo.get("meta_step", True):
        return "lirpg_frozen" if (algo["r_ex_coef"], algo["r_in_coef"]) == (0.0, 1.0) else None
    if (algo["r_ex_coef"], algo["r_in_coef"]) == (0.0, 1.0):
        return "lirpg"
    if (algo["r_ex_coef"], algo["r_in_coef"]) == (1.0, 0.01):
        return "lirpg_mixed"
    return None


def read_runs(root, iterations=ITERATIONS, skip=None, shown_under=None):
    """({(env_id, reward_delay, arm): [run, ...]} of completed runs, the same of stopped or failed runs).

    A stopped run (killed before its last update; summary status "running") keeps its curve up to its
    last logged update and resumes from its last checkpoint; a failed run keeps its error. Run dirs
    under `skip` are not read; `shown_under`: the folder the page names the run dirs under instead of
    `root` (runs restored from the kept archive are named where they ran)."""
    runs, stopped = {}, {}
    for config in sorted(Path(root).rglob("config.yaml")):
        run_dir = config.parent
        if run_dir.name == ".hydra" or not (run_dir / "summary.json").is_file() or (skip and run_dir.is_relative_to(skip)):
            continue
        cfg = yaml.safe_load(config.read_text())
        if "mujoco_delayed" not in str(cfg.get("task", {}).get("_target_")) or cfg.get("iterations") != iterations:
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        arm = arm_of(cfg)
        if arm is None or cfg["algo"]["nsteps"] != 2048:
            continue
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if "train/return" in r]
        shown = Path(shown_under) / run_dir.relative_to(root) if shown_under else run_dir
        run = {"dir": str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown), "path": run_dir, "seed": cfg["seed"],
               "steps": np.array([r["train/env_steps"] for r in train]), "returns": np.array([r["train/return"] for r in train]),
               "status": summary.get("status"), "error": summary.get("error"),
               "checkpoint_every": cfg.get("checkpoint_every"), "iterations": cfg["iterations"]}
        key = (cfg["task"]["env_id"], cfg["task"]["reward_delay"], arm)
        if summary.get("status") != "completed":
            stopped.setdefault(key, []).append(run)
            continue
        run.update({"final": train[-1]["train/return"], "episodes": train[-1].get("train/episodes"), "test": summary.get("test/return"), "time": summary["time"],
                    "wall_time": summary.get("wall_time"), "threads": summary.get("threads"),
                    "compiled": bool(cfg["algo"].get("compile", False))})
        runs.setdefault(key, []).append(run)
    return runs, stopped


def curve(group):
    """Mean and 95% half-width over seeds at every logged env-step count all runs share."""
    steps = group[0]["steps"]
    values = np.stack([r["returns"] for r in group])
    stats = [mean_ci(values[:, i]) for i in range(values.shape[1])]
    return steps, np.array([m for m, _, _ in stats]), np.array([h if math.isfinite(h) else 0.0 for _, h, _ in stats])


def figure(env_id, delay, runs, stopped, out):
    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    for arm in ARMS:
        group = runs.get((env_id, delay, arm))
        if not group:
            continue
        steps, mean, half = curve(group)
        ax.plot(steps, mean, color=COLORS[arm], label=f"{ARMS[arm]} (n={len(group)})")
        ax.fill_between(steps, mean - half, mean + half, color=COLORS[arm], alpha=0.2)
    for arm in ARMS:  # runs stopped before 1M steps: single seeds, dashed, not in any table or verdict
        for r in stopped.get((env_id, delay, arm), []):
            if len(r["steps"]):
                ax.plot(r["steps"], r["returns"], color=COLORS[arm], ls="--", lw=1,
                        label=f"{ARMS[arm]}, seed {r['seed']}: stopped at {r['steps'][-1]:,} steps")
    ax.set_xlabel("env steps")
    ax.set_ylabel("true episode return (last 100 training episodes)")
    ax.set_title(f"{env_id}, reward delayed by {delay} steps: mean and 95% CI over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def final_table(envs, runs):
    rows = []
    for env_id, delay in envs:
        for arm, label in ARMS.items():
            group = runs.get((env_id, delay, arm), [])
            if not group:
                continue
            final = mean_ci([r["final"] for r in group])
            test = mean_ci([r["test"] for r in group])
            rows.append({"env": env_id, "arm": label, "seeds": ", ".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"])),
                         "final training return": fmt_ci(final[0], final[1], 4),
                         "deterministic test return (10 episodes)": fmt_ci(test[0], test[1], 4),
                         "training episodes per run": f"{np.mean([r['episodes'] for r in group]):,.0f}",
                         "runs compiled": f"{sum(r['compiled'] for r in group)} of {len(group)}"})
    # Times per run are in the speed section, eager and compiled apart: a mean over both would be neither.
    return md_table(rows, ["env", "arm", "seeds", "final training return", "deterministic test return (10 episodes)",
                           "training episodes per run", "runs compiled"])


def interim_table(envs, runs, stopped):
    """Every arm at the env-step count the furthest stopped run reached, over all runs (finished or not) that got there."""
    blocks = []
    for env_id, delay in envs:
        reached = [int(r["steps"][-1]) for (e, d, a), group in stopped.items() if (e, d) == (env_id, delay)
                   for r in group if len(r["steps"])]
        if not reached:
            continue
        at = max(reached)
        rows = []
        for arm, label in ARMS.items():
            group = [r for r in runs.get((env_id, delay, arm), []) + stopped.get((env_id, delay, arm), [])
                     if len(r["steps"]) and r["steps"][-1] >= at]
            if not group:
                continue
            values = [float(r["returns"][np.searchsorted(r["steps"], at)]) for r in group]
            m, h, n = mean_ci(values)
            rows.append({"env": env_id, "arm": label, "seeds": ", ".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"])),
                         f"training return at {at:,} env steps": fmt_ci(m, h, 4)})
        blocks.append(f"Interim: every arm at {at:,} env steps, where the furthest stopped run stopped (finished and "
                      f"stopped runs that got there; with this few seeds a description, not a verdict):\n\n"
                      + md_table(rows, ["env", "arm", "seeds", f"training return at {at:,} env steps"]))
    return "\n\n".join(blocks)


CLAIMS = [("lirpg", "ppo", "LIRPG (r_in only) beats PPO on the delayed reward (the paper's claim)"),
          ("lirpg_mixed", "ppo", "LIRPG (mixed reward) beats PPO on the delayed reward (the paper's claim)"),
          ("lirpg", "lirpg_frozen", "learning r_in beats a frozen random r_in (same code, no meta step)")]


def verdicts(envs, runs):
    rows, outcomes = [], []
    for env_id, delay in envs:
        for a, b, claim in CLAIMS:
            ga, gb = runs.get((env_id, delay, a), []), runs.get((env_id, delay, b), [])
            if len(ga) < 2 or len(gb) < 2:
                rows.append({"env": env_id, "claim": claim, "difference of final returns": "n/a",
                             "verdict": f"not run (n={len(ga)}, {len(gb)})"})
                continue
            verdict, diff, half = compare([r["final"] for r in ga], [r["final"] for r in gb], "greater")
            outcomes.append((env_id, a, b, verdict))
            rows.append({"env": env_id, "claim": claim, "difference of final returns": fmt_ci(diff, half, 3),
                         "verdict": f"**{verdict}** (n={len(ga)}, {len(gb)})"})
    return md_table(rows, ["env", "claim", "difference of final returns", "verdict"]), outcomes


def summary_line(outcomes):
    paper = [(env, v) for env, a, b, v in outcomes if b == "ppo"]
    if not paper:
        return ("No LIRPG arm has two finished seeds beside two finished PPO seeds on any environment: the paper's "
                "claim is not judged on this page.")
    by = {v: [f"{env} ({'r_in only' if a == 'lirpg' else 'mixed'})" for env, a, b, w in outcomes if b == "ppo" and w == v]
          for v in ("reproduced", "contradicted", "not resolved")}
    parts = [f"{v} on {', '.join(by[v])}" for v in ("reproduced", "contradicted", "not resolved") if by[v]]
    return "The claim that LIRPG improves PPO on delayed-reward MuJoCo at 1M steps is " + "; ".join(parts) + "."


def peer_files(peer_dir):
    return sorted(Path(peer_dir).glob("*.json")) if peer_dir and Path(peer_dir).is_dir() else []


def peer_block(peer_dir):
    results = [json.loads(f.read_text()) for f in peer_files(peer_dir)]
    if not results:
        return "The peer check has not been run yet (`python scripts/sb3_peer.py`).", ""
    rows, finals = [], {}
    for impl in ("metarun", "sb3"):
        group = [r for r in results if r["impl"] == impl]
        if not group:
            continue
        finals[impl] = [r["final_return"] for r in group]
        m, h, n = mean_ci(finals[impl])
        rows.append({"implementation": "metarun PPO" if impl == "metarun" else "Stable-Baselines3 PPO",
                     "env": group[0]["env_id"], "seeds": ", ".join(str(r["seed"]) for r in group),
                     "env steps per run": ", ".join(sorted({f"{r['env_steps']:,}" for r in group})),
                     "final training return": fmt_ci(m, h, 4), "env steps/s (1 thread)":
                     fmt_ci(*mean_ci([r["steps_per_second"] for r in group])[:2], 3),
                     "training time per run (min)": f"{np.mean([r['train_time'] for r in group]) / 60:.0f}"})
    table = md_table(rows, ["implementation", "env", "seeds", "env steps per run", "final training return", "env steps/s (1 thread)",
                            "training time per run (min)"])
    if len(finals) < 2 or len(finals["sb3"]) < 2:
        return table, "Not enough SB3 seeds for a confidence interval yet."
    m_sb3, h_sb3, _ = mean_ci(finals["sb3"])
    m_ours = float(np.mean(finals["metarun"]))
    inside = abs(m_ours - m_sb3) <= h_sb3
    verdict, diff, half = compare(finals["metarun"], finals["sb3"], "greater")
    line = (f"metarun's mean final return {m_ours:.0f} is {'inside' if inside else 'outside'} SB3's 95% CI "
            f"[{m_sb3 - h_sb3:.0f}, {m_sb3 + h_sb3:.0f}]: the target is **{'met' if inside else 'missed'}**. "
            f"Difference metarun - SB3: {fmt_ci(diff, half, 3)} (Welch 95% CI; "
            f"{'it covers 0' if verdict == 'not resolved' else 'it excludes 0'}).")
    steps = sorted({r["env_steps"] for r in results})
    if steps and max(steps) < 488 * 2048:
        line += (f" This peer check ran a short budget, {', '.join(f'{n:,}' for n in steps)} env steps per run "
                 f"(`python scripts/sb3_peer.py --iterations {max(steps) // 2048}`), not the paper's 999,424: "
                 "it compares the two implementations early in learning only.")
    return table, line


def bench_block(path, runs):
    lines = []
    if path and Path(path).is_file():
        b = json.loads(Path(path).read_text())
        s = b["seconds_per_iteration"]
        names = {"ppo": "PPO", "lirpg": "LIRPG", "ppo_compiled": "PPO, algo.compile=true", "lirpg_compiled": "LIRPG, algo.compile=true"}
        lines.append(md_table([{"": label, "rollout (s)": f"{s[name]['rollout']:.2f}", "optimisation (s)": f"{s[name]['update']:.2f}",
                                "iteration (s)": f"{s[name]['iteration']:.2f}", "env steps/s": f"{b['steps_per_second'][name]:.0f}",
                                "first iteration (s)": f"{b['warmup_seconds'][name]:.1f}" if "warmup_seconds" in b else "-"}
                               for name, label in names.items() if name in s],
                              ["", "rollout (s)", "optimisation (s)", "iteration (s)", "env steps/s", "first iteration (s)"]))
        conditions = (f"Medians of {b['iterations']} iterations of each, taken in turn on {b['env_id']}, {b['threads']} thread, "
                      f"{b['started']} to {b['finished']}{'; ' + b['note'] if b['note'] else ''}.")
        if "ratio_iteration_compiled" in b:
            met = b["ratio_iteration_compiled"] <= 2
            lines.append(f"\nLIRPG / PPO per update of {b['nsteps']} steps, both with `algo.compile=true` (what the 1M-step presets "
                         f"run): **{b['ratio_iteration_compiled']:.2f}x** (target <= 2x: **{'met' if met else 'missed'}**); in the "
                         f"optimisation phase alone {b['ratio_update_phase_compiled']:.2f}x. Both eager (the quick presets): "
                         f"{b['ratio_iteration']:.2f}x ({b['ratio_update_phase']:.2f}x in the optimisation phase); compiled LIRPG "
                         f"against eager PPO: {b['ratio_compiled_lirpg_to_eager_ppo']:.2f}x. The first iteration of a compiled "
                         f"run includes its compilation: about a minute on a cold start, a few seconds when torch's "
                         f"on-disk compile cache already holds the graphs. {conditions}")
        else:
            met = b["ratio_iteration"] <= 2
            lines.append(f"\nLIRPG / PPO per update of {b['nsteps']} steps: **{b['ratio_iteration']:.2f}x** (target <= 2x: "
                         f"**{'met' if met else 'missed'}**); in the optimisation phase alone {b['ratio_update_phase']:.2f}x. {conditions}")
        parts = "; ".join(f"{k}: {v:.2f} ms" for k, v in b["lirpg_minibatch_ms"].items())
        hot = ", ".join(f"`{h['op']}` {100 * h['share']:.0f}%" for h in b["hot_ops"][:6])
        lines.append(f"\nWhere an eager LIRPG minibatch update goes (PPO's whole minibatch update: {b['ppo_minibatch_ms']:.2f} ms): {parts}. "
                     f"Top operators by self time: {hot}.")
        if "lirpg_compiled_minibatch_ms" in b:
            parts = "; ".join(f"{k}: {v:.2f} ms" for k, v in b["lirpg_compiled_minibatch_ms"].items())
            lines.append(f"Compiled (PPO's whole minibatch update: {b['ppo_compiled_minibatch_ms']:.2f} ms): {parts}.")
    else:
        lines.append("The benchmark has not been run yet (`python scripts/bench_lirpg.py`).")
    timed = []
    for (env_id, delay, arm), group in sorted(runs.items()):
        for compiled in (False, True):
            done = [r for r in group if r["compiled"] == compiled]
            if arm not in ARMS or not done:
                continue
            t = [r["time"] / 60 for r in done]
            # Summaries written before wall_time was summed over resumes hold the last process's only;
            # a resumed run's whole command took at least its training time.
            w = [max(r["wall_time"], r["time"]) / 60 for r in done if r["wall_time"]]
            # the peer check's metarun runs (reward_delay 1) are PPO runs too, but not the delayed-reward arm
            label = ARMS[arm] if delay > 1 else "PPO, undelayed reward (the peer check's runs)"
            timed.append({"run": f"{label}, {env_id}", "algo.compile": str(compiled).lower(), "runs": len(done),
                          "training time (min)": fmt_ci(*mean_ci(t)[:2], 3), "whole command (min)": fmt_ci(*mean_ci(w)[:2], 3) if w else "n/a",
                          "env steps/s": f"{ITERATIONS * 2048 / (np.mean(t) * 60):.0f}"})
    if timed:
        lines.append("\nThe whole 1M-step runs (one thread each, each beside other jobs on the 2 cores, so slower than alone; "
                     "eager and compiled runs of an arm are the same algorithm, timed apart):\n")
        lines.append(md_table(timed, ["run", "algo.compile", "runs", "training time (min)", "whole command (min)", "env steps/s"]))
    return "\n".join(lines)


def cost_line(runs, peer_dir, complete):
    """What the issue's full protocol would cost at the measured per-run training times, and what the
    finished runs took; while the protocol is not `complete`, why."""
    minutes, all_minutes = {}, {}
    for (env_id, delay, arm), group in runs.items():
        if delay > 1:  # an arm's compiled runs when it has any: what the presets run now
            all_minutes.setdefault(arm, []).extend(r["time"] / 60 for r in group)
            minutes.setdefault(arm, []).extend(r["time"] / 60 for r in group if r["compiled"])
    minutes = {arm: minutes[arm] or all_minutes[arm] for arm in minutes}
    peer = [json.loads(f.read_text()) for f in Path(peer_dir).glob("*.json")] if peer_dir and Path(peer_dir).is_dir() else []
    for impl in ("metarun", "sb3"):
        minutes[f"peer_{impl}"] = [r["train_time"] / 60 for r in peer if r["impl"] == impl]
    proxy = ""
    if not minutes.get("lirpg") and minutes.get("lirpg_mixed"):
        # same per-update computation (r_in, lookahead, meta-gradient); only the two reward coefficients differ
        minutes["lirpg"], proxy = minutes["lirpg_mixed"], "; the r_in-only arm costed at the mixed arm's time, the same update code"
    if any(not minutes.get(arm) for arm in ARMS):
        return "The cost of the full protocol is estimated once every arm has a finished run."
    per_env = sum(5 * np.mean(minutes[arm]) for arm in ARMS)
    peer_minutes = 5 * sum(np.mean(minutes[k]) if minutes[k] else np.mean(minutes["ppo"]) for k in ("peer_metarun", "peer_sb3"))
    total = 2 * per_env + peer_minutes
    done = sum(sum(v) for v in all_minutes.values())
    guessed = [k for k in ("peer_metarun", "peer_sb3") if not minutes[k]]
    if guessed:
        proxy += "; the peer runs not yet measured costed at metarun PPO's time"
    return (f"At the measured mean training times per run (one thread, shared machine; an arm's compiled runs where it "
            f"has any), the issue's full protocol "
            f"(4 arms x 5 seeds x 2 environments, and 5 seeds each of metarun's and SB3's PPO for the peer check) "
            f"would take about {total / 60:.0f} core-hours ({per_env / 60:.1f} per environment{proxy}); the finished "
            f"runs on this page took {done / 60:.1f} core-hours."
            + ("" if complete else " The issue asks for at least 5 seeds per arm on two environments; what ran is what "
               "fitted in the CPU time this work was given (two cores shared by several engineers), as listed above."))


def what_ran(envs, runs, stopped, commands):
    """Seeds per arm (0 included) for every environment, every run that stopped or failed, and the
    `commands` (`missing_seed_commands`) that start the seeds with no run yet."""
    rows = []
    for env_id, delay in envs:
        for arm, label in ARMS.items():
            done = sorted(runs.get((env_id, delay, arm), []), key=lambda r: r["seed"])
            rows.append({"env": env_id, "reward delay": delay, "arm": label, "seeds finished (1M steps)": len(done),
                         "seeds": ", ".join(str(r["seed"]) for r in done) or "-",
                         "run dirs": ", ".join(f"`{r['dir']}`" for r in done[:2]) + (" ..." if len(done) > 2 else "")})
    lines = [md_table(rows, ["env", "reward delay", "arm", "seeds finished (1M steps)", "seeds", "run dirs"])]
    unfinished = [(key, r) for key, group in sorted(stopped.items()) for r in sorted(group, key=lambda r: r["seed"])]
    if unfinished:
        lines.append("\nRuns that did not finish (not in the tables or verdicts; stopped runs are drawn dashed in the figure):\n")
        rows = []
        for (env_id, delay, arm), r in unfinished:
            reached = f"{int(r['steps'][-1]):,} env steps ({len(r['steps'])} of {r['iterations']} updates)" if len(r["steps"]) else "no update"
            if r["status"] == "failed":
                later = [o["dir"] for o in runs.get((env_id, delay, arm), []) + stopped.get((env_id, delay, arm), [])
                         if o["seed"] == r["seed"] and o["status"] != "failed"]
                state = f"failed: {r['error']}"
                command = f"superseded by `{later[0]}`" if later else "rerun (the error comes from code changed since)"
            else:
                every = r["checkpoint_every"] or 1
                saved = len(r["steps"]) // every * every
                state = f"stopped after {reached}; last checkpoint at update {saved}"
                command = f"`metarun resume=true run_dir={r['dir']}`"
            rows.append({"env": env_id, "arm": ARMS[arm], "seed": r["seed"], "run dir": f"`{r['dir']}`", "state": state,
                         "to finish": command})
        lines.append(md_table(rows, ["env", "arm", "seed", "run dir", "state", "to finish"]))
    if commands or resumable(stopped):
        lines.append("\nTo complete the protocol (5 seeds per arm on Hopper-v5 and HalfCheetah-v5), resume the stopped runs "
                     "above and run the seeds that have no run yet, then rerun this script:\n")
        lines.append("```bash\n" + "\n".join(commands) + "\n```" if commands else "(every missing seed has a stopped run to resume)")
    else:
        lines.append("\nThe protocol is complete: every arm has finished seeds "
                     f"{', '.join(map(str, PROTOCOL_SEEDS))} on {' and '.join(PROTOCOL_ENVS)}.")
    return "\n".join(lines)


def resumable(stopped):
    """The stopped runs that can continue (a failed one is rerun or superseded instead)."""
    return [r for group in stopped.values() for r in group if r["status"] != "failed"]


def missing_seed_commands(runs, stopped):
    """The sweeps that start the protocol's seeds with neither a finished nor a resumable run."""
    commands = []
    for env_id in PROTOCOL_ENVS:
        for arm in ARMS:
            have = {r["seed"] for r in runs.get((env_id, 20, arm), [])} | \
                   {r["seed"] for r in stopped.get((env_id, 20, arm), []) if r["status"] != "failed"}
            todo = [seed for seed in PROTOCOL_SEEDS if seed not in have]
            if todo:
                name = env_id.split("-")[0].lower()
                commands.append(f"metarun -m +experiment=lirpg_delayed_sweep scale=full threads=1 progress=false "
                                f"task.env_id={env_id} algo={arm} seed={','.join(map(str, todo))} "
                                f"hydra.sweep.dir=outputs/lirpg/{name}_{arm}")
    return commands


def page_inputs(runs, stopped, peer, bench):
    """The files the page reads: each listed run's RUN_FILES, the peer JSONs and the benchmark."""
    files = [r["path"] / name for group in [*runs.values(), *stopped.values()] for r in group for name in RUN_FILES]
    return files + peer_files(peer) + ([bench] if bench.is_file() else [])


def moved(path, old_root, new_root):
    """`path` at its place under `new_root` if it lies under `old_root`, else `path` itself."""
    return new_root / path.relative_to(old_root) if path.is_relative_to(old_root) else path


def keep(source, files, archive):
    """Keep `files` (what the page read) in `archive` by their places under `source` (docgen.keep_runs),
    and nothing else under it: not other pages' runs, nor checkpoints (this page loads none), W&B dirs
    or logs. Returns the files outside `source`, which cannot be kept."""
    kept = {f.relative_to(source).parts for f in files if f.is_relative_to(source)}
    on_the_way = {parts[:i] for parts in kept for i in range(1, len(parts))}  # the folders holding them
    keep_runs(source, archive, drop=lambda parts: parts not in kept and parts not in on_the_way)
    return [f for f in files if not f.is_relative_to(source)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "outputs"))
    parser.add_argument("--peer", default=str(ROOT / "outputs/lirpg/peer"))
    parser.add_argument("--bench", default=str(ROOT / "outputs/lirpg/bench.json"))
    parser.add_argument("--out", default=str(ROOT / "docs/lirpg.md"))
    parser.add_argument("--kept", help="the page's run data, kept beside it (default: lirpg/runs.tar.xz beside --out, "
                        "with the figures); unpacked into RUNS/lirpg/kept when RUNS has none of the page's inputs")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    args = parser.parse_args()
    kept = args.kept or Path(args.out).parent / "lirpg" / "runs.tar.xz"  # so a page written elsewhere never replaces docs/'s
    runs_root, peer, bench, out, kept = (Path(p).absolute() for p in (args.runs, args.peer, args.bench, args.out, kept))
    # --runs is all of outputs/ (other pages' runs too), which exists, so the kept data cannot be unpacked into it:
    # it goes into a folder of its own there, read only when --runs has none of the page's inputs.
    restored = runs_root / "lirpg" / "kept"
    source = runs_root
    runs, stopped = read_runs(runs_root, args.iterations, skip=restored)
    if not page_inputs(runs, stopped, peer, bench):
        restore_runs(kept, restored, script="lirpg_results")
        if restored.is_dir():
            source, peer, bench = restored, moved(peer, runs_root, restored), moved(bench, runs_root, restored)
            runs, stopped = read_runs(restored, args.iterations, shown_under=runs_root)
    read = page_inputs(runs, stopped, peer, bench)
    if not read:  # a page of "not run yet" would replace the published one
        print(f"lirpg_results: no mujoco_delayed run of {args.iterations} updates under {runs_root}, no peer result in {peer}, "
              f"no benchmark {bench}, nor any in the kept run data {kept}, so {out} is left as it is; run the sweeps "
              "first (`metarun -m +experiment=lirpg_delayed_sweep scale=full threads=1`, `python scripts/sb3_peer.py`, "
              "`python scripts/bench_lirpg.py`: docs/src/lirpg.md)", file=sys.stderr)
        raise SystemExit(2)
    envs = sorted({(env_id, delay) for env_id, delay, arm in [*runs, *stopped] if delay > 1}, key=lambda e: (e[0] != "Hopper-v5", e))
    figures = []
    for env_id, delay in envs:
        png = out.parent / "lirpg" / f"{env_id}_delay{delay}.png"
        figure(env_id, delay, runs, stopped, png)
        figures.append(f"![{env_id}](lirpg/{png.name})")
    table, outcomes = verdicts(envs, runs)
    commands = missing_seed_commands(runs, stopped)
    complete = not commands and not resumable(stopped)
    peer_table, peer_line = peer_block(peer)
    blocks = {"what_ran": what_ran(envs, runs, stopped, commands), "cost": cost_line(runs, peer, complete),
              "figures": "\n\n".join(figures) or "No finished 1M-step run yet.",
              "final_table": "\n\n".join(b for b in (final_table(envs, runs) if envs else "No finished 1M-step run yet.",
                                                 interim_table(envs, runs, stopped)) if b),
              "verdicts": table, "verdict_line": summary_line(outcomes),
              "peer_table": peer_table, "peer_line": peer_line, "speed": bench_block(bench, runs)}
    os.chdir(ROOT)  # the generated file names its template relative to the repository
    render(Path("docs/src/lirpg.md"), out, blocks, script="lirpg_results.py")
    if source == restored:  # read from the archive: it holds this already (and a stale unpacked copy must not replace it)
        print(f"wrote {out} from the kept run data {kept}, left as it is")
        return
    outside = keep(source, read, kept)
    print(f"wrote {out}; its run data kept in {kept}"
          + (f" (not kept, being outside {source}: {', '.join(map(str, outside))})" if outside else ""))


if __name__ == "__main__":
    main()
