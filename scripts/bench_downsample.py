"""Seconds per meta-iteration of conv4 with max-pooling against stride-2 convolutions (issue 15).

    python scripts/bench_downsample.py [--threads 1] [--repeats 5]

Finn et al. (2017) used stride-2 convolutions without pooling for Omniglot (learn2learn's
OmniglotCNN too) and max-pooling for mini-ImageNet. For each Omniglot setting of Finn's presets
(5-way 1-shot: meta-batch 32, 1 inner step; 20-way 1-shot: meta-batch 16, 5 inner steps; 28x28,
1 query image per class) and each algorithm, it times `algo.step` of the same algorithm on the
same random batch with `model.downsample=maxpool` (and flattened features, metarun's conv4 as
before) and `model.downsample=stride` (features averaged over positions, Finn's Omniglot net),
in one process, taking turns (`median_seconds` of scripts/bench_step.py), and prints the ratio.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from metarun.algos.maml import MAML
from metarun.models.conv4 import Conv4

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import ADAM, RandomOmniglot, median_seconds  # noqa: E402

SETTINGS = {"5-way 1-shot, meta-batch 32, 1 step": (5, 32, 1, 0.4), "20-way 1-shot, meta-batch 16, 5 steps": (20, 16, 5, 0.1)}
ALGOS = {"maml": (["*"], False), "fomaml": (["*"], True), "anil": (["head.*"], False)}
NETS = {"maxpool": dict(downsample="maxpool", global_pool=False), "stride": dict(downsample="stride", global_pool=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| setting | algorithm | maxpool s/it | stride s/it | maxpool / stride |\n|---|---|---|---|---|")
    for setting, (ways, meta_batch, steps, lr) in SETTINGS.items():
        task = RandomOmniglot(ways=ways, shots=1, query=1)
        generator = torch.Generator().manual_seed(0)
        batch = task.sample(meta_batch, generator)
        for algo_name, (adapt, first_order) in ALGOS.items():
            steps_of = {}
            for net, options in NETS.items():
                torch.manual_seed(0)
                model = Conv4(task.input_shape, ways, **options)
                algo = MAML(model, instantiate(ADAM)(model.parameters()), task, adapt, steps, lr, first_order=first_order)
                steps_of[net] = (lambda a=algo: a.step(batch))
            t = median_seconds(steps_of, args.repeats, 1, time.perf_counter)
            print(f"| {setting} | {algo_name} | {t['maxpool']:.3f} | {t['stride']:.3f} | {t['maxpool'] / t['stride']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
