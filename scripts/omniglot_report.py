"""Omniglot on unseen alphabets (issue 15): run the preset and its ablations, write docs/omniglot.md.

    python scripts/omniglot_report.py --commands            # print the command of every run
    python scripts/omniglot_report.py --run base no_augment # run arms one after another (1 thread each)
    python scripts/omniglot_report.py                       # rebuild docs/omniglot.md from the runs

Every arm is `metarun +experiment=omniglot_shared_lake <overrides>` in outputs/omniglot/<arm>: the
preset's data (6 shared alphabets for training, Early_Aramaic for validation, Sanskrit for test)
and its Lake runs (600 fixed 20-way 1-shot within-alphabet test runs, support and query by
distinct drawers), one setting changed. The `preset` arm is the preset itself, trained alone on
the 2 cores (`cpujob -n 2`); the others are shorter runs at 1 thread (two at a time). After
training, each arm is also evaluated with `mode=eval` on other episodes of the held-out alphabet
(`EVALS`). The document's numbers, tables, verdicts (metarun.stats) and figures are computed here
from the runs' files; its prose is docs/src/omniglot.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "omniglot"
PRESET = "omniglot_shared_lake"
DATA = os.environ.get("METARUN_DATA") or str(next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()), "data"))

# name: (overrides of the preset, what the arm changes). Shorter arms compare with `base`.
SHORT = ["iterations=2000", "eval_every=500", "checkpoint_every=500", "threads=1"]
ARMS = {
    "preset": ([], "the preset as shipped (trained alone on the 2 cores)"),
    "base": (SHORT, "the preset's settings, 2,000 iterations at 1 thread"),
    "no_augment": (SHORT + ["task.augment=none"], "no affine distortions of training images"),
    "no_rotation": (SHORT + ["task.rotations=none"], "no rotated characters in training"),
    "rotation_classes": (SHORT + ["task.rotations=as_classes"], "rotated characters as extra classes (not one rotation per class and task)"),
    "within_alphabet": (SHORT + ["task.rotations=as_classes", "task.episodes=within_alphabet"],
                        "training episodes from one alphabet each (rotations as classes, so Tagalog's 17 characters hold 20 ways)"),
    "finn_5way": (SHORT + ["task.ways=5", "algo.inner_lr=0.4", "algo.inner_steps=1", "meta_batch_size=32", "eval_protocol=episodes"],
                  "Finn's 5-way settings in training (5 ways, inner lr 0.4, 1 step, meta-batch 32); Lake runs with a zero-initialised 20-way head"),
    "size56": (["iterations=500", "eval_every=250", "checkpoint_every=250", "threads=1", "task.image_size=56"],
               "56x56 inputs, for the same training time (500 iterations)"),
    "maml": (["algo=maml", "iterations=150", "eval_every=150", "checkpoint_every=150", "threads=1", "eval_steps=5"],
             "MAML (second order, all layers adapt), for the same training time (150 iterations)"),
    "fomaml": (["algo=fomaml", "iterations=600", "eval_every=300", "checkpoint_every=300", "threads=1", "eval_steps=5"],
               "first-order MAML, for the same training time (600 iterations)"),
}
# Other episodes of the held-out alphabet, by mode=eval on each arm's tested checkpoint.
EVALS = {
    "lake": ["eval_protocol=lake"],
    "ways20": ["eval_protocol=episodes", "task.ways=20"],
    "ways5": ["eval_protocol=episodes", "task.ways=5"],
}


def train_command(arm):
    overrides, _ = ARMS[arm]
    return ["metarun", f"+experiment={PRESET}", f"task.root={DATA}", *overrides, "progress=false",
            f"hydra.run.dir={OUT / arm}"]


def eval_command(arm, name):
    return ["metarun", "mode=eval", f"run_dir={OUT / arm}", *EVALS[name], f"hydra.run.dir={OUT / arm / 'eval' / name}"]


def run(cmd, log):
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.call(cmd, cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled"}, stdout=f, stderr=subprocess.STDOUT)
    print(f"  exit {rc} after {time.time() - t0:.0f} s", flush=True)
    return rc


def run_arms(arms):
    OUT.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        log = OUT / f"{arm}.log"
        if not (OUT / arm / "summary.json").is_file() or json.loads((OUT / arm / "summary.json").read_text())["status"] != "completed":
            if run(train_command(arm), log):
                continue
        for name in EVALS:
            if not (OUT / arm / "eval" / name / "summary.json").is_file():
                run(eval_command(arm, name), log)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", metavar="ARM", choices=list(ARMS), help="train (and evaluate) these arms first")
    parser.add_argument("--commands", action="store_true", help="print the commands of every run and exit")
    args = parser.parse_args()
    if args.commands:
        for arm in ARMS:
            print(" ".join(train_command(arm)))
            for name in EVALS:
                print(" ".join(eval_command(arm, name)))
        return
    if args.run:
        run_arms(args.run)
        return


if __name__ == "__main__":
    main()
