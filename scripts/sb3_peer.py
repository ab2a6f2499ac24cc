"""Peer check of metarun's PPO against Stable-Baselines3's PPO on the undelayed environment.

    python scripts/sb3_peer.py --seeds 0 1 2 3 4 --out outputs/lirpg/peer     # needs: pip install -e ".[bench]"

For each seed, runs metarun's PPO (`+experiment=ppo_hopper_delayed scale=full task.reward_delay=1`)
and then SB3's PPO with the same settings and budget, one after the other in this process on one
thread (so their env steps/s are measured under the same conditions), and writes one JSON per run:
the final return (mean true return of the last 100 training episodes, what ppo2 and SB3 both log as
ep_rew_mean), the training time and env steps/s. scripts/lirpg_results.py reads them.

SB3 settings matched to ppo2 / metarun: n_steps 2048, batch 64 (32 minibatches), 10 epochs, gamma 0.99,
GAE lambda 0.95, clip 0.2 and value clip 0.2 (clip_range_vf; SB3's default is none), entropy 0,
max grad norm 0.5, Adam 3e-4 (eps 1e-5, SB3's default for PPO), pi and vf 64-64 tanh with orthogonal
init and log-std 0 (SB3's MlpPolicy defaults), VecNormalize (obs and reward, clip 10), actions clipped
to the box, time-limit bootstrap (both do it). vf_coef 0.25: SB3's value loss is the mean squared error,
ppo2's is 0.5 x that, weighted 0.5. Total 488 x 2048 env steps (ppo2's total // nsteps).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ITERATIONS, NSTEPS = 488, 2048


def run_metarun(env_id, seed, out, iterations):
    from hydra import compose, initialize_config_module

    from metarun.train import run

    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=ppo_hopper_delayed", "scale=full", f"task.env_id={env_id}",
                                           "task.reward_delay=1", f"seed={seed}", "threads=1", "progress=false",
                                           f"iterations={iterations}", "eval_every=1000"])
    summary = run(cfg, out)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train/return" in r][-1]
    return {"final_return": last["train/return"], "env_steps": last["train/env_steps"], "train_time": summary["time"],
            "eval_return": summary["test/return"]}


def run_sb3(env_id, seed, iterations):
    import gymnasium
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: Monitor(gymnasium.make(env_id))]), gamma=0.99, clip_obs=10.0, clip_reward=10.0)
    model = PPO("MlpPolicy", env, learning_rate=3e-4, n_steps=NSTEPS, batch_size=NSTEPS // 32, n_epochs=10, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.25, max_grad_norm=0.5,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh, "log_std_init": 0.0},
                seed=seed, device="cpu")
    start = time.perf_counter()
    model.learn(total_timesteps=iterations * NSTEPS)
    elapsed = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]
    return {"final_return": sum(returns) / len(returns), "env_steps": model.num_timesteps, "train_time": elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--out", default="outputs/lirpg/peer")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="updates of 2048 steps (488: the paper's 1M)")
    args = parser.parse_args()
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit('sb3_peer: error: needs Stable-Baselines3: pip install -e ".[bench]"')
    torch.set_num_threads(1)
    out = Path(args.out)
    for seed in args.seeds:
        for name in ("metarun", "sb3"):
            path = out / f"{name}_{args.env}_seed{seed}.json"
            if path.is_file():
                continue
            result = (run_metarun(args.env, seed, out / f"metarun_{args.env}_seed{seed}", args.iterations) if name == "metarun"
                      else run_sb3(args.env, seed, args.iterations))
            result.update(impl=name, env_id=args.env, seed=seed, threads=torch.get_num_threads(),
                          steps_per_second=result["env_steps"] / result["train_time"],
                          finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
