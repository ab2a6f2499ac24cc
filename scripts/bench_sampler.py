"""Episode sampling speed of the image task families: prints tasks/s.

    python scripts/bench_sampler.py [--root DIR] [--threads 1 2] [--seconds 3]

Uses Omniglot under --root (default: METARUN_DATA, else ../shared/data beside the repo), with the
image cache in a temporary folder, so the first line also times the one-off decode. Target:
>= 5,000 5-way 1-shot tasks/s on 2 cores (learn2learn's TaskDataset: ~230/s). The last lines time
the Lake preset's augmented episodes (omniglot_shared_lake: 20-way, Koch's affine distortions) and
metarun's batched affine against torchvision's `affine` called image by image on the same batch.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from metarun.tasks.images import affine, affine_params
from metarun.tasks.omniglot import Omniglot


def rate(task, meta_batch, seconds):
    generator = torch.Generator().manual_seed(0)
    task.sample(meta_batch, generator, "train")  # warm-up
    tasks, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        task.sample(meta_batch, generator, "train")
        tasks += meta_batch
    return tasks / (time.perf_counter() - start)


def median_seconds(fn, repeats=7):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def affine_ratio(images, params):
    """Seconds of torchvision's affine image by image and of metarun's batched affine, same batch."""
    def one_by_one():
        for image, (a, tx, ty, scale, sx, sy) in zip(images, params.tolist()):
            TF.affine(image, angle=a, translate=[tx, ty], scale=scale, shear=[sx, sy],
                      interpolation=TF.InterpolationMode.BILINEAR, fill=0)
    return median_seconds(one_by_one), median_seconds(lambda: affine(images, params))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.environ.get("METARUN_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--root", default=default_root)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        Omniglot(root=args.root, cache_dir=cache)
        print(f"first construction (decode + resize + cache write): {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        Omniglot(root=args.root, cache_dir=cache)
        print(f"second construction (cache hit): {time.perf_counter() - start:.2f} s")
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"torch threads: {threads}, load average: {os.getloadavg()[0]:.2f} (other processes slow this down)")
            for ways, shots, query, meta_batch in [(5, 1, 1, 32), (5, 1, 15, 32), (5, 5, 15, 32), (20, 1, 5, 16), (20, 5, 15, 16)]:
                task = Omniglot(root=args.root, cache_dir=cache, ways=ways, shots=shots, query=query)
                print(f"  omniglot 28x28 rotations {ways}-way {shots}-shot, {query} query/class, meta-batch {meta_batch}: "
                      f"{rate(task, meta_batch, args.seconds):,.0f} tasks/s")
            lake = Omniglot(root=args.root, cache_dir=cache, ways=20, shots=1, query=1, rotations="per_task", split="alphabet",
                            val_alphabets=["Early_Aramaic"], test_alphabets=["Sanskrit"], drawers="disjoint", augment="affine")
            print(f"  omniglot_shared_lake's training episodes (20-way 1-shot, 1 query, affine), meta-batch 16: "
                  f"{rate(lake, 16, args.seconds):,.0f} tasks/s")
            images = lake.splits["train"][0][:640]  # one meta-batch of that preset: 16 x 20 x 2 uint8 images
            looped, batched = affine_ratio(images, affine_params(len(images), 28, torch.Generator().manual_seed(0)))
            print(f"  affine on 640 uint8 28x28 images: torchvision image by image {1000 * looped:.1f} ms, batched "
                  f"{1000 * batched:.1f} ms: {looped / batched:.1f}x")


if __name__ == "__main__":
    main()
