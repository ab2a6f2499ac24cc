"""Meta-learning algorithms, one short file each, with a `conf/algo/` twin.

MAML, first-order MAML and ANIL are `maml.MAML` with different settings (`first_order`, `adapt`);
Reptile is `reptile.Reptile`; MAML-RL is `maml_rl.MAMLRL`. The runner (`metarun.train`) needs only
what `Algorithm` names; algorithms that evaluate themselves (RL: returns of fresh rollouts) are
also `SelfEvaluating`.
"""
from typing import Protocol, runtime_checkable

import torch


class Algorithm(Protocol):
    model: torch.nn.Module  # what best.pt, mode=eval, load_learner and metarun-predict use

    def step(self, batch) -> dict[str, float]:
        """One meta-update from `task.sample(meta_batch_size, generator, "train")`; metrics of it."""

    def oracle_calls(self, meta_batch_size: int) -> dict[str, int]:
        """Counts of the last step, added to the run's cumulative `oracle/<key>` (Ji et al., 2020)."""

    def state_dict(self) -> dict:
        """Everything beyond `model.state_dict()` that an exact resume needs (optimizers, learned
        adapt-rule tensors, other networks, buffers, env state, schedules); weights_only-loadable."""

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class SelfEvaluating(Protocol):
    def evaluate(self, split: str, num_tasks: int, steps: int, seed: int, chunk: int) -> dict[str, torch.Tensor]:
        """Per-task results {"return": (steps + 1, num_tasks)} on the split's fixed evaluation set."""
