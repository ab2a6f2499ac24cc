"""MAML-RL on 2D navigation: run (or read) MAML and its baselines, write docs/maml_rl.md and a figure.

    python scripts/rl_results.py                      # run what is missing, then write the report
    python scripts/rl_results.py --read-only          # only read finished runs
    python scripts/rl_results.py --bench 5            # seconds per meta-iteration, exact vs subsampled Fisher

Two protocols, each with MAML and the two baselines, tested on the reference's 40 goals:
  the issue's / paper's text (+experiment=maml_rl_navigation): inner lr 0.1, 500 meta-iterations,
      tested at lr 0.1 then 0.05 with 40 trajectories per step, on the best validation checkpoint;
      maml (the preset, torch's default threads: the timed run), maml_last (that run's last
      iterate, evaluated with mode=eval), maml_seed1/2, maml_exact (the exact Fisher), anil,
      pretrained (inner_steps=0: TRPO on all tasks jointly) and its last iterate, random (iterations=0);
  the reference code's (+experiment=maml_rl_navigation_reference): inner lr 0.5, 100 meta-iterations,
      tested with 40 trajectories per step at lr 0.5 then 0.25;
      maml_reference, random_reference, pretrained_reference (the joint policy above, tested this way).
Then the preset's MAML checkpoint evaluated on other test sets (20 trajectories per step, goals drawn
from eval_seed): maml_20, maml_sampled, maml_sampled_20, maml_sampled40_20.
Runs live in outputs/maml_rl/<name>; a run that completed is read, not run again. What the page reads
of them (summaries, configs, metrics; no checkpoints) is kept in docs/maml_rl/runs.tar.xz (`--kept`)
each time the page is written, and unpacked from there first when the runs folder is absent.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from docgen import keep_runs, restore_runs  # noqa: E402

# cbfinn/maml_rl, 40 goals (Finn et al., 2017, Fig. 4 / the issue): return after 0..3 steps.
REFERENCE = {"maml": [-40.4, -11.7, -3.3, -3.2], "random": [-82.7, -58.0, -53.8, -46.8]}
REFERENCE_ORACLE = -2.3

ISSUE = "+experiment=maml_rl_navigation"
REFERENCE_PRESET = "+experiment=maml_rl_navigation_reference"
# name: (label, command-line overrides; "{root}" is the runs folder)
RUNS = {
    "maml": ("MAML (the preset)", [ISSUE]),
    "maml_last": ("MAML, last iterate", ["mode=eval", "run_dir={root}/maml", "test_checkpoint=last"]),
    # The preset's MAML checkpoint under other test sets (evaluations only: nothing is trained again).
    "maml_20": ("MAML, 20 trajectories per test step", ["mode=eval", "run_dir={root}/maml", "algo.eval_trajectories=20"]),
    "maml_sampled": ("MAML, 400 goals drawn from eval_seed", ["mode=eval", "run_dir={root}/maml",
                                                              "task.test_goals=sampled", "eval_tasks=400"]),
    "maml_sampled_20": ("MAML, 400 goals drawn from eval_seed, 20 trajectories per test step",
                        ["mode=eval", "run_dir={root}/maml", "task.test_goals=sampled", "eval_tasks=400",
                         "algo.eval_trajectories=20"]),
    "maml_sampled40_20": ("MAML, 40 goals drawn from eval_seed, 20 trajectories per test step",
                          ["mode=eval", "run_dir={root}/maml", "task.test_goals=sampled", "algo.eval_trajectories=20"]),
    "maml_seed1": ("MAML, seed 1", [ISSUE, "seed=1", "threads=1"]),
    "maml_seed2": ("MAML, seed 2", [ISSUE, "seed=2", "threads=1"]),
    "maml_exact": ("MAML, exact Fisher", [ISSUE, "algo.fisher_subsample=1.0", "threads=1"]),
    "anil": ("ANIL (adapts the mean layer and log-std)", [ISSUE, "algo.adapt=[head.*]", "threads=1"]),
    "pretrained": ("pretrained (joint TRPO), then adapted", [ISSUE, "algo.inner_steps=0", "threads=1"]),
    "pretrained_last": ("pretrained (joint TRPO), last iterate, then adapted",
                        ["mode=eval", "run_dir={root}/pretrained", "test_checkpoint=last"]),
    "random": ("random init, then adapted", [ISSUE, "iterations=0"]),
    "maml_reference": ("MAML", [REFERENCE_PRESET]),
    "random_reference": ("random init, then adapted", [REFERENCE_PRESET, "iterations=0"]),
    "pretrained_reference": ("pretrained (joint TRPO), then adapted",
                             ["mode=eval", "run_dir={root}/pretrained", "algo.inner_lr=0.5", "algo.eval_trajectories=40"]),
}
PROTOCOLS = [
    ("The issue's protocol (`+experiment=maml_rl_navigation`)",
     "Meta-trained with inner lr 0.1 (20 trajectories per inner step) for 500 meta-iterations; tested "
     "step 1 at lr 0.1, later steps at 0.05 (the paper's text), as the reference's test script did it: on "
     "its 40 goals (`task.test_goals=reference`) with 40 fresh trajectories per step. The preset tests "
     "best.pt, the parameters with the best validation return after 3 steps (validated every 25 "
     "meta-iterations on 40 other goals); the `last iterate` rows test the final parameters "
     "(`test_checkpoint=last`).",
     ["maml", "maml_last", "maml_seed1", "maml_seed2", "maml_exact", "anil", "pretrained", "pretrained_last",
      "random"]),
    ("The reference code's protocol (`+experiment=maml_rl_navigation_reference`)",
     "What cbfinn/maml_rl's own scripts did for the published numbers: meta-trained with inner lr 0.5 "
     "(exact Fisher, 100 meta-iterations: `maml_trpo_point.py`), tested with 40 trajectories per step at "
     "lr 0.5 then 0.25 (`test_maml_point.py`).",
     ["maml_reference", "pretrained_reference", "random_reference"]),
    ("The same MAML checkpoint on other test sets",
     "`metarun mode=eval run_dir=outputs/maml_rl/maml ...` of the first table's MAML checkpoint, with 20 "
     "trajectories per test step (as many as an inner step in training), and on goals drawn from eval_seed "
     "(`task.test_goals=sampled`): 400 of them, where the goal draw matters little, and the 40 that "
     "`eval_tasks=40` draws.",
     ["maml_20", "maml_sampled", "maml_sampled_20", "maml_sampled40_20"]),
]
TARGETS = [(1, -13.0), (2, -5.0)]
# The runs drawn in the figure; the others are in the tables only (the seeds would overlap MAML's
# line, and the pretrained last iterate's returns, below -170, would flatten every other line).
COLORS = {"maml": "C0", "maml_last": "C7", "maml_exact": "C3", "anil": "C4", "pretrained": "C1", "random": "C2"}
NOTES = """## How it works

- **Environment** (`task=navigation2d`, cbfinn/maml_rl `point_env_randgoal`): start (0, 0), goal
  U[-0.5, 0.5]^2, observation = position, velocity clipped to [-0.1, 0.1] per axis, reward = -distance,
  terminated within 0.01 of the goal on both axes, truncated at 100 steps. `normalize_actions=true`
  (default) applies rllab's `normalize()` wrapper that the reference used: the policy acts in [-1, 1]
  units, scaled onto the velocity box. `BatchedNavigation2D` steps all tasks x trajectories as one
  tensor; `Navigation2DEnv` is the single-goal Gymnasium environment over the same dynamics.
- **Inner loop**: REINFORCE on 20 trajectories per task, discount 0.99, a linear feature baseline
  fitted per task (rllab features: obs, obs^2, t/100 and its square and cube, 1; ridge 1e-5),
  advantages standardised per task; one call of `metarun.inner_loop.adapt` per inner step with a
  closure over that step's fresh trajectories. All tasks adapt at once (`vmap` over the task dim);
  rollouts of the per-task adapted policies use `vmap(functional_call)`. The only Python loop is over
  the 100 time steps of a rollout. `algo.adapt=["head.*"]` adapts the mean layer and the log-std only.
- **Outer step** `algo.outer=trpo`: surrogate E[ratio * advantage] on the post-adaptation trajectories,
  natural-gradient direction by 10 conjugate-gradient iterations on Fisher-vector products (damping
  1e-5), step scaled to mean KL 0.01, backtracking line search (x0.8, 15 trials) that accepts only when
  the surrogate falls and the KL bound holds, else keeps the old parameters. The Fisher-vector products
  differentiate through the adaptation: F = J^T M J, J the Jacobian of the post-adaptation policy
  outputs with respect to theta through the inner steps (a stored `torch.func.vjp` and its vjp),
  M the Gaussian's Fisher; this is exactly the Hessian of the mean KL at theta_old (tests/test_rl.py
  checks it against double backpropagation of the KL) without its third-order terms. The step length
  s^T F s comes from the conjugate-gradient iteration itself (it tracks F x), so a meta-iteration
  costs 10 Fisher-vector products, not 11.
  `algo.fisher_subsample` computes the products on a random fraction of the meta-batch's tasks
  (rllab's `subsample_factor`); 1.0 is exact, the preset uses 0.25 for speed. `algo.outer=adam` takes a
  first-order policy-gradient step with the `optim` group instead.
- **Baselines**: `pretrained` is the same algorithm with `algo.inner_steps=0` (TRPO on all tasks
  jointly), `random` is `iterations=0`; both are adapted at test time exactly like MAML, on the same
  goals and with the same action noise (the evaluation generator is seeded with `eval_seed`).
  Validation during training uses other goals (seed `eval_seed + 1`), so nothing is selected on the
  test goals. The pretrained run is selected by the same rule as MAML (best validation return after
  3 steps), which is generous to it: joint training never looks at adaptation, and its learned std
  falls from 1 to 0.04 over the 500 meta-iterations; near std 0.3 (meta-iteration 100) a step of
  REINFORCE lands well, past it the steps overshoot and the adapted return collapses
  (`pretrained, last iterate`). MAML keeps its 1-step return at -11 to -13 on validation through all
  500 meta-iterations.
- **Model selection**: every run writes `best.pt`, the parameters with the best validation return
  after 3 steps; `test_checkpoint=best` (the navigation preset) meta-tests them instead of the final
  parameters. The meta-objective is the return after one inner step (`algo.inner_steps=1`); the
  returns after 2-3 steps, which it does not optimise, peak early and then drift down while the
  1-step return stays flat (the learning curves above). The drift goes with the learned log-std
  shrinking (the `action std` column): a sharper post-adaptation policy loses less return to its
  own noise, so the meta-objective keeps lowering the std, while the REINFORCE step on
  standardised advantages grows as 1/std in the mean's units, so the later steps overshoot more.
- **Oracle counts** (`oracle/*` in metrics.jsonl): the counting rules are written where they are
  computed, in `MAMLRL.oracle_calls` (metarun/algos/maml_rl.py), and
  tests/test_rl.py counts the inner gradients actually taken against them, so this page does not
  restate them.

## Differences from the reference

- The issue's protocol follows the paper's text for the step sizes (inner lr 0.1; test steps at 0.1
  then 0.05) and the reference's test script for the test set (its 40 goals, 40 trajectories per
  step). The published table comes from cbfinn/maml_rl's scripts, whose tested checkpoint was
  meta-trained with inner step 0.5 and tested at 0.5 then 0.25;
  `+experiment=maml_rl_navigation_reference` reproduces those scripts' settings.
- The reference's test goals are `np.random.seed(1); np.random.uniform(-0.5, 0.5, (40, 2))`
  (`test_maml_point.py`); `task.test_goals=reference` draws exactly these (numpy's legacy stream).
  They sit farther from the start than the 40 goals metarun draws from eval_seed (mean distance
  0.40 against 0.36), which is why the 0-step returns differ between the first and third tables.
- The reference tested its final checkpoint after 100 meta-iterations; the paper-length preset
  (500) tests the best validation checkpoint, and reports the last iterate alongside.
- `+experiment=maml_rl_navigation` computes the Fisher-vector products on 1/4 of the tasks
  (`algo.fisher_subsample=0.25`) to fit the paper-length run in 20 minutes; the reference used the
  exact Fisher (the `maml_exact` row above, `algo.fisher_subsample=1.0`: returns within the CIs of
  the preset's, at 2.5x the time per meta-iteration in `--bench`).
- rllab fitted the linear baseline with its own least-squares routine (ridge 1e-5, growing when
  singular); metarun solves the same ridge system in float64.

## HalfCheetah velocity and direction (long runs, not in CI)

    pip install -e ".[rl]"                                            # Gymnasium + MuJoCo (CPU)
    metarun +experiment=maml_rl_half_cheetah_vel                      # scale=quick: 10 meta-iterations, ~9 min
    metarun +experiment=maml_rl_half_cheetah_vel scale=full threads=1 # the paper's 500 meta-iterations
    metarun +experiment=maml_rl_half_cheetah_dir scale=full threads=1

Tasks (Finn et al., 2017, Sec. 5.3; cbfinn/maml_rl `half_cheetah_env_rand(_direc).py`) on
Gymnasium's HalfCheetah-v5: `task=half_cheetah_vel` draws a target velocity from U[0, 2], reward
-|v - v*| - 0.05 ||a||^2; `task=half_cheetah_dir` draws a direction +-1 (probability 1/2 each),
reward d v - 0.05 ||a||^2. v is Gymnasium's forward velocity (`info["x_velocity"]`), a the action
clipped to [-1, 1]; horizon 200, no early termination; observations are Gymnasium's 17 numbers;
the initial-state noise is drawn from the run's (or the evaluation's) torch generator.
Settings: 40 tasks x 20 trajectories, 1 inner step at lr 0.1, TRPO (mean KL 0.01, Fisher-vector
products on 1/4 of the tasks), policy (100, 100) ReLU, evaluation on 40 fixed tasks after 0..3 steps.
tests/test_half_cheetah.py checks rewards and observations against Gymnasium's own environment
and runs one meta-iteration of each preset (tiny sizes) in CI.

Cost, measured at threads=1 on 2 cores shared with other jobs: a rollout of 40 x 20 x 200 steps
takes ~12 s (MuJoCo physics, one simulation per task x trajectory stepped in a loop around
Gymnasium's wrappers, ~1.6x faster than its `env.step`); a meta-iteration ~38 s (two rollouts +
TRPO; ~77 s with `algo.fisher_subsample=1.0`); an evaluation ~52 s; scale=full ~5.5 h and 2.4 GB.
No full-length HalfCheetah run was made on this machine.

Differences from the reference: Gymnasium's model, observations (17 numbers; rllab added the
torso's centre of mass: 20), forward velocity (root displacement / dt; rllab: the torso's
centre-of-mass velocity) and initial-state noise; the Fisher is subsampled (1.0 is exact).
"""


def command(name, root):
    overrides = [o.format(root=root) for o in RUNS[name][1]]
    return ["metarun", *overrides, "progress=false", f"hydra.run.dir={root / name}"]


def ensure_run(root, name, read_only):
    summary = root / name / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        return json.loads(summary.read_text())
    if read_only:
        return None
    cmd = command(name, root)
    print("rl_results: running", " ".join(cmd), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(summary.read_text())


def returns(summary, steps):
    mean = [summary[f"test/return_step{k}"] for k in range(steps + 1)]
    ci = [summary[f"test/return_step{k}_ci95"] for k in range(steps + 1)]
    return mean, ci


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "maml_rl")
    parser.add_argument("--read-only", action="store_true", help="only read completed runs; list the missing ones")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--bench", type=int, default=0, metavar="N", help="time N meta-iterations per setting and exit")
    parser.add_argument("--kept", type=Path, help="the kept run data (default: <docs>/maml_rl/runs.tar.xz)")
    args = parser.parse_args()
    if args.bench:
        return bench(args.bench, args.root)
    kept = args.kept or args.docs / "maml_rl" / "runs.tar.xz"
    restored = restore_runs(kept, args.root, script="rl_results")

    summaries = {}
    for name in RUNS:  # in order: pretrained_reference evaluates the pretrained run
        summaries[name] = ensure_run(args.root, name, args.read_only)
    missing = [name for name, s in summaries.items() if s is None]
    if "maml" in missing:  # only with --read-only: every table and the settings line read it
        state = "restored, but it has none" if restored else "absent" if not kept.is_file() else f"not unpacked, {args.root} exists"
        print(f"rl_results: no completed run in {args.root / 'maml'} (kept run data {kept}: {state}), so "
              f"{args.docs / 'maml_rl.md'} is left as it is; run `python scripts/rl_results.py` without --read-only "
              "to run the missing runs", file=sys.stderr)
        raise SystemExit(2)
    steps = 3
    x = list(range(steps + 1))
    args.docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (title, _, names) in zip(axes[:2], PROTOCOLS[:2]):  # the third panel: learning curves
        for name in names:
            if summaries[name] and name.replace("_reference", "") in COLORS:
                mean, ci = returns(summaries[name], steps)
                ax.errorbar(x, mean, yerr=ci, marker="o", capsize=3, color=COLORS[name.replace("_reference", "")],
                            label=f"metarun {RUNS[name][0]}")
        for name, values in REFERENCE.items():
            ax.plot(x, values, "--", marker="x", alpha=0.6, color=COLORS[name], label=f"cbfinn/maml_rl {name}")
        ax.axhline(REFERENCE_ORACLE, color="gray", lw=0.8, ls=":", label="cbfinn/maml_rl oracle")
        ax.set(xlabel="inner policy-gradient steps at test time", ylabel="average return (40 test goals)",
               title=title.split(" (")[0], xticks=x)
        ax.legend(fontsize=7)
    ax = axes[2]
    for name in ("maml", "maml_exact", "anil", "maml_reference"):
        rows = [r for r in _rows(args.root / name) if "eval/return_step1" in r] if summaries[name] else []
        if rows:
            it = [r["iteration"] for r in rows]
            color = COLORS.get(name, "C5")
            ax.plot(it, [r["eval/return_step1"] for r in rows], marker=".", color=color, label=f"{name}: after 1 step")
            ax.plot(it, [r["eval/return_step2"] for r in rows], ls=":", marker=".", color=color, label=f"{name}: after 2 steps")
    ax.set(xlabel="meta-iteration", ylabel="validation return (other goals)", title="learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = args.docs / "maml_rl.png"
    fig.savefig(figure, dpi=120)

    header = ("| policy | " + " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in x)
              + " | meta-iterations | tested iteration | training time |")
    lines = ["# MAML-RL on 2D navigation", "",
             f"Generated by `python scripts/rl_results.py` from the runs in `{_shown(args.root)}/`. Average return",
             "per task over the test goals (the reference's 40 unless a row says otherwise) after 0..3 inner",
             "REINFORCE steps, each step on fresh trajectories; +- is the 95% CI over goals. Missing runs: "
             + (", ".join(missing) or "none") + ".", ""]
    for title, text, names in PROTOCOLS:
        lines += [f"## {title}", "", text, "", header, "|---|" + "---|" * (steps + 4)]
        for name in names:
            s = summaries[name]
            if s:
                mean, ci = returns(s, steps)
                cells = " | ".join(f"{m:.1f} +- {c:.1f}" for m, c in zip(mean, ci))
                evaluated = "mode=eval" in RUNS[name][1]
                source = next((o.split("/")[-1] for o in RUNS[name][1] if o.startswith("run_dir=")), name)
                length = _config(args.root / source)["iterations"]
                tested = s.get("checkpoint_iteration") if evaluated else s.get("tested_iteration", length)
                time = "" if evaluated else f"{s['time'] / 60:.1f} min"
                lines.append(f"| metarun {RUNS[name][0]} | {cells} | {length} | {tested} | {time} |")
        for name, values in REFERENCE.items():
            lines.append(f"| cbfinn/maml_rl {name} | " + " | ".join(f"{v:.1f}" for v in values) + " | | | |")
        lines.append(f"| cbfinn/maml_rl oracle | {REFERENCE_ORACLE} | | | | | | |")
        for name in names:
            if name.startswith(("maml", "anil")) and summaries[name]:
                mean = returns(summaries[name], steps)[0]
                verdict = ", ".join(f"{k} step{'s' * (k > 1)} {mean[k]:.1f} (target >= {t:g}: {'met' if mean[k] >= t else 'NOT met'})"
                                    for k, t in TARGETS)
                lines += ["", f"Targets, {RUNS[name][0]}: {verdict}."]
        lines.append("")
    lines += ["Validation returns during meta-training (validation goals drawn with seed eval_seed + 1, not the",
              "test goals), after 0 / 1 / 2 / 3 steps, and the action std of the post-adaptation training",
              "policies (`train/std`, in the policy's [-1, 1] action units) at that meta-iteration:", ""]
    for name in ("maml", "maml_exact", "anil", "pretrained", "maml_reference"):
        if not summaries[name]:
            continue
        lines += [f"`{name}`:", "", "| meta-iteration | " + " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in x)
                  + " | action std |", "|---|" + "---|" * (steps + 2)]
        lines += [f"| {r['iteration']} | " + " | ".join(f"{r[f'eval/return_step{k}']:.1f}" for k in x)
                  + (f" | {r['train/std']:.2f} |" if "train/std" in r else " | |")
                  for r in _rows(args.root / name) if "eval/return_step1" in r]
        lines.append("")
    algo = _config(args.root / "maml")["algo"]
    lines += [
        "Settings shared by every run: " + ", ".join([
            "meta-batch 20 tasks x 20 trajectories", "horizon 100",
            f"outer {algo['outer']} (max KL {algo['max_kl']}, {algo['cg_iters']} CG iterations, damping {algo['cg_damping']}, "
            f"line search x{algo['ls_backtrack']}, {algo['ls_max_steps']} trials)",
            f"discount {algo['discount']}", "policy (100, 100) ReLU with a learned log-std", "normalize_actions=true"]) + ".",
        "Training time is the run loop's own clock (summary.json `time`); see the timing section.",
        "", f"![return vs adaptation steps]({figure.name})", "", timing(args.root, summaries), "", NOTES]
    (args.docs / "maml_rl.md").write_text("\n".join(lines))
    print(f"rl_results: wrote {args.docs / 'maml_rl.md'} and {figure}; its run data kept in {keep(args.root, kept)}")


def unread(parts):
    """Files and folders under the runs folder that the page does not read. Checkpoints: the page reads
    the summaries of the mode=eval runs of maml/pretrained, not their checkpoints, and a completed
    evaluation is read, not run again. W&B dirs and logs: nothing reads them."""
    name = parts[-1]
    return "wandb" in parts or name == "wandb_id.txt" or name.endswith((".pt", ".log"))


def keep(root, kept):
    """Keep the run data the page reads (summaries, configs, metrics, .hydra, bench.json) in `kept`."""
    return keep_runs(root, kept, drop=unread)


def bench(n, root):
    """Wall and CPU seconds per meta-iteration of the preset, exact and subsampled Fisher; saved to bench.json."""
    import time

    import torch
    from hydra import compose, initialize_config_module

    from metarun.train import build

    result = {"threads": torch.get_num_threads(), "iterations": n, "load_before": os.getloadavg()[0]}
    print(f"torch threads: {result['threads']}, load average {result['load_before']:.2f}")
    for subsample in (1.0, 0.25):
        with initialize_config_module("metarun.conf", version_base="1.3"):
            cfg = compose("config", overrides=[ISSUE, f"algo.fisher_subsample={subsample}"])
        task, _, _, algo = build(cfg)
        generator = torch.Generator().manual_seed(0)
        algo.step(task.sample(cfg.meta_batch_size, generator))  # warm-up (first vmap calls)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            algo.step(task.sample(cfg.meta_batch_size, generator))
        wall, cpu = (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n
        result[f"fisher_subsample={subsample:g}"] = {"wall": wall, "cpu": cpu}
        print(f"fisher_subsample={subsample:g}: {wall:.2f} s wall, {cpu:.2f} s CPU per meta-iteration; "
              f"500 iterations ~ {500 * wall / 60:.1f} min", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "bench.json").write_text(json.dumps(result, indent=1))


def timing(root, summaries):
    """The timing section: the paper-length runs' own clocks and the last `--bench` figures."""
    lines = ["## Time of a paper-length run", "",
             "The runs' own clocks on this machine's 2 cores. `maml` ran alone with torch's 2 threads; the others",
             "ran two or three at a time with one thread each (OMP_NUM_THREADS=1), so their times include waiting",
             "for a core. `--bench` measures the preset's meta-iteration alone.", ""]
    for name in ("maml", "maml_seed1", "maml_seed2", "maml_exact", "anil", "pretrained", "maml_reference"):
        s = summaries.get(name)
        if s:
            wall = f", {s['wall_time'] / 60:.1f} min wall-clock with the evaluations" if "wall_time" in s else ""
            threads = f" ({s['threads']} torch threads)" if "threads" in s else ""
            lines.append(f"- `{name}`: {s['time'] / 60:.1f} min of training for {_config(root / name)['iterations']} "
                         f"meta-iterations{wall}{threads}.")
    bench_file = root / "bench.json"
    if bench_file.is_file():
        b = json.loads(bench_file.read_text())
        lines.append(f"- `python scripts/rl_results.py --bench {b['iterations']}` ({b['threads']} torch threads, load "
                     f"average {b['load_before']:.2f} before it started):")
        for key in ("fisher_subsample=1", "fisher_subsample=0.25"):
            wall = b[key]["wall"]
            lines.append(f"  - `algo.{key}`: {wall:.2f} s per meta-iteration, i.e. {500 * wall / 60:.1f} min for 500.")
    return "\n".join(lines)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _shown(path):
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _config(run_dir):
    from omegaconf import OmegaConf
    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)


if __name__ == "__main__":
    main()
