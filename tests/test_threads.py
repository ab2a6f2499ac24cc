"""threads=auto: the rule of metarun/threads.py, and what a run records about it."""
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from conftest import run_metarun
from metarun import threads
from metarun.train import build


def config(*overrides, hydra=False):
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "progress=false"], return_hydra_config=hydra)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch):
    """Each test starts from a plain machine (no OMP_NUM_THREADS, no Slurm) and leaves torch as it was."""
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before)


def test_meta_batch_flops_of_the_default_sinusoid_mlp():
    cfg = config()
    task, model, _, algo = build(cfg)
    # MLP 1-40-40-1: 2 * (1*40 + 40*40 + 40*1) multiply-adds per example; 25 tasks x (10 support + 10 query).
    assert threads.meta_batch_flops(task, model, algo, cfg.meta_batch_size) == 2 * (40 + 1600 + 40) * 25 * 20
    # Counting draws from neither the run's RNG nor the model: the same batch and weights as before.
    state = torch.get_rng_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    threads.meta_batch_flops(task, model, algo, cfg.meta_batch_size)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_rl_workload_counts_trajectories_times_horizon():
    cfg = config("+experiment=maml_rl_navigation")
    task, model, _, algo = build(cfg)
    hidden = list(cfg.model.hidden)
    widths = [2, *hidden, 2]
    per_example = 2 * sum(a * b for a, b in zip(widths, widths[1:]))
    examples = cfg.meta_batch_size * cfg.algo.trajectories * task.horizon
    assert threads.meta_batch_flops(task, model, algo, cfg.meta_batch_size) == per_example * examples


def test_small_workload_gets_one_thread_whatever_is_idle(monkeypatch):
    monkeypatch.setattr(threads, "idle_cores", lambda: 8.0)
    monkeypatch.setattr(threads, "cpus", lambda: 8)
    cfg = config()
    task, model, _, algo = build(cfg)
    n, reason = threads.choose(task, model, algo, cfg.meta_batch_size)
    assert n == 1 and "small workload (1.68 MFLOP" in reason


@pytest.mark.parametrize("idle,cpus,expected", [(2.0, 2, 2), (1.1, 2, 1), (0.2, 2, 1), (3.6, 4, 4), (6.0, 4, 4)])
def test_large_workload_gets_the_idle_cores(monkeypatch, idle, cpus, expected):
    monkeypatch.setattr(threads, "idle_cores", lambda: idle)
    monkeypatch.setattr(threads, "cpus", lambda: cpus)
    cfg = config("model.hidden=[400,400]")  # 2 * 161,200 FLOPs x 500 examples = 161 MFLOP per meta-batch
    task, model, _, algo = build(cfg)
    n, reason = threads.choose(task, model, algo, cfg.meta_batch_size)
    assert n == expected and "161 MFLOP" in reason and "idle" in reason


def test_omp_num_threads_caps_the_choice(monkeypatch):
    monkeypatch.setattr(threads, "idle_cores", lambda: 4.0)
    monkeypatch.setattr(threads, "cpus", lambda: 4)
    cfg = config("model.hidden=[400,400]")
    task, model, _, algo = build(cfg)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose(task, model, algo, cfg.meta_batch_size) == (2, "auto: 161 MFLOP per meta-batch forward; "
                                                                         "4.0 of 4 cores idle at start; capped by OMP_NUM_THREADS=2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose(task, model, algo, cfg.meta_batch_size) == (1, "auto: OMP_NUM_THREADS=1")


def test_joblib_sweep_job_divides_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "idle_cores", lambda: 4.0)
    monkeypatch.setattr(threads, "cpus", lambda: 4)
    cfg = config("model.hidden=[400,400]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hydra=True)
    task, model, _, algo = build(cfg)
    HydraConfig.instance().set_config(cfg)
    try:
        assert threads.parallel_jobs(4) == (2, "joblib")
        n, reason = threads.choose(task, model, algo, cfg.meta_batch_size)
    finally:
        HydraConfig.instance().cfg = None
    assert n == 2 and "joblib sweep, 2 jobs side by side on 4 cores" in reason
    assert threads.parallel_jobs(4) == (1, None)  # outside a Hydra job: a plain run


def test_slurm_allocation_is_used_without_looking_at_the_node(monkeypatch):
    monkeypatch.setattr(threads, "idle_cores", lambda: pytest.fail("the node's load is not ours to measure"))
    monkeypatch.setattr(threads, "cpus", lambda: 8)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    cfg = config("model.hidden=[400,400]")
    task, model, _, algo = build(cfg)
    assert threads.choose(task, model, algo, cfg.meta_batch_size)[0] == 6


def test_idle_cores_from_two_proc_stat_samples(monkeypatch, tmp_path):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (jiffies, all CPUs)."""
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 150 890 10 0 0 0 0 0\n"])
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: __import__("io").StringIO(next(samples))
                        if path == "/proc/stat" else real_open(path, *a, **k))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "cpus", lambda: 4)
    # 300 jiffies passed, 100 of them idle or waiting on I/O: a third of 4 CPUs.
    assert threads.idle_cores(seconds=0) == pytest.approx(4 / 3)


def test_threads_n_wins_and_bad_values_are_refused(tmp_path):
    cfg = config("threads=3")
    build(cfg)
    assert torch.get_num_threads() == 3 and threads.last == {"threads": 3, "reason": "threads=3"}
    for bad, expected in (("threads=0", "threads=0 is not allowed"), ("threads=many", "threads='many' is not allowed")):
        result = run_metarun(bad, cwd=tmp_path)
        assert result.returncode == 2 and expected in result.stderr and "auto" in result.stderr, result.stderr


def test_run_records_threads_and_why(tmp_path):
    """Through the command on a plain environment: the default run takes 1 thread and says why; threads=2 wins."""
    plain = {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}
    for args, threads_, reason in ((["hydra.run.dir=auto"], 1, "auto: small workload (1.68 MFLOP"),
                                   (["threads=2", "hydra.run.dir=two"], 2, "threads=2")):
        result = run_metarun("iterations=5", "eval_tasks=5", "progress=false", *args, cwd=tmp_path, env=plain)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((tmp_path / args[-1].split("=")[1] / "summary.json").read_text())
        assert summary["threads"] == threads_ and summary["threads_reason"].startswith(reason)
