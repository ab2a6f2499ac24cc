"""The `metarun` command: Hydra composes the config, `metarun.train.run` does the work.

Before Hydra starts, every override (and every value of a sweep) is composed and checked, so
a user mistake ends in one line naming the key, the value and what is allowed, with exit
code 2, before any job runs.
"""
import difflib
import json
import sys
import time
from importlib import resources
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metarun.checkpoint import load as load_checkpoint
from metarun.config import ConfigError, DataError, validate

# Flags after which the arguments are not plain overrides; the pre-check leaves those to Hydra.
HYDRA_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--info", "-i",
               "--help", "-h", "--cfg", "-c", "--hydra-help", "--version", "--shell-completion", "-sc", "--resolve", "-p", "--package"}


def fail(message, code=2):
    print(f"metarun: error: {message}", file=sys.stderr)
    sys.exit(code)


def group_options(group):
    folder = resources.files("metarun.conf").joinpath(group)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_groups():
    return sorted(p.name for p in resources.files("metarun.conf").iterdir() if p.is_dir() and not p.name.startswith("_"))


def is_group(key):
    key = key.lstrip("+~")
    return "." not in key and not key.startswith("hydra") and resources.files("metarun.conf").joinpath(key).is_dir()


def variants(parsed):
    """Override lists that together try every value of every override once (not the product)."""
    firsts = [_with_value(o, next(iter(_values(o)))) for o in parsed]
    yield firsts
    for i, o in enumerate(parsed):
        for value in list(_values(o))[1:]:
            yield firsts[:i] + [_with_value(o, value)] + firsts[i + 1:]


def _values(override):
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [None]


def _with_value(override, value):
    return override.input_line if value is None else f"{override.get_key_element()}={value}"


def config_keys(cfg, prefix=""):
    """Every dotted key of a composed config (the hydra node left out)."""
    keys = []
    for k, v in cfg.items():
        if prefix == "" and k == "hydra":
            continue
        keys.append(prefix + str(k))
        if OmegaConf.is_dict(v):
            keys += config_keys(v, f"{prefix}{k}.")
    return keys


def unknown_key(key, cfg):
    """What to say about a key the config does not have: the closest keys or groups."""
    extra = [g for g in config_groups() if g not in cfg]  # groups outside the defaults (presets): added with +
    close = difflib.get_close_matches(key, config_keys(cfg) + extra, n=1, cutoff=0.6)
    if close:
        return f"not a config key; did you mean {'+' if close[0] in extra else ''}{close[0]}?"
    parent = key.rsplit(".", 1)[0] if "." in key else None
    node = OmegaConf.select(cfg, parent, default=None) if parent else None
    if OmegaConf.is_dict(node):
        return f"not a config key; {parent} has: " + ", ".join(str(k) for k in node)
    return "not a config key (metarun --cfg job lists them all)"


def check_override(line, exc, cfg):
    """Turn a composition failure of one override into a ConfigError (group options were checked before).

    `cfg` is the config composed from the overrides before this one, to look the key up in.
    """
    key, _, value = line.partition("=")
    bare = key.lstrip("+~")
    message = str(exc).strip()
    if not key.startswith(("+", "~")) and OmegaConf.select(cfg, bare, default="<missing>") == "<missing>" and "Could not override" in message:
        raise ConfigError(bare, value, unknown_key(bare, cfg))
    raise ConfigError(key, value, message.splitlines()[0] if message else type(exc).__name__)


def is_multirun(argv):
    return any(a in ("-m", "--multirun") for a in argv) or "hydra.mode=MULTIRUN" in argv


def precheck(argv):
    """Compose the config for every override value and validate it, without running anything."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError("overrides", " ".join(overrides), str(e).splitlines()[0]) from None
    if not is_multirun(argv):
        for o in parsed:
            if o.is_sweep_override():
                key = o.get_key_element()
                raise ConfigError(key, o.input_line.partition("=")[2],
                                  f"a sweep needs -m: metarun -m {o.input_line} (a list value is written "
                                  f"{key}=[a,b], a string with a comma is quoted: {key}='a,b')")
    # Group options first, so an unknown option is reported as such, not as a later key failure.
    for o in parsed:
        key = o.get_key_element()
        if is_group(key) and not key.startswith("~"):
            group, options = key.lstrip("+"), group_options(key.lstrip("+"))
            for value in _values(o):
                v = o.value() if value is None else value
                for option in (v if isinstance(v, list) else [v]):
                    if str(option) not in options:
                        close = difflib.get_close_matches(str(option), options, n=1, cutoff=0.6)
                        hint = f"; did you mean {group}={close[0]}?" if close else ""
                        raise ConfigError(group, str(option), "must be one of " + ", ".join(options) + hint)
    plain = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        chosen = compose("config", return_hydra_config=True).hydra.runtime.choices
        for o in plain:  # a group outside the defaults (the presets) is added with +
            key = o.get_key_element()
            value = o.input_line.partition("=")[2]
            if is_group(key) and not key.startswith(("+", "~")) and key not in chosen:
                raise ConfigError(key, value, f"{key} is not among the defaults; add a preset with +{key}={value}")
            if key.startswith("+") and not key.startswith("++") and is_group(key) and key.lstrip("+") in chosen:
                raise ConfigError(key, value, f"{key[1:]} is chosen by the defaults already; use {key[1:]}={value} without the +")
        checked = 0
        for lines in variants(plain) if plain else [[]]:
            try:
                cfg = compose("config", overrides=lines, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException, MissingConfigException) as e:
                for i in range(len(lines)):  # find the override that breaks composition
                    try:
                        compose("config", overrides=lines[: i + 1])
                    except (HydraException, OmegaConfBaseException) as e2:
                        check_override(lines[i], e2, compose("config", overrides=lines[:i]))
                raise ConfigError("config", " ".join(lines), str(e).splitlines()[0]) from None
            _validate(cfg)
            if checked == 0 and not is_multirun(argv):
                check_run_dir(cfg)
            if checked == 0 and is_multirun(argv) and cfg.resume:
                check_sweep_dir(cfg, argv)
            checked += 1
            # Sweeps declared by an experiment preset (hydra.sweeper.params) are checked too.
            params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
            if checked == 1 and params:
                swept = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
                for extra in variants(swept):
                    try:
                        _validate(compose("config", overrides=lines + extra))
                    except (HydraException, OmegaConfBaseException) as e:
                        raise ConfigError("hydra.sweeper.params", " ".join(extra), str(e).splitlines()[0]) from None
    GlobalHydra.instance().clear()


def check_run_dir(cfg):
    """Before Hydra creates anything: the checkpoint that resume=true or mode=eval needs is there and loads."""
    if not cfg.get("run_dir") or not (cfg.resume or cfg.mode == "eval"):
        return
    run_dir = Path(cfg.run_dir).absolute()
    if cfg.resume:
        path = run_dir / "checkpoint.pt"
        hint = "run without resume=true to start a new run"
    else:
        path = run_dir / ("best.pt" if cfg.get("test_checkpoint") == "best" else "checkpoint.pt")
        hint = "the run has not written one yet (it does every checkpoint_every iterations and at the end)"
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}: {hint}")
    load_checkpoint(path)  # a corrupt file fails here, in one line
    if cfg.resume and (run_dir / "best.pt").is_file():  # resume reads best.pt too
        load_checkpoint(run_dir / "best.pt")


def _validate(cfg):
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        validate(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:  # e.g. an interpolation that cannot resolve
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):  # raised inside a resolver (${pick:})
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise ConfigError("config", "", str(e).splitlines()[0]) from None


def check_sweep_dir(cfg, argv):
    """`-m ... resume=true` continues the jobs of an existing sweep: it must be named and be there."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")]
    example = "metarun -m <the sweep's overrides> resume=true hydra.sweep.dir=<its dir>"
    if cfg.get("run_dir"):
        raise ConfigError("run_dir", cfg.run_dir, f"names one run, not a sweep; to continue a sweep: {example}")
    if not given:
        raise ConfigError("hydra.sweep.dir", None, f"missing; resume=true with -m continues the sweep in that dir: {example}")
    if not (Path(given[-1]) / "multirun.yaml").is_file():
        raise DataError(f"hydra.sweep.dir={given[-1]} holds no sweep (no multirun.yaml): run without resume=true to start it")


def expand_run_dir(argv):
    """Commands on an existing run dir X start from the overrides X was trained with.

    `run_dir=X resume=true` continues X in place; `run_dir=X mode=eval` evaluates X's checkpoint
    into X/eval/<time> (or hydra.run.dir when given), leaving the training record untouched.
    Later overrides win.
    """
    values = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    run_dir = values.get("run_dir")
    resume = values.get("resume", "false").lower() == "true"
    evaluating = values.get("mode") == "eval"
    if is_multirun(argv) or not (resume or evaluating):
        return argv
    if not run_dir and resume and values.get("hydra.run.dir"):
        run_dir = values["hydra.run.dir"]  # `resume=true hydra.run.dir=X` names the run too
        argv = [*argv, f"run_dir={run_dir}"]
    if not run_dir:
        example = "outputs/runs/2026-11-22/10-00-00"
        if evaluating:
            raise ConfigError("run_dir", None, f"missing; mode=eval needs the training run to evaluate: "
                                               f"metarun mode=eval run_dir={example}")
        raise ConfigError("run_dir", None, f"missing; resume=true needs the run to continue: "
                                           f"metarun resume=true run_dir={example}")
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not saved.is_file():  # the checkpoint itself is checked once the config is composed (check_run_dir)
        if resume and not (Path(run_dir) / "checkpoint.pt").is_file():
            raise DataError(f"no checkpoint at {Path(run_dir).absolute() / 'checkpoint.pt'}: run without resume=true "
                            "to start a new run")
        if not Path(run_dir).is_dir():
            raise DataError(f"run_dir={run_dir} does not exist")
        raise DataError(f"run_dir={run_dir} has no .hydra/overrides.yaml: not a metarun run dir")
    own = {"resume", "run_dir", "hydra.run.dir", "mode"}
    previous = [o for o in OmegaConf.to_container(OmegaConf.load(saved)) if o.split("=")[0] not in own]
    if "hydra.run.dir" in values and not resume:  # the user chose where the evaluation goes
        return previous + argv
    target = run_dir if resume else f"{run_dir}/eval/${{now:%Y-%m-%d_%H-%M-%S}}"
    return previous + argv + [f"hydra.run.dir={target}"]


@hydra.main(version_base="1.3", config_path="pkg://metarun.conf", config_name="config")
def hydra_main(cfg):
    from metarun.train import NonFiniteLoss, Stopped, run

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    group = str(hc.sweep.dir) if multirun else None
    name = hc.job.override_dirname or "default"
    try:
        if multirun and cfg.resume:
            step, why = sweep_job_step(Path(hc.runtime.output_dir), cfg)
            if why:
                print(f"metarun: {hc.runtime.output_dir}: {why}", file=sys.stderr)
            if step == "skip":
                return None
            cfg.resume = step == "resume"
        if cfg.mode == "eval":
            from metarun.learner import evaluate_run

            summary = evaluate_run(cfg, hc.runtime.output_dir)
        else:
            summary = run(cfg, hc.runtime.output_dir, group=group, name=name)
    except (ConfigError, DataError) as e:
        fail(e)
    except NonFiniteLoss as e:
        if not multirun:
            fail(e, code=1)
        # One diverged setting must not cancel the rest of a sweep: its summary.json says
        # status "failed", metarun-report flags it, and FailedRunsCallback sets the exit code.
        print(f"metarun: error: {hc.runtime.output_dir}: {e}; the sweep goes on", file=sys.stderr)
        return None
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, Stopped) else 130  # the shell's codes for SIGTERM and SIGINT
        if cfg.mode == "eval":
            fail("interrupted", code=code)
        try:
            where = json.loads((Path(hc.runtime.output_dir) / "summary.json").read_text())
            at = f" at iteration {where['iteration']}"
            since = f" from the checkpoint at iteration {where.get('checkpoint_iteration') or 0}"
        except (OSError, ValueError, KeyError):
            at = since = ""
        how = "stopped by SIGTERM" if isinstance(e, Stopped) else "interrupted"
        fail(f"{how}{at}; `metarun resume=true run_dir={hc.runtime.output_dir}` continues{since}", code=code)
    report = {k: v for k, v in summary.items() if k.startswith(("test/", "val/", "lake/error")) and "_step" not in k}
    print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in report.items()) + f"  time={summary['time']:.1f}s")
    print(f"run dir: {hc.runtime.output_dir}")
    return summary.get("test/loss")


def sweep_job_step(run_dir, cfg):
    """(step, why) for one job of the sweep `metarun -m ... resume=true` continues: "resume" from the
    job's checkpoint; "skip" a job that completed its iterations, or that diverged (resume is exact,
    so it would diverge again); "start" a job that has no checkpoint (never started, or killed before
    its first one). A job dir that holds another setting's run (the sweep's values given in another
    order renumber the jobs) is refused."""
    from metarun.train import fingerprint

    if (run_dir / "config.yaml").is_file():
        saved, now = fingerprint(OmegaConf.load(run_dir / "config.yaml")), fingerprint(cfg)
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise DataError(f"{run_dir} holds a run with other settings ({', '.join(changed)}: {saved[changed[0]]} there, "
                            f"{now[changed[0]]} now); resume a sweep with its overrides as it was started, values in the same order")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("status") == "completed" and summary.get("iteration", 0) >= cfg.iterations:
        return "skip", f"skipped: completed {summary['iteration']} iterations already"
    if summary.get("status") == "failed" and summary.get("failure") == "non_finite":
        return "skip", f"skipped: diverged at iteration {summary.get('iteration')} (resuming would diverge again)"
    if (run_dir / "checkpoint.pt").is_file():
        return "resume", None
    return "start", "no checkpoint: starting it"


class FailedRunsCallback(Callback):
    """After a sweep, one line naming the runs that failed (non-finite loss), and exit status 1."""

    def on_multirun_start(self, config, **kwargs):
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs):
        runs = []
        for path in Path(config.hydra.sweep.dir).glob("*/summary.json"):
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            # runs of this sweep, not of earlier ones in the same dir; a resumed sweep owns every run in it
            if config.get("resume") or summary.get("updated_at", 0) >= self.started:
                runs.append((path.parent.name, summary.get("status")))
        failed = sorted(name for name, status in runs if status == "failed")
        if failed:
            print(f"metarun: error: {len(failed)} of {len(runs)} runs of the sweep in {config.hydra.sweep.dir} failed "
                  f"({', '.join(failed)}); their summary.json says why", file=sys.stderr)
            sys.exit(1)


def version():
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name):
        try:
            return installed(name)
        except PackageNotFoundError:
            return "?"

    return f"metarun {of('metarun')} (torch {of('torch')}, hydra-core {of('hydra-core')})"


def main():
    argv = sys.argv[1:]
    if argv and argv[0] in ("--version", "-V"):  # metarun's own version, not Hydra's
        print(version())
        return
    try:
        argv = expand_run_dir(argv)
        precheck(argv)
    except (ConfigError, DataError) as e:
        fail(e)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
