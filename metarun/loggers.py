"""Metric sinks: metrics.jsonl in the run dir (always), and Weights & Biases (logger=wandb).

metrics.jsonl is written whatever the logger choice, so `metarun-report` and `mode=eval` always
have the local record. W&B never prompts and never blocks a run: without credentials it logs
offline (and says where, with the `wandb sync` command), and if it cannot start at all the run
goes on with a warning.
"""
import json
import netrc
import os
import secrets
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from metarun.checkpoint import atomic_write


class JsonlLogger:
    def __init__(self, run_dir, resume_iteration=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_iteration is not None and self.path.exists():
            # A killed run may have logged past its last checkpoint; drop those lines so the
            # resumed run's log equals an uninterrupted one.
            kept = [line for line in self.path.read_text().splitlines() if _iteration(line) <= resume_iteration]
            atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
        elif resume_iteration is None:
            self.path.unlink(missing_ok=True)
        self.file = open(self.path, "a")

    def log(self, metrics):
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()

    def finish(self, summary):
        self.file.close()


def _iteration(line):
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line from a kill: dropped


def has_wandb_credentials():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    def __init__(self, cfg, run_dir, group, name, resume):
        import wandb

        self.wandb = wandb
        mode = cfg.logger.wandb.mode
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        kwargs = dict(
            project=cfg.logger.wandb.project,
            entity=cfg.logger.wandb.entity,
            tags=list(cfg.logger.wandb.tags),
            group=group,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",  # each job of a sequential multirun is its own W&B run
            settings=wandb.Settings(init_timeout=60, silent=True),
        )
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # noqa: BLE001 - network or auth failure must not kill the run
            warnings.warn(f"W&B could not start online ({e}); logging offline to {run_dir}/wandb")
            self.run = wandb.init(mode="offline", **kwargs)
        self.mode = mode

    def log(self, metrics):
        self.run.log({k: v for k, v in metrics.items() if k != "iteration"}, step=metrics["iteration"])

    def finish(self, summary):
        for k, v in summary.items():
            if isinstance(v, (int, float, str)):
                self.run.summary[k] = v
        self.run.finish()
        try:
            line = self.where()
        except Exception:  # noqa: BLE001 - a message must not fail a finished run
            line = None
        if line:
            print(line, flush=True)

    def where(self):
        """One line: where this W&B run went (for an offline run, how to upload it); None when disabled."""
        mode = self.run.settings.mode
        if mode in ("offline", "dryrun"):
            sync_dir = self.run.settings.sync_dir
            return f"metarun: W&B offline run in {sync_dir}; upload with `wandb sync {sync_dir}`"
        if mode == "online" and self.run.url:
            return f"metarun: W&B run at {self.run.url}"
        return None


class Loggers:
    """Fan metrics out to every configured sink."""

    def __init__(self, cfg, run_dir, group, name, resume_iteration):
        self.sinks = [JsonlLogger(run_dir, resume_iteration)]  # always: the local record reports are made from
        if "wandb" in cfg.logger:
            try:
                self.sinks.append(WandbLogger(cfg, run_dir, group, name, resume_iteration is not None))
            except Exception as e:  # noqa: BLE001 - W&B trouble must never cost the run
                warnings.warn(f"W&B logging is off for this run: {type(e).__name__}: {e}")

    def log(self, metrics):
        for sink in self.sinks:
            sink.log(metrics)

    def finish(self, summary):
        for sink in self.sinks:
            sink.finish(summary)
