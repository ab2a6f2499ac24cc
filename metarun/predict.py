"""`metarun-predict`: adapt a trained run to a support folder and classify query images.

    metarun-predict RUN_DIR --support DIR --query PATH [PATH ...] [--steps N] [--output preds.csv]

DIR holds one folder per class, named by the class, of image files. Each query PATH is an image
file or a folder searched recursively for image files. One line per query image goes to stdout:
path, predicted class, its probability (tab-separated); `--output` also writes a CSV with the
probability of every class. Only the run dir is needed: the preprocessing of training (resize,
invert, scale) is read from its preprocess.json. Mistakes end in one line
``metarun-predict: error: ...`` on stderr with exit code 2.
"""
import argparse
import io
import sys
import warnings
from pathlib import Path

import pandas as pd

from metarun.checkpoint import atomic_write
from metarun.config import ConfigError, DataError

# What torchvision.io.decode_image reads; other files in a folder (notes, .DS_Store) are skipped.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".heic"}


def image_files(folder, recursive=False):
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))


def support_set(folder):
    """(paths, labels) from a folder of class folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--support {folder} is not a folder (expected one folder per class of image files)")
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"--support {folder} has {len(classes)} class folder(s); a few-shot task needs at least 2 "
                        "(one folder per class, holding that class's images)")
    paths, labels = [], []
    for d in classes:
        files = image_files(d)
        if not files:
            raise DataError(f"support class folder {d} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [d.name] * len(files)
    return paths, labels


def query_set(items):
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            found = image_files(item, recursive=True)
            if not found:
                raise DataError(f"--query folder {item} has no image files")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise DataError(f"--query {item} does not exist")
    return paths


def parser():
    p = argparse.ArgumentParser(
        prog="metarun-predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adapt a trained metarun run to a support folder (one folder per class) and classify query images.",
        epilog="example:\n  metarun-predict outputs/runs/2026-11-22/10-00-00 --support shots/ --query new/ --steps 10 --output preds.csv")
    p.add_argument("run_dir", help="a training run dir (config.yaml, preprocess.json and checkpoint.pt; the data set is not needed)")
    p.add_argument("--support", required=True, metavar="DIR", help="one folder per class, named by the class, of images")
    p.add_argument("--query", required=True, nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's algo.inner_steps)")
    p.add_argument("--output", metavar="CSV", help="also write path, label, probability and every class's probability")
    p.add_argument("--transductive", action="store_true",
                   help="normalise BatchNorm over all query images together (the meta-test protocol) instead of "
                        "each image with the support set")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change the run's config before loading, e.g. algo.inner_lr=0.1 (repeatable; a task.* override "
                        "rebuilds the task family from its data)")
    return p


def fail(message):
    print(f"metarun-predict: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    p = parser()
    p.error = fail  # one line, no usage block
    args = p.parse_args(argv)
    from metarun.learner import load_learner  # after parsing: --help stays fast

    try:
        if args.steps is not None and args.steps < 0:
            raise ConfigError("--steps", args.steps, "an integer >= 0")
        if args.output and not Path(args.output).absolute().parent.is_dir():
            raise DataError(f"cannot write --output {args.output}: its folder does not exist")
        support_paths, labels = support_set(args.support)
        query_paths = query_set(args.query)
        learner = load_learner(args.run_dir, args.override)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the zero-init note is printed below instead
            learner.adapt(support_paths, labels, steps=args.steps)
        if learner.zero_init and learner.head_init == "learned":
            print(f"metarun-predict: note: {len(learner.classes)} classes, the run's head was trained for "
                  f"{learner.trained_state[learner.zero_init[0]].shape[0]}: the head is zero-initialised "
                  "(Ye & Chao, 2021) and learned from the support set alone", file=sys.stderr)
        probs = learner.predict(query_paths, transductive=args.transductive)
    except (ConfigError, DataError) as e:
        fail(e)
    best = probs.argmax(-1)
    table = pd.DataFrame({"path": [str(q) for q in query_paths], "label": [learner.classes[i] for i in best.tolist()],
                          "probability": probs.max(-1).values.numpy()})
    for j, c in enumerate(learner.classes):
        table[f"prob:{c}"] = probs[:, j].numpy()
    for row in table.itertuples(index=False):
        print(f"{row.path}\t{row.label}\t{row.probability:.4f}")
    if args.output:
        text = io.StringIO()
        table.to_csv(text, index=False)
        try:
            atomic_write(args.output, lambda f: f.write(text.getvalue().encode()))
        except OSError as e:
            fail(f"cannot write --output {args.output}: {e}")
    return 0


if __name__ == "__main__":
    main()
