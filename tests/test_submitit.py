"""The Slurm path without Slurm: Hydra's submitit_local launcher runs the same submitit code
(pickled job, separate process, its own logs) that submitit_slurm runs on a cluster."""
import json

import pytest

from conftest import REPO, run_metarun
from metarun import report


@pytest.mark.slow  # two jobs in fresh processes, each starting W&B offline: ~40 s
def test_two_job_sweep_through_submitit_local_writes_runs_wandb_group_and_a_report(tmp_path):
    sweep = tmp_path / "multirun"
    result = run_metarun(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
        "algo=anil", "task=linear_regression", "model=linear", "algo.inner_steps=1,2", "iterations=6", "log_every=2",
        "eval_every=3", "eval_tasks=4", "eval_steps=2", "meta_batch_size=4", "progress=false", "threads=1",
        "logger=[jsonl,wandb]", f"hydra.sweep.dir={sweep}", cwd=REPO, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    # submitit ran the jobs: its folder holds each job's pickled call, result and logs.
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2
    for job in ("0", "1"):
        run_dir = sweep / job
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["group"] == str(sweep)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == [0, 2, 3, 4, 6]
        assert all(r["train/grad_norm"] > 0 for r in rows[1:])
        # The W&B run (offline) is in the sweep's group: its RunRecord, serialised in the run file,
        # has run_group (protobuf field 6, a string) equal to the sweep dir.
        from wandb.proto import wandb_internal_pb2

        wandb_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        group_field = wandb_internal_pb2.RunRecord(run_group=str(sweep)).SerializeToString()
        assert len(wandb_files) == 1 and group_field in wandb_files[0].read_bytes()
    # metarun-report reads the sweep: two settings, one run each, both completed.
    out = report.report(sweep, out=tmp_path / "report", smooth=1)
    assert sorted(out["groups"]) == ["algo.inner_steps=1", "algo.inner_steps=2"]
    assert list(out["table"]["runs"]) == ["1 completed", "1 completed"]
