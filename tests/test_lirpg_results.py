"""scripts/lirpg_results.py on synthetic run dirs: arms from configs, verdicts from the CI of the
difference, stopped runs listed with their resume command, eager and compiled runs timed apart, and
the speed target judged on the benchmark's compiled ratio; the files the page read kept beside it, and
the page rebuilt from them on a checkout without runs."""
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ALGOS = {"ppo": {"_target_": "metarun.algos.ppo.PPO"},
         "lirpg": {"_target_": "metarun.algos.lirpg.LIRPG", "r_ex_coef": 0.0, "r_in_coef": 1.0, "meta_step": True},
         "lirpg_mixed": {"_target_": "metarun.algos.lirpg.LIRPG", "r_ex_coef": 1.0, "r_in_coef": 0.01, "meta_step": True},
         "lirpg_frozen": {"_target_": "metarun.algos.lirpg.LIRPG", "r_ex_coef": 0.0, "r_in_coef": 1.0, "meta_step": False}}


def fake_run(root, arm, seed, final, compiled=False, iterations=3, stopped_at=None, reward_delay=20, env_id="Hopper-v5"):
    run = root / (f"{arm}_{'c' if compiled else 'e'}_d{reward_delay}" + ("" if env_id == "Hopper-v5" else f"_{env_id}")) / str(seed)
    run.mkdir(parents=True)
    algo = {**ALGOS[arm], "nsteps": 2048, "compile": compiled}
    cfg = {"seed": seed, "iterations": iterations, "checkpoint_every": 1,
           "task": {"_target_": "metarun.tasks.mujoco_delayed.MujocoDelayed", "env_id": env_id, "reward_delay": reward_delay}, "algo": algo}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = iterations if stopped_at is None else stopped_at
    rows = [{"iteration": i, "train/env_steps": 2048 * i, "train/episodes": 10 * i, "train/return": final * i / iterations}
            for i in range(1, done + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "running", "iteration": done} if stopped_at is not None else \
        {"status": "completed", "time": 60.0 * (2 if arm != "ppo" else 1) / (2 if compiled else 1), "wall_time": 70.0,
         "threads": 1, "test/return": final}
    (run / "summary.json").write_text(json.dumps(summary))


def render(tmp_path, bench):
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = tmp_path / "docs" / "lirpg.md"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "lirpg_results.py"), "--runs", str(tmp_path / "runs"),
                             "--peer", str(tmp_path / "no_peer"), "--bench", str(tmp_path / "bench.json"), "--out", str(out),
                             "--iterations", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return out.read_text()


def bench(ratio_eager, ratio_compiled):
    seconds = {name: {"rollout": 1.0, "update": 1.0, "iteration": 2.0} for name in ("ppo", "lirpg", "ppo_compiled", "lirpg_compiled")}
    return {"env_id": "Hopper-v5", "nsteps": 2048, "threads": 1, "iterations": 6, "seconds_per_iteration": seconds,
            "ratio_iteration": ratio_eager, "ratio_update_phase": 4.0, "ratio_iteration_compiled": ratio_compiled,
            "ratio_update_phase_compiled": 3.0, "ratio_compiled_lirpg_to_eager_ppo": 1.6,
            "steps_per_second": {k: 1000.0 for k in seconds}, "warmup_seconds": {k: 20.0 for k in seconds},
            "lirpg_minibatch_ms": {"lookahead": 3.6}, "ppo_minibatch_ms": 2.8, "lirpg_compiled_minibatch_ms": {"objective": 3.0},
            "ppo_compiled_minibatch_ms": 2.0, "hot_ops": [{"op": "aten::mm", "share": 0.1, "calls_per_minibatch": 35}],
            "started": "s", "finished": "f", "note": "alone"}


def test_report_judges_arms_lists_stopped_runs_and_times_eager_and_compiled_apart(tmp_path):
    runs = tmp_path / "runs"
    for seed, (ppo, lirpg, frozen) in enumerate([(1000, 2000, 1900), (1010, 2010, 2050), (990, 1990, 1950)]):
        fake_run(runs, "ppo", seed, ppo)
        fake_run(runs, "lirpg", seed, lirpg, compiled=seed == 2)
        fake_run(runs, "lirpg_frozen", seed, frozen)
    fake_run(runs, "ppo", 3, 500, stopped_at=2)
    fake_run(runs, "ppo", 0, 3000, compiled=True, reward_delay=1)  # a peer-check run: undelayed, not an arm
    doc = render(tmp_path, bench(2.7, 1.8))
    verdicts = doc[doc.index("| env | claim |"):]
    assert "LIRPG (r_in only) beats PPO" in verdicts and "**reproduced** (n=3, 3)" in verdicts.split("\n")[2]
    assert "**not resolved** (n=3, 3)" in verdicts  # learned vs frozen: +30 +- a CI that covers 0
    assert "| Hopper-v5 | PPO (delayed reward) | 3 |" in doc and "stopped after 4,096 env steps (2 of 3 updates)" in doc
    assert f"`metarun resume=true run_dir={runs / 'ppo_e_d20' / '3'}`" in doc
    assert "| Hopper-v5 | PPO (delayed reward) | 0, 1, 2 | 1000 ± 25 |" in doc  # the undelayed run is not in the arm
    ppo_timing = sorted(line.split(" | ")[:3] for line in doc.splitlines() if line.startswith(("| PPO (", "| PPO,")) and ", Hopper-v5 |" in line)
    assert ppo_timing == [["| PPO (delayed reward), Hopper-v5", "false", "3"],
                          ["| PPO, undelayed reward (the peer check's runs), Hopper-v5", "true", "1"]]
    timing = [line for line in doc.splitlines() if line.startswith("| PPO + LIRPG, r_in only, Hopper-v5 |")]
    assert len(timing) == 2 and "| false | 2 | 2 ± 0 |" in timing[0] and "| true | 1 | 1 |" in timing[1]
    assert "both with `algo.compile=true` (what the 1M-step presets run): **1.80x** (target <= 2x: **met**)" in doc
    missed = render(tmp_path, bench(1.5, 2.3))
    assert "**2.30x** (target <= 2x: **missed**)" in missed


def test_the_page_says_when_the_protocol_is_complete_and_what_is_left_until_then(tmp_path):
    runs = tmp_path / "runs"
    for env_id in ("Hopper-v5", "HalfCheetah-v5"):
        for arm in ("ppo", "lirpg", "lirpg_mixed", "lirpg_frozen"):
            for seed in range(5):
                if (env_id, arm, seed) != ("HalfCheetah-v5", "lirpg_frozen", 4):
                    fake_run(runs, arm, seed, 1000 + 10 * seed, env_id=env_id)
    doc = render(tmp_path, bench(2.7, 1.8))
    assert ("task.env_id=HalfCheetah-v5 algo=lirpg_frozen seed=4 hydra.sweep.dir=outputs/lirpg/halfcheetah_lirpg_frozen" in doc
            and "what ran is what fitted" in doc and "protocol is complete" not in doc)
    fake_run(runs, "lirpg_frozen", 4, 1040, env_id="HalfCheetah-v5", stopped_at=2)
    doc = render(tmp_path, bench(2.7, 1.8))
    assert "every missing seed has a stopped run to resume" in doc and "protocol is complete" not in doc
    shutil.rmtree(runs / "lirpg_frozen_e_d20_HalfCheetah-v5" / "4")  # resumed to its end
    fake_run(runs, "lirpg_frozen", 4, 1040, env_id="HalfCheetah-v5")
    doc = render(tmp_path, bench(2.7, 1.8))
    assert "The protocol is complete: every arm has finished seeds 0, 1, 2, 3, 4 on Hopper-v5 and HalfCheetah-v5." in doc
    assert "To complete the protocol" not in doc and "what ran is what fitted" not in doc


sys.path.insert(0, str(REPO / "scripts"))
import lirpg_results  # noqa: E402


def outputs_with_other_pages_runs(outputs):
    """An outputs/ folder as the script scans it: this page's runs (completed, stopped, failed), peer
    results and benchmark, with files the page does not read beside them, and other pages' runs."""
    lirpg = outputs / "lirpg"
    for seed in (0, 1):
        fake_run(lirpg, "ppo", seed, 1000 + 10 * seed)
        fake_run(lirpg, "lirpg", seed, 2000 + 10 * seed)
    fake_run(lirpg, "ppo", 2, 500, stopped_at=2)
    fake_run(lirpg, "lirpg", 2, 0, stopped_at=1)
    (lirpg / "lirpg_e_d20" / "2" / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    run = lirpg / "ppo_e_d20" / "0"
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "wandb").mkdir()
    (run / "wandb" / "run.wandb").write_text("x")
    (run / "train.log").write_text("log\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (lirpg / "peer").mkdir()
    for impl in ("metarun", "sb3"):
        for seed in (0, 1):
            (lirpg / "peer" / f"{impl}_{seed}.json").write_text(json.dumps(
                {"impl": impl, "env_id": "Hopper-v5", "seed": seed, "env_steps": 6144, "final_return": 900.0 + seed,
                 "steps_per_second": 500.0, "train_time": 120.0}))
    (lirpg / "peer" / "sb3_0.zip").write_bytes(b"model")
    (lirpg / "bench.json").write_text(json.dumps(bench(2.7, 1.8)))
    fake_run(lirpg / "full", "ppo", 0, 3000, iterations=488)  # the paper's budget: not a run of a 3-update page
    other = outputs / "convergence" / "sweep" / "0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "task": {"_target_": "metarun.tasks.omniglot.Omniglot"}}))
    (other / "summary.json").write_text(json.dumps({"status": "completed"}))
    (other / "checkpoint.pt").write_bytes(b"weights")


def build_page(tmp_path, monkeypatch, outputs):
    monkeypatch.chdir(tmp_path)  # main() moves to the repository; this puts the test's directory back
    monkeypatch.setattr(sys, "argv", ["lirpg_results.py", "--runs", str(outputs), "--peer", str(outputs / "lirpg" / "peer"),
                                      "--bench", str(outputs / "lirpg" / "bench.json"), "--out", str(tmp_path / "docs" / "lirpg.md"),
                                      "--iterations", "3"])
    lirpg_results.main()


def test_the_kept_archive_holds_exactly_the_files_the_page_read(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    outputs_with_other_pages_runs(outputs)
    build_page(tmp_path, monkeypatch, outputs)
    kept = tmp_path / "docs" / "lirpg" / "runs.tar.xz"  # beside the page, by default
    assert f"its run data kept in {kept}" in capsys.readouterr().out
    page = (tmp_path / "docs" / "lirpg.md").read_text()
    assert "failed: boom" in page and "stopped after 4,096 env steps" in page and "Stable-Baselines3 PPO" in page
    with tarfile.open(kept) as tar:
        members = {Path(m.name).parts: m.isfile() for m in tar.getmembers()}
    files = {parts for parts, is_file in members.items() if is_file}
    runs = [("lirpg", "ppo_e_d20", seed) for seed in "012"] + [("lirpg", "lirpg_e_d20", seed) for seed in "012"]
    assert files == ({run + (name,) for run in runs for name in ("config.yaml", "summary.json", "metrics.jsonl")}
                     | {("lirpg", "peer", f"{impl}_{seed}.json") for impl in ("metarun", "sb3") for seed in "01"}
                     | {("lirpg", "bench.json")})
    # and no folder but those holding them: no W&B dir, no other page's or budget's runs
    assert {parts for parts, is_file in members.items() if not is_file} == {parts[:i] for parts in files for i in range(len(parts))}


def test_a_fresh_checkout_rebuilds_the_same_page_from_the_archive(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    outputs_with_other_pages_runs(outputs)
    build_page(tmp_path, monkeypatch, outputs)
    page, kept = tmp_path / "docs" / "lirpg.md", tmp_path / "docs" / "lirpg" / "runs.tar.xz"
    published, archive = page.read_text(), kept.read_bytes()
    shutil.rmtree(outputs)  # a checkout with no run data: only the page, its figures and the archive
    capsys.readouterr()
    build_page(tmp_path, monkeypatch, outputs)
    restored = outputs / "lirpg" / "kept"
    assert capsys.readouterr().out.splitlines()[0] == f"restored the kept run data {kept} into {restored}"
    assert (restored / "lirpg" / "ppo_e_d20" / "0" / "metrics.jsonl").is_file()
    # the same page, naming the run dirs where they ran (the resume command too), not where they were unpacked
    assert page.read_text() == published and f"run_dir={outputs / 'lirpg' / 'ppo_e_d20' / '2'}`" in published
    assert kept.read_bytes() == archive


def test_no_runs_and_no_archive_exits_2_and_leaves_the_page(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    fake_run(outputs / "lirpg", "ppo", 0, 3000, iterations=488)  # another budget's run only: nothing this page reads
    page = tmp_path / "docs" / "lirpg.md"
    page.parent.mkdir()
    page.write_text("the published page\n")
    with pytest.raises(SystemExit) as exit_:
        build_page(tmp_path, monkeypatch, outputs)
    out, err = capsys.readouterr()
    kept = tmp_path / "docs" / "lirpg" / "runs.tar.xz"
    assert exit_.value.code == 2 and out == "" and err.count("\n") == 1
    assert str(outputs) in err and str(kept) in err and "lirpg_delayed_sweep" in err
    assert page.read_text() == "the published page\n" and not kept.exists() and not (outputs / "lirpg" / "kept").exists()
