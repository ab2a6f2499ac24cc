import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository (/work/main), or beside a folder of worktrees (/work/wt/<name>).
SHARED_DATA = next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()), REPO.parent / "shared" / "data")

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Tiny models run fastest on one thread, and several test processes must not oversubscribe 2 cores.
torch.set_num_threads(1)


def run_metarun(*args, cwd, env=None, timeout=600, command="metarun"):
    """Run a console script as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([command, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "omniglot-py").is_dir():
        pytest.skip(f"shared Omniglot data not found at {SHARED_DATA}")
    return SHARED_DATA
