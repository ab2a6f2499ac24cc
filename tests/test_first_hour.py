"""Issue 18, through the commands a new user types: errors that say what to do, `metarun --help`,
damaged checkpoints on every path that loads one, runs that say where they stand, file modes."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import REPO, run_metarun
from metarun.checkpoint import atomic_write
from metarun.config import DataError
from metarun.learner import load_learner

TINY = ["iterations=20", "eval_every=10", "log_every=5", "eval_tasks=8", "checkpoint_every=10", "progress=false"]


def error_line(result, prefix="metarun: error: "):
    """The single stderr line of a failed command (asserts there is exactly one, and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 20-iteration sinusoid run (checkpoint.pt and best.pt), copied by the tests that damage it."""
    root = tmp_path_factory.mktemp("trained")
    result = run_metarun(*TINY, "hydra.run.dir=run", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def copy_run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ---------------------------------------------------------------- errors that tell the user what to do

@pytest.mark.parametrize("args,expected", [
    (["itterations=5"], "itterations='5' is not allowed: not a config key; did you mean iterations?"),
    (["algo=anl"], "is not allowed: must be one of anil, fomaml, "),  # the full list grows with the algorithms
    (["algo=anl"], "; did you mean algo=anil?"),
    (["algo.inner_stpes=2"], "did you mean algo.inner_steps?"),
    (["experimnet=sinusoid_finn2017"], "did you mean +experiment?"),
    (["experiment=sinusoid_finn2017"], "add a preset with +experiment=sinusoid_finn2017"),
    (["+algo=anil"], "use algo=anil without the +"),
    (["algo=anil,maml"], "algo='anil,maml' is not allowed: a sweep needs -m: metarun -m algo=anil,maml"),
    (["resume=true"], "run_dir=None is not allowed: missing; resume=true needs the run to continue"),
    (["mode=eval"], "run_dir=None is not allowed: missing; mode=eval needs the training run"),
    (["resume=true", "run_dir=nowhere"], "no checkpoint at {tmp}/nowhere/checkpoint.pt: run without resume=true"),
])
def test_mistakes_say_what_to_do_in_one_line_and_create_nothing(tmp_path, args, expected):
    result = run_metarun(*args, cwd=tmp_path)
    assert expected.format(tmp=tmp_path) in error_line(result)
    assert list(tmp_path.iterdir()) == []  # no outputs/, no run dir, no log


def test_eval_of_a_run_without_checkpoint_fails_before_evaluating(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "checkpoint.pt").unlink()
    result = run_metarun("mode=eval", f"run_dir={run}", cwd=tmp_path)
    assert f"no checkpoint at {run / 'checkpoint.pt'}" in error_line(result)
    assert "evaluating" not in result.stdout and not (run / "eval").exists()
    # test_checkpoint=best evaluates best.pt, which is checked the same way.
    (run / "best.pt").unlink()
    result = run_metarun("mode=eval", f"run_dir={run}", "test_checkpoint=best", cwd=tmp_path)
    assert f"no checkpoint at {run / 'best.pt'}" in error_line(result) and not (run / "eval").exists()


# ---------------------------------------------------------------- metarun --help, --version

def test_help_is_metaruns_own(tmp_path):
    result = run_metarun("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "powered by Hydra" not in text and text.startswith("metarun: gradient-based meta-learning")
    # Every config group with every option, as shipped in conf/.
    for group in ("algo", "task", "model", "optim", "logger", "experiment"):
        options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in text
    for needle in ("metarun -m ", "resume=true run_dir=", "mode=eval run_dir=", "metarun-report", "metarun-predict",
                   "outputs/runs/<date>/<time>/", "outputs/multirun/", "+experiment="):
        assert needle in text, needle
    # The most used keys are real keys, shown with their current values.
    section = text.split("Most used keys")[1].split("\n\n")[0]
    shown = dict(re.findall(r"^\s+([a-z_.]+)=\S+\s.*\[(.+)\]$", section, re.M))
    assert len(shown) == 5
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["algo=reptile"])
    GlobalHydra.instance().clear()
    with_overrides = run_metarun("algo=reptile", "iterations=7", "--help", cwd=tmp_path).stdout
    shown_now = dict(re.findall(r"^\s+([a-z_.]+)=\S+\s.*\[(.+)\]$", with_overrides.split("Most used keys")[1].split("\n\n")[0], re.M))
    for key, value in shown_now.items():
        expected = 7 if key == "iterations" else OmegaConf.select(cfg, key)
        assert value == str(expected), (key, value, expected)
    assert list(tmp_path.iterdir()) == []


def test_version_is_metaruns(tmp_path):
    from importlib.metadata import version

    result = run_metarun("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"metarun {version('metarun')} (torch {version('torch')}")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- damaged checkpoints, every loading path

def damage(path, kind):
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x89PNG not a checkpoint" * 10}[kind])


KINDS = ["empty", "truncated", "garbage"]
WHY = {"empty": "the file is empty (0 bytes)", "truncated": "the file is truncated", "garbage": "not a PyTorch checkpoint"}


def assert_checkpoint_message(line, path, kind):
    assert f"checkpoint {path} is corrupt or not a metarun checkpoint: {WHY[kind]}" in line, line
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line


def command(name, *args, kind, cwd, capsys, monkeypatch):
    """Run `metarun` or `metarun-predict` with `args`: the truncated case as a real process, the
    others in this process (the same code path up to the error, without a second interpreter start)."""
    if kind == "truncated":
        return run_metarun(*args, cwd=cwd, command=name)
    from metarun import cli, predict

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [name, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main() if name == "metarun" else predict.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, info.value.code, out.out, out.err)


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_checkpoint_on_resume(trained, tmp_path, kind, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoint.pt", kind)
    before = sorted(p.name for p in run.iterdir())
    result = command("metarun", "resume=true", f"run_dir={run}", kind=kind, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_checkpoint_message(error_line(result), run / "checkpoint.pt", kind)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing started: no log, no new summary


def test_damaged_best_pt_on_resume(trained, tmp_path, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    damage(run / "best.pt", "empty")
    result = command("metarun", "resume=true", f"run_dir={run}", kind="empty", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_checkpoint_message(error_line(result), run / "best.pt", "empty")


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_checkpoint_on_eval(trained, tmp_path, kind, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoint.pt", kind)
    result = command("metarun", "mode=eval", f"run_dir={run}", kind=kind, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_checkpoint_message(error_line(result), run / "checkpoint.pt", kind)
    assert "evaluating" not in result.stdout and not (run / "eval").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_checkpoint_on_predict(trained, tmp_path, kind, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoint.pt", kind)
    for cls in ("a", "b"):  # the checkpoint is read before any image is decoded
        (tmp_path / "support" / cls).mkdir(parents=True)
        (tmp_path / "support" / cls / "1.png").write_bytes(b"")
    result = command("metarun-predict", str(run), "--support", str(tmp_path / "support"), "--query", str(tmp_path / "support"),
                     kind=kind, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_checkpoint_message(error_line(result, "metarun-predict: error: "), run / "checkpoint.pt", kind)


@pytest.mark.parametrize("kind", KINDS + ["pickled object"])
def test_damaged_checkpoint_on_load_learner(trained, tmp_path, kind):
    run = copy_run(trained, tmp_path)
    if kind == "pickled object":  # a file torch wrote, holding something weights_only refuses to unpickle
        torch.save({"format": 1, "model": Path("x")}, run / "checkpoint.pt")
        why = "holds Python objects other than tensors"
    else:
        damage(run / "checkpoint.pt", kind)
        why = WHY[kind]
    with pytest.raises(DataError) as info:
        load_learner(run)
    message = str(info.value)
    assert str(run / "checkpoint.pt") in message and why in message and "weights_only=False" not in message
    assert "\n" not in message


# ---------------------------------------------------------------- runs that say where they stand

def read_summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow  # a run interrupted for real, then resumed: ~30 s
def test_summary_follows_checkpoints_sigint_and_resume(tmp_path):
    run = tmp_path / "run"
    args = ["iterations=100000", "checkpoint_every=50", "eval_every=100000", "log_every=50", "eval_tasks=8",
            "progress=false", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # SIGINT at its default in the child: a suite started in the background (`pytest ... &` in a
    # script) inherits SIGINT ignored, and so would the child, which would then never stop.
    proc = subprocess.Popen(["metarun", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    summary = {}
    while time.time() < deadline and proc.poll() is None:  # wait for the third checkpoint
        if (run / "summary.json").is_file():
            summary = read_summary(run)
            if (summary.get("checkpoint_iteration") or 0) >= 150:
                break
        time.sleep(0.05)
    # While it runs, the summary holds the checkpoint's iteration and how long an interval takes.
    assert summary["status"] == "running" and summary["iteration"] == summary["checkpoint_iteration"] >= 150
    assert summary["checkpoint_every"] == 50 and summary["checkpoint_seconds"] > 0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    summary = read_summary(run)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["iteration"]
    assert summary["status"] == "interrupted" and summary["checkpoint_iteration"] == saved
    assert summary["iteration"] >= saved >= 150
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"metarun: error: interrupted at iteration {summary['iteration']}; `metarun resume=true "
                         f"run_dir={run}` continues from the checkpoint at iteration {saved}")
    resumed = run_metarun("resume=true", f"run_dir={run}", f"iterations={saved + 10}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"metarun: resuming {run} from iteration {saved} of {saved + 10}" in resumed.stdout
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["iteration"] == summary["checkpoint_iteration"] == saved + 10


def test_progress_bar_names_the_chosen_algorithm(tmp_path):
    result = run_metarun("algo=anil", "iterations=3", "eval_tasks=4", "progress=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ANIL: 100%" in result.stderr and "MAML" not in result.stderr


@pytest.mark.parametrize("algo,name", [("maml", "MAML"), ("fomaml", "FOMAML"), ("reptile", "Reptile"), ("maml_rl", "MAML-RL")])
def test_algorithm_display_names(algo, name):
    from hydra.core.hydra_config import HydraConfig

    from metarun.train import algo_name

    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"algo={algo}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    try:
        assert algo_name(cfg) == name
    finally:
        HydraConfig.instance().cfg = None
    assert algo_name(cfg) == cfg.algo._target_.rsplit(".", 1)[1]  # outside a Hydra job: the class name


# ---------------------------------------------------------------- W&B: local metrics always, and where the run went

@pytest.mark.slow  # starts the W&B service
def test_wandb_alone_still_writes_metrics_and_says_where_the_offline_run_is(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_MODE": ""}
    result = run_metarun("logger=wandb", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 5, 10, 15, 20]
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert f"metarun: W&B offline run in {offline}; upload with `wandb sync {offline}`" in result.stdout
    report = run_metarun(str(tmp_path / "run"), cwd=tmp_path, command="metarun-report", env={"WANDB_MODE": "disabled"})
    assert report.returncode == 0, report.stderr[-2000:]
    assert "1 run in 1 setting " in report.stdout and "wrote train_loss.png," in report.stdout


# ---------------------------------------------------------------- files other people can read

@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask_like_open(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "atomic", lambda f: f.write(b"x"))
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_an_existing_files_mode(tmp_path, umask):
    path = tmp_path / "summary.json"
    path.write_text("{}")
    path.chmod(0o640)
    atomic_write(path, lambda f: f.write(b"{}"))
    assert path.stat().st_mode & 0o777 == 0o640


def test_run_files_are_readable_by_others_under_umask_022(tmp_path, umask):
    umask(0o022)
    result = run_metarun(*TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert set(modes) == {"summary.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "config.yaml"}  # no empty cli.log
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}
