"""`metarun.load_learner` and `metarun-predict`: adapting a trained run to new few-shot tasks."""
import json
import shutil
import sys
import warnings

import pandas as pd
import pytest
import torch

from conftest import run_metarun
from metarun.config import ConfigError, DataError
from metarun.inner_loop import adapt_and_evaluate
from metarun.learner import load_learner
from metarun.predict import main
from test_eval_mode import tiny_run  # noqa: F401  (the session's tiny Omniglot run)

CLASSES = ("character01", "character02", "character03", "character04", "character05")


@pytest.fixture(scope="module")
def learner(tiny_run):  # noqa: F811
    return load_learner(tiny_run["run_dir"])


@pytest.fixture(scope="module")
def family(learner):
    """The run's task family, built from its config (the learner itself does not need the data)."""
    from hydra.utils import instantiate

    return instantiate(learner.cfg.task, device="cpu")


def files(tiny_run, alphabet="Latin", classes=CLASSES, take=slice(0, 2)):  # noqa: F811
    """(paths, labels) of real Omniglot files, labelled by character folder name."""
    paths, labels = [], []
    for c in classes:
        found = sorted((tiny_run["data"] / alphabet / c).glob("*.png"))[take]
        paths += found
        labels += [c] * len(found)
    return paths, labels


def test_paths_are_preprocessed_exactly_as_the_training_images(learner, family, tiny_run):  # noqa: F811
    paths, labels = files(tiny_run)
    x = learner.task.load_images(paths)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    # Each file's tensor is, bit for bit, one of the images the run was trained and tested on.
    stored = torch.cat([images for images, *_ in family.splits.values()]).flatten(1).float()
    assert all((stored == row.flatten()).all(1).any() for row in x)
    from_paths = learner.adapt(paths, labels, steps=3).predict(paths)
    from_tensor = learner.adapt(x, labels, steps=3).predict(x)
    assert torch.equal(from_paths, from_tensor)


def test_probabilities_and_labels(learner, tiny_run):  # noqa: F811
    paths, labels = files(tiny_run)
    query, truth = files(tiny_run, take=slice(2, 6))
    probs = learner.adapt(paths, labels).predict(query)
    assert probs.shape == (20, 5) and (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(20), atol=1e-6)
    assert learner.classes == list(CLASSES)  # column j is classes[j]
    assert learner.predict_labels(query) == [learner.classes[i] for i in probs.argmax(-1).tolist()]
    # Integer labels map to themselves: sorted classes 0..ways-1.
    learner.adapt(paths, torch.arange(5).repeat_interleave(2))
    assert learner.classes == [0, 1, 2, 3, 4]


def test_enough_steps_fit_the_support_set(learner, tiny_run):  # noqa: F811
    paths, labels = files(tiny_run, alphabet="Greek")
    learner.adapt(paths, labels, steps=0)
    assert learner.predict_labels(paths) != labels  # the meta-learned start alone does not know these classes
    learner.adapt(paths, labels, steps=25)
    assert learner.predict_labels(paths) == labels
    assert learner.predict(paths).max(-1).values.min() > 0.5


def test_transductive_prediction_is_the_evaluation_protocol(learner, family):
    """transductive=True gives exactly the query loss of metarun's evaluation (adapt_and_evaluate)."""
    sx, sy, qx, qy = (t[0] for t in family.sample(1, torch.Generator().manual_seed(3), "test"))
    model = learner.model
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        expected = adapt_and_evaluate(model, params, learner.adapted, learner.task.loss_fn, (sx, sy), (qx, qy), 2,
                                      learner.inner_lr, learner.inner_l2, True)
    probs = learner.adapt(sx, sy, steps=2).predict(qx, transductive=True)
    loss = -probs[torch.arange(len(qy)), qy].log().mean()
    assert loss.item() == pytest.approx(expected["loss"][2].item(), abs=1e-5)
    assert (probs.argmax(-1) == qy).float().mean().item() == pytest.approx(expected["accuracy"][2].item())


def test_default_prediction_of_an_image_does_not_depend_on_the_others(learner, family):
    sx, sy, qx, qy = (t[0] for t in family.sample(1, torch.Generator().manual_seed(4), "test"))
    learner.adapt(sx, sy, steps=2)
    assert torch.allclose(learner.predict(qx)[:3], learner.predict(qx[:3]), atol=1e-5)
    assert learner.predict(qx[:1]).shape == (1, 5)  # a single image works
    # Transductive BatchNorm statistics do depend on the batch: the two modes differ.
    assert not torch.allclose(learner.predict(qx[:3], transductive=True), learner.predict(qx, transductive=True)[:3], atol=1e-3)


def test_another_number_of_classes_zero_initialises_the_head(learner, tiny_run):  # noqa: F811
    paths, labels = files(tiny_run, classes=CLASSES[:3])
    with pytest.warns(UserWarning, match="zero-initialised"):
        learner.adapt(paths, labels, steps=0)
    assert learner.zero_init == ["head.weight", "head.bias"]
    # A zero head gives every class the same probability before any step.
    assert torch.allclose(learner.predict(paths), torch.full((6, 3), 1 / 3))
    learner.adapt(paths, labels, steps=25)
    assert learner.predict_labels(paths) == labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # back to the trained number of ways: the trained head, no warning
        learner.adapt(*files(tiny_run), steps=1)
    assert learner.zero_init == [] and learner.model.head.weight.abs().sum() > 0


@pytest.mark.parametrize("case, match", [
    ("unreadable", "cannot read image"),
    ("missing file", "cannot read image"),
    ("one class", "single class"),
    ("sizes", "10 examples but support_y has 9 labels"),
    ("shape", r"shape \(10, 1, 32, 32\); the run's model takes \(n, 1, 28, 28\)"),
    ("dtype", "dtype torch.uint8"),
    ("single path", "single path"),
    ("steps", "steps=-1"),
])
def test_bad_input_is_a_clear_error(learner, tiny_run, tmp_path, case, match):  # noqa: F811
    paths, labels = files(tiny_run)
    x = learner.task.load_images(paths)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    call = {
        "unreadable": lambda: learner.adapt(paths[:-1] + [bad], labels),
        "missing file": lambda: learner.adapt(paths[:-1] + [tmp_path / "gone.png"], labels),
        "one class": lambda: learner.adapt(paths[:2], labels[:2]),
        "sizes": lambda: learner.adapt(paths, labels[:-1]),
        "shape": lambda: learner.adapt(torch.rand(10, 1, 32, 32), labels),
        "dtype": lambda: learner.adapt((x * 255).to(torch.uint8), labels),
        "single path": lambda: learner.adapt(paths, labels).predict(paths[0]),
        "steps": lambda: learner.adapt(paths, labels, steps=-1),
    }[case]
    with pytest.raises((DataError, ConfigError), match=match):
        call()


def test_load_learner_errors(tiny_run, tmp_path):  # noqa: F811
    with pytest.raises(DataError, match="does not exist"):
        load_learner(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a metarun run dir"):
        load_learner(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], copy, ignore=shutil.ignore_patterns("eval"))
    (copy / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_learner(copy)
    (copy / "checkpoint.pt").unlink()
    with pytest.raises(DataError, match="no checkpoint"):
        load_learner(copy)


def test_load_learner_overrides_and_predict_before_adapt(tiny_run):  # noqa: F811
    fresh = load_learner(tiny_run["run_dir"], ["algo.inner_lr=0.7", "algo.adapt=[body.*]"])
    assert fresh.inner_lr == 0.7 and not any(name.startswith("head.") for name in fresh.adapted)
    with pytest.raises(DataError, match="call adapt"):
        fresh.predict(torch.rand(2, 1, 28, 28))
    # A head that does not adapt cannot be zero-initialised for another number of classes.
    paths, labels = files(tiny_run, classes=CLASSES[:3])
    with pytest.raises(DataError, match="head.weight, head.bias do not adapt"):
        fresh.adapt(paths, labels)


def support_folder(tiny_run, root, classes=CLASSES):  # noqa: F811
    paths, labels = files(tiny_run, classes=classes)
    for p, c in zip(paths, labels):
        (root / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / c / p.name)
    return root


def test_metarun_predict_end_to_end(tiny_run, tmp_path):  # noqa: F811
    support = support_folder(tiny_run, tmp_path / "support")
    (support / "character01" / "notes.txt").write_text("not an image: skipped")
    query = tmp_path / "query"
    shutil.copytree(support, query / "nested")  # a folder is searched recursively
    extra = files(tiny_run, take=slice(5, 6))[0][0]
    out = tmp_path / "preds.csv"
    # The console script as installed; `python -m metarun.predict` is the same `main`.
    result = run_metarun("-m", "metarun.predict", str(tiny_run["run_dir"]), "--support", str(support), "--query",
                         str(query), str(extra), "--steps", "25", "--output", str(out), cwd=tmp_path, command=sys.executable)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert len(lines) == 11
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "label", "probability", *[f"prob:{c}" for c in CLASSES]]
    assert [[p, label] for p, label, _ in lines] == table[["path", "label"]].values.tolist()
    assert table["probability"].tolist() == pytest.approx([float(p) for *_, p in lines], abs=1e-4)
    assert table.iloc[:, 3:].sum(axis=1).tolist() == pytest.approx([1.0] * 11, abs=1e-5)
    # The support images themselves (queried again) get their own folder's name.
    own = table[table["path"].str.contains("nested")]
    assert len(own) == 10 and (own["label"] == own["path"].str.split("/").str[-2]).all()


@pytest.mark.parametrize("args, match", [
    (["--query", "Q"], "the following arguments are required: --support"),
    (["--support", "S", "--query", "Q", "--steps", "-1"], "--steps=-1 is not allowed"),
    (["--support", "S", "--query", "nowhere.png"], "--query nowhere.png does not exist"),
    (["--support", "ONE", "--query", "Q"], "has 1 class folder"),
    (["--support", "EMPTY", "--query", "Q"], "has no image files"),
    (["--support", "BAD", "--query", "Q"], "cannot read image"),
    (["--support", "S", "--query", "Q", "--output", "no/such/dir/p.csv"], "cannot write --output"),
    (["RUN_MISSING", "--support", "S", "--query", "Q"], "does not exist"),
    (["--support", "S", "--query", "Q", "--override", "task.nope=1"], "override='task.nope=1' is not allowed"),
])
def test_metarun_predict_mistakes_are_one_line_and_exit_2(tiny_run, tmp_path, monkeypatch, capsys, args, match):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    support_folder(tiny_run, tmp_path / "S", CLASSES[:2])
    support_folder(tiny_run, tmp_path / "ONE", CLASSES[:1])
    support_folder(tiny_run, tmp_path / "EMPTY", CLASSES[:2])
    shutil.rmtree(tmp_path / "EMPTY" / CLASSES[0])
    (tmp_path / "EMPTY" / CLASSES[0]).mkdir()
    support_folder(tiny_run, tmp_path / "BAD", CLASSES[:2])
    (tmp_path / "BAD" / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG broken")
    shutil.copytree(tmp_path / "S", tmp_path / "Q")
    run = "RUN_MISSING" if args[0] == "RUN_MISSING" else str(tiny_run["run_dir"])
    with pytest.raises(SystemExit) as exit_info:
        main([run, *[a for a in args if a != "RUN_MISSING"]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarun-predict: error: ") and match in err[0], err


def test_regression_run_adapts_and_predicts_outputs(tmp_path):
    """A sinusoid run: `predict` returns outputs, and matches the evaluation inner loop step for step."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from metarun.train import run

    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["iterations=5", "eval_tasks=2", "eval_steps=1", "progress=false", "algo.inner_lr=0.05"])
    GlobalHydra.instance().clear()
    run_dir = tmp_path / "sinusoid"
    run(cfg, run_dir)  # from Python: no Hydra, no .hydra/ folder; the run writes config.yaml itself
    assert not (run_dir / ".hydra").exists()
    learner = load_learner(run_dir)
    sx, sy, qx, qy = (t[0] for t in learner.task.sample(1, torch.Generator().manual_seed(0), "test"))
    params = {k: v.detach() for k, v in learner.model.named_parameters()}
    with torch.no_grad():
        expected = adapt_and_evaluate(learner.model, params, learner.adapted, learner.task.loss_fn, (sx, sy), (qx, qy), 3,
                                      0.05, 0.0)
    for steps in range(4):
        out = learner.adapt(sx, sy, steps=steps).predict(qx)
        assert out.shape == (10, 1)
        assert torch.nn.functional.mse_loss(out, qy).item() == pytest.approx(expected["loss"][steps].item(), rel=1e-5)
    assert expected["loss"][3] < expected["loss"][0]  # the steps do adapt
    with pytest.raises(DataError, match="classification"):
        learner.predict_labels(qx)


def test_load_learner_is_exported_from_the_package():
    import metarun

    assert metarun.load_learner is load_learner


def test_default_learner_reproduces_the_runs_reported_test_figures(tiny_run):  # noqa: F811
    """Held-out queries of the run's own test tasks: the learner's defaults (checkpoint and number of
    steps) with the evaluation protocol (transductive) give exactly the reported test accuracy."""
    import json

    from metarun.evaluate import task_set

    run_dir = tiny_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    learner = load_learner(run_dir)
    assert learner.checkpoint == summary["tested_checkpoint"] and learner.inner_steps == summary["test_steps"]
    cfg = learner.cfg
    family = load_learner(run_dir, [f"task.root={cfg.task.root}"]).task  # a task.* override rebuilds the family
    accuracies, default_accuracies = [], []
    for sx, sy, qx, qy in task_set(family, "test", cfg.eval_tasks, cfg.eval_seed, cfg.eval_chunk):
        for i in range(len(sx)):
            learner.adapt(sx[i], sy[i])  # default steps
            accuracies.append((learner.predict(qx[i], transductive=True).argmax(-1) == qy[i]).float().mean().item())
            default_accuracies.append((learner.predict(qx[i]).argmax(-1) == qy[i]).float().mean().item())
    assert len(accuracies) == cfg.eval_tasks
    assert sum(accuracies) / len(accuracies) == pytest.approx(summary["test/accuracy"], abs=1e-6)
    # The default (non-transductive) prediction normalises each query image with the support set:
    # on held-out queries it must be a working classifier, far above chance (1/5), not a copy of the
    # transductive figure. (The tiny run reaches ~0.7-0.8; chance is 0.2.)
    default = sum(default_accuracies) / len(default_accuracies)
    assert default > 0.2 + 0.5 * (summary["test/accuracy"] - 0.2), (default, summary["test/accuracy"])


def test_load_learner_takes_best_pt_when_the_run_tested_it(tiny_run, tmp_path):  # noqa: F811
    import json

    from metarun.checkpoint import load

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run["run_dir"], copy, ignore=shutil.ignore_patterns("eval"))
    summary = json.loads((copy / "summary.json").read_text())
    best = load(copy / "best.pt")
    # Make best.pt differ from the last checkpoint, and say the run tested it.
    best["model"] = {k: v + 0.01 for k, v in best["model"].items()}
    torch.save(best, copy / "best.pt")
    (copy / "summary.json").write_text(json.dumps({**summary, "tested_checkpoint": "best.pt"}))
    learner = load_learner(copy)
    assert learner.checkpoint == "best.pt"
    assert all(torch.equal(v, best["model"][k]) for k, v in learner.model.state_dict().items())
    assert load_learner(copy, checkpoint="checkpoint.pt").checkpoint == "checkpoint.pt"
    with pytest.raises(ConfigError, match="best.pt or checkpoint.pt"):
        load_learner(copy, checkpoint="other.pt")


def moved_copy(tiny_run, tmp_path):  # noqa: F811
    """The run dir copied elsewhere, its config pointing at a data set and cache that do not exist."""
    from omegaconf import OmegaConf

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run["run_dir"], copy, ignore=shutil.ignore_patterns("eval"))
    cfg = OmegaConf.load(copy / "config.yaml")
    cfg.task.root, cfg.task.cache_dir = str(tmp_path / "no_data"), str(tmp_path / "no_cache")
    (copy / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return copy


def test_load_learner_works_from_a_copy_of_the_run_dir_without_the_data(tiny_run, learner, tmp_path, monkeypatch):  # noqa: F811
    copy = moved_copy(tiny_run, tmp_path)
    monkeypatch.setenv("METARUN_DATA", str(tmp_path / "no_data"))
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path / "no_cache"))
    record = json.loads((copy / "preprocess.json").read_text())
    assert record["input_shape"] == [1, 28, 28] and record["output_dim"] == 5 and record["invert"] is True
    moved = load_learner(copy)
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "no_cache").exists()
    paths, labels = files(tiny_run)
    query, _ = files(tiny_run, take=slice(2, 6))
    expected = learner.adapt(paths, labels, steps=3).predict(query)
    assert torch.equal(moved.adapt(paths, labels, steps=3).predict(query), expected)
    assert torch.equal(moved.task.load_images(paths), learner.task.load_images(paths))
    # The data-backed path needs the data: a task.* override rebuilds the family and says what is missing.
    with pytest.raises(DataError, match="no Omniglot images found"):
        load_learner(copy, [f"task.root={tmp_path / 'no_data'}"])


def test_metarun_predict_works_from_a_copy_of_the_run_dir_without_the_data(tiny_run, learner, tmp_path, monkeypatch, capsys):  # noqa: F811
    copy = moved_copy(tiny_run, tmp_path)
    monkeypatch.setenv("METARUN_DATA", str(tmp_path / "no_data"))
    support = support_folder(tiny_run, tmp_path / "support")
    query = files(tiny_run, take=slice(4, 8))[0]
    assert main([str(copy), "--support", str(support), "--query", *map(str, query), "--steps", "10"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    paths, labels = files(tiny_run)  # the support folder's files, in its (sorted) order
    probs = learner.adapt(sorted(paths, key=lambda p: (p.parent.name, p.name)), sorted(labels), steps=10).predict(query)
    assert [label for _, label, _ in lines] == [learner.classes[i] for i in probs.argmax(-1).tolist()]
    assert [float(p) for *_, p in lines] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-4)


def test_prototype_head_learner_predicts_as_a_prototypical_network_for_any_ways(tiny_run):  # noqa: F811
    """algo.head_init=prototypes: the head is built from the support set, so a 3-way task on a 5-way
    run needs no zero-initialised head, and before any step the prediction is ProtoNets'."""
    learner = load_learner(tiny_run["run_dir"], ["algo.head_init=prototypes"])
    paths, labels = files(tiny_run, alphabet="Greek", classes=CLASSES[:3])
    query, _ = files(tiny_run, alphabet="Greek", classes=CLASSES[:3], take=slice(2, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = learner.adapt(paths, labels, steps=0).predict(query, transductive=True)
    assert any("class prototypes" in str(w.message) for w in caught)  # not "zero-initialised"
    with torch.no_grad():
        support = learner.model.body(learner.task.load_images(paths))
        means = torch.stack([support[2 * k: 2 * k + 2].mean(0) for k in range(3)])
        expected = (-torch.cdist(learner.model.body(learner.task.load_images(query)), means) ** 2).softmax(-1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
