"""The thread rule of `threads=auto` (metarun/threads.py), measured: quiet and beside a busy process.

    python scripts/bench_threads.py [--part steps|runs|both] [--iterations 2000] [--repeats 2]

Run it with nothing else on the machine: "loaded" then means exactly one other busy
process (a Python busy loop this script starts) beside the measured one. OMP_NUM_THREADS and
MKL_NUM_THREADS are removed first, so torch and `threads=auto` see a plain machine.

steps: seconds per `algo.step` of several workloads (built from metarun's own configs) at 1 and 2
       threads, quiet and loaded, beside the workload's forward FLOPs per meta-batch and what
       `threads=auto` chooses: the measurements behind SMALL_FLOPS and the idle-core rule.
runs:  the default `metarun` command (sinusoid MAML, `iterations` shortened) end to end with the
       default threads (auto), threads=1 and threads=2, quiet and loaded, and the targets of
       issue 18: default no slower than threads=1 quiet, at most 2x slower loaded than quiet.
Omniglot rows need the data ($METARUN_DATA); without it they are skipped.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch reads them
    os.environ.pop(name, None)

import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from metarun import threads  # noqa: E402
from metarun.train import build  # noqa: E402

WORKLOADS = {  # name: overrides
    "sinusoid MAML (default)": [],
    "sinusoid MAML, MLP 100-100": ["model.hidden=[100,100]"],
    "sinusoid MAML, MLP 400-400": ["model.hidden=[400,400]"],
    "linear regression ANIL": ["algo=anil", "task=linear_regression", "model=linear"],
    "navigation MAML-RL": ["+experiment=maml_rl_navigation"],
    "Omniglot 5w1s ANIL, conv4 8 ch": ["+experiment=omniglot_shared_5w1s", "algo=anil", "model.channels=8"],
    "Omniglot 5w1s ANIL, conv4 64 ch": ["+experiment=omniglot_shared_5w1s", "algo=anil"],
}
# A busy loop that ends with its parent (or after an hour), so a killed benchmark leaves nothing behind.
BUSY = ("import os, time\nparent, end = os.getppid(), time.time() + 3600\n"
        "while time.time() < end and os.getppid() == parent:\n    for _ in range(100000):\n        pass\n")


class Others:
    """Cores used by other processes over a `with` block: the machine's busy time (/proc/stat) minus
    this process's and its children's CPU time. The loaded figures should show ~1 (the busy
    process); anything else is someone else's job running beside the benchmark."""

    def __enter__(self):
        self.start = self.snapshot()
        return self

    def __exit__(self, *exc):
        (t0, busy0, own0), (t1, busy1, own1) = self.start, self.snapshot()
        self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))

    @staticmethod
    def snapshot():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick
        me, children = os.times()[:2], os.times()[2:4]
        return time.time(), busy, sum(me) + sum(children)


class Busy:
    """`n` busy-loop processes for the duration of a `with` block.

    Before it, wait (up to `wait` seconds) until the machine is quiet: other jobs would
    otherwise make a "quiet" figure a loaded one. `idle_before` records
    the cores idle just before, printed beside every figure.
    """

    wait = 300.0

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        deadline = time.time() + self.wait
        while (idle := threads.idle_cores(1.0)) < threads.cpus() - 0.2 and time.time() < deadline:
            pass
        self.idle_before = idle
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(self.n)]
        time.sleep(0.5 if self.n else 0)  # let them get going
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "progress=false", "threads=1"])
    GlobalHydra.instance().clear()
    return cfg


def seconds_per_step(algo, task, cfg, generator, n_threads, budget):
    """(median seconds of `algo.step` over at least 3 steps and `budget` seconds after one warm-up
    step, cores used by other processes meanwhile)."""
    torch.set_num_threads(n_threads)
    algo.step(task.sample(cfg.meta_batch_size, generator, "train"))
    times, start = [], time.perf_counter()
    with Others() as others:
        while len(times) < 3 or time.perf_counter() - start < budget:
            batch = task.sample(cfg.meta_batch_size, generator, "train")
            t0 = time.perf_counter()
            algo.step(batch)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), others.cores


def bench_steps(budget, repeats):
    print(f"\n== steps: s per algo.step at 1 and 2 threads (median over >= {budget:g} s, best of {repeats}); "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'workload':<34}{'MFLOP/batch':>12}{'auto quiet':>11}{'auto loaded':>12}"
          f"{'quiet t1':>10}{'quiet t2':>10}{'t2/t1':>7}{'loaded t1':>11}{'loaded t2':>11}{'t2/t1':>7}{'others q/l':>12}")
    data = os.environ.get("METARUN_DATA")
    for name, overrides in WORKLOADS.items():
        if "Omniglot" in name and not (data and (Path(data) / "omniglot-py").is_dir()):
            print(f"{name:<34}  skipped: no Omniglot under METARUN_DATA")
            continue
        cfg = config(overrides)
        task, model, _, algo = build(cfg)
        flops = threads.meta_batch_flops(task, model, algo, cfg.meta_batch_size)
        generator = torch.Generator().manual_seed(0)
        row = {}
        for load in (0, 1):
            with Busy(load):
                row[load, "auto"] = threads.choose(task, model, algo, cfg.meta_batch_size)[0]
                others = []
                for _ in range(repeats):  # interleaved, so a drift in speed hits both alike
                    for n in (1, 2):
                        t, o = seconds_per_step(algo, task, cfg, generator, n, budget)
                        row[load, n] = min(row.get((load, n), t), t)
                        others.append(o)
                row[load, "others"] = max(others)
        print(f"{name:<34}{(flops or float('nan')) / 1e6:>12.3g}{row[0, 'auto']:>11}{row[1, 'auto']:>12}"
              f"{row[0, 1]:>10.4f}{row[0, 2]:>10.4f}{row[0, 2] / row[0, 1]:>7.2f}"
              f"{row[1, 1]:>11.4f}{row[1, 2]:>11.4f}{row[1, 2] / row[1, 1]:>7.2f}"
              f"{row[0, 'others']:>6.2f}/{row[1, 'others']:.2f}", flush=True)
    print(f"threads=auto: 1 thread below {threads.SMALL_FLOPS / 1e6:g} MFLOP per meta-batch forward, else the idle cores. "
          "others q/l: the most cores other processes used during a quiet / loaded timing (loaded: ~1, the busy process)")


def time_run(args, workdir):
    """(whole-command seconds, training seconds, threads) of one `metarun` run."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    t0 = time.perf_counter()
    with Others() as others:
        result = subprocess.run(["metarun", *args, "progress=false", f"hydra.run.dir={out}"], cwd=workdir,
                                capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.perf_counter() - t0
    if result.returncode:
        sys.exit(f"metarun {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return wall, summary["time"], summary["threads"], summary.get("threads_reason", ""), others.cores


def bench_runs(iterations, repeats):
    print(f"\n== runs: the default `metarun` with iterations={iterations}, whole command (s) and training (s); "
          f"median of {repeats}, settings interleaved")
    settings = {"default (auto)": [], "threads=1": ["threads=1"], "threads=2": ["threads=2"]}
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for load, label in ((0, "quiet"), (1, "1 busy process")):
            with Busy(load) as busy:
                print(f"{label}: {busy.idle_before:.2f} cores idle before", flush=True)
                runs = {name: [] for name in settings}
                for _ in range(repeats):
                    for name, extra in settings.items():
                        runs[name].append(time_run([f"iterations={iterations}", *extra], workdir))
            for name, rs in runs.items():
                wall = statistics.median(r[0] for r in rs)
                train = statistics.median(r[1] for r in rs)
                results[load, name] = wall
                print(f"{label:<16}{name:<16} whole {wall:7.1f} s  training {train:7.1f} s  "
                      f"{iterations / train:7.0f} it/s  others {max(r[4] for r in rs):.2f} cores  "
                      f"threads {rs[0][2]} ({rs[0][3]})", flush=True)
    quiet = results[0, "default (auto)"] / results[0, "threads=1"]
    loaded = results[1, "default (auto)"] / results[0, "default (auto)"]
    loaded_vs_1 = results[1, "default (auto)"] / results[1, "threads=1"]
    print("\n== targets (whole-command time)")
    print(f"{'MET ' if quiet <= 1.05 else 'MISS'}  quiet: default / threads=1 = {quiet:.2f} (no slower: <= 1.05, run-to-run noise)")
    print(f"{'MET ' if loaded <= 2.0 else 'MISS'}  one busy process: default loaded / default quiet = {loaded:.2f} (<= 2)")
    print(f"      one busy process: default / threads=1 = {loaded_vs_1:.2f}; "
          f"threads=2 / threads=1 = {results[1, 'threads=2'] / results[1, 'threads=1']:.2f}")


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the `with Busy` blocks on kill
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["steps", "runs", "both"], default="both")
    parser.add_argument("--iterations", type=int, default=2000, help="iterations of the timed default runs (default 2000)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of steps per step timing")
    parser.add_argument("--wait-quiet", type=float, default=300.0,
                        help="seconds to wait for an idle machine before each block (default 300)")
    args = parser.parse_args()
    Busy.wait = args.wait_quiet
    load = os.getloadavg()
    print(f"load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.part in ("steps", "both"):
        bench_steps(args.budget, args.repeats)
    if args.part in ("runs", "both"):
        bench_runs(args.iterations, args.repeats)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
