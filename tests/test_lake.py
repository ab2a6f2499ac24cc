"""Lake et al. (2015)'s one-shot runs (eval_protocol=lake) and the test-time inner steps chosen on validation."""
import json
import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from metarun.config import ConfigError
from metarun.evaluate import task_descriptions, task_set
from metarun.lake import lake_config, lake_errors
from metarun.learner import evaluate_run
from metarun.tasks.omniglot import Omniglot
from metarun.train import at_steps, chosen_steps
from test_eval_mode import eval_config, tiny_run  # noqa: F401  (the session's tiny Omniglot run)
from test_omniglot import decode, make_coded_omniglot

# A training alphabet, a validation alphabet of 20 characters and a test alphabet of 21, 4 drawers each.
LAKE_ALPHABETS = (("images_background", "Alpha", 6), ("images_background", "Zeta", 20), ("images_evaluation", "Eta", 21))


def build_task(cfg):
    """The Omniglot family of a task config (what Hydra's instantiate does, minus its exception wrapper)."""
    options = OmegaConf.to_container(cfg)
    assert options.pop("_target_") == "metarun.tasks.omniglot.Omniglot"
    return Omniglot(**options)


@pytest.fixture
def lake_family(tmp_path):
    root = make_coded_omniglot(tmp_path / "data", LAKE_ALPHABETS, drawers=4)
    cfg = OmegaConf.create({"_target_": "metarun.tasks.omniglot.Omniglot", "root": str(root), "cache_dir": str(tmp_path / "c"),
                            "image_size": 8, "ways": 5, "shots": 2, "query": 2, "rotations": "as_classes",
                            "augment": "affine", "split": "alphabet", "val_alphabets": ["Zeta"], "test_alphabets": ["Eta"]})
    return build_task(lake_config(cfg))


def test_lake_runs_are_20_characters_of_one_alphabet_by_two_distinct_drawers(lake_family):
    task = lake_family
    names = {i: c.split("/")[1] for i, c in enumerate(task.classes)}
    runs = [tuple(t[i] for t in batch) for batch in task_set(task, "test", 120, 12345, 50) for i in range(len(batch[0]))]
    described = task_descriptions(task, "test", 120, 12345)
    pairs = set()
    for (sx, sy, qx, qy), row in zip(runs, described):
        (s_cls, s_drawer, s_turns), (q_cls, q_drawer, q_turns) = decode(sx), decode(qx)
        assert sx.shape[0] == qx.shape[0] == 20 and torch.equal(sy, torch.arange(20)) and torch.equal(qy, torch.arange(20))
        assert torch.equal(s_cls, q_cls) and len(set(s_cls.tolist())) == 20  # the same 20 characters, one image each
        assert {names[c] for c in s_cls.tolist()} == {"Eta"}  # the held-out alphabet
        assert len(set(s_drawer.tolist())) == 1 and len(set(q_drawer.tolist())) == 1  # one drawer for each side
        assert s_drawer[0] != q_drawer[0]  # ... and not the same one
        assert s_turns.eq(0).all() and q_turns.eq(0).all()  # no rotations, whatever the training config says
        pairs.add((int(s_drawer[0]), int(q_drawer[0])))
        # The run's description (lake_runs.csv) is what was drawn.
        assert row["alphabets"] == ["Eta"] and [task.classes.index(c) for c in row["characters"]] == s_cls.tolist()
        assert row["support_drawers"] == [[int(s_drawer[0])]] * 20 and row["query_drawers"] == [[int(q_drawer[0])]] * 20
    assert len(pairs) == 12  # every ordered pair of the 4 drawers occurs
    assert not any("affine" in task.draw(2, torch.Generator().manual_seed(0), s) for s in ("val", "test"))


def test_lake_needs_an_alphabet_of_20_characters(tmp_path):
    root = make_coded_omniglot(tmp_path / "data", (*LAKE_ALPHABETS, ("images_evaluation", "Theta", 19)), drawers=4)
    cfg = OmegaConf.create({"_target_": "metarun.tasks.omniglot.Omniglot", "root": str(root), "cache_dir": str(tmp_path / "c"),
                            "image_size": 8, "split": "alphabet", "val_alphabets": ["Zeta"], "test_alphabets": ["Eta", "Theta"]})
    with pytest.raises(ConfigError, match="Theta has 19 classes in the test split"):
        build_task(lake_config(cfg))
    with pytest.raises(ConfigError, match="eval_protocol='lake'.*Theta has 19 classes in the test split"):
        with lake_errors():
            build_task(lake_config(cfg))
    with pytest.raises(ConfigError, match="eval_protocol"):
        lake_config(OmegaConf.create({"_target_": "metarun.tasks.sinusoid.Sinusoid"}))


def test_chosen_steps_prefer_the_best_validation_figure_then_fewer_steps():
    assert chosen_steps({"eval/accuracy_step0": 0.2, "eval/accuracy_step1": 0.9, "eval/accuracy_step2": 0.8,
                         "eval/loss_step0": 1.0, "eval/loss_step1": 0.1, "eval/loss_step2": 0.05}) == 1  # accuracy first
    assert chosen_steps({"eval/accuracy_step0": 0.2, "eval/accuracy_step1": 0.7, "eval/accuracy_step2": 0.7}) == 1
    assert chosen_steps({"eval/loss_step0": 1.0, "eval/loss_step1": 0.3, "eval/loss_step2": 0.4}) == 1
    assert chosen_steps({"eval/return_step0": -40.0, "eval/return_step1": math.nan, "eval/return_step2": -10.0}) == 2
    assert chosen_steps({"eval/return_step0": -40.0}) == 0  # an RL run without inner steps
    figures = {"test/accuracy_step0": 0.1, "test/accuracy_step0_ci95": 0.01, "test/accuracy_step1": 0.5,
               "test/accuracy_step1_ci95": 0.02, "test/accuracy": 0.5, "test/accuracy_ci95": 0.02}
    assert at_steps(figures, "test", 0) == {**figures, "test/accuracy": 0.1, "test/accuracy_ci95": 0.01}


def test_a_run_tests_after_the_steps_its_validation_chose(tiny_run):  # noqa: F811
    run_dir = tiny_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["iteration"] == summary["tested_iteration"] and "eval/accuracy" in r][-1]
    val = [last[f"eval/accuracy_step{k}"] for k in range(3)]
    assert summary["tested_checkpoint"] == "checkpoint.pt" and summary["test_steps"] == val.index(max(val))
    k = summary["test_steps"]
    assert summary["test/accuracy"] == summary[f"test/accuracy_step{k}"]
    assert summary["test/loss_ci95"] == summary[f"test/loss_step{k}_ci95"]
    assert all(f"test/accuracy_step{j}" in summary for j in range(3))


def test_eval_mode_lake_on_held_out_alphabets(tiny_run, tmp_path):  # noqa: F811
    """`metarun mode=eval eval_protocol=lake`: the 5-way tiny run on Lake's runs from Latin (its head
    zero-initialised for 20 ways); per-run errors in lake_runs.csv, their mean with a 95% CI in summary.json."""
    run_dir = tiny_run["run_dir"]
    cfg = eval_config(run_dir, "eval_protocol=lake", "task.split=alphabet", "task.val_alphabets=[Greek]",
                      "task.test_alphabets=[Latin]", "eval_tasks=12")
    summary = evaluate_run(cfg, tmp_path / "out")
    assert summary["eval_protocol"] == "lake" and summary["zero_init"] == ["head.weight", "head.bias"]
    runs = pd.read_csv(tmp_path / "out" / "lake_runs.csv")
    assert len(runs) == 12 and set(runs["alphabet"]) == {"Latin"} and summary["lake/alphabets"] == ["Latin"]
    assert (runs["support_drawer"] != runs["query_drawer"]).all()
    assert all(len(c.split()) == 20 for c in runs["characters"])
    k = summary["test_steps"]
    assert summary["lake/error"] == pytest.approx(runs[f"error_step{k}"].mean())
    assert summary["lake/error"] == pytest.approx(1 - summary["test/accuracy"], abs=1e-6)
    assert summary["lake/runs"] == 12 and summary["lake/error_ci95"] > 0
    assert summary["test/accuracy_step0"] == pytest.approx(1 / 20)  # zero head: every class equal before adapting
    # The tiny run's own test split (characters of Greek and Latin) holds no 20-character alphabet.
    with pytest.raises(ConfigError, match="eval_protocol='lake'.*20 characters.*the val split has 10 classes"):
        evaluate_run(eval_config(run_dir, "eval_protocol=lake"), tmp_path / "out2")


def test_eval_protocol_lake_is_checked_before_a_run_starts():
    from metarun.config import validate

    with pytest.raises(ConfigError, match="only with task=omniglot"):
        validate(OmegaConf.create({"eval_protocol": "lake", "task": {"_target_": "metarun.tasks.sinusoid.Sinusoid"}}))
    with pytest.raises(ConfigError, match="task.ways=5"):
        validate(OmegaConf.create({"eval_protocol": "lake", "mode": "train",
                                   "task": {"_target_": "metarun.tasks.omniglot.Omniglot", "ways": 5}}))
    validate(OmegaConf.create({"eval_protocol": "lake", "mode": "eval",
                               "task": {"_target_": "metarun.tasks.omniglot.Omniglot", "ways": 5}}))
    with pytest.raises(ConfigError, match="eval_protocol"):
        validate(OmegaConf.create({"eval_protocol": "lakes"}))


def test_training_with_eval_protocol_lake(shared_data, tmp_path, monkeypatch):
    """A short 20-way run whose validation and test tasks are Lake's runs (Greek, then Latin): the summary
    reports the Lake error after the steps validation chose, and lake_runs.csv lists the test runs."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from metarun.train import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "data" / "omniglot-py" / "images_background"
    data.mkdir(parents=True)
    for alphabet in ("Balinese", "Greek", "Latin"):
        (data / alphabet).symlink_to(shared_data / "omniglot-py" / "images_background" / alphabet)
    overrides = [f"task.root={tmp_path / 'data'}", f"task.cache_dir={tmp_path / 'cache'}", "task.split=alphabet",
                 "task.val_alphabets=[Greek]", "task.test_alphabets=[Latin]", "task.ways=20", "task.query=1",
                 "task.rotations=per_task", "task.rotated_splits=[train]", "task.augment=affine", "model=conv4",
                 "model.channels=8", "model.downsample=stride", "model.global_pool=true", "algo=anil", "algo.inner_lr=0.5",
                 "meta_batch_size=2", "iterations=4", "eval_every=2", "eval_tasks=8", "eval_steps=2", "eval_chunk=4",
                 "checkpoint_every=2", "progress=false", "eval_protocol=lake", "test_checkpoint=best"]
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=omniglot", *overrides])
    GlobalHydra.instance().clear()
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["lake/runs"] == 8 and summary["lake/alphabets"] == ["Latin"]
    runs = pd.read_csv(tmp_path / "run" / "lake_runs.csv")
    k = summary["test_steps"]
    assert summary["lake/error"] == pytest.approx(runs[f"error_step{k}"].mean()) == pytest.approx(1 - summary["test/accuracy"])
    # The steps were chosen on the validation runs of the tested checkpoint (best.pt).
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    val = [best["val"][f"eval/accuracy_step{j}"] for j in range(3)]
    assert summary["tested_checkpoint"] == "best.pt" and k == val.index(max(val))
    assert json.loads((tmp_path / "run" / "preprocess.json").read_text())["output_dim"] == 20
