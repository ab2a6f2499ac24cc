"""Seconds per meta-iteration of the learned adapt rules against MAML on conv4 (issue 14).

    python scripts/bench_adapt_rules.py [--repeats 7] [--threads 2] [--ways 5] [--json out.json]
    python scripts/bench_adapt_rules.py --threads 2      # with nothing else running on the machine

Times `MAML.step(batch)` (second order, Adam outer optimizer, the rule's tensors in their own
group) with `algo.adapt_rule` = fixed (MAML), meta_sgd, sparse and threshold, on the shape of
the Omniglot preset `omniglot_shared_5w1s`: conv4 with 64 channels on 28x28 grayscale, N-way
1-shot with 1 query image per class, meta-batch 32, one inner step (`--ways`, `--meta-batch`,
`--steps`, `--vmap-chunk` change it). Every rule starts from the same weights, and the four
take turns within every repeat (a change in machine load hits all of them alike); the figure is
the median over `--repeats` after one warm-up. Task sampling is not timed (random images of the
right shape: timing does not depend on the pixels). Prints the ratios to MAML and the targets:
sparse and threshold at most 1.15x MAML, Meta-SGD at most 1.1x.
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from docgen import cpu_name, machine_busy_seconds  # scripts/docgen.py, beside this script

from metarun.algos.maml import MAML
from metarun.models.conv4 import Conv4

RULES = ("fixed", "meta_sgd", "sparse", "threshold")
TARGETS = {"meta_sgd": 1.10, "sparse": 1.15, "threshold": 1.15}


class ImageTask:
    classification = True

    @staticmethod
    def loss_fn(outputs, targets):
        return F.cross_entropy(outputs, targets)


def batch(meta_batch, ways, shots, query, generator):
    def part(per_class):
        x = torch.rand(meta_batch, ways * per_class, 1, 28, 28, generator=generator)
        y = torch.arange(ways).repeat_interleave(per_class).expand(meta_batch, -1).contiguous()
        return x, y

    return (*part(shots), *part(query))


def make_algos(args):
    algos = {}
    for rule in RULES:
        torch.manual_seed(0)
        model = Conv4((1, 28, 28), args.ways)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        algos[rule] = MAML(model, optimizer, ImageTask(), ["*"], args.steps, 0.4, vmap_chunk=args.vmap_chunk,
                           adapt_rule=rule, rule_lr=0.01 if rule != "fixed" else None)
    return algos


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1, help="inner steps")
    parser.add_argument("--vmap-chunk", type=int, default=None, help="algo.vmap_chunk")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = load_start = os.getloadavg()
    busy_start, cpu_start = machine_busy_seconds(), time.process_time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"conv4 (64 channels, 28x28), {args.ways}-way 1-shot, 1 query per class, meta-batch {args.meta_batch}, "
          f"{args.steps} inner step(s), second order, vmap_chunk {args.vmap_chunk}")
    algos = make_algos(args)
    data = batch(args.meta_batch, args.ways, 1, 1, torch.Generator().manual_seed(0))
    times = {rule: [] for rule in RULES}
    for i in range(args.repeats + 1):
        for rule, algo in algos.items():
            t0 = time.perf_counter()
            algo.step(data)
            if i:  # the first round warms up
                times[rule].append(time.perf_counter() - t0)
    median = {rule: statistics.median(t) for rule, t in times.items()}
    print(f"\n{'adapt_rule':<12}{'median s/iter':>15}{'min':>9}{'max':>9}{'x MAML':>9}")
    for rule in RULES:
        print(f"{rule:<12}{median[rule]:>15.3f}{min(times[rule]):>9.3f}{max(times[rule]):>9.3f}{median[rule] / median['fixed']:>8.3f}x")
    print("\n== targets")
    met = {}
    for rule, bound in TARGETS.items():
        ratio = median[rule] / median["fixed"]
        met[rule] = ratio <= bound
        print(f"{'MET ' if met[rule] else 'MISS'}  {rule} at most {bound}x MAML per meta-iteration: {ratio:.3f}x")
    load = os.getloadavg()
    # This process's CPU seconds over the machine's busy seconds meanwhile: near 1 when nothing else ran.
    share = (time.process_time() - cpu_start) / (machine_busy_seconds() - busy_start) if busy_start is not None else None
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (f"; this process had {share:.0%} of the machine's busy CPU seconds" if share is not None else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "ways": args.ways, "meta_batch": args.meta_batch, "steps": args.steps,
                       "repeats": args.repeats, "seconds": times, "median": median,
                       "ratio": {r: median[r] / median["fixed"] for r in RULES}, "met": met, "cpu": cpu_name(),
                       "machine_share": share, "load_start": load_start[0], "load_end": load[0]}, f, indent=2)


if __name__ == "__main__":
    main()
