"""Checks on the composed config, so a bad value fails before a run starts, in one line."""
import re

import torch
from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A user mistake in the config: names the key, the value and what is allowed. Exit code 2."""

    def __init__(self, key, value, allowed):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataError(RuntimeError):
    """Missing, unreadable or corrupt data or checkpoints: says what and where. Exit code 2."""


def _int(minimum):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum), f"an integer >= {minimum}"


def _positive():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0), "a number > 0"


def _nonnegative():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0), "a number >= 0"


def _fraction():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1), "a number in (0, 1)"


def _unit():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1), "a number in [0, 1]"


def _choice(*options):
    return (lambda v: v in options), "one of " + ", ".join(map(str, options))


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _device():
    return (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None), "auto, cpu, cuda or cuda:<index>"


def resolve_device(name):
    """torch.device for `device=auto|cpu|cuda[:k]`; auto is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", name, "auto or cpu: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("device", name, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


# Keys absent from a config (a task family's own options) are skipped.
RULES = {
    "scale": _choice("quick", "full"),  # first: presets interpolate their lengths from it
    "seed": _int(0),
    "threads": _int(1),
    "iterations": _int(0),
    "meta_batch_size": _int(1),
    "log_every": _int(1),
    "eval_every": _int(1),
    "eval_steps": _int(0),
    "eval_tasks": _int(1),
    "checkpoint_every": _int(1),
    "resume": _bool(),
    "device": _device(),
    "mode": _choice("train", "eval"),
    "split": _choice("val", "test"),
    "test_checkpoint": _choice("last", "best"),
    "algo.inner_steps": _int(0),
    "algo.inner_lr": _positive(),
    "algo.inner_l2": _nonnegative(),
    "algo.first_order": _bool(),
    "algo.epsilon": _positive(),
    "algo.vmap_chunk": _int(1),
    "algo.compile": _bool(),
    "algo.outer": _choice("trpo", "adam"),
    "algo.trajectories": _int(1),
    "algo.cg_iters": _int(1),
    "algo.ls_max_steps": _int(1),
    "task.horizon": _int(1),
    "optim.lr": _positive(),
    "optim.weight_decay": _nonnegative(),
    "optim.momentum": _nonnegative(),
    "task.shots": _int(1),
    "task.query": _int(1),
    "task.ways": _int(2),
    "task.image_size": _int(4),
    "task.rotations": _bool(),
    "task.download": _bool(),
    "task.split_seed": _int(0),
    "task.input_dim": _int(1),
    "task.features": _int(1),
    "task.noise": _nonnegative(),
    "task.amplitude_min": _nonnegative(),
    "task.amplitude_max": _positive(),
    # Multi-agent RL (qmix, kaleidoscope_qmix, matd3, kaleidoscope_matd3; particle_world, mamujoco)
    "algo.share": _choice("full", "none", "kaleidoscope"),
    "algo.critic_share": _choice("full", "none", "kaleidoscope"),
    "algo.n_critics": _int(1),
    "algo.gamma": _unit(),
    "algo.buffer_size": _int(1),
    "algo.batch_size": _int(1),
    "algo.episodes_per_iteration": _int(1),
    "algo.target_update_interval": _int(1),
    "algo.epsilon_start": _unit(),
    "algo.epsilon_finish": _unit(),
    "algo.epsilon_anneal_steps": _int(1),
    "algo.grad_norm_clip": _positive(),
    "algo.div_coef": _nonnegative(),
    "algo.critic_div_coef": _nonnegative(),
    "algo.div_history": _int(1),
    "algo.critic_div_history": _int(1),
    "algo.reset_interval": _int(1),
    "algo.critic_reset_interval": _int(1),
    "algo.reset_ratio": _unit(),
    "algo.n_step": _int(1),
    "algo.envs": _int(1),
    "algo.steps_per_iteration": _int(1),
    "algo.updates_per_iteration": _int(0),
    "algo.warmup_steps": _int(0),
    "algo.actor_lr": _positive(),
    "algo.critic_lr": _positive(),
    "algo.polyak": _unit(),
    "algo.policy_freq": _int(1),
    "algo.expl_noise": _nonnegative(),
    "algo.policy_noise": _nonnegative(),
    "algo.noise_clip": _nonnegative(),
    "task.episode_limit": _int(1),
    "task.num_adversaries": _int(2),  # the learning agents of simple_world_comm / simple_tag: at least 2
    "task.num_good_agents": _int(1),
    "task.n_agents": _int(2),
    "task.agent_obsk": _int(0),
    "model.head_hidden": _int(0),
    "model.features": _int(1),
}


def validate(cfg):
    """Raise ConfigError for the first value outside its allowed range."""
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise ConfigError(key, value, "must be " + allowed)
    adapt = OmegaConf.select(cfg, "algo.adapt")
    if adapt is not None and (len(adapt) == 0 or not all(isinstance(p, str) and p for p in adapt)):
        raise ConfigError("algo.adapt", OmegaConf.to_container(adapt), "a non-empty list of glob patterns such as ['head.*']")
