"""Speed of the Kaleidoscope pieces: environment steps, QMIX updates and the masked forward.

    python scripts/bench_kaleidoscope.py [--threads 1] [--repeats 20] [--out outputs/kaleidoscope/bench.json]

Prints, measured in this one run (median of `--repeats` timings each):
  * env steps/s of each particle scenario (VMAS, MPE-faithful subclasses, scripted prey), with the
    32 environments of a training iteration and the 100 of an evaluation;
  * QMIX updates/s on World (32 episodes x 26 steps x 4 agents per update) for share=full|none|kaleidoscope;
  * the agent network's forward on one training batch, all agents at once, Kaleidoscope (masked
    weights computed from the thresholds, one einsum per layer) over FuPS (one shared nn.Linear):
    target <= 1.5x; also forward+backward.
and writes them as JSON for scripts/kaleidoscope_report.py.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def timed(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns, repeats, warmup=2):
    """Median seconds of each function, timed in alternation so that the machine's load drifts
    (other jobs on shared cores) weigh on all of them alike: the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def build_qmix(share, scenario="simple_world_comm"):
    from hydra import compose, initialize_config_module

    from metarun.train import build

    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["algo=qmix", f"algo.share={share}", "task=particle_world",
                                           f"task.scenario={scenario}", "progress=false"])
    torch.manual_seed(0)
    return build(cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="outputs/kaleidoscope/bench.json")
    parser.add_argument("--note", default="", help="timing conditions for the doc (other jobs on the machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from metarun.tasks.particle_world import ParticleWorld

    results = {"threads": args.threads, "torch": torch.__version__, "note": args.note, "env": {}, "updates": {}, "forward": {}}
    for scenario in ("simple_world_comm", "simple_tag", "simple_spread"):
        task = ParticleWorld(scenario)
        for n in (32, 100):
            env = task.make_env(n)
            env.reset(torch.Generator().manual_seed(0))
            actions = torch.zeros(n, task.n_agents, dtype=torch.long)
            seconds = timed(lambda: env.step(actions), args.repeats * 5)
            results["env"][f"{scenario}/{n}"] = n / seconds
            print(f"env  {scenario:18s} {n:4d} envs: {n / seconds:9.0f} env steps/s  ({seconds * 1e3:.2f} ms per batched step)")

    algos = {}
    for share in ("full", "none", "kaleidoscope"):
        _, _, _, algo = build_qmix(share)
        while len(algo.buffer) < algo.batch_size:
            algo.buffer.add(algo.run_episodes(algo.env, algo.env_rng, 1.0)[0])
        algos[share] = algo
    update = interleaved({k: a.update for k, a in algos.items()}, args.repeats)
    acting = interleaved({k: (lambda a=a: a.run_episodes(a.env, a.env_rng, 0.5)) for k, a in algos.items()}, max(3, args.repeats // 4), warmup=1)
    for share, algo in algos.items():
        steps = algo.episodes_per_iteration * algo.limit
        # One training iteration = acting on 32 episodes + one update per episode.
        per_step = (acting[share] + algo.episodes_per_iteration * update[share]) / steps
        results["updates"][share] = {"updates_per_s": 1 / update[share], "update_ms": update[share] * 1e3,
                                     "acting_env_steps_per_s": steps / acting[share], "training_env_steps_per_s": 1 / per_step}
        print(f"qmix {share:12s}: {1 / update[share]:6.1f} updates/s ({update[share] * 1e3:.1f} ms), acting "
              f"{steps / acting[share]:6.0f} env steps/s, training {1 / per_step:5.0f} env steps/s")

    # The agent network alone on one training batch: all 4 agents x 26 steps x 32 episodes.
    obs = algos["full"].buffer.sample(32, torch.Generator().manual_seed(0))["obs"]
    forward, forward_backward = {}, {}
    for share in ("full", "kaleidoscope"):
        model = algos[share].model
        h0 = model.agent.initial_state(obs.shape[0])
        x = model.agent_inputs(obs)

        @torch.no_grad()
        def fwd(model=model, x=x, h0=h0):
            model.agent(x, h0)

        def fwd_bwd(model=model, x=x, h0=h0):
            model.zero_grad()
            q, _ = model.agent(x, h0)
            q.sum().backward()

        forward[share], forward_backward[share] = fwd, fwd_bwd
    t_f, t_fb = interleaved(forward, args.repeats), interleaved(forward_backward, args.repeats)
    for share in ("full", "kaleidoscope"):
        results["forward"][share] = {"forward_ms": t_f[share] * 1e3, "forward_backward_ms": t_fb[share] * 1e3}
    f, k = results["forward"]["full"], results["forward"]["kaleidoscope"]
    results["forward"]["ratio_forward"] = k["forward_ms"] / f["forward_ms"]
    results["forward"]["ratio_forward_backward"] = k["forward_backward_ms"] / f["forward_backward_ms"]
    print(f"agent forward, one batch (4 agents x 26 steps x 32 episodes): FuPS {f['forward_ms']:.2f} ms, "
          f"Kaleidoscope {k['forward_ms']:.2f} ms -> {results['forward']['ratio_forward']:.2f}x (target <= 1.5x); "
          f"forward+backward {f['forward_backward_ms']:.2f} / {k['forward_backward_ms']:.2f} ms -> "
          f"{results['forward']['ratio_forward_backward']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
