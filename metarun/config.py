"""Checks on the composed config, so a bad value fails before a run starts, in one line."""
import re

import torch
from omegaconf import DictConfig, OmegaConf


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


def _number():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "a number"


def _closed_unit():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1), "a number in [0, 1]"


def _choice(*options):
    return (lambda v: v in options), "one of " + ", ".join(map(str, options))


def _threads():
    return (lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)), \
        "auto (chosen from the workload and the idle cores) or an integer >= 1"


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _unit():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1), "a number in (0, 1]"


def _mujoco_env_id():
    def ok(v):
        try:
            from metarun.tasks.mujoco_delayed import mujoco_env_ids
        except ImportError:  # no Gymnasium: the task family reports what to install
            return True
        return v in mujoco_env_ids()
    return ok, "a Gymnasium MuJoCo v5 environment id: Hopper-v5, Walker2d-v5, HalfCheetah-v5, Swimmer-v5, Ant-v5, ..."


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


def pick(table, key):
    """`${pick:TABLE,KEY}` in a preset: TABLE[KEY] when TABLE is a mapping, else TABLE itself.

    Presets use it for run lengths measured per setting, e.g. iterations by the number of inner
    steps, `${pick:${scales.${scale}.iterations},${algo.inner_steps}}` with `{1: 9000, 20: 900}`.
    """
    if not isinstance(table, DictConfig):
        return table
    if key not in table:
        raise ConfigError("${pick:table,key}", key, f"a key of the preset's table: {', '.join(map(str, table.keys()))} "
                          "(or give the value itself, e.g. iterations=500)")
    return table[key]


if not OmegaConf.has_resolver("pick"):
    OmegaConf.register_new_resolver("pick", pick)


# Keys absent from a config (a task family's own options) are skipped.
RULES = {
    "scale": _choice("quick", "full"),  # first: presets interpolate their lengths from it
    "ablation": _choice("full", "feedforward", "episodic", "no_value"),  # +experiment=lifetime_ablations interpolates from it
    "seed": _int(0),
    "threads": _threads(),
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
    "algo.adapt_rule": _choice("fixed", "meta_sgd", "sparse", "threshold"),  # metarun.inner_loop.ADAPT_RULES
    "algo.head_init": _choice("learned", "prototypes"),  # metarun.inner_loop.HEAD_INITS
    "algo.rule_lr": _positive(),
    "algo.rule_init": _number(),
    "algo.outer": _choice("trpo", "adam"),
    "algo.trajectories": _int(1),
    "algo.cg_iters": _int(1),
    "algo.ls_max_steps": _int(1),
    "task.horizon": _int(1),
    "task.env": _choice("empty_rooms", "random_abc", "key_box", "nonstationary_abc"),  # gridworld
    "task.lifetime_episodes": _int(1),  # gridworld: a lifetime is at least one episode
    "task.swap_every": _int(1),
    "algo.reward": _choice("learned", "extrinsic_ep", "extrinsic_life", "count", "oracle"),
    "algo.unroll": _int(1),  # N: the truncated meta-gradient goes through N >= 1 inner updates
    "algo.segment": _int(1),
    "algo.n_step": _int(1),
    "algo.objective": _choice("lifetime", "episodic"),
    "algo.value": _bool(),
    "task.reward_delay": _int(1),
    "task.env_id": _mujoco_env_id(),
    "algo.nsteps": _int(2),
    "algo.minibatches": _int(1),
    "algo.epochs": _int(1),
    "algo.gamma": _unit(),
    "algo.lam": _unit(),
    "algo.clip": _positive(),
    "algo.vf_coef": _nonnegative(),
    "algo.ent_coef": _nonnegative(),
    "algo.max_grad_norm": _positive(),
    "algo.lr_alpha": _positive(),
    "algo.lr_beta": _positive(),
    "algo.r_ex_coef": _nonnegative(),
    "algo.r_in_coef": _nonnegative(),
    "algo.meta_step": _bool(),
    "algo.detach_second_moment": _bool(),
    "algo.normalize": _bool(),
    "optim.lr": _positive(),
    "optim.weight_decay": _nonnegative(),
    "optim.momentum": _nonnegative(),
    "task.shots": _int(1),
    "task.query": _int(1),
    "task.ways": _int(2),
    "task.image_size": _int(4),
    "task.rotations": _choice("none", "per_task", "as_classes", True, False),
    "task.episodes": _choice("any", "within_alphabet"),
    "task.drawers": _choice("any", "disjoint"),
    "task.augment": _choice("none", "affine"),
    "eval_protocol": _choice("episodes", "lake"),
    "model.downsample": _choice("maxpool", "stride"),
    "model.global_pool": _bool(),
    "task.download": _bool(),
    "task.split_seed": _int(0),
    "task.input_dim": _int(1),
    "task.features": _int(1),
    "task.noise": _nonnegative(),
    "task.amplitude_min": _nonnegative(),
    "task.amplitude_max": _positive(),
    # Multi-agent RL (qmix, kaleidoscope_qmix, matd3, kaleidoscope_matd3; particle_world, mamujoco);
    # algo.gamma and algo.n_step are ruled above, the same for every RL algorithm
    "algo.share": _choice("full", "none", "kaleidoscope"),
    "algo.critic_share": _choice("full", "none", "kaleidoscope"),
    "algo.n_critics": _int(1),
    "algo.buffer_size": _int(1),
    "algo.batch_size": _int(1),
    "algo.episodes_per_iteration": _int(1),
    "algo.target_update_interval": _int(1),
    "algo.epsilon_start": _closed_unit(),
    "algo.epsilon_finish": _closed_unit(),
    "algo.epsilon_anneal_steps": _int(1),
    "algo.grad_norm_clip": _positive(),
    "algo.div_coef": _nonnegative(),
    "algo.critic_div_coef": _nonnegative(),
    "algo.div_history": _int(1),
    "algo.critic_div_history": _int(1),
    "algo.reset_interval": _int(1),
    "algo.critic_reset_interval": _int(1),
    "algo.reset_ratio": _closed_unit(),
    "algo.envs": _int(1),
    "algo.steps_per_iteration": _int(1),
    "algo.updates_per_iteration": _int(0),
    "algo.warmup_steps": _int(0),
    "algo.actor_lr": _positive(),
    "algo.critic_lr": _positive(),
    "algo.polyak": _closed_unit(),
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
    if OmegaConf.select(cfg, "eval_protocol") == "lake":
        target = str(OmegaConf.select(cfg, "task._target_", default=""))
        if not target.endswith("omniglot.Omniglot"):
            raise ConfigError("eval_protocol", "lake", f"only with task=omniglot (Lake et al.'s one-shot runs); the task is {target.rsplit('.', 1)[-1] or 'unset'}")
        ways = OmegaConf.select(cfg, "task.ways")
        if OmegaConf.select(cfg, "mode", default="train") == "train" and ways != 20:
            raise ConfigError("task.ways", ways, "20 with eval_protocol=lake in training: validation and test are Lake's 20-way "
                              "runs, so the head must have 20 outputs (evaluate other runs with mode=eval eval_protocol=lake)")
    adapt = OmegaConf.select(cfg, "algo.adapt")
    if adapt is not None and (len(adapt) == 0 or not all(isinstance(p, str) and p for p in adapt)):
        raise ConfigError("algo.adapt", OmegaConf.to_container(adapt), "a non-empty list of glob patterns such as ['head.*']")
    rule = OmegaConf.select(cfg, "algo.adapt_rule", default="fixed")
    if rule != "fixed" and OmegaConf.select(cfg, "algo.inner_steps", default=1) == 0:
        # A learned rule is trained only through the inner steps; with none it would never change.
        raise ConfigError("algo.adapt_rule", rule, "fixed when algo.inner_steps=0 (a learned rule is trained through the inner steps)")
