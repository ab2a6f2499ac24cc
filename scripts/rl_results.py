"""MAML-RL on 2D navigation: run (or read) MAML and its baselines, write docs/maml_rl.md and a figure.

    python scripts/rl_results.py                      # run what is missing, then write the report
    python scripts/rl_results.py --read-only          # only read finished runs
    python scripts/rl_results.py --bench 5            # seconds per meta-iteration, exact vs subsampled Fisher

Two protocols, each with MAML and the two baselines on the same 40 fixed test goals:
  the issue's / paper's text (+experiment=maml_rl_navigation): inner lr 0.1, 500 meta-iterations,
      tested with 20 trajectories per step at lr 0.1 then 0.05;
      maml (Fisher on 1/4 of the tasks, the preset), maml_exact (exact Fisher),
      pretrained (inner_steps=0: TRPO on all tasks jointly), random (iterations=0);
  the reference code's (+experiment=maml_rl_navigation_reference): inner lr 0.5, 100 meta-iterations,
      tested with 40 trajectories per step at lr 0.5 then 0.25;
      maml_reference, random_reference, pretrained_reference (the joint policy above, tested this way).
Runs live in outputs/maml_rl/<name>; a run that completed is read, not run again.
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
# cbfinn/maml_rl, 40 goals (Finn et al., 2017, Fig. 4 / the issue): return after 0..3 steps.
REFERENCE = {"maml": [-40.4, -11.7, -3.3, -3.2], "random": [-82.7, -58.0, -53.8, -46.8]}
REFERENCE_ORACLE = -2.3

ISSUE = "+experiment=maml_rl_navigation"
REFERENCE_PRESET = "+experiment=maml_rl_navigation_reference"
# name: (label, command-line overrides; "{root}" is the runs folder)
RUNS = {
    "maml": ("MAML (Fisher on 1/4 of the tasks, the preset)", [ISSUE, "eval_every=25"]),
    "maml_exact": ("MAML (exact Fisher)", [ISSUE, "eval_every=25", "algo.fisher_subsample=1.0"]),
    "pretrained": ("pretrained (joint TRPO), then adapted", [ISSUE, "eval_every=50", "algo.inner_steps=0"]),
    "random": ("random init, then adapted", [ISSUE, "iterations=0"]),
    "maml_reference": ("MAML", [REFERENCE_PRESET]),
    "random_reference": ("random init, then adapted", [REFERENCE_PRESET, "iterations=0"]),
    "pretrained_reference": ("pretrained (joint TRPO), then adapted",
                             ["mode=eval", "run_dir={root}/pretrained", "algo.inner_lr=0.5", "algo.eval_trajectories=40"]),
}
PROTOCOLS = [
    ("The issue's protocol (`+experiment=maml_rl_navigation`)",
     "Meta-trained with inner lr 0.1 for 500 meta-iterations; tested with 20 trajectories per step, "
     "step 1 at lr 0.1, later steps at 0.05 (the paper's text).",
     ["maml", "maml_exact", "pretrained", "random"]),
    ("The reference code's protocol (`+experiment=maml_rl_navigation_reference`)",
     "What cbfinn/maml_rl's own scripts did for the published numbers: meta-trained with inner lr 0.5 "
     "(exact Fisher, 100 meta-iterations: `maml_trpo_point.py`), tested with 40 trajectories per step at "
     "lr 0.5 then 0.25 (`test_maml_point.py`).",
     ["maml_reference", "pretrained_reference", "random_reference"]),
]
TARGETS = [(1, -13.0), (2, -5.0)]
COLORS = {"maml": "C0", "maml_exact": "C3", "pretrained": "C1", "random": "C2"}
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
  test goals.
- **Oracle counts** per meta-iteration (T tasks, K inner steps): `inner_grad` = K*T for sampling,
  K*T for the outer pass and K*T per line-search trial; `outer_grad` = T; `second_order` = one per
  task per Fisher-vector product, plus (unless first_order) K inner Hessian-vector products per task
  for the outer gradient and two per task per Fisher-vector product (J v and J^T).
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
    args = parser.parse_args()
    if args.bench:
        return bench(args.bench, args.root)

    summaries = {}
    for name in RUNS:  # in order: pretrained_reference evaluates the pretrained run
        summaries[name] = ensure_run(args.root, name, args.read_only)
    missing = [name for name, s in summaries.items() if s is None]
    if "maml" in missing:
        sys.exit(f"rl_results: no completed run in {args.root / 'maml'} (drop --read-only to run it)")
    steps = 3
    x = list(range(steps + 1))
    args.docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (title, _, names), reference in zip(axes, PROTOCOLS, (False, True)):
        for name in names:
            if summaries[name]:
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
    for name in ("maml", "maml_exact", "maml_reference"):
        rows = [r for r in _rows(args.root / name) if "eval/return_step1" in r] if summaries[name] else []
        if rows:
            it = [r["iteration"] for r in rows]
            color = COLORS.get(name, "C4")
            ax.plot(it, [r["eval/return_step1"] for r in rows], marker=".", color=color, label=f"{name}: after 1 step")
            ax.plot(it, [r["eval/return_step2"] for r in rows], ls=":", marker=".", color=color, label=f"{name}: after 2 steps")
    ax.set(xlabel="meta-iteration", ylabel="validation return (other goals)", title="learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = args.docs / "maml_rl.png"
    fig.savefig(figure, dpi=120)

    header = "| policy | " + " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in x) + " | meta-iterations | training time |"
    lines = ["# MAML-RL on 2D navigation", "",
             f"Generated by `python scripts/rl_results.py` from the runs in `{_shown(args.root)}/`. Average return",
             "per task over 40 fixed test goals (eval_seed 12345) after 0..3 inner REINFORCE steps, each step on",
             "fresh trajectories; +- is the 95% CI over goals. Missing runs: " + (", ".join(missing) or "none") + ".", ""]
    for title, text, names in PROTOCOLS:
        lines += [f"## {title}", "", text, "", header, "|---|" + "---|" * (steps + 3)]
        for name in names:
            s = summaries[name]
            if s:
                mean, ci = returns(s, steps)
                cells = " | ".join(f"{m:.1f} +- {c:.1f}" for m, c in zip(mean, ci))
                length = _config(args.root / name)["iterations"] if "mode=eval" not in RUNS[name][1] else "(pretrained)"
                lines.append(f"| metarun {RUNS[name][0]} | {cells} | {length} | {s['time'] / 60:.1f} min |")
        for name, values in REFERENCE.items():
            lines.append(f"| cbfinn/maml_rl {name} | " + " | ".join(f"{v:.1f}" for v in values) + " | | |")
        lines.append(f"| cbfinn/maml_rl oracle | {REFERENCE_ORACLE} | | | | | |")
        for name in names:
            if name.startswith("maml") and summaries[name]:
                mean = returns(summaries[name], steps)[0]
                verdict = ", ".join(f"{k} step{'s' * (k > 1)} {mean[k]:.1f} (target >= {t:g}: {'met' if mean[k] >= t else 'NOT met'})"
                                    for k, t in TARGETS)
                lines.append(f"\\nTargets, {RUNS[name][0]}: {verdict}.")
        lines.append("")
    lines += ["Validation returns during meta-training (validation goals drawn with seed eval_seed + 1, not the",
              "test goals), after 0 / 1 / 2 / 3 steps:", ""]
    for name in ("maml", "maml_exact", "maml_reference"):
        if not summaries[name]:
            continue
        lines += [f"`{name}`:", "", "| meta-iteration | " + " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in x) + " |",
                  "|---|" + "---|" * (steps + 1)]
        lines += [f"| {r['iteration']} | " + " | ".join(f"{r[f'eval/return_step{k}']:.1f}" for k in x) + " |"
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
    print(f"rl_results: wrote {args.docs / 'maml_rl.md'} and {figure}")


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
    lines = ["## Time of a paper-length run", ""]
    for name in ("maml", "maml_exact", "maml_timed"):
        s = summaries.get(name)
        if s:
            threads = _config(root / name).get("threads") or "torch default"
            lines.append(f"- `{name}`: {s['time'] / 60:.1f} min of training for {_config(root / name)['iterations']} "
                         f"meta-iterations (threads: {threads}; the run loop's clock, without the evaluations).")
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
