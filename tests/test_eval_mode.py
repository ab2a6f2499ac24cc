"""`metarun mode=eval run_dir=...`: meta-testing a trained run's checkpoint.

The tiny Omniglot run made here (two alphabets of the shared data, conv4 with 8 channels, 30
iterations) is reused by tests/test_predict.py through `tiny_run`.
"""
import hashlib
import json
import math
import shutil

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import SHARED_DATA, run_metarun
from metarun.config import ConfigError, DataError
from metarun.learner import evaluate_run

ALPHABETS = ("Greek", "Latin")  # 50 characters: 10 test characters, 40 test classes with rotations
TRAIN = ["task=omniglot", "model=conv4", "model.channels=8", "task.query=5", "algo.inner_lr=0.4", "meta_batch_size=4",
         "iterations=20", "eval_every=20", "eval_tasks=10", "eval_steps=2", "checkpoint_every=20", "progress=false"]
_made = {}


def make_tiny_run(root):
    """Train the tiny run once per session (both test files share it); returns its paths."""
    if "run" not in _made:
        base = SHARED_DATA / "omniglot-py" / "images_background"
        if not base.is_dir():
            pytest.skip(f"shared Omniglot data not found at {SHARED_DATA}")
        data = root / "data" / "omniglot-py" / "images_background"
        data.mkdir(parents=True)
        for alphabet in ALPHABETS:  # a small, real Omniglot: symlinks, nothing copied
            (data / alphabet).symlink_to(base / alphabet)
        run_dir = root / "run"
        result = run_metarun(*TRAIN, f"task.root={root / 'data'}", f"task.cache_dir={root / 'cache'}",
                             f"hydra.run.dir={run_dir}", cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        _made["run"] = {"run_dir": run_dir, "data": data, "root": root}
    return _made["run"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"))


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "eval" not in p.relative_to(folder).parts}


def eval_config(run_dir, *overrides):
    """The config `metarun mode=eval run_dir=X ...` composes: X's overrides, then the user's."""
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*saved, "mode=eval", f"run_dir={run_dir}", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def test_eval_mode_end_to_end_with_more_ways_shots_and_steps(tiny_run):
    run_dir = tiny_run["run_dir"]
    before = digests(run_dir)
    result = run_metarun("mode=eval", f"run_dir={run_dir}", "task.ways=10", "task.shots=5", "algo.inner_steps=3",
                         "eval_steps=2", cwd=tiny_run["root"])
    assert result.returncode == 0, result.stderr[-2000:]
    out_dirs = list((run_dir / "eval").iterdir())
    assert len(out_dirs) == 1
    out = out_dirs[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["source_run_dir"] == str(run_dir)
    assert summary["time"] > 0 and f"run dir: {out}" in result.stdout
    # The overrides apply: 10 ways, 5 shots, 3 inner steps (saved config).
    cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert (cfg.task.ways, cfg.task.shots, cfg.algo.inner_steps, cfg.mode) == (10, 5, 3, "eval")
    # 3 inner steps asked for, 2 reported by the run's eval_steps: figures after 0..3 steps.
    assert "test/accuracy_step3" in summary and "test/accuracy_step4" not in summary
    assert summary["test/accuracy"] == summary["test/accuracy_step3"]
    # The 5-way head cannot serve 10 ways: it is zero-initialised and the output says so. With a
    # zero head every class is equally likely before adaptation: loss ln 10, accuracy 1/10.
    assert summary["zero_init"] == ["head.weight", "head.bias"]
    assert "zero-initialised" in result.stdout and "zero-initialised" in summary["head"]
    assert summary["test/loss_step0"] == pytest.approx(math.log(10), abs=1e-5)
    assert summary["test/accuracy_step0"] == pytest.approx(1 / 10)
    assert summary["test/loss_step3"] < summary["test/loss_step0"] - 1e-3  # the zero head learns
    assert digests(run_dir) == before  # the training run's own files are untouched


def test_eval_without_overrides_reproduces_the_runs_final_test_figures(tiny_run, tmp_path):
    run_dir = tiny_run["run_dir"]
    trained = json.loads((run_dir / "summary.json").read_text())
    summary = evaluate_run(eval_config(run_dir), tmp_path / "out")
    assert summary["zero_init"] == [] and "head" not in summary
    figures = {k: v for k, v in trained.items() if k.startswith("test/")}
    assert figures and {k: summary[k] for k in figures} == pytest.approx(figures, abs=1e-6)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["test/loss"] == summary["test/loss"]


def test_test_checkpoint_best_evaluates_best_pt(tiny_run, tmp_path):
    run_dir = tiny_run["run_dir"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = {r["iteration"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert best["iteration"] == max(accuracy, key=accuracy.get) and best["best"]["metric"] == "eval/accuracy"
    summary = evaluate_run(eval_config(run_dir, "test_checkpoint=best"), tmp_path / "out")
    assert summary["checkpoint_iteration"] == best["iteration"]


def test_inner_steps_and_inner_lr_overrides_apply(tiny_run, tmp_path):
    run_dir = tiny_run["run_dir"]
    base = evaluate_run(eval_config(run_dir, "eval_steps=1"), tmp_path / "a")
    more = evaluate_run(eval_config(run_dir, "eval_steps=1", "algo.inner_steps=4"), tmp_path / "b")
    slower = evaluate_run(eval_config(run_dir, "eval_steps=1", "algo.inner_lr=0.1"), tmp_path / "c")
    assert "test/loss_step2" not in base and base["test/loss"] == base["test/loss_step1"]
    # algo.inner_steps=4 reports up to 4 steps; the steps they share are the same computation.
    assert more["test/loss"] == more["test/loss_step4"]
    assert more["test/loss_step1"] == pytest.approx(base["test/loss_step1"], abs=1e-6)
    # A smaller inner lr moves less: same start, a different loss after one step.
    assert slower["test/loss_step0"] == pytest.approx(base["test/loss_step0"], abs=1e-6)
    assert abs(slower["test/loss_step1"] - base["test/loss_step1"]) > 1e-4


def test_missing_or_corrupt_checkpoint_and_other_model_are_data_errors(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], copy, ignore=shutil.ignore_patterns("eval"))
    cfg = eval_config(copy)
    with pytest.raises(DataError, match="a different model body"):
        evaluate_run(eval_config(copy, "model.channels=16"), tmp_path / "o1")
    (copy / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt"):
        evaluate_run(cfg, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()  # refused before anything was written
    (copy / "checkpoint.pt").unlink()
    with pytest.raises(DataError, match="no checkpoint at"):
        evaluate_run(cfg, tmp_path / "o3")
    assert not (tmp_path / "o3").exists()
    with pytest.raises(ConfigError, match="evaluation never writes over"):
        evaluate_run(cfg, copy)
    cfg.run_dir = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not exist"):
        evaluate_run(cfg, tmp_path / "o4")


@pytest.mark.slow  # a whole `metarun` start for one error line (the in-process test above covers the cases)
def test_cli_eval_of_a_corrupt_checkpoint_is_one_line_and_exit_2(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], copy, ignore=shutil.ignore_patterns("eval"))
    (copy / "checkpoint.pt").write_bytes((copy / "checkpoint.pt").read_bytes()[:100])
    result = run_metarun("mode=eval", f"run_dir={copy}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarun: error: checkpoint") and "corrupt" in lines[0]
    assert "Traceback" not in result.stderr


def test_eval_output_goes_to_hydra_run_dir_when_given_else_under_the_run(tmp_path):
    from metarun.cli import expand_run_dir

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- algo=anil\n- hydra.run.dir=run\n- seed=3\n")
    default = expand_run_dir(["mode=eval", f"run_dir={run_dir}"])
    assert default[:2] == ["algo=anil", "seed=3"] and default[-1].startswith(f"hydra.run.dir={run_dir}/eval/")
    chosen = expand_run_dir(["mode=eval", f"run_dir={run_dir}", "hydra.run.dir=elsewhere"])
    assert chosen == ["algo=anil", "seed=3", "mode=eval", f"run_dir={run_dir}", "hydra.run.dir=elsewhere"]
    resumed = expand_run_dir(["resume=true", f"run_dir={run_dir}", "hydra.run.dir=elsewhere"])
    assert resumed[-1] == f"hydra.run.dir={run_dir}"  # a resumed run continues in place
