"""`threads=auto` (the default): how many CPU threads torch uses for a run, and why.

Intra-op threads pay only when single ops are large. On small ops they add a synchronisation per
op, and when another process holds a core every op waits for the descheduled thread: on 2 cores
with one busy process, 2 threads made every workload about 2x slower than 1 thread
(scripts/bench_threads.py). The rule, first match wins:

1. `threads=N`: N.
2. a small workload: 1. Small = the model's forward FLOPs over the inputs of one meta-batch below
   SMALL_FLOPS (sinusoid, linear regression); a second thread never made those faster.
3. inside a Slurm allocation (SLURM_CPUS_PER_TASK): its CPUs (other jobs on the node are not ours).
4. a job of a sweep that runs jobs side by side on this machine (joblib launcher, submitit_local):
   the CPUs divided by the jobs running at once.
5. otherwise the cores idle at start, measured over IDLE_SAMPLE seconds (at least 1).
OMP_NUM_THREADS, when set (schedulers and joblib workers set it), caps the count.
`threads=null` keeps torch's own default (all cores).
"""
import copy
import os
import time

import torch

from metarun.tasks import RLTaskFamily

SMALL_FLOPS = 1e7   # forward FLOPs per meta-batch; measured boundary in scripts/bench_threads.py
IDLE_SAMPLE = 0.2   # seconds over which idle cores are measured

# The current setting and why: what summary.json records (torch's thread count is process-wide too).
last = {"threads": None, "reason": "not set by metarun"}


def apply(cfg, task, model, algo):
    """Set torch's thread count for `cfg.threads` (an int, "auto" or null); returns (threads, reason)."""
    setting = cfg.get("threads", "auto")
    if setting is None:
        n, reason = torch.get_num_threads(), "threads=null: torch's default"
    elif setting != "auto":
        n, reason = int(setting), f"threads={setting}"
    else:
        n, reason = choose(task, model, algo, cfg.meta_batch_size)
    torch.set_num_threads(n)
    last.update(threads=n, reason=reason)
    return n, reason


def choose(task, model, algo, meta_batch_size):
    """(threads, reason) by the rule of the module docstring."""
    cap = _env_int("OMP_NUM_THREADS")
    if cap == 1:
        return 1, "auto: OMP_NUM_THREADS=1"
    flops = meta_batch_flops(task, model, algo, meta_batch_size)
    cores = cpus()
    if flops is not None and flops < SMALL_FLOPS:
        return 1, f"auto: small workload ({flops / 1e6:.3g} MFLOP per meta-batch forward < {SMALL_FLOPS / 1e6:g})"
    size = "" if flops is None else f"{flops / 1e6:.3g} MFLOP per meta-batch forward; "
    slurm = _env_int("SLURM_CPUS_PER_TASK")
    jobs, launcher = parallel_jobs(cores)
    if slurm:
        n, reason = min(slurm, cores), f"auto: {size}Slurm allocation of {slurm} CPUs"
    elif jobs > 1:
        n, reason = max(1, cores // jobs), f"auto: {size}{launcher} sweep, {jobs} jobs side by side on {cores} cores"
    else:
        idle = idle_cores()
        n = max(1, min(cores, round(idle)))
        reason = f"auto: {size}{idle:.1f} of {cores} cores idle at start"
    if cap and n > cap:
        n, reason = cap, f"{reason}; capped by OMP_NUM_THREADS={cap}"
    return n, reason


def meta_batch_flops(task, model, algo, meta_batch_size):
    """Forward FLOPs of `model` over the inputs of one meta-batch, or None when it cannot tell.

    Supervised tasks: the support and query inputs of one meta-batch drawn with a throwaway
    generator (sampling is pure; the run's generator and torch's RNG are untouched). RL task
    families: meta-batch x trajectories x horizon observations, without touching the env.
    Counted on the meta device: no memory, no compute, no change to the model.
    """
    try:
        shape = tuple(task.input_shape)
        if isinstance(task, RLTaskFamily):
            examples = meta_batch_size * getattr(algo, "trajectories", 1) * getattr(task, "horizon", 1)
        else:
            with torch.random.fork_rng(devices=[]):
                batch = task.sample(meta_batch_size, torch.Generator().manual_seed(0), "train")
            inputs = (batch[0], batch[2]) if isinstance(batch, (tuple, list)) and len(batch) == 4 else ()
            examples = sum(x.shape[: x.ndim - len(shape)].numel() for x in inputs)
            if not examples:
                return None
        from torch.utils.flop_counter import FlopCounterMode

        meta = copy.deepcopy(model).to("meta").requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            meta(torch.zeros(2, *shape, device="meta"))
        return counter.get_total_flops() / 2 * examples
    except Exception:  # noqa: BLE001 - a heuristic must never stop a run: fall back to the load rule
        return None


def cpus():
    """CPUs this process may run on (its affinity mask, e.g. a cgroup or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(seconds=IDLE_SAMPLE):
    """Cores idle over the next `seconds` (from /proc/stat; elsewhere CPUs minus the 1-minute load)."""
    def times():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total (without guest time), idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(seconds)
        total1, idle1 = times()
        machine = os.cpu_count() or 1
        idle = machine * (idle1 - idle0) / max(1, total1 - total0)
        return min(float(cpus()), idle)
    except (OSError, ValueError, IndexError):
        return max(0.0, cpus() - os.getloadavg()[0])


def parallel_jobs(cores):
    """(jobs running at once, launcher name) when this is a job of a parallel sweep, else (1, None)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        if not HydraConfig.initialized():
            return 1, None
        hc = HydraConfig.get()
        target = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
        if "joblib" in target.lower():
            n = int(OmegaConf.select(hc, "launcher.n_jobs", default=-1) or -1)
            return (n if n > 0 else max(1, cores + 1 + n)), "joblib"
        if "submitit" in target.lower() and "local" in target.lower():
            return cores, "submitit_local"  # it starts every job of the sweep at once
    except Exception:  # noqa: BLE001 - no Hydra context: a plain run
        pass
    return 1, None


def _env_int(name):
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None
