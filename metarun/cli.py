"""The `metarun` command: Hydra composes the config, `metarun.train.run` does the work.

Before Hydra starts, every override (and every value of a sweep) is composed and checked, so
a user mistake ends in one line naming the key, the value and what is allowed, with exit
code 2, before any job runs.
"""
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def check_override(line, exc):
    """Turn a composition failure of one override into a ConfigError (group options were checked before)."""
    key, _, value = line.partition("=")
    raise ConfigError(key, value, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def precheck(argv):
    """Compose the config for every override value and validate it, without running anything."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError("overrides", " ".join(overrides), str(e).splitlines()[0]) from None
    # Group options first, so an unknown option is reported as such, not as a later key failure.
    for o in parsed:
        key = o.get_key_element()
        if is_group(key) and not key.startswith("~"):
            group, options = key.lstrip("+"), group_options(key.lstrip("+"))
            for value in _values(o):
                v = o.value() if value is None else value
                for option in (v if isinstance(v, list) else [v]):
                    if str(option) not in options:
                        raise ConfigError(group, str(option), "must be one of " + ", ".join(options))
    plain = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        checked = 0
        for lines in variants(plain) if plain else [[]]:
            try:
                cfg = compose("config", overrides=lines, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException, MissingConfigException) as e:
                for i in range(len(lines)):  # find the override that breaks composition
                    try:
                        compose("config", overrides=lines[: i + 1])
                    except (HydraException, OmegaConfBaseException) as e2:
                        check_override(lines[i], e2)
                raise ConfigError("config", " ".join(lines), str(e).splitlines()[0]) from None
            _validate(cfg)
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


def _validate(cfg):
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        validate(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:  # e.g. an interpolation that cannot resolve
        raise ConfigError("config", "", str(e).splitlines()[0]) from None


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
    if "-m" in argv or "--multirun" in argv or not (resume or evaluating):
        return argv
    if not run_dir:
        if evaluating:
            raise ConfigError("run_dir", None, "mode=eval needs run_dir=<a training run dir>")
        return argv
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise DataError(f"run_dir={run_dir} has no .hydra/overrides.yaml: not a metarun run dir")
    own = {"resume", "run_dir", "hydra.run.dir", "mode"}
    previous = [o for o in OmegaConf.to_container(OmegaConf.load(saved)) if o.split("=")[0] not in own]
    if "hydra.run.dir" in values and not resume:  # the user chose where the evaluation goes
        return previous + argv
    target = run_dir if resume else f"{run_dir}/eval/${{now:%Y-%m-%d_%H-%M-%S}}"
    return previous + argv + [f"hydra.run.dir={target}"]


@hydra.main(version_base="1.3", config_path="pkg://metarun.conf", config_name="config")
def hydra_main(cfg):
    from metarun.train import NonFiniteLoss, run

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    group = str(hc.sweep.dir) if multirun else None
    name = hc.job.override_dirname or "default"
    try:
        if cfg.mode == "eval":
            from metarun.learner import evaluate_run

            summary = evaluate_run(cfg, hc.runtime.output_dir)
        else:
            summary = run(cfg, hc.runtime.output_dir, group=group, name=name)
    except (ConfigError, DataError) as e:
        fail(e)
    except NonFiniteLoss as e:
        fail(e, code=1)
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: metarun resume=true run_dir={hc.runtime.output_dir}", code=130)
    report = {k: v for k, v in summary.items() if k.startswith(("test/", "val/", "lake/error")) and "_step" not in k}
    print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in report.items()) + f"  time={summary['time']:.1f}s")
    print(f"run dir: {hc.runtime.output_dir}")
    return summary.get("test/loss")


def main():
    argv = sys.argv[1:]
    try:
        argv = expand_run_dir(argv)
        precheck(argv)
    except (ConfigError, DataError) as e:
        fail(e)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
