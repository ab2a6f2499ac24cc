"""Speed of a LIRPG update against a PPO update at the same nsteps, on one thread, measured in one run.

    python scripts/bench_lirpg.py [--env Hopper-v5] [--iterations 6] [--out outputs/lirpg/bench.json] [--note "..."]

Builds PPO and LIRPG exactly as the presets do (nsteps 2048, 32 minibatches x 10 epochs, delayed
Hopper-v5), each eager and with algo.compile=true, and times their iterations in turn (PPO, LIRPG,
compiled PPO, compiled LIRPG, PPO, ...), so all see the same load; compilation happens in the
warm-up iteration and is timed apart.
An iteration (one "update" in ppo2's sense) is the rollout of nsteps env steps, the advantages, and the
320 minibatch updates; the rollout and the optimisation phase are also timed apart. Prints the median
seconds per iteration, their ratio (target: LIRPG <= 2x PPO) and LIRPG's hot spots: the minibatch
update split into its parts, and torch.profiler's top operators. Writes the figures as JSON for
scripts/lirpg_results.py.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.func import functional_call

from metarun.algos.lirpg import LookaheadAdam
from metarun.algos.ppo import clipped_surrogate, clipped_value_loss, gaussian_log_prob, normalized
from metarun.inner_loop import adapt
from metarun.train import build


def make(algo, env_id, compiled=False):
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"algo={algo}", "task=mujoco_delayed", "model=actor_critic", f"task.env_id={env_id}",
                                           "threads=1", "device=cpu", "seed=0", f"algo.compile={str(compiled).lower()}"])
    return build(cfg)[3]


def timed_iteration(algo):
    """Seconds of (rollout, advantages + minibatch updates) of one iteration, as `step` runs it."""
    t0 = time.perf_counter()
    data = algo.rollout()
    t1 = time.perf_counter()
    algo.advantages(data)
    for _ in range(algo.epochs):
        order = torch.randperm(algo.nsteps, generator=algo.generator, device="cpu")
        for mb in order.split(algo.nsteps // algo.minibatches):
            algo.update(data, mb)
    return t1 - t0, time.perf_counter() - t1, data


def lirpg_parts(algo, data, repeats=64):
    """Milliseconds per minibatch of each part of LIRPG's meta update (the code of LIRPG.update, timed)."""
    parts = {}

    def lap(name, start):
        now = time.perf_counter()
        parts[name] = parts.get(name, 0.0) + now - start
        return now

    generator = torch.Generator().manual_seed(0)
    for _ in range(repeats):
        mb = torch.randperm(algo.nsteps, generator=generator)[: algo.nsteps // algo.minibatches]
        t = time.perf_counter()
        r_in = algo.intrinsic.reward(data["obs"], data["actions"])
        adv_mix = data["adv"][mb] + algo.r_in_coef * (data["gae_rows"][mb] @ r_in)
        ret_mix = adv_mix + data["values"][mb]
        t = lap("r_in of all nsteps steps and the mixed GAE rows", t)
        theta = {"theta": torch.cat([p.detach().reshape(-1) for p in algo.model.parameters()])}
        rule = LookaheadAdam(eps=1e-5, state=algo.adam_state(), detach_second_moment=algo.detach_second_moment)  # as meta_objective
        theta_new = adapt(lambda p: algo.ppo_loss(algo.unflatten(p["theta"]), data, mb, adv_mix, ret_mix)[0], theta, 1,
                          algo.lr_alpha, rule=rule, max_grad_norm=algo.max_grad_norm, functional=False)
        t = lap("lookahead: inner gradient (create_graph), clip, Adam step", t)
        mean, log_std = functional_call(algo.model, algo.unflatten(theta_new["theta"]), (data["obs"][mb],))
        logp = gaussian_log_prob(mean, log_std, data["actions"][mb])
        outer, _, _ = clipped_surrogate(logp, data["logp"][mb], normalized(data["adv_ex"][mb]), algo.clip)
        loss = outer + algo.vf_coef * clipped_value_loss(algo.intrinsic.value(data["obs"][mb]), data["v_ex"][mb],
                                                         data["ret_ex"][mb], algo.clip)
        t = lap("outer loss forward (pi_theta', V_ex)", t)
        torch.autograd.grad(loss, list(algo.intrinsic.parameters()))
        lap("meta-gradient backward (through the inner gradient and r_in)", t)
    return {k: 1e3 * v / repeats for k, v in parts.items()}


def compiled_parts(algo, data, repeats=64):
    """Milliseconds per minibatch of the compiled meta objective (one graph) and of its backward."""
    forward = backward = 0.0
    eta = list(algo.intrinsic.parameters())
    generator = torch.Generator().manual_seed(0)
    for _ in range(repeats):
        mb = torch.randperm(algo.nsteps, generator=generator)[: algo.nsteps // algo.minibatches]
        t0 = time.perf_counter()
        loss = algo.objective(data, mb, algo.adam_state())[0]
        t1 = time.perf_counter()
        torch.autograd.grad(loss, eta)
        forward, backward = forward + t1 - t0, backward + time.perf_counter() - t1
    return {"objective (r_in, lookahead, outer loss)": 1e3 * forward / repeats, "meta-gradient backward": 1e3 * backward / repeats}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations of each (after one warm-up)")
    parser.add_argument("--out", default="outputs/lirpg/bench.json")
    parser.add_argument("--note", default="", help="conditions to record, e.g. the concurrent jobs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    algos = {"ppo": make("ppo", args.env), "lirpg": make("lirpg", args.env),
             "ppo_compiled": make("ppo", args.env, True), "lirpg_compiled": make("lirpg", args.env, True)}
    times = {name: [] for name in algos}
    warmup = {}
    for name, algo in algos.items():  # warm-up (allocations, first Adam state; compilation)
        t = time.perf_counter()
        timed_iteration(algo)
        warmup[name] = time.perf_counter() - t
    for _ in range(args.iterations):
        for name, algo in algos.items():
            rollout, update, data = timed_iteration(algo)
            times[name].append((rollout, update))
    med = {name: {"rollout": statistics.median(r for r, _ in t), "update": statistics.median(u for _, u in t),
                  "iteration": statistics.median(r + u for r, u in t)} for name, t in times.items()}
    lirpg = algos["lirpg"]
    data = lirpg.rollout()
    lirpg.advantages(data)
    parts = lirpg_parts(lirpg, data)
    compiled = algos["lirpg_compiled"]
    parts_compiled = compiled_parts(compiled, data)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        order = torch.randperm(lirpg.nsteps, generator=lirpg.generator, device="cpu")
        for mb in order.split(lirpg.nsteps // lirpg.minibatches):
            lirpg.update(data, mb)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    hot = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_minibatch": e.count / lirpg.minibatches} for e in ops]
    result = {"env_id": args.env, "nsteps": lirpg.nsteps, "threads": torch.get_num_threads(), "iterations": args.iterations,
              "seconds_per_iteration": med, "ratio_iteration": med["lirpg"]["iteration"] / med["ppo"]["iteration"],
              "ratio_update_phase": med["lirpg"]["update"] / med["ppo"]["update"],
              "ratio_iteration_compiled": med["lirpg_compiled"]["iteration"] / med["ppo_compiled"]["iteration"],
              "ratio_update_phase_compiled": med["lirpg_compiled"]["update"] / med["ppo_compiled"]["update"],
              "ratio_compiled_lirpg_to_eager_ppo": med["lirpg_compiled"]["iteration"] / med["ppo"]["iteration"],
              "warmup_seconds": warmup, "lirpg_compiled_minibatch_ms": parts_compiled,
              "ppo_compiled_minibatch_ms": 1e3 * med["ppo_compiled"]["update"] / (lirpg.epochs * lirpg.minibatches),
              "steps_per_second": {k: lirpg.nsteps / v["iteration"] for k, v in med.items()},
              "lirpg_minibatch_ms": parts, "ppo_minibatch_ms": 1e3 * med["ppo"]["update"] / (lirpg.epochs * lirpg.minibatches),
              "hot_ops": hot, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "note": args.note}
    print(f"seconds per iteration (median of {args.iterations}, {args.env}, nsteps {lirpg.nsteps}, 1 thread):")
    for name, m in med.items():
        print(f"  {name:14s} rollout {m['rollout']:.3f}  update {m['update']:.3f}  total {m['iteration']:.3f}"
              f"  (warm-up iteration {warmup[name]:.1f} s)")
    print(f"LIRPG / PPO, both eager: {result['ratio_iteration']:.2f}x per iteration (target <= 2x), "
          f"{result['ratio_update_phase']:.2f}x in the optimisation phase")
    print(f"LIRPG / PPO, both compiled: {result['ratio_iteration_compiled']:.2f}x per iteration, "
          f"{result['ratio_update_phase_compiled']:.2f}x in the optimisation phase; compiled LIRPG / eager PPO: "
          f"{result['ratio_compiled_lirpg_to_eager_ppo']:.2f}x")
    print("compiled LIRPG minibatch update (ms): " + ", ".join(f"{k}: {v:.2f}" for k, v in parts_compiled.items()))
    print("LIRPG minibatch update (ms): " + ", ".join(f"{k}: {v:.2f}" for k, v in parts.items())
          + f"; PPO minibatch update: {result['ppo_minibatch_ms']:.2f} ms")
    print("top operators in LIRPG's updates: " + ", ".join(f"{h['op']} {100 * h['share']:.0f}%" for h in hot))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
