"""Resume reproduces the uninterrupted run exactly, for every kind of run: supervised MAML and
Reptile (its minibatches come from the global RNG), an image task, MAML-RL (its rollouts draw
action noise from the global RNG), a run that meta-tests best.pt, and a compiled meta-loss.

The interruption is a KeyboardInterrupt raised inside the N-th step, after a checkpoint and with
log lines past it: what Ctrl-C does, in-process so the test stays fast (tests/test_cli.py kills a
real process with SIGKILL).
"""
import json
import os
import signal

import pytest
import torch

from metarun.train import Stopped, run
from test_algos import make_cfg


def interrupt_at(monkeypatch, cls, n):
    step, calls = cls.step, []

    def step_or_interrupt(self, batch):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(cls, "step", step_or_interrupt)
    return lambda: monkeypatch.setattr(cls, "step", step)


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_resume_equals_uninterrupted(tmp_path, monkeypatch, cls, overrides, stop_at):
    cfg = make_cfg(*overrides)
    full = run(cfg, tmp_path / "full")
    restore = interrupt_at(monkeypatch, cls, stop_at)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    restore()
    interrupted = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert interrupted["status"] == "interrupted"
    assert rows(tmp_path / "resumed")[-1]["iteration"] > torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["iteration"]
    resumed = run(make_cfg(*overrides, "resume=true"), tmp_path / "resumed")
    assert rows(tmp_path / "resumed") == rows(tmp_path / "full")
    tested = {k: v for k, v in full.items() if k.startswith("test/")}
    assert tested and tested == {k: v for k, v in resumed.items() if k.startswith("test/")}
    assert resumed["tested_iteration"] == full["tested_iteration"]
    return full, resumed


FAST = ["iterations=12", "eval_every=4", "log_every=2", "checkpoint_every=4", "eval_tasks=10", "eval_steps=2"]


def test_resume_of_maml_with_best_pt(tmp_path, monkeypatch):
    from metarun.algos.maml import MAML

    full, _ = check_resume_equals_uninterrupted(tmp_path, monkeypatch, MAML, [*FAST, "test_checkpoint=best", "optim.lr=0.01"], 7)
    assert full["tested_checkpoint"] == "best.pt"


def test_sigterm_stops_at_the_end_of_its_iteration_with_a_checkpoint_there_and_resume_loses_nothing(tmp_path, monkeypatch):
    # As a Slurm time limit: SIGTERM arrives inside step 7 (checkpoints every 4). The run finishes
    # iteration 7, writes its checkpoint there rather than dying with 3 iterations past the one at 4,
    # and resuming from it gives the uninterrupted run.
    from metarun.algos.maml import MAML

    cfg = make_cfg(*FAST, "optim.lr=0.01")
    full = run(cfg, tmp_path / "full")
    step, calls = MAML.step, []

    def step_then_sigterm(self, batch):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between two statements: the step itself completes
        return step(self, batch)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(MAML, "step", step_then_sigterm)
    with pytest.raises(Stopped):
        run(cfg, tmp_path / "stopped")
    monkeypatch.setattr(MAML, "step", step)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only as long as the training loop
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"].startswith("stopped by SIGTERM at iteration 7;")
    assert summary["checkpoint_iteration"] == 7 and "from the checkpoint at iteration 7" in summary["error"]
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["iteration"] == 7
    resumed = run(make_cfg(*FAST, "optim.lr=0.01", "resume=true"), tmp_path / "stopped")
    assert rows(tmp_path / "stopped") == rows(tmp_path / "full")
    assert {k: v for k, v in resumed.items() if k.startswith("test/")} == {k: v for k, v in full.items() if k.startswith("test/")}


def test_resume_of_reptile_paper_mode(tmp_path, monkeypatch):
    from metarun.algos.reptile import Reptile

    check_resume_equals_uninterrupted(tmp_path, monkeypatch, Reptile, [*FAST, "algo=reptile", "algo.inner_batch=5"], 11)


def test_resume_of_maml_rl(tmp_path, monkeypatch):
    from metarun.algos.maml_rl import MAMLRL

    overrides = [*FAST, "algo=maml_rl", "task=navigation2d", "model=gaussian_mlp", "model.hidden=[8]", "task.horizon=8",
                 "algo.trajectories=3", "meta_batch_size=3", "eval_tasks=3", "algo.fisher_subsample=0.5"]
    check_resume_equals_uninterrupted(tmp_path, monkeypatch, MAMLRL, overrides, 7)


def test_resume_of_an_image_run(tmp_path, monkeypatch):
    from metarun.algos.maml import MAML
    from test_omniglot import make_omniglot

    root = make_omniglot(tmp_path / "data")
    overrides = [*FAST, "task=omniglot", "model=conv4", "model.channels=4", "model.blocks=2", f"task.root={root}",
                 f"task.cache_dir={tmp_path / 'cache'}", "task.image_size=8", "task.ways=2", "task.query=2",
                 "task.rotations=false", "task.split=character", "meta_batch_size=2", "algo.inner_lr=0.3"]
    check_resume_equals_uninterrupted(tmp_path, monkeypatch, MAML, overrides, 11)


@pytest.mark.slow
def test_compiled_meta_loss_trains_like_the_eager_one_and_resumes(tmp_path, monkeypatch):
    # algo.compile=true: torch.compile of the meta-loss gives the eager run's figures (to float
    # tolerance: compiled kernels may reorder sums) and resumes exactly.
    from metarun.algos.maml import MAML

    compiled = [*FAST, "algo.compile=true"]
    full, _ = check_resume_equals_uninterrupted(tmp_path / "c", monkeypatch, MAML, compiled, 7)
    eager = run(make_cfg(*FAST), tmp_path / "eager")
    assert full["test/loss"] == pytest.approx(eager["test/loss"], rel=1e-4)
    eager_rows, compiled_rows = rows(tmp_path / "eager"), rows(tmp_path / "c" / "full")
    assert [r["iteration"] for r in eager_rows] == [r["iteration"] for r in compiled_rows]
    for a, b in zip(eager_rows, compiled_rows):
        if "train/loss" in a:
            assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-3, abs=1e-5)


def test_wall_time_of_a_resumed_run_counts_every_process(tmp_path, monkeypatch):
    # The first process is slowed by sleeps a second process never sees: a summary that counted only
    # the last process would report less than the first one's checkpointed wall-clock.
    import time

    from metarun.algos.maml import MAML

    cfg = make_cfg(*FAST)
    step = MAML.step

    def slow_step(self, batch):
        time.sleep(0.25)
        return step(self, batch)

    monkeypatch.setattr(MAML, "step", slow_step)
    interrupt_at(monkeypatch, MAML, 10)  # wraps slow_step: checkpoint at 8 (2 s of sleeps), stop at 10
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run")
    monkeypatch.setattr(MAML, "step", step)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 8 and saved["wall_time"] >= saved["time"] >= 8 * 0.25
    started = time.perf_counter()
    resumed = run(make_cfg(*FAST, "resume=true"), tmp_path / "run")
    second = time.perf_counter() - started
    assert second < saved["wall_time"]  # what the old summary would have reported is too small
    assert saved["wall_time"] + (resumed["time"] - saved["time"]) <= resumed["wall_time"] <= saved["wall_time"] + second
