"""Device-clean code: no tensor created without a device in metarun's hot paths, and checkpoints
that load across devices. (This machine has no GPU: scripts/gpu_smoke.sh and
`scripts/bench_step.py --device cuda` run the same paths on one.)

The audit is a TorchFunctionMode that records every tensor factory (zeros, arange, randn, ...)
called from metarun's own code without an explicit `device=`: on a GPU such a tensor lands on the
CPU and either fails or forces a copy. Code that means the CPU (random draws from the CPU
generator, so a seed gives the same tasks on every device) says `device="cpu"`.
"""
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import metarun
from metarun.algos.maml import MAML
from metarun.algos.reptile import Reptile
from metarun.config import ConfigError, resolve_device
from metarun.evaluate import evaluate
from metarun.models.mlp import MLP
from metarun.tasks.sinusoid import Sinusoid

# metarun's own source files (the package folder: a checkout named "metarun" holds the tests too).
PACKAGE = os.path.dirname(os.path.abspath(metarun.__file__)) + os.sep
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.eye, torch.tensor, torch.linspace, torch.as_tensor}


class DeviceAudit(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.violations = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs and not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)):
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(PACKAGE):
                self.violations.append(f"{func.__name__} at {frame.f_code.co_filename}:{frame.f_lineno}")
        return func(*args, **kwargs)


def audited(fn):
    audit = DeviceAudit()
    with audit:
        fn()
    return audit.violations


def test_the_audit_catches_a_factory_without_a_device():
    import metarun.inner_loop as inner_loop

    code = compile("def make():\n    return torch.zeros(3)\n", inner_loop.__file__, "exec")  # as if written in metarun
    scope = {"torch": torch}
    exec(code, scope)
    assert audited(scope["make"]) and not audited(lambda: torch.zeros(3))


def test_supervised_training_step_and_evaluation_are_device_clean():
    torch.manual_seed(0)
    task = Sinusoid()
    model = MLP((1,), 1)
    algo = MAML(model, torch.optim.Adam(model.parameters()), task, ["*"], 2, 0.01)
    generator = torch.Generator().manual_seed(0)
    assert audited(lambda: algo.step(task.sample(4, generator, "train"))) == []
    assert audited(lambda: evaluate(algo, task, "val", 10, 2, 1, chunk=4)) == []
    reptile = Reptile(MLP((1,), 1), None, task, ["*"], 3, 0.01, 0.1, inner_batch=5, iterations=10)
    assert audited(lambda: reptile.step(task.sample(4, generator, "train"))) == []


def test_image_episodes_and_conv4_steps_are_device_clean(tmp_path):
    from metarun.models.conv4 import Conv4
    from test_omniglot import make_omniglot
    from metarun.tasks.omniglot import Omniglot

    task = Omniglot(root=make_omniglot(tmp_path / "data"), cache_dir=tmp_path / "cache", image_size=8, ways=2, shots=1,
                    query=2, rotations=False, split="character", split_fractions=[0.4, 0.3, 0.3])
    model = Conv4(task.input_shape, task.output_dim, channels=4, blocks=2)
    algo = MAML(model, torch.optim.Adam(model.parameters()), task, ["head.*"], 1, 0.1)
    generator = torch.Generator().manual_seed(0)
    assert audited(lambda: algo.step(task.sample(3, generator, "train"))) == []
    assert audited(lambda: evaluate(algo, task, "test", 5, 1, 1)) == []


def test_rl_rollouts_steps_and_evaluation_are_device_clean():
    from test_rl import make_algo

    algo = make_algo(task_options={"horizon": 5}, inner_steps=1, fisher_subsample=0.5)
    goals = algo.task.sample(4, torch.Generator().manual_seed(0))
    assert audited(lambda: algo.step(goals)) == []
    assert audited(lambda: algo.evaluate("val", 3, 1, 2)) == []


def test_device_option_resolves_and_refuses_missing_cuda(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='cuda' is not allowed: auto or cpu"):
        resolve_device("cuda")


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    # Write a file whose tensors are tagged as CUDA storage, as a GPU run's checkpoint is.
    from metarun import checkpoint

    model = MLP((1,), 1)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        checkpoint.save(tmp_path / "gpu.pt", {"model": model.state_dict()})
    if not torch.cuda.is_available():  # the file really is a GPU checkpoint: a plain load refuses it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)
    loaded = checkpoint.load(tmp_path / "gpu.pt")
    assert all(v.device.type == "cpu" for v in loaded["model"].values())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
