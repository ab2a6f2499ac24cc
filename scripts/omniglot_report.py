"""Omniglot on unseen alphabets (issue 15): run the preset and its ablations, write docs/omniglot.md.

    python scripts/omniglot_report.py --commands            # print the command of every run
    python scripts/omniglot_report.py --run long no_augment # run arms one after another (1 thread each)
    python scripts/omniglot_report.py                       # rebuild docs/omniglot.md from the runs

Every arm is `metarun +experiment=omniglot_shared_lake <overrides>` in outputs/omniglot/<arm>: the
preset's data (6 shared alphabets for training, Early_Aramaic for validation, Sanskrit for test)
and its Lake runs (600 fixed 20-way 1-shot within-alphabet test runs, support and query by
distinct drawers), one setting changed. Every arm trains at 1 thread, two arms at a time on the
2 cores (each run's wall-clock and the machine it had go to its timing.json: docgen.timed_run
measures the run's share of the machine's busy CPU). The preset and its shorter
and longer versions are also evaluated with `mode=eval` on other episodes of the held-out alphabet
(`EVALS`); the other arms on the Lake runs only. The document's numbers, tables, verdicts
(metarun.stats) and figures are computed here from the runs' files; its prose is docs/src/omniglot.md.
The run data the document reads is kept beside it (docs/omniglot/runs.tar.xz, after every arm and
every rebuild), so a fresh checkout rebuilds the document without the runs' work dir.
"""
import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from docgen import keep_runs, machine_text, restore_runs, timed_run  # noqa: E402

OUT = Path(os.environ.get("OMNIGLOT_OUT") or REPO / "outputs" / "omniglot")  # the runs (a dry run of the doc: another folder)
KEPT = Path(os.environ.get("OMNIGLOT_KEPT") or REPO / "docs" / "omniglot" / "runs.tar.xz")  # their kept copy
PRESET = "omniglot_shared_lake"
DATA = os.environ.get("METARUN_DATA") or str(next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()), "data"))

# The arms. `ref` is the arm it is compared with and `claim` what the comparison tests: the
# difference error(arm) - error(ref) is claimed "less" (the arm's change helps) or "greater" (the
# change hurts, i.e. what the reference has helps). `base` is the preset's settings before the
# ablations chose its head and length (meta-learned head, 1,000 iterations); every other arm
# changes one thing of `base`, at 1 thread beside one other arm, for base's 1,000 iterations or,
# where a meta-iteration costs more (56x56 inputs, MAML, first-order MAML), for about base's
# training time. `preset` is the preset as shipped, trained alone on the 2 cores.
BASE = {"iterations": 1000, "eval_every": 250, "checkpoint_every": 250, "algo.head_init": "learned", "threads": 1}


def pinned(*changes):
    """`base`'s overrides with some changed or added ("key=value"; Hydra refuses a key given twice)."""
    overrides = dict(BASE)
    for change in changes:
        key, _, value = change.partition("=")
        overrides[key] = value
    group = [f"algo={overrides['algo']}"] if "algo" in overrides else []  # the group choice before its keys
    return group + [f"{k}={v}" for k, v in overrides.items() if k != "algo"]


ARMS = {
    "preset": dict(overrides=["threads=2"], change="the preset as shipped: prototype head, 3,000 iterations, alone on the 2 cores",
                   ref="base", claim="less", question="the preset beats base (the longer run with the prototype head)"),
    "base": dict(overrides=pinned(), change="the preset's settings before the ablations: meta-learned head, 1,000 iterations"),
    "seed1": dict(overrides=pinned("seed=1"), change="`base` with another training seed (1; every other arm: 0)",
                  ref="base", claim=None, question="how far a second training seed of base moves its error"),
    "short": dict(overrides=pinned("iterations=250", "eval_every=125", "checkpoint_every=125"),
                  change="250 iterations (a quarter of base's length)",
                  ref="base", claim="greater", question="training for base's 1,000 iterations beats 250"),
    "long": dict(overrides=pinned("iterations=2000", "eval_every=500", "checkpoint_every=500"),
                 change="2,000 iterations (twice base's length)",
                 ref="base", claim="less", question="training for 2,000 iterations beats 1,000"),
    "prototypes": dict(overrides=pinned("algo.head_init=prototypes"),
                       change="each task's head starts from its support set's class prototypes (Proto-MAML) instead of the meta-learned head",
                       ref="base", claim="less", question="starting the head from the support prototypes (Proto-MAML) helps"),
    "no_augment": dict(overrides=pinned("task.augment=none"), change="no affine distortions of training images",
                       ref="base", claim="greater", question="Koch et al.'s affine distortions help"),
    "no_rotation": dict(overrides=pinned("task.rotations=none"), change="no rotated characters in training",
                        ref="base", claim="greater", question="rotating training characters helps"),
    "rotation_classes": dict(overrides=pinned("task.rotations=as_classes"),
                             change="rotated characters as extra classes instead of one rotation per class and task",
                             ref="base", claim="greater", question="one rotation per class and task (Finn) beats rotations as classes"),
    "within_alphabet": dict(overrides=pinned("task.rotations=as_classes", "task.episodes=within_alphabet"),
                            change="training episodes from one alphabet each (rotations as classes: Tagalog's 17 characters then hold 20 ways)",
                            ref="rotation_classes", claim="less", question="within-alphabet training episodes help"),
    "finn_5way": dict(overrides=pinned("task.ways=5", "algo.inner_lr=0.4", "algo.inner_steps=1", "meta_batch_size=32",
                                       "eval_protocol=episodes"),
                      change="Finn's 5-way settings in training (5 ways, inner lr 0.4, 1 step, meta-batch 32); Lake runs with a "
                             "zero-initialised 20-way head",
                      ref="base", claim="greater", question="Finn's 20-way settings beat his 5-way ones"),
    "size56": dict(overrides=pinned("iterations=250", "eval_every=125", "checkpoint_every=125", "task.image_size=56"),
                   change="56x56 inputs, for about base's training time (250 iterations)",
                   ref="base", claim="less", question="56x56 inputs help at equal training time"),
    "maml": dict(overrides=pinned("algo=maml", "iterations=75", "eval_every=75", "checkpoint_every=75", "eval_steps=5"),
                 change="MAML (second order, every layer adapts), for about base's training time (75 iterations)",
                 ref="base", claim="less", question="MAML beats ANIL at equal training time"),
    "fomaml": dict(overrides=pinned("algo=fomaml", "iterations=300", "eval_every=150", "checkpoint_every=150", "eval_steps=5"),
                   change="first-order MAML, for about base's training time (300 iterations)",
                   ref="base", claim="less", question="first-order MAML beats ANIL at equal training time"),
}
# The character-held-out protocol of the README's first table (omniglot_shared_5w1s), re-measured.
OLD = {
    "old_anil": dict(overrides=["algo=anil", "threads=1"], change="ANIL, 600 iterations"),
    "old_maml300": dict(overrides=["algo=maml", "iterations=300", "threads=1"], change="MAML, 300 iterations"),
    "old_maml600": dict(overrides=["algo=maml", "threads=1"], change="MAML, 600 iterations"),
}
# Other episodes of the held-out alphabet, by mode=eval on the tested checkpoint of these arms.
EVALUATED = ("preset", "base", "short", "long")
EVALS = {
    "lake": ["eval_protocol=lake"],
    "ways20": ["eval_protocol=episodes", "task.ways=20"],
    "ways5": ["eval_protocol=episodes", "task.ways=5"],
}


def head():
    """The run the headline, steps and episodes come from: the preset when it ran, else its short version."""
    return "preset" if done("preset") else "base"


def train_command(arm):
    preset, overrides = (PRESET, ARMS[arm]["overrides"]) if arm in ARMS else ("omniglot_shared_5w1s", OLD[arm]["overrides"])
    return ["metarun", f"+experiment={preset}", f"task.root={DATA}", *overrides, "progress=false", f"hydra.run.dir={OUT / arm}"]


def eval_command(arm, name):
    return ["metarun", "mode=eval", f"run_dir={OUT / arm}", *EVALS[name], "threads=1", "progress=false",
            f"hydra.run.dir={OUT / arm / 'eval' / name}"]


def planned_evals(arm):
    """The mode=eval runs an arm gets: Lake's runs when its own test was other episodes, and the
    other episodes of the held-out alphabet for the preset and its shorter and longer versions."""
    if arm in OLD:
        return []
    own_lake = "eval_protocol=episodes" not in ARMS[arm]["overrides"]
    return [name for name in EVALS if (name != "lake" or not own_lake) and (name == "lake" or arm in EVALUATED)]


def run(cmd, log, run_dir):
    """Run `cmd`; its wall-clock and the machine it had go to <run_dir>/timing.json."""
    with open(log, "a") as f:
        timing = timed_run(cmd, f, {**os.environ, "WANDB_MODE": "disabled"}, cwd=REPO)
    print(f"  exit {timing['exit_code']} after {timing['wall_seconds']:.0f} s", flush=True)
    if run_dir.is_dir():
        (run_dir / "timing.json").write_text(json.dumps(timing, indent=2))
    return timing["exit_code"]


def run_arms(arms):
    OUT.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        log = OUT / f"{arm}.log"
        if not done(arm):
            rc = run(train_command(arm), log, OUT / arm)
            keep()
            if rc:
                continue
        for name in planned_evals(arm):
            if not (OUT / arm / "eval" / name / "summary.json").is_file():
                run(eval_command(arm, name), log, OUT / arm / "eval" / name)
                keep()


def keep():
    """Keep what the document reads (docgen.keep_runs): every run's metrics, summaries, configs, Lake
    runs and timing, and the checkpoint the headline's learner loads; not the other checkpoints, the
    logs or W&B dirs."""
    learner = (head(), load_json(OUT / head() / "summary.json")["tested_checkpoint"]) if done(head()) else None
    return keep_runs(OUT, KEPT, drop=lambda parts: "wandb" in parts or (len(parts) == 1 and parts[0].endswith(".log"))
                     or (parts[-1].endswith(".pt") and parts != learner))


# ---------------------------------------------------------------------------------------------
# The document: everything below reads the runs' files.

def load_json(path):
    return json.loads(Path(path).read_text())


def done(arm):
    path = OUT / arm / "summary.json"
    return path.is_file() and load_json(path).get("status") == "completed"


def lake_table(arm):
    """(per-run Lake test errors, the step count they are after, the summary they come from)."""
    import pandas as pd

    own = load_json(OUT / arm / "summary.json")
    source = (OUT / arm) if "lake/error" in own else (OUT / arm / "eval" / "lake")
    summary = load_json(source / "summary.json")
    runs = pd.read_csv(source / "lake_runs.csv")
    return runs, summary["test_steps"], summary


def lake_error(arm):
    runs, steps, _ = lake_table(arm)
    return runs[f"error_step{steps}"].tolist()


def val_curve(arm):
    """Rows of (iteration, training seconds, validation error after the best number of steps at that point)."""
    rows = []
    for line in (OUT / arm / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        accuracies = [v for k, v in row.items() if k.startswith("eval/accuracy_step") and not k.endswith("_ci95")]
        if accuracies:
            rows.append((row["iteration"], row["time"], 1 - max(accuracies)))
    return rows


def validation_error(arm, summary):
    """The arm's validation Lake error at its tested checkpoint, after the steps chosen there: what
    chose its checkpoint and test steps, and what the preset's settings are chosen on."""
    if "eval_protocol=episodes" in ARMS[arm]["overrides"]:
        return "(validated on 5-way episodes)"
    error = next(e for it, _, e in reversed(val_curve(arm)) if it == summary["tested_iteration"])
    return f"{100 * error:.1f}%"


def threads_text(n):
    return f"{n} thread{'s' if n > 1 else ''}"


def pct(mean, half):
    from metarun.stats import fmt_ci

    return fmt_ci(100 * mean, 100 * half) + "%"


def ablation_blocks(figures):
    from docgen import md_table
    from metarun.stats import compare, diff_ci, mean_ci

    rows, verdicts, seed_gap = [], [], None
    for arm, spec in ARMS.items():
        if not done(arm):
            continue
        summary = load_json(OUT / arm / "summary.json")
        errors = lake_error(arm)
        mean, half, n = mean_ci(errors)
        row = {"arm": f"`{arm}`", "what changes": spec["change"], "iterations": summary["iteration"],
               "training time": f"{summary['time'] / 60:.1f} min ({threads_text(summary['threads'])}; "
                                f"{concurrency(arm, short=True)})",
               "test steps": lake_table(arm)[1], "validation Lake error": validation_error(arm, summary),
               "Lake error (600 test runs)": pct(mean, half)}
        if spec.get("ref") and done(spec["ref"]):
            if spec["claim"] is None:  # the seed arm: no claim, the size of a training seed's effect
                d, h = diff_ci(errors, lake_error(spec["ref"]))
                verdict = "the two seeds differ" if abs(d) > h else "not resolved (the CI covers 0)"
                seed_gap = abs(d)
            else:
                verdict, d, h = compare(errors, lake_error(spec["ref"]), spec["claim"])
            row["vs"] = f"`{spec['ref']}`: {100 * d:+.1f} ± {100 * h:.1f} points"
            row["verdict"] = verdict
            verdicts.append(f"- *{spec['question']}* (`{arm}` against `{spec['ref']}`): {verdict}, difference "
                            f"{100 * d:+.1f} ± {100 * h:.1f} points of error.")
        rows.append(row)
    columns = ["arm", "what changes", "iterations", "training time", "test steps", "validation Lake error",
               "Lake error (600 test runs)", "vs", "verdict"]
    figures["ablation_table"] = md_table(rows, columns)
    figures["ablation_verdicts"] = "\n".join(verdicts) or "(no ablation runs yet)"
    figures["seed_noise"] = (
        f"Two training seeds of `base` differ by **{100 * seed_gap:.1f} points** of Lake error (`seed1` against "
        f"`base`): one measurement of a training seed's own effect. A verdict whose difference is not well above "
        f"it may be a seed's luck rather than the setting."
        if seed_gap is not None else "The second training seed of `base` (`seed1`) has not run, so the size of a "
        "training seed's own effect is not measured here.")


def curves_figure(path):
    """Validation Lake error during training, per arm whose validation is Lake's runs (finn_5way
    validates on 5-way episodes, a different measure, so it is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    arms = [arm for arm in ARMS if done(arm) and "eval_protocol=episodes" not in ARMS[arm]["overrides"]]
    colours = plt.get_cmap("tab20")
    for i, arm in enumerate(arms):
        it, seconds, err = zip(*val_curve(arm))
        style = dict(lw=2.5, color="black") if arm == head() else dict(lw=1.2, color=colours(i % 20))
        axes[0].plot(it, [100 * e for e in err], marker="o", ms=3, label=arm, **style)
        axes[1].plot([t / 60 for t in seconds], [100 * e for e in err], marker="o", ms=3, label=arm, **style)
    axes[0].set_xlabel("meta-iteration")
    axes[1].set_xlabel("training time, minutes (threads and load per arm: the ablation table)")
    axes[0].set_ylabel("validation Lake error, % (Early_Aramaic, 600 runs)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def steps_blocks(figures, path):
    """Error after each number of test-time inner steps (validation and test), the preset's choice, and fixed choices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from docgen import md_table
    from metarun.stats import compare, mean_ci

    runs, chosen, summary = lake_table(head())
    trained = load_json(OUT / head() / "summary.json")
    rows_val = [json.loads(line) for line in (OUT / head() / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows_val if r["iteration"] == trained["tested_iteration"] and "eval/accuracy" in r][-1]
    steps = sorted(int(c[len("error_step"):]) for c in runs.columns if c.startswith("error_step"))
    test = [mean_ci(runs[f"error_step{k}"]) for k in steps]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, [100 * (1 - val[f"eval/accuracy_step{k}"]) for k in steps], marker="o", label="validation (Early_Aramaic)")
    ax.errorbar(steps, [100 * m for m, _, _ in test], yerr=[100 * h for _, h, _ in test], marker="s", capsize=3,
                label="test (Sanskrit), 95% CI")
    ax.axvline(chosen, color="gray", ls="--", lw=1)
    ax.set_xlabel("test-time inner steps")
    ax.set_ylabel("Lake error, %")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    table = []
    train_steps = load_json(OUT / head() / "summary.json").get("test_steps")
    cfg = __import__("omegaconf").OmegaConf.load(OUT / head() / "config.yaml")
    for label, k in (("chosen on validation", chosen), ("as in training (algo.inner_steps)", cfg.algo.inner_steps),
                     ("eval_steps (the largest evaluated)", cfg.eval_steps), ("one step", 1)):
        m, h, _ = mean_ci(runs[f"error_step{k}"])
        row = {"test-time steps": f"{label}: {k}", "test Lake error": pct(m, h)}
        if k != chosen:
            verdict, d, hd = compare(runs[f"error_step{k}"], runs[f"error_step{chosen}"], "greater")
            row["vs chosen"] = f"{100 * d:+.1f} ± {100 * hd:.1f} points (that the chosen count is better: {verdict})"
        table.append(row)
    figures["steps_table"] = md_table(table, ["test-time steps", "test Lake error", "vs chosen"])
    figures["chosen_steps"] = str(chosen)
    assert train_steps == chosen


def preset_learner():
    from metarun.learner import load_learner

    return load_learner(OUT / head())


def lake_family(learner):
    """The Lake runs of the preset's splits, from the data (the learner itself needs none)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from metarun.lake import lake_config

    cfg = OmegaConf.merge(learner.cfg.task, {"root": DATA})
    return instantiate(lake_config(cfg), device="cpu")


def episodes_figure(learner, family, path, runs=3):
    """The first test runs: the 20 support images (one per character, one drawer), and each query image
    (another drawer) with the support character the adapted model picks: green when right, red when wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarun.evaluate import task_set

    cfg = learner.cfg
    sx, sy, qx, qy = next(task_set(family, "test", runs, cfg.eval_seed, runs))
    fig, axes = plt.subplots(3 * runs, 20, figsize=(14, 2.3 * runs))
    for r in range(runs):
        probs = learner.adapt(sx[r], sy[r]).predict(qx[r], transductive=True)
        guess = probs.argmax(-1)
        for j in range(20):
            top, mid, low = axes[3 * r, j], axes[3 * r + 1, j], axes[3 * r + 2, j]
            top.imshow(1 - sx[r, j, 0], cmap="gray", vmin=0, vmax=1)
            top.set_title(str(j + 1), fontsize=7)
            mid.imshow(1 - qx[r, j, 0], cmap="gray", vmin=0, vmax=1)
            ok = bool(guess[j] == qy[r, j])
            for side in mid.spines.values():
                side.set_edgecolor("green" if ok else "red")
                side.set_linewidth(2.5)
            low.imshow(1 - sx[r, int(guess[j]), 0], cmap="gray", vmin=0, vmax=1)
            low.set_title(f"{int(guess[j]) + 1} ({100 * float(probs[j].max()):.0f}%)", fontsize=6,
                          color="green" if ok else "red")
            for ax in (top, mid, low):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[3 * r, 0].set_ylabel(f"run {r + 1}\nsupport", fontsize=7)
        axes[3 * r + 1, 0].set_ylabel("query", fontsize=7)
        axes[3 * r + 2, 0].set_ylabel("picked", fontsize=7)
    fig.tight_layout(h_pad=0.3, w_pad=0.1)
    fig.savefig(path, dpi=75)  # 60 small images: keeps the PNG small
    plt.close(fig)


def per_image_lake_error(learner, family):
    """Lake error of the preset when each query image is classified alone (BatchNorm statistics of the
    support set and that image: `Learner.predict`'s default), over the same 600 test runs."""
    from metarun.evaluate import task_set
    from metarun.stats import mean_ci

    cfg = learner.cfg
    errors = []
    for sx, sy, qx, qy in task_set(family, "test", cfg.eval_tasks, cfg.eval_seed, cfg.eval_chunk):
        for i in range(len(sx)):
            guess = learner.adapt(sx[i], sy[i]).predict(qx[i]).argmax(-1)
            errors.append((guess != qy[i]).float().mean().item())
    return mean_ci(errors)


def preset_iterations():
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO / "conf" / "experiment" / f"{PRESET}.yaml").scales.quick.iterations


def headline_blocks(figures, learner, family):
    from metarun.stats import mean_ci

    summary = load_json(OUT / head() / "summary.json")
    mean, half, n = mean_ci(lake_error(head()))
    ways = {name: load_json(OUT / head() / "eval" / name / "summary.json") for name in ("ways5", "ways20")}
    alone = per_image_lake_error(learner, family)
    cfg = learner.cfg
    target = "met" if mean + half <= 0.15 else ("missed" if mean - half > 0.15 else "not resolved (the CI straddles 15%)")
    stand_in = head() != "preset"
    if stand_in:
        target += " for `base`; the preset itself has not run"
    minutes = summary["time"] / 60
    alone_on_machine = summary["threads"] == 2 and machine(OUT / head()) == "alone"
    time_target = (f"target <= 30 min on the 2-core machine: {'met' if minutes <= 30 else 'missed'}" if alone_on_machine else
                   "not measured alone on the 2 cores, so the 30-minute target is not judged on this run")
    five_way_head = "built from the prototypes" if cfg.algo.get("head_init", "learned") == "prototypes" else "head zero-initialised"
    figures["headline"] = "\n".join(
        ([f"- **Measured on `base`** (the preset's settings before the ablations: meta-learned head, "
          f"{summary['iteration']} iterations); the preset as shipped ({preset_iterations()} iterations) has not run."]
         if stand_in else []) + [
        f"- Lake error on the held-out alphabet (Sanskrit), {n} runs: **{pct(mean, half)}** "
        f"(target <= 15%: {target}); accuracy {pct(1 - mean, half)}.",
        f"- The same, each query image classified alone (BatchNorm statistics of the support set and that "
        f"image, `Learner.predict`'s default): {pct(alone[0], alone[1])}.",
        f"- 20-way 1-shot episodes of Sanskrit (`mode=eval eval_protocol=episodes task.ways=20`): accuracy "
        f"{pct(ways['ways20']['test/accuracy'], ways['ways20']['test/accuracy_ci95'])}; "
        f"5-way 1-shot (`task.ways=5`, {five_way_head}): "
        f"{pct(ways['ways5']['test/accuracy'], ways['ways5']['test/accuracy_ci95'])}.",
        f"- Training: {summary['iteration']} meta-iterations in {minutes:.1f} min at "
        f"{threads_text(summary['threads'])} ({concurrency(head())}); {time_target}; "
        f"the whole command, evaluations included, {summary['wall_time'] / 60:.1f} min; tested "
        f"`{summary['tested_checkpoint']}` (iteration {summary['tested_iteration']}) after {summary['test_steps']} inner "
        f"steps chosen on validation.",
    ])


def old_protocol_blocks(figures):
    from docgen import md_table

    rows = []
    for arm, spec in OLD.items():
        if not done(arm):
            continue
        s = load_json(OUT / arm / "summary.json")
        rows.append({"run": f"`omniglot_shared_5w1s` {spec['change']}", "protocol": "5-way 1-shot, held-out characters of the 8 alphabets",
                     "test accuracy": pct(s["test/accuracy"], s["test/accuracy_ci95"]), "test steps": s["test_steps"],
                     "training time": f"{s['time'] / 60:.1f} min (1 thread)"})
    if done(head()):
        s = load_json(OUT / head() / "summary.json")
        run_name = f"`omniglot_shared_lake`{'' if head() == 'preset' else ' as `base`'}, {s['iteration']} iterations"
        for name, label in (("ways5", "5-way 1-shot"), ("ways20", "20-way 1-shot")):
            e = load_json(OUT / head() / "eval" / name / "summary.json")
            rows.append({"run": run_name, "protocol": f"{label}, held-out alphabet (Sanskrit)",
                         "test accuracy": pct(e["test/accuracy"], e["test/accuracy_ci95"]), "test steps": e["test_steps"],
                         "training time": f"{s['time'] / 60:.1f} min ({threads_text(s['threads'])})"})
        rows.append({"run": run_name, "protocol": "Lake's runs: 20-way within-alphabet, new drawers, Sanskrit",
                     "test accuracy": pct(1 - s["lake/error"], s["lake/error_ci95"]), "test steps": s["test_steps"],
                     "training time": f"{s['time'] / 60:.1f} min ({threads_text(s['threads'])})"})
    if not any(done(arm) for arm in OLD):
        rows.append({"run": "`omniglot_shared_5w1s` (README's first table)", "protocol": "5-way 1-shot, held-out characters",
                     "test accuracy": "not re-measured in this session: see the README's first table",
                     "training time": f"`python scripts/omniglot_report.py --run {' '.join(OLD)}`"})
    figures["protocol_table"] = md_table(rows, ["run", "protocol", "test accuracy", "test steps", "training time"])


def machine(run_dir):
    """The machine a run had, from its timing.json (docgen.machine_text): "alone", "shared (...)", or None when not recorded."""
    path = Path(run_dir) / "timing.json"
    if not path.is_file():
        return None
    timing = load_json(path)
    text = machine_text(timing)
    return None if text == "unknown" else text


def concurrency(arm, short=False):
    """The machine the arm trained on, in words; `short`: for a table cell."""
    had = machine(OUT / arm)
    if had is None:
        return "machine not recorded" if short else "the machine it had was not recorded"
    if short:
        return f"machine {had}"
    return ("the machine alone, no other job" if had == "alone" else
            f"the machine {had}: another job could run beside it") + "; its timing.json"


def cost_block():
    if not done(head()):
        return "No training run of the preset or of `base` has finished yet."
    s = load_json(OUT / head() / "summary.json")
    per_it = s["time"] / s["iteration"]
    return (f"A meta-iteration of {'the preset' if head() == 'preset' else '`base`'} cost {per_it:.2f} s at {threads_text(s['threads'])} here "
            f"({s['iteration']} iterations in {s['time'] / 60:.1f} min, {concurrency(head())}), and the whole "
            f"{s['iteration']}-iteration run with its evaluations {s['wall_time'] / 60:.0f} min.")


def coverage_block():
    ran = [a for a in [*ARMS, *OLD] if done(a)]
    missing = [a for a in [*ARMS, *OLD] if not done(a)]
    lines = [f"Runs in this document: {', '.join(f'`{a}`' for a in ran) or 'none'} (one seed each)."]
    if missing:
        lines.append(f"Not run: {', '.join(f'`{a}`' for a in missing)}. They run with "
                     f"`python scripts/omniglot_report.py --run {' '.join(missing)}` (each arm's exact command: "
                     f"`python scripts/omniglot_report.py --commands`); the document picks them up when rebuilt.")
    return " ".join(lines)


def commands_block():
    lines = ["```bash", "# the preset on both cores (the machine otherwise idle), then its evaluations on other episodes",
             "# (what --run preset does):"]
    def shown(cmd):  # as a reader types it: repository-relative outputs, the data under $METARUN_DATA
        return " ".join(cmd).replace(f"task.root={DATA}", "task.root=$METARUN_DATA").replace(f"{REPO}/", "")
    lines += [shown(train_command("preset"))] + [shown(eval_command("preset", n)) for n in planned_evals("preset")]
    lines += ["# every other arm at 1 thread, two at a time, training and evaluations (what this script's --run does):",
              "python scripts/omniglot_report.py --commands", "python scripts/omniglot_report.py --run " + " ".join(a for a in ARMS if a != "preset"),
              "python scripts/omniglot_report.py --run " + " ".join(OLD), "# this document:", "python scripts/omniglot_report.py", "```"]
    return "\n".join(lines)


def write_doc():
    sys.path.insert(0, str(REPO / "scripts"))
    from docgen import render

    figures_dir = REPO / "docs" / "omniglot"
    figures_dir.mkdir(parents=True, exist_ok=True)
    blocks = {"cost": cost_block(), "coverage": coverage_block()}
    figures = {"curves_figure": ("curves.png", "validation Lake error during training"),
               "steps_figure": ("steps.png", "Lake error after k inner steps"),
               "episodes_figure": ("episodes.png", "three Lake test runs with predictions")}
    if done(head()):
        learner = preset_learner()
        family = lake_family(learner)
        headline_blocks(blocks, learner, family)
        steps_blocks(blocks, figures_dir / "steps.png")
        curves_figure(figures_dir / "curves.png")
        episodes_figure(learner, family, figures_dir / "episodes.png")
        blocks.update({name: f"![{alt}](omniglot/{file})" for name, (file, alt) in figures.items()})
    else:
        missing = "(not available: the preset's training run has not finished; see above for its command)"
        blocks.update({"headline": "- " + missing, "steps_table": "", "chosen_steps": "none yet"})
        blocks.update({name: missing for name in figures})
    ablation_blocks(blocks)
    old_protocol_blocks(blocks)
    blocks["commands"] = commands_block()
    render(REPO / "docs" / "src" / "omniglot.md", REPO / "docs" / "omniglot.md", blocks, script="omniglot_report.py")
    print(f"wrote {REPO / 'docs' / 'omniglot.md'}; its run data kept in {keep()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", metavar="ARM", choices=[*ARMS, *OLD], help="train (and evaluate) these arms")
    parser.add_argument("--commands", action="store_true", help="print the commands of every run and exit")
    args = parser.parse_args()
    if args.commands:
        for arm in [*ARMS, *OLD]:
            print(" ".join(train_command(arm)))
            for name in planned_evals(arm):
                print(" ".join(eval_command(arm, name)))
        return
    restore_runs(KEPT, OUT, script="omniglot_report")
    if args.run:
        run_arms(args.run)
        return
    if not any(done(arm) for arm in [*ARMS, *OLD]):  # a page of "not run" would replace the published one
        print(f"omniglot_report: no finished run in {OUT} and no kept run data at {KEPT}, so docs/omniglot.md is left as "
              f"it is; run the arms first (`python scripts/omniglot_report.py --run {' '.join(ARMS)}`)", file=sys.stderr)
        raise SystemExit(2)
    write_doc()


if __name__ == "__main__":
    main()
