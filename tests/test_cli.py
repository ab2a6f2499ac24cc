"""End to end through the `metarun` command, as a user runs it."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import run_metarun

FAST = ["iterations=40", "eval_every=20", "log_every=10", "eval_tasks=20", "checkpoint_every=20"]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.slow
def test_default_run_prints_final_figures_and_run_dir(tmp_path):
    result = run_metarun(cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final: test/loss=" in result.stdout
    run_dir = Path(result.stdout.split("run dir: ")[-1].strip())
    assert run_dir.is_dir() and str(run_dir).startswith(str(tmp_path / "outputs" / "runs"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iteration"] == 6000
    rows = metrics(run_dir)
    # MAML on sinusoids: after one inner step the held-out MSE is far below where it started.
    assert rows[-1]["eval/loss_step1"] < 0.5 * rows[0]["eval/loss_step1"]
    assert "%|" in result.stderr  # the progress bar


def test_small_run_writes_metrics_summary_checkpoint(tmp_path):
    result = run_metarun(*FAST, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    rows = metrics(run_dir)
    assert [r["iteration"] for r in rows] == [0, 10, 20, 30, 40]
    assert {"time", "train/loss", "eval/loss_step1_ci95", "oracle/inner_grad", "oracle/second_order"} <= set(rows[-1])
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert f"run dir: {run_dir}" in result.stdout


def test_multirun_2x2_makes_four_run_dirs(tmp_path):
    result = run_metarun("-m", "algo.inner_steps=1,2", "seed=0,1", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dirs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert len(dirs) == 4
    seen = set()
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed"
        overrides = tuple(sorted((d / ".hydra" / "overrides.yaml").read_text().split()))
        seen.add(overrides)
        steps = int([o for o in overrides if "inner_steps" in o][0].split("=")[1])
        assert metrics(d)[-1]["oracle/inner_grad"] == 40 * 25 * steps
    assert len(seen) == 4


def test_a_diverged_run_does_not_cancel_the_rest_of_the_sweep(tmp_path):
    # Job 0 (lr 1e6) turns non-finite; job 1 must still run, and the sweep must exit 1 naming job 0.
    result = run_metarun("-m", "optim=sgd", "optim.lr=1e6,0.01", "iterations=200", "eval_every=1000", "log_every=50",
                         "eval_tasks=10", "checkpoint_every=50", "progress=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in (tmp_path / "sweep").iterdir()
                 if d.is_dir() and d.name.isdigit()}
    assert {name: s["status"] for name, s in summaries.items()} == {"0": "failed", "1": "completed"}
    assert summaries["0"]["failure"] == "non_finite" and "failure" not in summaries["1"]
    lines = result.stderr.strip().splitlines()
    assert any("non-finite" in line and "the sweep goes on" in line for line in lines)
    assert lines[-1] == "metarun: error: 1 of 2 runs of the sweep in sweep failed (0); their summary.json says why"
    assert "Traceback" not in result.stderr


def kill_past_checkpoint(args, run_dir, cwd, checkpoint=50, sig=signal.SIGKILL):
    """Start `metarun *args` and send it `sig` once `run_dir`'s log holds lines past its first checkpoint
    (`checkpoint`), which a resume must discard. Waits on the files, not on a timer. Returns the
    process's exit code and stderr."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["metarun", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run_dir / "metrics.jsonl"

    def logged_past_checkpoint():
        if not (run_dir / "checkpoint.pt").exists() or not log.exists():
            return False
        rows = [line for line in log.read_text().splitlines() if line.endswith("}")]
        return bool(rows) and json.loads(rows[-1])["iteration"] > checkpoint

    deadline = time.time() + 300
    while not logged_past_checkpoint() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate()
    return proc.returncode, err


def test_a_killed_sweep_resumes_job_by_job(tmp_path):
    # As Slurm preempting a sweep: job 0 diverges, job 1 is killed past a checkpoint, job 2 never
    # starts. `-m ... resume=true` skips job 0, resumes job 1, starts job 2; job 1 then equals an
    # uninterrupted run, and resuming the finished sweep again changes nothing.
    sweep = ["-m", "optim=sgd", "optim.lr=1e6,0.01,0.02", "iterations=300", "eval_every=100", "log_every=10",
             "eval_tasks=20", "checkpoint_every=50", "progress=false", "hydra.sweep.dir=sweep"]
    kill_past_checkpoint(sweep, tmp_path / "sweep" / "1", cwd=tmp_path)
    assert json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["failure"] == "non_finite"
    assert metrics(tmp_path / "sweep" / "1")[-1]["iteration"] < 300, "job 1 finished before it was killed"
    assert not (tmp_path / "sweep" / "2").exists()

    resumed = run_metarun(*sweep, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr[-2000:]  # the sweep still holds job 0's failure
    assert "sweep/0: skipped: diverged at iteration" in resumed.stderr
    assert "sweep/2: no checkpoint: starting it" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    alone = run_metarun(*[a for a in sweep if a not in ("-m", "optim.lr=1e6,0.01,0.02", "hydra.sweep.dir=sweep")],
                        "optim.lr=0.01", "hydra.run.dir=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert without_time(metrics(tmp_path / "sweep" / "1")) == without_time(metrics(tmp_path / "alone"))
    summaries = [json.loads((tmp_path / "sweep" / str(j) / "summary.json").read_text()) for j in range(3)]
    assert [s["status"] for s in summaries] == ["failed", "completed", "completed"]
    assert summaries[2]["iteration"] == 300

    again = run_metarun(*sweep, "resume=true", cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.count("skipped") == 3, again.stderr[-2000:]
    assert [json.loads((tmp_path / "sweep" / str(j) / "summary.json").read_text()) for j in range(3)] == summaries


def test_resuming_a_sweep_needs_its_dir_and_the_same_settings(tmp_path):
    missing = run_metarun("-m", "seed=0,1", "resume=true", cwd=tmp_path)
    assert missing.returncode == 2 and "hydra.sweep.dir" in missing.stderr and "Traceback" not in missing.stderr
    absent = run_metarun("-m", "seed=0,1", "resume=true", "hydra.sweep.dir=nowhere", cwd=tmp_path)
    assert absent.returncode == 2 and "nowhere holds no sweep" in absent.stderr
    assert run_metarun("-m", "seed=0,1", *FAST, "progress=false", "hydra.sweep.dir=sweep", cwd=tmp_path).returncode == 0
    swapped = run_metarun("-m", "seed=1,0", *FAST, "progress=false", "resume=true", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert swapped.returncode == 2 and "holds a run with other settings (seed: 0 there, 1 now)" in swapped.stderr
    assert "Traceback" not in swapped.stderr


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    args = ["iterations=300", "eval_every=100", "log_every=10", "eval_tasks=20", "checkpoint_every=50", "progress=false"]
    full = run_metarun(*args, "hydra.run.dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    kill_past_checkpoint([*args, "hydra.run.dir=killed"], tmp_path / "killed", cwd=tmp_path)
    assert (tmp_path / "killed" / "checkpoint.pt").exists()
    killed_rows = metrics(tmp_path / "killed")
    assert killed_rows[-1]["iteration"] < 300, "the run finished before it was killed"

    resumed = run_metarun("resume=true", "run_dir=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert without_time(metrics(tmp_path / "killed")) == without_time(metrics(tmp_path / "full"))
    a = json.loads((tmp_path / "killed" / "summary.json").read_text())
    b = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert a["test/loss"] == b["test/loss"] and a["status"] == "completed"


def test_sigterm_stops_a_run_with_a_checkpoint_at_the_iteration_it_reached(tmp_path):
    # A Slurm time limit sends SIGTERM: the run ends its iteration, checkpoints it, and says so on one line.
    args = ["iterations=100000", "eval_every=100", "log_every=10", "eval_tasks=20", "checkpoint_every=50", "progress=false",
            "hydra.run.dir=stopped"]
    code, err = kill_past_checkpoint(args, tmp_path / "stopped", cwd=tmp_path, sig=signal.SIGTERM)
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    reached = summary["iteration"]
    assert code == 143 and err.count("\n") == 1 and "Traceback" not in err, err[-2000:]
    assert f"stopped by SIGTERM at iteration {reached}; `metarun resume=true run_dir=" in err
    assert f"continues from the checkpoint at iteration {reached}" in err
    assert summary["status"] == "interrupted" and summary["checkpoint_iteration"] == reached > 50
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["iteration"] == reached


def test_resume_refuses_corrupt_and_mismatched_checkpoints(tmp_path):
    assert run_metarun(*FAST, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    mismatched = run_metarun(*FAST, "resume=true", "hydra.run.dir=run", "model.hidden=[20,20]", cwd=tmp_path)
    assert mismatched.returncode == 2 and "different model" in mismatched.stderr and "Traceback" not in mismatched.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    corrupt = run_metarun(*FAST, "resume=true", "hydra.run.dir=run", cwd=tmp_path)
    assert corrupt.returncode == 2 and "corrupt" in corrupt.stderr and str(ckpt) in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
    missing = run_metarun(*FAST, "resume=true", "hydra.run.dir=empty", cwd=tmp_path)
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr


@pytest.mark.parametrize("override,expected", [
    ("algo=foo", "algo='foo' is not allowed: must be one of anil, fomaml, "),  # more algorithms sort after fomaml
    ("task=imagenet22k", "task='imagenet22k' is not allowed"),
    ("algo.inner_steps=-1", "algo.inner_steps=-1 is not allowed: must be an integer >= 0"),
    ("algo.inner_steps=1.5", "algo.inner_steps=1.5 is not allowed"),
    ("algo.inner_lr=0", "algo.inner_lr=0 is not allowed: must be a number > 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1 is not allowed: must be a number > 0"),
    ("meta_batch_size=0", "meta_batch_size=0 is not allowed: must be an integer >= 1"),
    ("algo.adapt=[decoder.*]", "algo.adapt='decoder.*' is not allowed: glob patterns over the model's parameters: body.1.weight"),
    ("algo.no_such_key=3", "algo.no_such_key"),
    ("seed=abc", "seed='abc' is not allowed"),
])
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, override, expected):
    result = run_metarun(override, *FAST, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("metarun: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_inside_a_sweep_fails_before_any_job_runs(tmp_path):
    result = run_metarun("-m", "algo.inner_lr=0.01,-1", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2 and "algo.inner_lr=-1" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_wandb_offline_writes_run_files(tmp_path):
    result = run_metarun("logger=[jsonl,wandb]", *FAST, "hydra.run.dir=run", cwd=tmp_path,
                         env={"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")) and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_wandb_auto_mode_without_credentials_goes_offline(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_MODE": ""}
    result = run_metarun("logger=wandb", *FAST, "hydra.run.dir=run", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # logger=wandb alone keeps the local record too


def test_each_job_of_a_sequential_multirun_gets_its_own_wandb_run(tmp_path):
    result = run_metarun("-m", "seed=0,1", "logger=wandb", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path,
                         env={"WANDB_MODE": "offline", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [(tmp_path / "sweep" / job / "wandb_id.txt").read_text() for job in ("0", "1")]
    assert ids[0] != ids[1]
    for job, run_id in zip(("0", "1"), ids):
        assert list((tmp_path / "sweep" / job / "wandb").glob(f"offline-run-*-{run_id}"))
