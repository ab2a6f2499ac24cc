"""metarun-report on a real (tiny) multirun made with the metarun CLI."""
import json
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, run_metarun
from metarun import report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 settings (N = 1, 2) x 2 seeds of ANIL on meta linear regression, 4 iterations each."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    result = run_metarun(
        "-m", "algo=anil", "task=linear_regression", "model=linear", "algo.inner_steps=1,2", "seed=0,1",
        "iterations=4", "log_every=1", "eval_every=2", "eval_tasks=4", "eval_steps=2", "meta_batch_size=4",
        "progress=false", f"hydra.sweep.dir={sweep_dir}", cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return sweep_dir


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_groups_averages_and_table(sweep, tmp_path):
    out = report.report(sweep, out=tmp_path, smooth=1)
    assert sorted(out["groups"]) == ["algo.inner_steps=1", "algo.inner_steps=2"]
    assert all(len(g) == 2 for g in out["groups"].values())

    # Seed averages equal the hand-computed means of the two runs' metrics.jsonl.
    group = out["groups"]["algo.inner_steps=2"]
    curve = report.seed_average(group, "train/loss")
    rows = [jsonl(r["dir"] / "metrics.jsonl") for r in group]
    for it in (1, 3, 4):
        values = [next(x["train/loss"] for x in rs if x["iteration"] == it) for rs in rows]
        assert curve.loc[it, "mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
        assert curve.loc[it, "std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), rel=1e-9)
    evals = report.seed_average(group, "eval/loss")
    assert list(evals.index) == [0, 2, 4]

    # Final test loss and its 95% CI over the two seeds: t(0.975, 1) * std / sqrt(2).
    finals = [json.loads((r["dir"] / "summary.json").read_text())["test/loss"] for r in group]
    row = out["table"].set_index("setting").loc["algo.inner_steps=2"]
    assert row["final_test_loss"] == pytest.approx(sum(finals) / 2)
    assert row["ci95"] == pytest.approx(12.706 * abs(finals[0] - finals[1]) / math.sqrt(2) / math.sqrt(2), rel=1e-6)
    assert row["iterations"] == 4
    # Oracle calls per iteration, per task: N inner gradients + 1 outer + N Hessian-vector + N
    # Jacobian-vector products (ANIL's frozen body); 4 tasks.
    assert row["oracle_calls_per_iter"] == pytest.approx((2 + 1 + 2 + 2) * 4)

    # Iterations to reach a target: the first logged iteration whose seed mean is at or below it.
    target = float(curve["mean"].iloc[2])
    table = report.summary_table(out["groups"], "train/loss", target, 1, "loss")[0].set_index("setting")
    assert table.loc["algo.inner_steps=2", "iters_to_target"] == int(curve.index[(curve["mean"] <= target).to_numpy()][0])

    for name in ("train_loss.png", "eval_loss.png", "dist_to_opt.png"):
        path = tmp_path / name
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
    assert (tmp_path / "summary.csv").is_file() and "| setting |" in (tmp_path / "summary.md").read_text()


def test_failed_crashed_and_missing_runs_are_flagged(sweep, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sweep, broken)
    jobs = sorted(p for p in broken.iterdir() if p.name.isdigit())
    summary = json.loads((jobs[0] / "summary.json").read_text())
    (jobs[0] / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "NonFiniteLoss: boom"}))
    (jobs[1] / "summary.json").unlink()        # crashed before writing a summary
    shutil.rmtree(jobs[3])                     # never started
    out = report.report(broken, smooth=1)
    status = {r["job"]: r["status"] for r in out["runs"]}
    assert status[jobs[0].name] == "failed" and status[jobs[1].name].startswith("no summary")
    assert "1 failed" in out["table"].set_index("setting")["runs"].to_string()
    assert "**failed** NonFiniteLoss: boom" in out["markdown"]
    assert "1 of 4 declared jobs have no run dir" in out["markdown"]
    runs_csv = pd.read_csv(broken / "report" / "runs.csv")
    assert set(runs_csv["status"]) >= {"failed", "completed"}


@pytest.mark.parametrize("name,message", [("missing", "does not exist"), ("empty", "has no runs")])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, name, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / name)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("metarun-report: error:") and message in err and err.count("\n") == 1


@pytest.mark.slow  # starts the W&B service: ~15 s alone, more under load
def test_wandb_summary_run_is_offline_and_never_prompts(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    result = subprocess.run([sys.executable, "-m", "metarun.report", str(copy), "--wandb"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B (offline)" in result.stdout
    assert list((copy / "wandb").glob("offline-run-*"))


def test_rl_sweep_reports_returns_where_higher_is_better(tmp_path):
    """An RL multirun: the table's test metric is the return, the training curve the post-adaptation
    return, and "reaching a target" means reaching it from below."""
    sweep_dir = tmp_path / "multirun"
    result = run_metarun(
        "-m", "+experiment=maml_rl_navigation", "algo.inner_steps=0,1", "iterations=3", "eval_every=3",
        "eval_tasks=2", "eval_steps=1", "meta_batch_size=2", "algo.trajectories=2", "task.horizon=10",
        "model.hidden=[8]", "progress=false", f"hydra.sweep.dir={sweep_dir}", cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    out = report.report(sweep_dir, out=tmp_path / "report", smooth=1)
    assert (tmp_path / "report" / "train_return.png").is_file() and (tmp_path / "report" / "eval_return.png").is_file()
    table = out["table"].set_index("setting")
    for label, group in out["groups"].items():
        final = json.loads((group[0]["dir"] / "summary.json").read_text())["test/return"]
        assert table.loc[label, "final_test_return"] == pytest.approx(final)
    # The default target is the worst (lowest) final seed-mean return, which every setting reaches.
    curves = {label: report.seed_average(g, "train/return", 1) for label, g in out["groups"].items()}
    assert out["target"] == pytest.approx(min(c["mean"].iloc[-1] for c in curves.values()))
    assert "train/return >=" in out["markdown"]
    # A target above every logged return is never reached.
    table = report.summary_table(out["groups"], "train/return", 1.0, 1, "return")[0]
    assert table["iters_to_target"].isna().all()


def test_test_metric_against_inner_steps(sweep, tmp_path):
    """The meta-test loss after k inner steps, mean and 95% CI over seeds, from each run's summary.json."""
    out = report.report(sweep, out=tmp_path, smooth=1)
    assert "4 runs in 2 settings" in out["markdown"]
    group = out["groups"]["algo.inner_steps=2"]
    curve = report.steps_curve(group, "loss")
    assert list(curve.index) == [0, 1, 2]  # eval_steps=2
    for k in (0, 1, 2):
        values = [json.loads((r["dir"] / "summary.json").read_text())[f"test/loss_step{k}"] for r in group]
        assert curve.loc[k, "mean"] == pytest.approx(sum(values) / 2)
        assert curve.loc[k, "ci95"] == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-6)
    assert report.steps_curve(group, "accuracy") is None  # regression: no accuracy
    path = tmp_path / "test_vs_inner_steps.png"
    assert path in out["figures"]
    with Image.open(path) as image:
        image.verify()


def test_one_run_report_uses_its_own_ci_and_singular_grammar(sweep, tmp_path):
    run = sorted(p for p in sweep.iterdir() if p.name.isdigit())[0]
    out = report.report(run, out=tmp_path, smooth=1)
    assert "1 run in 1 setting (" in out["markdown"]
    summary = json.loads((run / "summary.json").read_text())
    curve = report.steps_curve(out["runs"], "loss")
    assert curve.loc[1, "mean"] == summary["test/loss_step1"] and curve.loc[1, "ci95"] == summary["test/loss_step1_ci95"]


def test_running_run_that_stopped_writing_is_stale(sweep, tmp_path):
    """A run killed hard stays `running` in its summary; the report calls it stale once it has been
    silent for longer than two of its own checkpoint intervals (at least a minute)."""
    import os
    import time

    run = tmp_path / "run"
    shutil.copytree(sorted(p for p in sweep.iterdir() if p.name.isdigit())[0], run)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="running", checkpoint_iteration=2, checkpoint_seconds=100.0)
    (run / "summary.json").write_text(json.dumps(summary))
    now = time.time()

    def silent_for(seconds):
        for p in run.iterdir():
            os.utime(p, (now - seconds, now - seconds))
        return report.load_run(run, now=now)

    assert silent_for(150)["status"] == "running"        # within 2 x 100 s
    stale = silent_for(250)
    assert stale["status"] == "stale" and "nothing written for 4.2 min (limit 3.3 min)" in stale["error"]
    assert f"last checkpoint at iteration 2: metarun resume=true run_dir={run}" in stale["error"]
    summary["checkpoint_seconds"] = 1.0                   # fast checkpoints: the one-minute floor
    (run / "summary.json").write_text(json.dumps(summary))
    assert silent_for(50)["status"] == "running" and silent_for(70)["status"] == "stale"
    # No checkpoint yet: the interval is estimated from the training time per iteration in metrics.jsonl.
    del summary["checkpoint_seconds"]
    summary["checkpoint_every"] = 1000
    (run / "summary.json").write_text(json.dumps(summary))
    last = jsonl(run / "metrics.jsonl")[-1]
    estimate = last["time"] / last["iteration"] * 1000
    assert report.staleness(run, summary, report.read_jsonl(run / "metrics.jsonl"), now)[1] == pytest.approx(max(2 * estimate, 60))
    silent_for(2 * estimate + 61)
    out = report.report(run, out=tmp_path / "report", smooth=1)
    assert out["runs"][0]["status"] == "stale" and "**stale**" in out["markdown"]


def test_runs_without_metrics_are_one_line_exit_2(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    for job in copy.iterdir():
        if job.is_dir():
            (job / "metrics.jsonl").unlink(missing_ok=True)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(copy)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"metarun-report: error: nothing to report: none of the 4 runs in {copy} "
                                                   "has logged any metrics")


def test_job_dirs_come_in_job_number_order_within_each_name_pattern(tmp_path):
    # The convergence presets name jobs s${seed}_${hydra.job.num}; plain name order put s0_10 before s0_5, so
    # the settings (grouped in job order) came out as N = 1, 10, 20, 5 in every table and legend.
    names = ["s0_10", "s0_5", "s0_0", "s1_1", "s0_15", "10", "2", "0"]
    for name in names:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("[]\n")
    (tmp_path / "not_a_job").mkdir()
    assert [d.name for d in report.job_dirs(tmp_path)] == ["0", "2", "10", "s0_0", "s0_5", "s0_10", "s0_15", "s1_1"]
