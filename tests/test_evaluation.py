"""The evaluation path every published figure goes through (metarun.evaluate).

- validation tasks are never the test tasks, for every task family;
- the fixed evaluation set does not depend on `eval_chunk`, and a larger set extends a smaller one;
- a run's validation figure is not its test figure.
"""
import json

import pytest
import torch

from metarun.algos.maml import MAML
from metarun.evaluate import evaluate, split_seed, task_set
from metarun.models.mlp import MLP
from metarun.tasks.linear_regression import LinearRegression
from metarun.tasks.navigation2d import Navigation2D
from metarun.tasks.quadratic import Quadratic
from metarun.tasks.sinusoid import Sinusoid
from test_image_readers import cifar_root, write_pickles  # noqa: F401 (fixture)
from test_omniglot import make_omniglot


def first_tasks(task, split, n=6):
    return next(task_set(task, split, n, 12345, n))


def omniglot(tmp_path):
    from metarun.tasks.omniglot import Omniglot

    root = make_omniglot(tmp_path / "data")
    # Alphabet split: val and test hold different characters. With one shared split (a family
    # whose splits coincide) the seeds alone must still keep the sets apart: checked below.
    return Omniglot(root=root, cache_dir=tmp_path / "cache", image_size=8, ways=2, shots=1, query=2, rotations=False,
                    split="character", split_fractions=[0.4, 0.3, 0.3])


def families(tmp_path, cifar):
    from metarun.tasks.cifar_fs import CIFARFS, FC100
    from metarun.tasks.mini_imagenet import MiniImageNet

    write_pickles(tmp_path / "mini")
    out = {
        "sinusoid": Sinusoid(),
        "linear_regression": LinearRegression(input_dim=4, features=2),
        "quadratic": Quadratic(head_dim=1, body_dim=1, support_curvature=[1.0, 2.0], query_curvature=[1.0, 2.0]),
        "navigation2d": Navigation2D(),
        "navigation2d_reference_test_goals": Navigation2D(test_goals="reference"),
        "omniglot": omniglot(tmp_path),
        "mini_imagenet": MiniImageNet(root=tmp_path / "mini", cache_dir=tmp_path / "cache", image_size=8, ways=2, query=2),
        "cifar_fs": CIFARFS(root=cifar, cache_dir=tmp_path / "cache", image_size=8, ways=2, query=1),
        "fc100": FC100(root=cifar, cache_dir=tmp_path / "cache", image_size=8, ways=2, query=1),
    }
    try:
        from metarun.tasks.half_cheetah import HalfCheetah

        out["half_cheetah_vel"] = HalfCheetah(goal="velocity")
    except Exception:  # noqa: BLE001 - MuJoCo missing: that family is tested where it is installed
        pass
    return out


def test_validation_and_test_sets_differ_for_every_task_family(tmp_path, cifar_root):  # noqa: F811
    for name, task in families(tmp_path, cifar_root).items():
        val, test = first_tasks(task, "val"), first_tasks(task, "test")
        same = all(torch.equal(a, b) for a, b in zip(val, test)) if isinstance(val, tuple) else torch.equal(val, test)
        assert not same, f"{name}: validation tasks equal the test tasks"
        # And each split's set is fixed: drawn again, it is the same.
        again = first_tasks(task, "test")
        assert all(torch.equal(a, b) for a, b in zip(test, again)) if isinstance(test, tuple) else torch.equal(test, again)


def test_split_seeds_keep_validation_off_the_test_seed():
    assert split_seed(7, "test") == 7 and split_seed(7, "val") == 8
    with pytest.raises(ValueError):
        split_seed(7, "train")


def sinusoid_algo():
    torch.manual_seed(0)
    model = MLP((1,), 1)
    return MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), Sinusoid(), ["*"], 1, 0.01)


@pytest.mark.parametrize("chunk", [1, 7, 50, 64])
def test_figures_do_not_depend_on_eval_chunk(chunk):
    algo = sinusoid_algo()
    reference = evaluate(algo, algo.task, "test", 130, 2, 12345, chunk=130)
    got = evaluate(algo, algo.task, "test", 130, 2, 12345, chunk=chunk)
    torch.testing.assert_close(got["loss"], reference["loss"], rtol=1e-5, atol=1e-6)


def test_a_larger_evaluation_set_extends_a_smaller_one():
    task = Sinusoid()
    small = next(task_set(task, "test", 40, 3, 40))
    large = next(task_set(task, "test", 120, 3, 120))
    assert all(torch.equal(s, l[:40]) for s, l in zip(small, large))


def test_image_task_figures_do_not_depend_on_eval_chunk(tmp_path):
    from metarun.models.conv4 import Conv4

    task = omniglot(tmp_path)
    torch.manual_seed(0)
    model = Conv4(task.input_shape, task.output_dim, channels=4, blocks=2)
    algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), task, ["*"], 1, 0.3)
    a = evaluate(algo, task, "val", 23, 1, 5, chunk=23)
    b = evaluate(algo, task, "val", 23, 1, 5, chunk=4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_rl_figures_do_not_depend_on_eval_chunk():
    from test_rl import make_algo

    algo = make_algo(task_options={"horizon": 6})
    a = algo.evaluate("test", 5, 1, seed=3, chunk=2)["return"]
    b = algo.evaluate("test", 5, 1, seed=3, chunk=5)["return"]
    assert torch.equal(a, b)


def test_a_runs_validation_figure_is_not_its_test_figure(tmp_path):
    # Before validation had its own tasks, val_loss equalled test/loss exactly (README's example).
    from test_algos import make_cfg
    from metarun.train import run

    summary = run(make_cfg("iterations=30", "eval_every=30", "eval_tasks=20", "log_every=10"), tmp_path)
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["iteration"] == 30 and summary["test/loss"] != last["eval/loss"]
    # The test figure is after the number of inner steps that did best on validation (fewest on ties).
    val = [last[f"eval/loss_step{k}"] for k in range(11)]
    assert summary["tested_checkpoint"] == "checkpoint.pt" and summary["test_steps"] == val.index(min(val))
    assert summary["test/loss"] == summary[f"test/loss_step{summary['test_steps']}"]
