"""scripts/omniglot_report.py: each run's machine recorded beside it, the run data kept beside the
page, and a rebuild without runs that refuses rather than replacing the published page."""
import json
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import omniglot_report as om  # noqa: E402


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setattr(om, "OUT", tmp_path / "outputs" / "omniglot")
    monkeypatch.setattr(om, "KEPT", tmp_path / "docs" / "omniglot" / "runs.tar.xz")
    return tmp_path


def finished_arm(arm, **summary):
    run_dir = om.OUT / arm
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "tested_checkpoint": "best.pt", **summary}))
    (run_dir / "metrics.jsonl").write_text('{"iteration": 1}\n')
    for name in ("best.pt", "checkpoint.pt"):
        (run_dir / name).write_bytes(os.urandom(64))
    return run_dir


def test_each_run_records_the_machine_it_had(work):
    run_dir = om.OUT / "base"
    make_run_dir = f"import pathlib; pathlib.Path({str(run_dir)!r}).mkdir(parents=True)"
    om.OUT.mkdir(parents=True)
    assert om.run([sys.executable, "-c", make_run_dir], om.OUT / "base.log", run_dir) == 0
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["exit_code"] == 0 and timing["wall_seconds"] > 0 and timing["cpu_seconds"] > 0
    assert ("machine_share" in timing) and ("machine_busy_seconds" in timing)


@pytest.mark.parametrize("timing, expected", [({"machine_share": 0.99}, "machine alone"),
                                              ({"machine_share": 0.5}, "machine shared (it had 50% of the machine's busy CPU seconds)"),
                                              ({"cpu_slots": "1", "cpus": 2}, "machine shared (1 of 2 cores)"),
                                              ({"machine_share": None}, "machine not recorded")])
def test_the_tables_say_the_machine_each_run_had(work, timing, expected):
    (om.OUT / "base").mkdir(parents=True)
    (om.OUT / "base" / "timing.json").write_text(json.dumps(timing))
    assert om.concurrency("base", short=True) == expected
    assert om.concurrency("seed1", short=True) == "machine not recorded"  # an arm that has no timing.json


def test_the_kept_run_data_holds_what_the_page_reads_and_a_fresh_checkout_gets_it_back(work):
    preset = finished_arm("preset")
    finished_arm("base", tested_checkpoint="checkpoint.pt")
    (preset / "eval" / "lake").mkdir(parents=True)
    (preset / "eval" / "lake" / "lake_runs.csv").write_text("run,error_step5\n0,0.5\n")
    (preset / "wandb").mkdir()
    (preset / "wandb" / "run.wandb").write_text("x")
    (om.OUT / "preset.log").write_text("log\n")
    assert om.keep() == om.KEPT and sorted(p.name for p in om.KEPT.parent.iterdir()) == ["runs.tar.xz"]
    first = om.KEPT.read_bytes()
    om.keep()
    assert om.KEPT.read_bytes() == first  # unchanged runs, the same bytes: no churn in git
    original, om.OUT = om.OUT, work / "fresh"
    assert om.restore_runs(om.KEPT, om.OUT)
    files = sorted(str(p.relative_to(om.OUT)) for p in om.OUT.rglob("*") if p.is_file())
    # The headline's learner loads the preset's tested checkpoint; no other checkpoint, log or W&B dir is kept.
    assert files == ["base/.hydra/config.yaml", "base/metrics.jsonl", "base/summary.json", "preset/.hydra/config.yaml",
                     "preset/best.pt", "preset/eval/lake/lake_runs.csv", "preset/metrics.jsonl", "preset/summary.json"]
    assert (om.OUT / "preset" / "best.pt").read_bytes() == (original / "preset" / "best.pt").read_bytes()
    assert om.done("preset") and om.done("base") and om.head() == "preset"


def test_a_rebuild_with_no_runs_and_no_kept_data_refuses_and_leaves_the_page(work, monkeypatch, capsys):
    page = REPO / "docs" / "omniglot.md"
    before = page.read_bytes()
    monkeypatch.setattr(sys, "argv", ["omniglot_report.py"])
    with pytest.raises(SystemExit) as exit_:
        om.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and str(om.OUT) in err and "--run" in err
    assert page.read_bytes() == before and not om.KEPT.exists()
