"""Seconds per meta-iteration of metarun's algorithms against two references (issue 2).

    python scripts/bench_step.py [--repeats 7] [--threads 2] [--only sinusoid|conv4] [--device cpu|cuda]

For each setting it times `algo.step(batch)` of metarun's own classes (MAML/FOMAML/ANIL with
the Adam outer optimizer of conf/optim/adam.yaml, Reptile) and, beside it,
  * loop:  the same algorithm as a per-task Python loop over cloned modules, learn2learn style
           (clone the module, torch.autograd.grad(create_graph=True) per task, query losses
           summed and backpropagated), and
  * plain: one forward+backward of the same model over every support and query example of the
           meta-batch as one big batch, plus the optimizer step: the floor for any meta-learner.
Times are medians over `--repeats` runs after a warm-up, all in this one process, on one fixed
batch (task sampling is not timed); a sinusoid run is a block of 20 steps. It also checks that metarun's MAML meta-gradient equals the
per-task loop's (in float64 on 4 tasks, where both must agree to rounding), so that the
comparison is between two computations of the same thing. `--device cuda` runs the same comparison
on a GPU (the clock then waits for the device to finish, torch.cuda.synchronize, before every reading).
"""
import argparse
import copy
import os
import statistics
import time

from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metarun.algos.maml import MAML
from metarun.algos.reptile import Reptile
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.tasks.sinusoid import Sinusoid

# The outer optimizer exactly as metarun builds it by default (optim=adam).
ADAM = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "optim" / "adam.yaml")

TARGETS = {  # (setting, algorithm, reference, bound, kind)
    "sinusoid MAML at least 8x faster than the per-task loop": ("sinusoid", "maml", "loop", 8.0, "speedup"),
    "sinusoid MAML with algo.compile=true at least 8x faster than the per-task loop": ("sinusoid", "maml-compiled", "loop", 8.0, "speedup"),
    "conv4 MAML at most 1.6x the plain-step floor": ("conv4", "maml", "plain", 1.6, "ratio"),
    "conv4 ANIL (5 inner steps) at most 1.1x the plain-step floor": ("conv4", "anil", "plain", 1.1, "ratio"),
}


class RandomOmniglot:
    """Omniglot-shaped random tasks: N-way K-shot 28x28 grayscale, Q query images per class."""

    input_shape = (1, 28, 28)
    classification = True

    def __init__(self, ways=5, shots=1, query=15):
        self.ways, self.shots, self.query, self.output_dim = ways, shots, query, ways

    @staticmethod
    def loss_fn(outputs, targets):
        return F.cross_entropy(outputs, targets)

    def sample(self, n, generator, split="train"):
        def images_and_labels(per_class):
            x = torch.rand(n, self.ways * per_class, *self.input_shape, generator=generator)
            y = torch.arange(self.ways).repeat_interleave(per_class).expand(n, -1).contiguous()
            return x, y

        return (*images_and_labels(self.shots), *images_and_labels(self.query))


# The per-task references. `clone` follows learn2learn's clone_module: a shallow copy of every
# submodule whose parameters are replaced by differentiable clones, so gradients reach the
# original parameters; `update` swaps in the adapted tensors.

def clone(module):
    new = copy.copy(module)
    new._parameters = {k: (p.clone() if p is not None else None) for k, p in module._parameters.items()}
    new._buffers = dict(module._buffers)
    new._modules = {k: clone(m) for k, m in module._modules.items()}
    return new


def update(module, fast):
    for name, value in fast.items():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            owner = owner._modules[part]
        owner._parameters[leaf] = value


def loop_maml(model, loss_fn, batch, adapted, steps, lr, first_order):
    """Mean post-adaptation query loss, one task at a time (learn2learn's MAML/ANIL examples)."""
    head_only = all(n.startswith("head.") for n in adapted)
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        if head_only:  # ANIL: body features once per set, only a clone of the head adapts
            learner, hs, hq = clone(model.head), model.body(sx), model.body(qx)
            names = [n[len("head."):] for n in adapted]
        else:
            learner, hs, hq, names = clone(model), sx, qx, adapted
        for _ in range(steps):
            params = _named(learner, names)
            grads = torch.autograd.grad(loss_fn(learner(hs), sy), list(params.values()), create_graph=not first_order)
            update(learner, {k: p - lr * g for (k, p), g in zip(params.items(), grads)})
        total = total + loss_fn(learner(hq), qy)
    return total / len(batch[0])


def _named(module, names):
    out = {}
    for name in names:
        owner, *path = module, *name.split(".")
        for part in path[:-1]:
            owner = owner._modules[part]
        out[name] = owner._parameters[path[-1]]
    return out


def loop_maml_step(model, optimizer, loss_fn, batch, adapted, steps, lr, first_order):
    optimizer.zero_grad(set_to_none=True)
    loop_maml(model, loss_fn, batch, adapted, steps, lr, first_order).backward()
    optimizer.step()


def loop_reptile_step(model, loss_fn, batch, steps, lr, epsilon):
    """Reptile one task at a time: deepcopy the model, k SGD steps, interpolate toward the mean."""
    phis = []
    for sx, sy, qx, qy in zip(*batch):
        learner = copy.deepcopy(model)
        for _ in range(steps):
            params = list(learner.parameters())
            grads = torch.autograd.grad(loss_fn(learner(sx), sy), params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(lr * g)
        phis.append([p.detach() for p in learner.parameters()])
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(epsilon * (torch.stack([phi[i] for phi in phis]).mean(0) - p))


def plain_step(model, optimizer, loss_fn, batch):
    """One forward+backward over all support and query examples as one batch, plus the update."""
    sx, sy, qx, qy = batch
    x = torch.cat([sx.flatten(0, 1), qx.flatten(0, 1)])
    y = torch.cat([sy.flatten(0, 1), qy.flatten(0, 1)])
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()


def median_seconds(fns, repeats, block, clock):
    """Per function, the median over `repeats` of the mean time of `block` consecutive calls.

    One warm-up block each first; then the functions take turns within every repeat, so that a
    change in machine load between repeats hits all of them alike.
    """
    times = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(block):
                fn()
            if i:
                times[name].append((clock() - t0) / block)
    return {name: statistics.median(t) for name, t in times.items()}


def meta_gradient_diff(make_model, task, batch, adapted, steps, lr):
    """Max |grad metarun - grad per-task loop| of the second-order MAML meta-gradient, in float64."""
    model = make_model().double()  # on the batch's device (make_model moves it)
    batch = [t.double() if t.is_floating_point() else t for t in batch]
    algo = MAML(model, None, task, adapted, steps, lr)
    algo.meta_loss(batch)["loss"].backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loop_maml(model, task.loss_fn, batch, algo.adapted, steps, lr, first_order=False).backward()
    scale = max(g.abs().max().item() for g in ours)
    diff = max((a - p.grad).abs().max().item() for a, p in zip(ours, model.parameters()))
    return diff, scale


SETTINGS = {
    # name: (task, model factory, meta-batch, {label: (kind, adapt, inner steps, inner lr)}, steps per timing)
    "sinusoid": (
        Sinusoid, lambda task: MLP(task.input_shape, task.output_dim), 25,
        {"maml": ("maml", ["*"], 1, 0.01), "fomaml": ("fomaml", ["*"], 1, 0.01),
         "anil": ("maml", ["head.*"], 1, 0.01), "reptile": ("reptile", ["*"], 5, 0.01),
         "maml-compiled": ("maml_compiled", ["*"], 1, 0.01)},  # algo.compile=true (compiled in the warm-up)
        20,  # steps per timed block: one sinusoid step takes milliseconds
    ),
    "conv4": (
        RandomOmniglot, lambda task: Conv4(task.input_shape, task.output_dim), 32,
        {"maml": ("maml", ["*"], 1, 0.4), "fomaml": ("fomaml", ["*"], 1, 0.4),
         "anil": ("maml", ["head.*"], 5, 0.4), "anil-1step": ("maml", ["head.*"], 1, 0.4),
         "reptile": ("reptile", ["*"], 5, 0.01)},
        1,
    ),
}


def bench_setting(name, repeats, clock, device="cpu"):
    task_cls, make, meta_batch, algos, block = SETTINGS[name]
    targets = {algo for setting, algo, ref, _, _ in TARGETS.values() if setting == name and ref == "plain"}
    task = task_cls()
    batch = [t.to(device) for t in task.sample(meta_batch, torch.Generator().manual_seed(0), "train")]
    print(f"\n== {name}: meta-batch {meta_batch}, support {tuple(batch[0].shape[1:])}, query {tuple(batch[2].shape[1:])}")

    def fresh():
        torch.manual_seed(0)
        model = make(task).to(device)
        return model, instantiate(ADAM)(model.parameters())

    check = [t[:4] for t in batch]
    diff, scale = meta_gradient_diff(lambda: fresh()[0], task, check, ["*"], 1, algos["maml"][3])
    print(f"MAML meta-gradient, metarun vs per-task loop (float64, first 4 tasks): max abs diff {diff:.1e}"
          f" (largest entry {scale:.1e})", flush=True)
    plain_model, plain_opt = fresh()
    plain = lambda: plain_step(plain_model, plain_opt, task.loss_fn, batch)  # noqa: E731
    print(f"{'algorithm':<12}{'steps':>6}{'metarun s':>12}{'loop s':>12}{'plain s':>12}{'loop/metarun':>14}{'metarun/plain':>15}")
    results, plain_times = {}, []
    for label, (kind, adapt, steps, lr) in algos.items():
        model, opt = fresh()
        if kind == "reptile":
            algo = Reptile(model, opt, task, adapt, steps, lr, epsilon=0.1, inner_data="support", schedule="constant")  # the loop's variant
            ref = lambda: loop_reptile_step(model, task.loss_fn, batch, steps, lr, 0.1)  # noqa: E731
        else:
            first_order = kind == "fomaml"
            algo = MAML(model, opt, task, adapt, steps, lr, first_order=first_order, compile=kind == "maml_compiled")
            ref = lambda: loop_maml_step(model, opt, task.loss_fn, batch, algo.adapted, steps, lr, first_order)  # noqa: E731
        fns = {"metarun": lambda: algo.step(batch), "loop": ref}
        # The floor is re-timed beside every algorithm that has a target against it (and the first).
        if label in targets or not plain_times:
            fns["plain"] = plain
        t = median_seconds(fns, repeats, block, clock)
        if "plain" in t:
            plain_times.append(t["plain"])
        t.setdefault("plain", statistics.median(plain_times))
        results[label] = t
        print(f"{label:<12}{steps:>6}{t['metarun']:>12.4f}{t['loop']:>12.4f}{t['plain']:>12.4f}"
              f"{t['loop'] / t['metarun']:>13.1f}x{t['metarun'] / t['plain']:>14.2f}x", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (sinusoid: blocks of 20 steps)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--only", choices=list(SETTINGS), default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]: where models and batches live")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier than wall time when other jobs share the cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if torch.device(args.device).type == "cuda":
        if args.clock == "cpu":
            parser.error("--clock cpu measures this process's CPU time, not the GPU's: use --clock wall with --device cuda")
        print(f"device {torch.cuda.get_device_name(args.device)}")

        def clock():  # kernels run asynchronously: wait for them before reading the time
            torch.cuda.synchronize(args.device)
            return time.perf_counter()
    results = {name: bench_setting(name, args.repeats, clock, args.device) for name in ([args.only] if args.only else SETTINGS)}
    print("\n== targets")
    for text, (setting, algo, ref, bound, kind) in TARGETS.items():
        if setting not in results:
            continue
        r = results[setting][algo]
        if kind == "speedup":
            value, ok = r[ref] / r["metarun"], r[ref] / r["metarun"] >= bound
        else:
            value, ok = r["metarun"] / r[ref], r["metarun"] / r[ref] <= bound
        print(f"{'MET ' if ok else 'MISS'}  {text}: {value:.2f}x")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
