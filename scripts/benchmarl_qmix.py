"""Peer check: BenchMARL's QMIX on metarun's simple_spread, with metarun's QMIX budget and settings.

    pip install -e ".[bench]"        # BenchMARL: a benchmark-only dependency, never imported by metarun
    python scripts/benchmarl_qmix.py --seeds 0 1 2 --frames 200000 --out outputs/kaleidoscope/benchmarl

The environment is metarun's MPE-faithful simple_spread scenario (metarun.tasks.particle_world) in
VMAS, with VMAS's 9 discrete moves as BenchMARL uses them; metarun's side of the check runs the same
actions (`task.actions=vmas`). BenchMARL is configured like the reference's QMIX where it can be:
gamma 0.99, Adam 5e-4, gradient norm clip 10, hard target copies every 200 updates, epsilon 1 -> 0.05
over 50k frames, 32 environments x 25 steps per iteration and 32 updates of 32 x 25 transitions,
a buffer of 5000 x 25 transitions, evaluation on 100 greedy episodes every 20k frames. What differs
by design of the libraries is listed in docs/kaleidoscope.md (MLP agents on single transitions vs
recurrent agents on whole episodes, rewards averaged vs summed over agents, bootstrapping at the
time limit, no reward standardisation).

Writes <out>/seed<k>.json: evaluation frames, the 100 episode team returns (summed over agents) at
each evaluation, and the training seconds (collection + updates, evaluations excluded).
"""
import argparse
import json
import time
from pathlib import Path

import torch

try:  # BenchMARL is optional (the `bench` extra); main() says so when it is missing
    from benchmarl.environments.vmas.common import VmasClass
    from benchmarl.experiment.callback import Callback
except ImportError:
    VmasClass = Callback = object


class MetarunSpread(VmasClass):
    """BenchMARL's VMAS task with metarun's simple_spread scenario instead of VMAS's own."""

    def get_env_fun(self, num_envs, continuous_actions, seed, device):
        from torchrl.envs.libs.vmas import VmasEnv

        from metarun.tasks.particle_world import _scenarios

        scenario = _scenarios()["simple_spread"]()
        return lambda: VmasEnv(scenario=scenario, num_envs=num_envs, continuous_actions=False, seed=seed, device=device,
                               categorical_actions=True, clamp_actions=True, **self.config)


class Record(Callback):
    """Evaluation returns and the seconds spent evaluating (BenchMARL's total_time includes them)."""

    def __init__(self):
        super().__init__()
        self.evaluations, self.eval_seconds, self.train_end = [], 0.0, None

    def on_train_end(self, training_td, group):
        self.train_end = time.time()

    def on_evaluation_end(self, rollouts):
        if self.train_end is not None:
            self.eval_seconds += time.time() - self.train_end
        returns = [r.get(("next", "agents", "reward")).sum().item() for r in rollouts]  # over steps and agents
        self.evaluations.append({"frames": self.experiment.total_frames, "returns": returns})


def run(seed, frames, out, eval_interval, threads):
    from benchmarl.algorithms import QmixConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    torch.set_num_threads(threads)
    task = MetarunSpread("simple_spread", {"max_steps": 25, "n_agents": 3})

    config = ExperimentConfig.get_from_yaml()
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.gamma, config.lr, config.adam_eps = 0.99, 5e-4, 1e-8
    config.clip_grad_norm, config.clip_grad_val = True, 10.0
    config.soft_target_update, config.hard_target_update_frequency = False, 200
    config.exploration_eps_init, config.exploration_eps_end, config.exploration_anneal_frames = 1.0, 0.05, 50_000
    config.max_n_iters, config.max_n_frames = None, frames
    config.off_policy_collected_frames_per_batch = 32 * 25
    config.off_policy_n_envs_per_worker = 32
    config.off_policy_n_optimizer_steps = 32
    config.off_policy_train_batch_size = 32 * 25
    config.off_policy_memory_size = 5000 * 25
    config.evaluation, config.evaluation_interval, config.evaluation_episodes = True, eval_interval, 100
    config.evaluation_deterministic_actions, config.evaluation_static, config.render = True, True, False
    config.loggers, config.create_json, config.checkpoint_interval, config.checkpoint_at_end = ["csv"], False, 0, False
    config.save_folder = str(out)
    model = MlpConfig.get_from_yaml()
    model.num_cells, model.activation_class = [64, 64, 64, 64], torch.nn.ReLU
    algorithm = QmixConfig.get_from_yaml()  # mixing embedding 32, as the reference

    record = Record()
    out.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(task=task, algorithm_config=algorithm, model_config=model, seed=seed, config=config, callbacks=[record])
    experiment.run()
    train_seconds = experiment.total_time - record.eval_seconds
    return {"seed": seed, "frames": experiment.total_frames, "train_seconds": train_seconds,
            "frames_per_second": experiment.total_frames / train_seconds, "threads": threads, "evaluations": record.evaluations}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=200_000, help="env steps (metarun: kaleidoscope_spread scale=full, 250 x 32 x 25)")
    parser.add_argument("--eval-interval", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/kaleidoscope/benchmarl")
    args = parser.parse_args()
    try:
        import benchmarl  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarl_qmix: error: BenchMARL is not installed: pip install -e '.[bench]'")
    out = Path(args.out)
    for seed in args.seeds:
        result = run(seed, args.frames, out / f"seed{seed}_run", args.eval_interval, args.threads)
        (out / f"seed{seed}.json").write_text(json.dumps(result))
        last = result["evaluations"][-1]["returns"]
        print(f"seed {seed}: final return {sum(last) / len(last):.2f}, {result['frames_per_second']:.0f} frames/s", flush=True)


if __name__ == "__main__":
    main()
