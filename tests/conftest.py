import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The data-dependent tests use the Omniglot alphabets under $METARUN_DATA (as metarun itself
# does), else ../shared/data beside the repository.
SHARED_DATA = Path(os.environ.get("METARUN_DATA") or REPO.parent / "shared" / "data").expanduser().absolute()
OMNIGLOT = SHARED_DATA / "omniglot-py" / "images_background"
# Fixtures that need the data; tests that need it otherwise are marked @pytest.mark.needs_data.
DATA_FIXTURES = {"shared_data", "tiny_run"}

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Tiny models run fastest on one thread, and several test processes must not oversubscribe 2 cores.
torch.set_num_threads(1)


def run_metarun(*args, cwd, env=None, timeout=600, command="metarun"):
    """Run a console script as a user would; returns the CompletedProcess. `env` values of None unset a variable."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([command, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data: needs the Omniglot data under $METARUN_DATA or ../shared/data")


def needs_data(item):
    return bool(DATA_FIXTURES & set(getattr(item, "fixturenames", ()))) or item.get_closest_marker("needs_data") is not None


def data_line(present):
    where = f"{OMNIGLOT} ({'METARUN_DATA' if os.environ.get('METARUN_DATA') else 'default ../shared/data; set METARUN_DATA to change'})"
    if present:
        return f"metarun data: Omniglot found at {where}: the data-dependent tests run"
    return f"metarun data: no Omniglot at {where}: the data-dependent tests will skip"


def pytest_collection_modifyitems(config, items):
    if OMNIGLOT.is_dir():
        return
    skip = pytest.mark.skip(reason=f"no Omniglot data at {OMNIGLOT} (set METARUN_DATA)")
    for item in items:
        if needs_data(item):
            item.add_marker(skip)


def pytest_report_header(config):
    # The header, not the collection report: under pytest-xdist the workers collect, and only
    # the controller's header reaches the terminal.
    return data_line(OMNIGLOT.is_dir())


@pytest.fixture
def shared_data():
    return SHARED_DATA
