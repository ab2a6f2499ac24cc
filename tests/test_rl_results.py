"""scripts/rl_results.py: the run data behind docs/maml_rl.md kept beside the page, a page rebuilt from it
after the runs are gone, and a --read-only rebuild without runs that refuses rather than writing a page.
Fake run dirs in the shape the script reads; every call is --read-only, so nothing is trained."""
import json
import os
import shutil
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import rl_results as rl  # noqa: E402

CONFIG = """iterations: 500
algo:
  outer: trpo
  max_kl: 0.01
  cg_iters: 10
  cg_damping: 1.0e-05
  ls_backtrack: 0.8
  ls_max_steps: 15
  discount: 0.99
"""


def returns(first):
    return {**{f"test/return_step{k}": first + 10 * k for k in range(4)},
            **{f"test/return_step{k}_ci95": 1.0 + k for k in range(4)}}


def fake_run(root, name, summary, metrics=None):
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(CONFIG)
    (run_dir / ".hydra" / "overrides.yaml").write_text(json.dumps(rl.RUNS[name][1]) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", **summary}))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    (run_dir / f"{name}.log").write_text("log\n")
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """maml (trained: checkpoints, W&B dir and id, a log), maml_20 (an evaluation of its checkpoint), bench.json."""
    root = tmp_path / "outputs" / "maml_rl"
    curve = [{"iteration": i, "train/std": 1.0 - i / 1000, **{f"eval/return_step{k}": -40.0 + 10 * k + i / 100 for k in range(4)}}
             for i in (0, 25, 50)]
    maml = fake_run(root, "maml", {**returns(-40.0), "time": 828.0, "tested_iteration": 25, "threads": 2}, curve)
    for checkpoint in ("best.pt", "checkpoint.pt"):
        (maml / checkpoint).write_bytes(os.urandom(64))
    (maml / "wandb" / "offline-run-1").mkdir(parents=True)
    (maml / "wandb" / "offline-run-1" / "run-1.wandb").write_bytes(os.urandom(64))
    (maml / "wandb_id.txt").write_text("abc123\n")
    fake_run(root, "maml_20", {**returns(-39.0), "mode": "eval", "checkpoint_iteration": 25, "time": 30.0})
    (root / "bench.json").write_text(json.dumps({"threads": 2, "iterations": 5, "load_before": 1.5,
                                                 "fisher_subsample=1": {"wall": 4.0, "cpu": 7.0},
                                                 "fisher_subsample=0.25": {"wall": 1.6, "cpu": 3.0}}))
    return root


def run_script(monkeypatch, root, docs, kept):
    monkeypatch.setattr(sys, "argv", ["rl_results.py", "--read-only", "--root", str(root), "--docs", str(docs),
                                      "--kept", str(kept)])
    rl.main()
    return (docs / "maml_rl.md").read_text()


def test_the_kept_run_data_holds_what_the_page_reads_and_rebuilds_the_same_page(runs, tmp_path, monkeypatch, capsys):
    kept = tmp_path / "kept" / "maml_rl" / "runs.tar.xz"
    page = run_script(monkeypatch, runs, tmp_path / "docs1", kept)
    assert "| metarun MAML (the preset) | -40.0 +- 1.0 |" in page and "| metarun MAML, 20 trajectories" in page
    assert f"run data kept in {kept}" in capsys.readouterr().out
    first = kept.read_bytes()

    shutil.rmtree(runs)  # the work dir is gone; the archive is all there is
    rebuilt = run_script(monkeypatch, runs, tmp_path / "docs2", kept)
    assert f"restored the kept run data {kept} into {runs}" in capsys.readouterr().out
    files = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file())
    # No checkpoint (the evaluation is read from its summary), no W&B dir or id, no log.
    assert files == ["bench.json", "maml/.hydra/config.yaml", "maml/.hydra/overrides.yaml", "maml/metrics.jsonl",
                     "maml/summary.json", "maml_20/.hydra/config.yaml", "maml_20/.hydra/overrides.yaml",
                     "maml_20/summary.json"]
    assert rebuilt == page
    assert kept.read_bytes() == first  # kept again from the restored runs: the same bytes, no churn in git


def test_a_local_runs_folder_is_never_overwritten_by_the_kept_data(runs, tmp_path, monkeypatch):
    kept = tmp_path / "kept" / "runs.tar.xz"
    run_script(monkeypatch, runs, tmp_path / "docs", kept)
    summary = runs / "maml" / "summary.json"
    summary.write_text(json.dumps({"status": "completed", **returns(-20.0), "time": 828.0, "tested_iteration": 25}))
    page = run_script(monkeypatch, runs, tmp_path / "docs", kept)
    assert "| metarun MAML (the preset) | -20.0 +- 1.0 |" in page


def test_read_only_without_runs_or_kept_data_refuses_and_writes_no_page(tmp_path, monkeypatch, capsys):
    root, docs, kept = tmp_path / "outputs" / "maml_rl", tmp_path / "docs", tmp_path / "docs" / "maml_rl" / "runs.tar.xz"
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, root, docs, kept)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(root) in err and str(kept) in err and "python scripts/rl_results.py" in err
    assert not (docs / "maml_rl.md").exists() and not (docs / "maml_rl.png").exists() and not kept.exists()


def test_a_truncated_kept_archive_is_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys):
    kept = tmp_path / "kept" / "runs.tar.xz"
    run_script(monkeypatch, runs, tmp_path / "docs", kept)
    kept.write_bytes(kept.read_bytes()[:-100])  # an interrupted copy
    shutil.rmtree(runs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, runs, tmp_path / "docs2", kept)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("rl_results: ") and str(kept) in err
    assert not runs.exists() and not (tmp_path / "docs2" / "maml_rl.md").exists()
