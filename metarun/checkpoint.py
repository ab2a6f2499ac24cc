"""Checkpoints: written atomically (temp file + rename), read with weights_only=True."""
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from metarun.config import DataError

FORMAT = 2  # 2: the algorithm's state under "algo" (format 1 had the optimizer's under "optimizer")
READABLE = (1, 2)


def umask():
    """The process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but metarun writes from one thread)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`, then rename it over `path`.

    The file gets the mode a plain open(path, "w") would give it (mkstemp's temp file is 0600):
    the existing file's mode, else 0666 minus the umask, so collaborators can read results.
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
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
        raise DataError(f"checkpoint {path} is corrupt or not a metarun checkpoint: {why_unreadable(path, e)}") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise DataError(f"checkpoint {path} is not a metarun checkpoint (formats {', '.join(map(str, READABLE))})")
    return state


def why_unreadable(path, error):
    """What is wrong with a file torch.load refused, in our words.

    torch's own messages suggest re-running with weights_only=False: wrong for a damaged file and
    unsafe for a foreign one (it runs code from the file), so they are not passed on.
    """
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        return f"not a PyTorch checkpoint ({size} bytes that are not a zip archive)"
    if not zipfile.is_zipfile(path):
        return f"the file is truncated ({size} bytes, the zip archive is incomplete)"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds Python objects other than tensors, numbers, strings, lists and dicts, which metarun "
                "refuses to load (weights_only=True: loading them could run code from the file)")
    return f"the archive is damaged ({size} bytes; {type(error).__name__})"


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
