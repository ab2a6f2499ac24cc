"""Checkpoints: written atomically (temp file + rename), read with weights_only=True."""
import os
import tempfile
from pathlib import Path

import torch

from metarun.config import DataError

FORMAT = 2  # 2: the algorithm's state under "algo" (format 1 had the optimizer's under "optimizer")
READABLE = (1, 2)


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path, state):
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path):
    """Load a checkpoint without running any code from it; clear errors when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}: run without resume=true to start a new run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise DataError(f"checkpoint {path} is corrupt or not a metarun checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise DataError(f"checkpoint {path} is not a metarun checkpoint (formats {', '.join(map(str, READABLE))})")
    return state


def check_matches(path, state, model, config):
    """Refuse a checkpoint written for another model or config, naming what differs."""
    saved = state["model"]
    current = model.state_dict()
    if saved.keys() != current.keys() or any(saved[k].shape != current[k].shape for k in saved):
        diff = sorted(set(saved) ^ set(current)) or [k for k in saved if saved[k].shape != current[k].shape]
        raise DataError(f"checkpoint {path} was written for a different model (differs in: {', '.join(diff[:8])})")
    old = state.get("config", {})
    changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if changed:
        details = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {config.get(k)!r}" for k in changed[:5])
        raise DataError(f"checkpoint {path} was written with a different config ({details}); resume with the same settings")
