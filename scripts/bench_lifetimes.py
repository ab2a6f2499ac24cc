"""Speed of learned intrinsic rewards (issue 12): batched lifetimes against a per-lifetime Python loop.

    python scripts/bench_lifetimes.py [--env random_abc] [--lifetimes 32] [--repeats 3] [--threads 1] [--out FILE]
    python scripts/bench_lifetimes.py --preset random_abc --threads 2 [--out FILE]   # time the quick preset

Two measurements, each metarun's batched code against the same work done one lifetime at a time
(a Python loop over lifetimes, each a batch of one):
  * lifetimes stepped per second: whole evaluation lifetimes (reward frozen, the agent learning)
    of `--lifetimes` lifetimes: `algo.lifetimes(..., chunk=B)` against `chunk=1`. The figures of
    both are identical (each lifetime draws its randomness from its own seed), which the script checks;
  * meta-updates per second: one meta-iteration (an unroll of N inner updates of B lifetimes, the
    truncated meta-gradient and the Adam step) against the loop that computes the same meta-loss
    one lifetime at a time and steps once.
Times are medians over `--repeats` after a warm-up, in this one process. `--preset ENV` runs the
quick preset `+experiment=lifetime_ENV` end to end in-process (meta-training, validation, test)
and reports its training and wall time. `--out` appends the results as one JSON line.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metarun.algos.lifetime_reward import LifetimeReward
from metarun.models.lifetime_reward import LifetimeRewardNets
from metarun.tasks.gridworld import Gridworld


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make(env, lifetimes):
    torch.manual_seed(0)
    task = Gridworld(env)
    model = LifetimeRewardNets(task.input_shape, task.output_dim)
    algo = LifetimeReward(model, torch.optim.Adam(model.parameters(), lr=3e-3), task)
    algo.meta_batch = lifetimes
    return algo


def bench_lifetimes(env, b, repeats):
    algo = make(env, b)
    batched = algo.lifetimes("val", b, 1, chunk=b)
    looped = algo.lifetimes("val", b, 1, chunk=1)
    same = torch.allclose(batched["return"], looped["return"], rtol=1e-4, atol=1e-4)
    t_batch = median_time(lambda: algo.lifetimes("val", b, 1, chunk=b), repeats)
    t_loop = median_time(lambda: algo.lifetimes("val", b, 1, chunk=1), max(1, repeats // 2))
    return {"lifetimes_per_s_batched": b / t_batch, "lifetimes_per_s_loop": b / t_loop, "speedup": t_loop / t_batch,
            "identical_returns": bool(same)}


def bench_meta_updates(env, b, repeats):
    batched = make(env, b)
    batched.life = batched.start()

    def batched_step():
        policy_loss, value_loss, _ = batched.meta_loss(batched.life)
        batched.optimizer.zero_grad()
        (policy_loss + batched.value_coef * value_loss).backward()
        batched.optimizer.step()

    # The same lifetimes, one per Python iteration: B separate lifetime states of batch size one.
    looped = make(env, 1)
    lives = []
    for i in range(b):
        looped.meta_batch = 1
        lives.append(looped.start())

    def looped_step():
        looped.optimizer.zero_grad()
        for life in lives:
            policy_loss, value_loss, _ = looped.meta_loss(life)
            ((policy_loss + looped.value_coef * value_loss) / b).backward()
        looped.optimizer.step()

    t_batch = median_time(batched_step, repeats)
    t_loop = median_time(looped_step, max(1, repeats // 2))
    steps = b * batched.unroll * batched.segment
    return {"meta_updates_per_s_batched": 1 / t_batch, "meta_updates_per_s_loop": 1 / t_loop, "speedup": t_loop / t_batch,
            "lifetime_steps_per_meta_update": steps, "lifetime_steps_per_s_training": steps / t_batch}


def run_preset(env, threads):
    from hydra import compose, initialize_config_module

    from metarun.train import run

    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment=lifetime_{env}", "progress=false", f"threads={threads}"])
    out = Path("outputs/bench_lifetimes") / time.strftime("%Y-%m-%d_%H-%M-%S")
    summary = run(cfg, out)
    return {"preset": f"lifetime_{env}", "scale": cfg.scale, "iterations": cfg.iterations, "train_seconds": summary["time"],
            "wall_seconds": summary["wall_time"], "test_return": summary["test/return"], "run_dir": str(out)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="random_abc")
    parser.add_argument("--lifetimes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default=None, help="time the quick preset +experiment=lifetime_<env> instead")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.preset:
        result.update(run_preset(args.preset, args.threads))
        print(f"{result['preset']} (scale={result['scale']}, {result['iterations']} meta-iterations, {args.threads} threads): "
              f"training {result['train_seconds'] / 60:.1f} min, whole run {result['wall_seconds'] / 60:.1f} min, "
              f"test return {result['test_return']:.2f}")
    else:
        result.update(env=args.env, lifetimes=args.lifetimes)
        life = bench_lifetimes(args.env, args.lifetimes, args.repeats)
        meta = bench_meta_updates(args.env, args.lifetimes, args.repeats)
        result.update({f"eval_{k}": v for k, v in life.items()}, **{f"train_{k}": v for k, v in meta.items()})
        print(f"{args.env}, {args.lifetimes} lifetimes, {args.threads} thread(s):")
        print(f"  whole lifetimes (reward frozen): batched {life['lifetimes_per_s_batched']:.2f}/s, per-lifetime loop "
              f"{life['lifetimes_per_s_loop']:.2f}/s: {life['speedup']:.1f}x (identical returns: {life['identical_returns']})")
        print(f"  meta-updates (N={make(args.env, 1).unroll} inner updates x {args.lifetimes} lifetimes): batched "
              f"{meta['meta_updates_per_s_batched']:.2f}/s, per-lifetime loop {meta['meta_updates_per_s_loop']:.2f}/s: "
              f"{meta['speedup']:.1f}x; {meta['lifetime_steps_per_s_training']:.0f} lifetime steps/s in training")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
