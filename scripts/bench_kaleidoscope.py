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

    for share in ("full", "none", "kaleidoscope"):
        _, _, _, algo = build_qmix(share)
        while len(algo.buffer) < algo.batch_size:
            algo.buffer.add(algo.run_episodes(algo.env, algo.env_rng, 1.0)[0])
        seconds = timed(algo.update, args.repeats)
        acting = timed(lambda: algo.run_episodes(algo.env, algo.env_rng, 0.5), max(3, args.repeats // 4), warmup=1)
        steps = algo.episodes_per_iteration * algo.limit
        # One training iteration = acting on 32 episodes + one update per episode.
        per_step = (acting + algo.episodes_per_iteration * seconds) / steps
        results["updates"][share] = {"updates_per_s": 1 / seconds, "update_ms": seconds * 1e3,
                                     "acting_env_steps_per_s": steps / acting, "training_env_steps_per_s": 1 / per_step}
        print(f"qmix {share:12s}: {1 / seconds:6.1f} updates/s ({seconds * 1e3:.1f} ms), acting {steps / acting:6.0f} env steps/s, "
              f"training {1 / per_step:5.0f} env steps/s")

    # The agent network alone on one training batch: all 4 agents x 26 steps x 32 episodes.
    nets = {}
    for share in ("full", "kaleidoscope"):
        _, model, _, algo = build_qmix(share)
        nets[share] = (model, algo)
    _, algo_full = nets["full"]
    while len(algo_full.buffer) < algo_full.batch_size:
        algo_full.buffer.add(algo_full.run_episodes(algo_full.env, algo_full.env_rng, 1.0)[0])
    obs = algo_full.buffer.sample(algo_full.batch_size, torch.Generator().manual_seed(0))["obs"]
    for share, (model, _) in nets.items():
        h0 = model.agent.initial_state(obs.shape[0])
        x = model.agent_inputs(obs)

        @torch.no_grad()
        def forward():
            model.agent(x, h0)

        def forward_backward():
            model.zero_grad()
            q, _ = model.agent(x, h0)
            q.sum().backward()

        results["forward"][share] = {"forward_ms": timed(forward, args.repeats) * 1e3,
                                     "forward_backward_ms": timed(forward_backward, args.repeats) * 1e3}
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
