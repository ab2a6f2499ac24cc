"""scripts/learned_subsets_report.py: the run data the page reads kept beside it, a fresh work dir
restored from it giving the same page, and a rebuild with no runs that refuses rather than replacing
the page. The sweeps are tiny fake ones in the shape the script reads (no training, no evaluation:
the Omniglot per-task accuracies come from the cache the script keeps)."""
import json
import sys
import tarfile

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import learned_subsets_report as ls  # noqa: E402

INPUT_DIM, FEATURES = 6, 2
OMNIGLOT_TENSORS = ["body.0.0.weight", "body.0.1.weight", "body.1.0.weight", "body.1.1.weight", "body.2.0.weight",
                    "body.2.1.weight", "body.3.0.weight", "body.3.1.weight", "head.weight"]


def fake_job(sweep, job, overrides, config, summary, metrics, checkpoint=None):
    """A metarun job dir as the script reads it, plus what it must not keep (a log, a W&B dir)."""
    run_dir = sweep / job
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    (run_dir / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (run_dir / "config.yaml").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", **summary}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    (run_dir / "train.log").write_text("log\n")
    (run_dir / "wandb").mkdir()
    (run_dir / "wandb" / "run.wandb").write_text("x")
    if checkpoint is not None:
        torch.save(checkpoint, run_dir / "checkpoint.pt")


def fake_linreg(work):
    sweep = work / "linreg"
    config = {"scale": "quick", "scales": {"quick": {"seeds": "0,1"}}, "iterations": 20, "meta_batch_size": 4, "eval_tasks": 8,
              "task": {"input_dim": INPUT_DIM, "features": FEATURES, "truth_seed": 1234},
              "algo": {"inner_steps": 5, "inner_lr": 0.02, "inner_l2": 0.1, "adapt_rule": "fixed"}, "optim": {"lr": 0.003}}
    job = 0
    for arm_index, arm in enumerate(["maml", "anil", "meta_sgd", "sparse"]):
        for seed in (0, 1):
            metrics = []
            for it in (10, 20):
                row = {"iteration": it, "time": it * 0.1, "oracle/grad_params": it * 30,
                       "train/dist_to_opt": 0.5 / it + 0.01 * arm_index + 0.003 * seed}
                if arm == "sparse":
                    row.update({f"train/density/{ls.BODY}": 0.02 + 0.01 * seed, f"train/density/{ls.HEAD}": 0.99})
                if arm == "meta_sgd":
                    row.update({f"train/lr_abs/{ls.BODY}": 0.01 + 0.001 * seed, f"train/lr_abs/{ls.HEAD}": 0.02})
                metrics.append(row)
            g = torch.Generator().manual_seed(job)
            model = {ls.BODY: torch.randn(FEATURES, INPUT_DIM, generator=g), ls.HEAD: torch.randn(1, FEATURES, generator=g)}
            values = torch.randn(FEATURES, INPUT_DIM, generator=g)
            checkpoint = {"model": model, "algo": {"adapt_rule": {"values." + ls.BODY.replace(".", "/"): values}}}
            fake_job(sweep, str(job), {"arm": arm, "seed": seed},
                     {**config, "seed": seed, "algo": {**config["algo"], "adapt_rule": "sparse" if arm == "sparse" else "fixed"}},
                     {"test/loss": 0.1 + 0.01 * arm_index + 0.001 * seed, "time": 2.0, "iteration": 20, "wall_time": 3.0},
                     metrics, checkpoint)  # every run has a checkpoint; only the mask arm's is read
            job += 1
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "report").mkdir()
    (sweep / "report" / "summary.md").write_text("a metarun-report table\n")


def fake_omniglot(work):
    """Three 5w1s runs; their per-task accuracies in the cache, keyed as the script used to: by absolute path."""
    sweep = work / "omniglot"
    config = {"scale": "quick", "eval_steps": 3, "eval_tasks": 5, "algo": {"inner_lr": 0.4, "inner_steps": 1}, "optim": {"lr": 0.001}}
    cache = {}
    for job, arm in enumerate(["maml", "meta_sgd", "sparse"]):
        metrics = []
        for it in (5, 10):
            row = {"iteration": it, "time": it * 0.5}
            for i, name in enumerate(OMNIGLOT_TENSORS):
                if arm == "sparse":
                    row[f"train/density/{name}"] = 0.1 + 0.1 * i
                    row["train/density"] = 0.5
                if arm == "meta_sgd":
                    row[f"train/lr_abs/{name}"] = 0.4 + 0.01 * i
            metrics.append(row)
        checkpoint = {"model": {name: torch.zeros(3 + i) for i, name in enumerate(OMNIGLOT_TENSORS)}}
        fake_job(sweep, str(job), {"arm": arm, "episode": "5w1s", "seed": 0}, config,
                 {"test/accuracy": 0.9, "time": 5.0, "iteration": 10, "threads": 1, "tested_checkpoint": "best.pt",
                  "oracle/grad_params": 1000}, metrics, checkpoint)
        (sweep / str(job) / "best.pt").write_bytes(b"the tested checkpoint: per_task loads it only without the cache")
        g = torch.Generator().manual_seed(job)
        cache[str((sweep / str(job)).resolve())] = (0.2 + 0.6 * torch.rand(4, 5, generator=g)).tolist()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (work / ls.PER_TASK).write_text(json.dumps(cache))


def fake_bench(work):
    rules = ["fixed", "meta_sgd"]
    (work / "bench.json").write_text(json.dumps({
        "median": {r: 1.0 + i / 10 for i, r in enumerate(rules)}, "ratio": {r: 1.0 + i / 10 for i, r in enumerate(rules)},
        "seconds": {r: [1.0, 1.2] for r in rules}, "met": {"meta_sgd": True}, "ways": 5, "meta_batch": 32, "steps": 1,
        "threads": 2, "repeats": 5}))


def build(monkeypatch, work, docs, *extra):
    monkeypatch.setattr(sys, "argv", ["learned_subsets_report.py", "--work-dir", str(work), "--docs", str(docs), *extra])
    ls.main()


@pytest.fixture
def work(tmp_path):
    work = tmp_path / "work"
    fake_linreg(work)
    fake_omniglot(work)
    fake_bench(work)
    (work / "linreg.log").write_text("the sweep's log\n")
    return work


def test_the_kept_run_data_holds_what_the_page_reads_and_a_fresh_work_dir_gives_the_same_page(work, tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs"
    build(monkeypatch, work, docs, "--skip-runs")
    page = (docs / "learned_subsets.md").read_text()
    kept = docs / "learned_subsets" / "runs.tar.xz"
    assert f"its run data kept in {kept}" in capsys.readouterr().out
    assert "| sparse |" in page and "| meta_sgd |" in page and "(not run)" not in page and "no benchmark file" not in page

    with tarfile.open(kept) as tar:
        files = sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())
    job_files = [".hydra/config.yaml", ".hydra/overrides.yaml", "config.yaml", "metrics.jsonl", "summary.json"]
    # The checkpoints the page loads: linear regression's mask arm (jobs 6, 7), Omniglot's Meta-SGD and
    # mask arms (jobs 1, 2); not the tested best.pt, whose per-task accuracies are in the kept cache.
    expected = sorted(["bench.json", ls.PER_TASK, "linreg/multirun.yaml", "omniglot/multirun.yaml",
                       *(f"linreg/{job}/{f}" for job in range(8) for f in job_files),
                       *(f"omniglot/{job}/{f}" for job in range(3) for f in job_files),
                       "linreg/6/checkpoint.pt", "linreg/7/checkpoint.pt", "omniglot/1/checkpoint.pt", "omniglot/2/checkpoint.pt"])
    assert files == expected

    first = kept.read_bytes()
    build(monkeypatch, work, docs, "--skip-runs")
    assert kept.read_bytes() == first  # unchanged runs, the same bytes: no churn in git

    # Another checkout: no work dir, the page's kept data only (the cache held absolute paths of `work`).
    fresh, fresh_docs = tmp_path / "fresh", tmp_path / "fresh_docs"
    (fresh_docs / "learned_subsets").mkdir(parents=True)
    (fresh_docs / "learned_subsets" / "runs.tar.xz").write_bytes(first)
    capsys.readouterr()
    build(monkeypatch, fresh, fresh_docs, "--skip-runs")
    assert f"restored the kept run data {fresh_docs / 'learned_subsets' / 'runs.tar.xz'} into {fresh}" in capsys.readouterr().out
    assert (fresh_docs / "learned_subsets.md").read_text() == page
    assert (fresh_docs / "learned_subsets" / "runs.tar.xz").read_bytes() == first


def test_a_build_with_no_runs_and_no_kept_data_refuses_and_leaves_the_page(tmp_path, monkeypatch, capsys):
    docs, work = tmp_path / "docs", tmp_path / "work"
    docs.mkdir()
    (docs / "learned_subsets.md").write_text("the published page\n")
    with pytest.raises(SystemExit) as exit_:
        build(monkeypatch, work, docs, "--skip-runs")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert str(work) in err and str(docs / "learned_subsets" / "runs.tar.xz") in err and "learned_subsets_report.py" in err
    assert (docs / "learned_subsets.md").read_text() == "the published page\n"
    assert sorted(p.name for p in docs.iterdir()) == ["learned_subsets.md"]  # no figures, no archive


def test_running_the_omniglot_sweep_drops_the_per_task_cache_of_the_runs_it_replaces(work, monkeypatch):
    monkeypatch.setattr(ls.subprocess, "call", lambda *args, **kwargs: 0)  # the sweep itself is not run here
    ls.run_sweep("linreg", "quick", work / "linreg", [])
    assert (work / ls.PER_TASK).is_file()  # the linear regression sweep has no per-task cache
    ls.run_sweep("omniglot", "quick", work / "omniglot", [])
    assert not (work / ls.PER_TASK).exists() and not (work / "omniglot").exists()


def test_the_speed_section_says_what_the_benchmark_measured_of_the_machine(tmp_path):
    missing = ls.speed_section(tmp_path / "bench.json")["speed"]
    assert "no benchmark file bench.json in the work dir" in missing and str(tmp_path) not in missing  # no path of this machine
    fake_bench(tmp_path)  # a file from before bench_adapt_rules.py measured the machine
    assert "2 threads, the machine it ran on not recorded;" in ls.speed_section(tmp_path / "bench.json")["speed"]
    bench = json.loads((tmp_path / "bench.json").read_text())
    for share, had in ((0.98, "the machine alone"), (0.6, "the machine shared with other work")):
        (tmp_path / "bench.json").write_text(json.dumps({**bench, "machine_share": share, "load_start": 0.2, "load_end": 1.9,
                                                         "cpu": "AMD EPYC (family 25, model 17, stepping 1)"}))
        assert (f"2 threads, {had} (it had {share:.0%} of the machine's busy CPU seconds; load average 0.2 at the start, "
                "1.9 at the end; AMD EPYC (family 25, model 17, stepping 1)); median of 5 steps") in ls.speed_section(tmp_path / "bench.json")["speed"]
