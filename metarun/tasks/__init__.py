"""Task families. Each samples meta-batches of tasks as stacked tensors.

A task family (`TaskFamily`) has `input_shape`, `output_dim`, `classification`,
`loss_fn(outputs, targets)` and `sample(n, generator, split)` returning
``(support_x, support_y, query_x, query_y)``, each with a leading task dimension of size `n`.
Splits are "train", "val" and "test". Constructors take `device`: random draws come from the
CPU `generator` (a seed gives the same tasks on every device) and the tensors are returned on
`device`. Some families also report a distance to a known optimum (`KnowsOptimum`), read image
files (`ReadsImages`) or are RL environments (`RLTaskFamily`).
"""
from typing import Protocol, runtime_checkable

import torch


class TaskFamily(Protocol):
    input_shape: tuple
    output_dim: int
    classification: bool

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def sample(self, n: int, generator: torch.Generator, split: str): ...


@runtime_checkable
class KnowsOptimum(Protocol):
    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """Figures such as `dist_to_opt`, logged as train/<name> with every training row."""


@runtime_checkable
class ReadsImages(Protocol):
    def load_images(self, paths: list) -> torch.Tensor:
        """Image files -> float (n, C, H, W), preprocessed as in training."""

    def preprocess(self) -> dict:
        """What `load_images` does and the output size, as plain values (written to <run dir>/preprocess.json)."""


@runtime_checkable
class RLTaskFamily(Protocol):
    def env(self, goals: torch.Tensor):
        """A batched environment for tasks `goals` (see navigation2d)."""


@runtime_checkable
class EnvTaskFamily(Protocol):
    """One persistent environment that the algorithm owns and steps across iterations (mujoco_delayed);
    `sample` returns None. Its algorithms (ppo, lirpg) are `SelfEvaluating`."""

    def make_env(self, delayed: bool = True):
        """A fresh Gymnasium environment of the family."""


@runtime_checkable
class MultiAgentTaskFamily(Protocol):
    """Several agents in one persistent batched environment (particle_world, mamujoco)."""

    n_agents: int
    discrete: bool  # discrete actions (QMIX) or continuous ones (MATD3)

    def model_sizes(self) -> dict:
        """Sizes the model needs beyond input_shape/output_dim (n_agents, state_dim), by model config key."""

    def make_env(self, num_envs: int):
        """`num_envs` copies of the environment, stepped together (see particle_world.ParticleEnv)."""
