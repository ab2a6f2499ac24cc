"""Learned intrinsic rewards over lifetimes: gridworld dynamics and rewards on hand-checked cases,
batched lifetimes against one-at-a-time lifetimes, the truncated meta-gradient against autograd
through an explicit unrolled loop, the lifetime value targets against the n-step formula, the
baselines' rewards, resume, device-clean code, a preset end to end, and bad input."""
import json
import math

import pytest
import torch

from metarun.algos.lifetime_reward import LifetimeReward, policy_logits
from metarun.models.lifetime_reward import LifetimeRewardNets
from metarun.rl.streams import uniform
from metarun.tasks.gridworld import Gridworld, HandDesignedReward
from metarun.train import run
from test_algos import make_cfg

U, D, L, R = range(4)


def cell(task, r, c):
    return task.cells_rc.index((r, c))


def one(values, cells=None, seed=7, task=None):
    """One lifetime's task tuple (values (1, K), cells (1, K), seeds (1,))."""
    values = torch.tensor([values], dtype=torch.float32)
    cells = torch.tensor([cells if cells is not None else task.fixed_cells])
    return values, cells, torch.tensor([seed])


def walk(env, actions):
    return [{k: v[0].item() for k, v in env.step(torch.tensor([a])).items()} for a in actions]


# ---- the environment, by hand ----------------------------------------------------------------------

def test_random_abc_moves_walls_rewards_and_episode_restarts():
    task = Gridworld("random_abc", lifetime_episodes=3, horizon=20)
    env = task.env(one([0.7, -0.2, 0.3], task=task))
    assert task.cells_rc[env.pos.item()] == (3, 3) and task.states == 25 and task.input_shape == (25,)
    steps = walk(env, [U, U, L, L])  # (3,3) -> (2,3) -> (1,3) -> (1,2) -> (1,1) = A
    assert [task.cells_rc[s["next_state"]] for s in steps] == [(2, 3), (1, 3), (1, 2), (1, 1)]
    assert [s["reward"] for s in steps] == [0, 0, 0, pytest.approx(0.7)]
    assert [s["end"] for s in steps] == [False, False, False, True] and steps[-1]["event"] == 0
    assert env.episode.item() == 1 and task.cells_rc[env.pos.item()] == (3, 3)  # the next episode starts at S
    steps = walk(env, [U, U, U, U])  # into the top wall: the agent stays at (1,3)
    assert task.cells_rc[steps[-1]["next_state"]] == (1, 3) and not any(s["end"] for s in steps)
    steps = walk(env, [R, R])  # (1,5) = B
    assert steps[-1]["reward"] == pytest.approx(-0.2) and steps[-1]["event"] == 1 and steps[-1]["end"]
    steps = walk(env, [D, D, L, L])  # (5,1) = C, the third and last episode
    assert steps[-1]["reward"] == pytest.approx(0.3) and steps[-1]["lifetime_end"] and not env.alive.item()
    frozen = walk(env, [U, U])  # a finished lifetime is frozen: invalid steps, no reward
    assert all(not s["valid"] and s["reward"] == 0 and not s["end"] for s in frozen)
    env.restart(torch.tensor([True]), *one([0.1, -0.1, 0.2], task=task, seed=9))
    assert env.alive.item() and env.episode.item() == 0 and env.clock.item() == 0 and env.seeds.item() == 9


def test_time_out_ends_the_episode_without_reward():
    task = Gridworld("random_abc", lifetime_episodes=5, horizon=3)
    env = task.env(one([1.0, -0.5, 0.5], task=task))
    steps = walk(env, [D, U, D])
    assert [s["end"] for s in steps] == [False, False, True] and steps[-1]["event"] == -1 and steps[-1]["reward"] == 0
    assert env.episode.item() == 1 and env.t.item() == 0


def test_key_box_needs_the_key_which_costs_once():
    task = Gridworld("key_box", lifetime_episodes=2, horizon=30)
    assert task.states == 2 * task.n_open and task.cells_rc[task.key_cell] == (4, 3)
    env = task.env(one([0.9, -0.3, 0.4], task=task))
    steps = walk(env, [U, U, L, L])  # onto box A without the key: nothing happens
    assert [s["reward"] for s in steps] == [0, 0, 0, 0] and not any(s["end"] for s in steps)
    steps = walk(env, [R, R, D, D, D, D])  # back to (3,3), then the key at (4,3), then (5,3)
    assert steps[4]["reward"] == pytest.approx(-0.1) and steps[4]["event"] == 3 and steps[4]["next_state"] >= task.n_open
    steps += walk(env, [U, D])  # the key is taken: no second charge
    assert sum(s["reward"] for s in steps) == pytest.approx(-0.1)
    steps = walk(env, [L, L])  # (5,1) = box C, opened with the key (now at (5,3))
    assert steps[-1]["reward"] == pytest.approx(0.4) and steps[-1]["event"] == 2 and steps[-1]["end"]
    assert not env.key.item()  # the next episode starts without the key


def test_nonstationary_abc_swaps_a_and_c_every_swap_every_episodes():
    task = Gridworld("nonstationary_abc", lifetime_episodes=6, swap_every=2)
    values, cells, _ = task.sample(400, torch.Generator().manual_seed(0))
    assert set(values[:, 0].tolist()) == {-1.0, 1.0} and torch.all(values[:, 1] == -0.5) and torch.equal(values[:, 2], -values[:, 0])
    env = task.env(one([1.0, -0.5, -1.0], task=task))
    got = []
    for _ in range(6):  # collect A in every episode: +1, +1, -1, -1, +1, +1
        got.append(walk(env, [U, U, L, L])[-1]["reward"])
    assert got == [1, 1, -1, -1, 1, 1]
    env = task.env(one([1.0, -0.5, -1.0], task=task))
    got = [walk(env, [D, D, L, L])[-1]["reward"] for _ in range(4)]  # C
    got += [walk(env, [U, U, R, R])[-1]["reward"] for _ in range(2)]  # B never swaps
    assert got == [-1, -1, 1, 1, -0.5, -0.5]


def test_empty_rooms_walls_doorways_and_goals():
    task = Gridworld("empty_rooms")
    assert task.n_open == 40 and (task.episodes, task.horizon) == (200, 30)
    values, cells, seeds = task.sample(3000, torch.Generator().manual_seed(1))
    assert torch.all(values == 1) and not torch.any(cells == task.start)
    counts = torch.bincount(cells[:, 0], minlength=task.n_open)
    others = torch.arange(task.n_open) != task.start
    assert counts[task.start] == 0 and counts[others].min().item() > 0  # every other open cell can be the goal
    goal = cell(task, 1, 3)
    env = task.env((values[:1], torch.tensor([[goal]]), seeds[:1]))
    steps = walk(env, [R, R, R])  # (1,1) -> (1,2) -> (1,3): the goal; a wall at (1,4)
    assert steps[1]["reward"] == 1 and steps[1]["end"] and steps[1]["event"] == 0
    env = task.env((values[:1], torch.tensor([[cell(task, 7, 7)]]), seeds[:1]))
    steps = walk(env, [R, R, R, R])  # the wall between the top rooms: stuck at (1,3)
    assert task.cells_rc[steps[-1]["next_state"]] == (1, 3)
    steps = walk(env, [D, R, R])  # the doorway at (2,4) leads to the top-right room
    assert task.cells_rc[steps[-1]["next_state"]] == (2, 5)
    assert task.distance[task.start, cell(task, 7, 7)] == 12


def test_task_draws_are_in_range_seeded_and_alike_on_every_split():
    task = Gridworld("random_abc")
    values, cells, seeds = task.sample(5000, torch.Generator().manual_seed(3), "train")
    for k, (low, high) in enumerate([(-1, 1), (-0.5, 0), (0, 0.5)]):
        assert values[:, k].min() >= low and values[:, k].max() <= high
        assert values[:, k].mean().item() == pytest.approx((low + high) / 2, abs=0.02)
    assert torch.all(cells == torch.tensor(task.fixed_cells)) and len(set(seeds.tolist())) > 4990
    again = task.sample(5000, torch.Generator().manual_seed(3), "test")
    assert all(torch.equal(a, b) for a, b in zip((values, cells, seeds), again))


def test_random_streams_are_uniform_and_independent_of_batching():
    seeds = torch.arange(1000)[:, None]
    u = uniform(seeds, torch.arange(200)[None, :], 1)
    assert u.min() >= 0 and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.005)
    assert u.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.01)
    assert torch.equal(uniform(seeds[17:18], torch.arange(200)[None, :], 1), u[17:18])
    assert not torch.equal(uniform(seeds, torch.arange(200)[None, :], 2), u)  # another stream
    assert abs(torch.corrcoef(torch.stack([u[:, :-1].reshape(-1), u[:, 1:].reshape(-1)]))[0, 1].item()) < 0.01


# ---- agents and rewards --------------------------------------------------------------------------

def make_algo(env="random_abc", task_options=None, model_options=None, seed=0, **options):
    torch.manual_seed(seed)
    task = Gridworld(env, **(task_options or {}))
    model = LifetimeRewardNets(task.input_shape, task.output_dim, **{"hidden": 8, **(model_options or {})})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return LifetimeReward(model, optimizer, task, **options)


def test_count_bonus_and_hand_designed_reward_on_scripted_paths():
    algo = make_algo("key_box", {"lifetime_episodes": 3}, reward="count", count_bonus=0.3)
    task = algo.task
    life = algo.new_lifetimes(one([0.9, -0.3, 0.4], task=task))
    got = []
    for a in [D, U, D]:  # (4,3) with the key, (3,3) holding it, (4,3) holding it again
        state = life["env"].state()
        out = life["env"].step(torch.tensor([a]))
        out["state"] = state
        got.append(algo.baseline_reward(life, out).item())
    assert got == pytest.approx([-0.1 + 0.3, 0.3, 0.3 / math.sqrt(2)])

    # Potential-based shaping with gammabar = 1 telescopes: along S -> key -> C the hand-designed
    # rewards sum to the extrinsic ones plus shaping * (path length from S by way of the key),
    # where C is the target once A is known to be worth less than C's optimistic 0.5.
    hand = HandDesignedReward(task, gamma=1.0, shaping=0.1)
    env = task.env(one([-0.9, -0.3, 0.4], task=task))
    state = hand.init(1, "cpu")
    state["known"][0, 0], state["value"][0, 0] = True, -0.9
    total, r_ext = 0.0, 0.0
    for a in [D, D, L, L]:
        before = env.state()
        out = env.step(torch.tensor([a]))
        out["state"] = before
        r, state = hand(state, out, env.cells)
        total, r_ext = total + r.item(), r_ext + out["reward"].item()
    assert out["event"].item() == 2 and r_ext == pytest.approx(0.3)
    assert total == pytest.approx(r_ext + 0.1 * (1 + 3), abs=1e-6)
    assert state["known"][0].tolist() == [True, False, True] and state["value"][0, 2].item() == pytest.approx(0.4)


def test_batched_lifetimes_equal_lifetimes_run_one_at_a_time():
    # Policy initialisation and action noise come from each lifetime's own seed: a lifetime's result
    # cannot depend on the others in its batch, so any eval_chunk gives the same figures.
    for reward in ("learned", "extrinsic_ep", "oracle"):
        algo = make_algo("key_box", {"lifetime_episodes": 4, "horizon": 12}, reward=reward, segment=5)
        batched = algo.lifetimes("val", 6, 3, chunk=6, record=True)
        alone = algo.lifetimes("val", 6, 3, chunk=1, record=True)
        for key in ("return", "episode_return", "outcome", "event_reward"):
            torch.testing.assert_close(batched[key], alone[key], rtol=1e-5, atol=1e-6)
        assert batched["episode_length"].sum(1).min() > 4  # whole lifetimes ran
        assert torch.allclose(batched["return"], batched["episode_return"].sum(1))
    assert not torch.equal(algo.lifetimes("test", 6, 3, 6)["return"], batched["return"])  # test apart from val


def explicit_returns(rewards, dones, gamma):
    out, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running * (1 - dones[t])
        out[t] = running
    return out


def explicit_n_step(rewards, values, dones, gamma, n):
    """G_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V_{t+n}, stopping at the first done (no bootstrap after it)."""
    h, out = len(rewards), []
    for t in range(h):
        g, discount = 0.0, 1.0
        for k in range(n):
            if t + k >= h:
                break
            g += discount * rewards[t + k]
            discount *= gamma
            if dones[t + k]:
                discount = 0.0
                break
        out.append(g + discount * values[min(t + n, h)])
    return out


def test_truncated_meta_gradient_and_value_targets_equal_an_explicit_unrolled_loop():
    """The algorithm (vmapped adapt steps, batched LSTMs, n_step_returns) against one lifetime at a time
    with plain autograd.grad(create_graph=True) steps, python-loop returns, a step-by-step value LSTM
    and the n-step formula, in float64: the meta-gradient of the reward and the value targets agree."""
    gamma, gammabar, alpha, n = 0.95, 0.8, 0.7, 3
    algo = make_algo("random_abc", {"lifetime_episodes": 50, "horizon": 4}, {"hidden": 3}, reward="learned",
                     unroll=3, segment=4, n_step=n, inner_lr=alpha, gamma=gamma, inner_gamma=gammabar, stagger=False)
    algo.model.double()
    algo.meta_batch = 2
    life = algo.start()
    theta0 = {k: v.clone() for k, v in life["theta"].items()}
    first = {k: v.clone() for k, v in life["traj"].items()}
    h_r0, h_v0 = [tuple(h.clone() for h in life[k]) for k in ("h_reward", "h_value")]
    policy_loss, _, data = algo.meta_loss(life)
    eta = list(algo.model.reward.parameters())
    grads = torch.autograd.grad(policy_loss, eta)
    assert not any(t["lifetime_end"].any() for t in data["window"])  # no restart in this window
    assert all(g.abs().sum() > 0 for g in grads)
    value = algo.model.value

    total, count = 0.0, 0.0
    for b in range(2):
        def lifetime(traj):
            return {k: v[b] for k, v in traj.items()}

        theta = {k: v[b].detach().requires_grad_() for k, v in theta0.items()}
        h_r = tuple(h[:, b:b + 1] for h in h_r0)
        trajs = [lifetime(t) for t in [first] + data["window"]]
        logps = []
        for k in range(3):  # inner update k on tau_k, then log pi_{theta_k} on tau_{k+1}
            traj = trajs[k]
            x = algo.history({key: v[None] for key, v in traj.items()})
            r, h_r = algo.model.reward(x, h_r)
            valid = traj["valid"].double()
            r = r[0] * valid
            running, returns = 0.0, [None] * 4
            for t in reversed(range(4)):
                running = r[t] + gammabar * running * (1 - traj["end"][t].double())
                returns[t] = running
            returns = torch.stack(returns)
            returns = (returns - (returns * valid).sum() / valid.sum()) * valid  # the segment-mean baseline
            logp = torch.log_softmax(policy_logits(theta, algo.features(traj["state"])), -1)
            loss = -(returns * logp[torch.arange(4), traj["action"]] * valid).sum()
            step = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
            theta = {key: p - alpha * g for (key, p), g in zip(theta.items(), step)}
            nxt = trajs[k + 1]
            logp = torch.log_softmax(policy_logits(theta, algo.features(nxt["state"])), -1)
            logps.append(logp[torch.arange(4), nxt["action"]])
        # Lifetime value V_t = head(LSTM state before step t), one LSTM step at a time, over tau_2..tau_4.
        h, c = (x[:, b:b + 1] for x in h_v0)
        values, rewards, dones, valid = [], [], [], []
        for traj in trajs[1:]:
            x = algo.value_input({key: v[None] for key, v in traj.items()})
            for t in range(4):
                values.append(value.head(h[0, 0]).item())
                _, (h, c) = value.core(x[:, t:t + 1], (h, c))
            rewards += traj["reward"].tolist()
            dones += traj["lifetime_end"].tolist()
            valid += traj["valid"].tolist()
        values.append(value.head(h[0, 0]).item())
        targets = explicit_n_step(rewards, values, dones, gamma, n)
        torch.testing.assert_close(data["target"][b], torch.tensor(targets, dtype=torch.float64), rtol=1e-9, atol=1e-9)
        advantage = torch.tensor(targets, dtype=torch.float64) - torch.tensor(values[:-1], dtype=torch.float64)
        total = total - (advantage * torch.cat(logps) * torch.tensor(valid, dtype=torch.float64)).sum()
        count += sum(valid)
    expected = torch.autograd.grad(total / count, eta)
    torch.testing.assert_close(policy_loss, total / count, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_a_lifetime_that_ends_restarts_with_a_fresh_policy_and_an_empty_history():
    algo = make_algo("random_abc", {"lifetime_episodes": 2, "horizon": 3}, reward="learned", unroll=2, segment=3, stagger=False)
    algo.meta_batch = 3
    algo.life = algo.start()
    restarts = 0
    for _ in range(4):
        seeds = algo.life["env"].seeds.clone()
        _, _, data = algo.meta_loss(algo.life)
        env = algo.life["env"]
        ended = torch.stack([t["lifetime_end"].any(1) for t in [data["window"][0]]]).any(0)
        changed = env.seeds != seeds
        restarts += int(changed.sum())
        # A new lifetime's clock counts from its own start: at most the segments collected since.
        assert torch.all(env.clock[changed] <= algo.segment * algo.unroll)
        assert torch.all(env.episode[changed] <= algo.task.episodes) and not torch.any(ended & ~changed & env.alive)
    assert restarts > 0 and algo.life["env"].alive.all()
    fresh = algo.fresh_policy(torch.tensor([5, 5, 6]))
    assert torch.equal(fresh["w0"][0], fresh["w0"][1]) and not torch.equal(fresh["w0"][0], fresh["w0"][2])
    assert fresh["w0"].abs().max() <= 1 / math.sqrt(algo.task.states) and torch.all(fresh["b0"] == 0)


def test_baselines_have_nothing_to_meta_train_and_evaluate_once():
    algo = make_algo(reward="count", task_options={"lifetime_episodes": 3})
    before = [p.clone() for p in algo.model.parameters()]
    assert algo.step(algo.task.sample(4, torch.Generator().manual_seed(0))) == {} and algo.oracle_calls(4) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, algo.model.parameters()))
    first = algo.evaluate("val", 5, 0, 1, 5)
    assert first["return"].shape == (1, 5) and algo.evaluate("val", 5, 0, 1, 5) is first


LIFETIME_FAST = ["+experiment=lifetime_random_abc", "iterations=12", "eval_every=4", "log_every=2", "checkpoint_every=4",
                 "eval_tasks=4", "meta_batch_size=4", "task.lifetime_episodes=3", "task.horizon=6", "algo.segment=4",
                 "algo.unroll=2", "model.hidden=8"]


def test_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from test_resume import check_resume_equals_uninterrupted

    full, _ = check_resume_equals_uninterrupted(tmp_path, monkeypatch, LifetimeReward, LIFETIME_FAST, 7)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("train/lifetimes_ended", 0) for r in rows) > 0  # lifetimes restarted during the run
    assert rows[-1]["train/env_steps"] > 0 and full["status"] == "completed"


def test_training_and_evaluation_are_device_clean():
    from test_device import audited

    for reward in ("learned", "count", "oracle"):
        algo = make_algo("key_box", {"lifetime_episodes": 2, "horizon": 5}, reward=reward, unroll=2, segment=4)
        batch = algo.task.sample(3, torch.Generator().manual_seed(0))
        assert audited(lambda: [algo.step(batch) for _ in range(3)]) == []
        assert audited(lambda: algo.lifetimes("val", 3, 1, 2, record=True)) == []


def test_quick_preset_learns_to_avoid_b_and_beats_its_start(tmp_path):
    # The Random ABC preset, shortened: 150 meta-iterations (~10 s). The untrained reward leaves the
    # agent wandering (lifetime return ~0); after meta-training it collects C and A and avoids B.
    cfg = make_cfg("+experiment=lifetime_random_abc", "iterations=150", "eval_tasks=32", "seed=1", "threads=1")
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["iteration"] == 0 and rows[-1]["iteration"] == 150
    assert rows[0]["eval/return"] < 3 and rows[-1]["eval/return"] > 8, (rows[0]["eval/return"], rows[-1]["eval/return"])
    assert summary["test/return"] > 8 and summary["oracle/outer_grad"] == 150 * 32


@pytest.mark.parametrize("override,expected", [
    ("task.env=mazes", "task.env='mazes' is not allowed: must be one of empty_rooms, random_abc, key_box, nonstationary_abc"),
    ("algo.unroll=0", "algo.unroll=0 is not allowed: must be an integer >= 1"),
    ("task.lifetime_episodes=0", "task.lifetime_episodes=0 is not allowed: must be an integer >= 1"),
    ("algo.reward=curiosity", "algo.reward='curiosity' is not allowed"),
])
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, override, expected):
    from conftest import run_metarun

    result = run_metarun("+experiment=lifetime_random_abc", override, "iterations=2", cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("metarun: error:")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # rejected before any run started


def test_constructor_rejects_what_the_cli_cannot_see():
    with pytest.raises(Exception, match="task.env='mazes'"):
        Gridworld("mazes")
    with pytest.raises(Exception, match="task.horizon=0"):
        Gridworld("random_abc", horizon=0)
    with pytest.raises(Exception, match="algo.unroll=0"):
        make_algo(unroll=0)


@pytest.mark.slow
def test_report_builds_the_doc_from_tiny_runs(tmp_path):
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    tiny = ["iterations=3", "eval_every=3", "eval_tasks=4", "meta_batch_size=4", "task.lifetime_episodes=10", "task.swap_every=3",
            "algo.segment=4", "algo.unroll=2", "model.hidden=4", "threads=1"]
    root = tmp_path / "runs"
    run_dirs = []
    for env in ("empty_rooms", "random_abc", "key_box", "nonstationary_abc"):
        for seed in (0, 1):
            run_dirs.append(f"{env}/learned/seed{seed}")
            run(make_cfg(f"+experiment=lifetime_{env}", f"seed={seed}", *tiny), root / run_dirs[-1])
        for reward in ("extrinsic_ep", "extrinsic_life", "count", "oracle"):
            run_dirs.append(f"{env}/{reward}")
            run(make_cfg(f"+experiment=lifetime_{env}", f"algo.reward={reward}", *tiny), root / run_dirs[-1])
    for arm in ("feedforward", "episodic", "no_value"):
        for seed in (0, 1):
            run_dirs.append(f"ablations/{arm}/seed{seed}")
            run(make_cfg("+experiment=lifetime_ablations", f"ablation={arm}", f"seed={seed}", *tiny), root / run_dirs[-1])
    # What a run dir of scripts/lifetime_runs.sh also holds, none of which the doc reads.
    seed0 = root / "random_abc" / "learned" / "seed0"
    for junk in (".hydra/config.yaml", "wandb/run-1/files/output.log", "metarun.log"):
        (seed0 / junk).parent.mkdir(parents=True, exist_ok=True)
        (seed0 / junk).write_text("junk\n")
    assert (seed0 / "checkpoint.pt").is_file()
    bench = {"env": "random_abc", "lifetimes": 8, "eval_lifetimes_per_s_batched": 4.0, "eval_lifetimes_per_s_loop": 1.0,
             "eval_speedup": 4.0, "train_lifetime_steps_per_meta_update": 64, "train_meta_updates_per_s_batched": 2.0,
             "train_meta_updates_per_s_loop": 0.5, "train_speedup": 4.0, "threads": 1, "date": "2024-01-01"}
    (root / "bench.jsonl").write_text(json.dumps(bench) + "\n")
    out = tmp_path / "doc" / "lifetime_rewards.md"
    script = Path(__file__).resolve().parents[1] / "scripts" / "lifetime_report.py"
    command = [sys.executable, str(script), "--root", str(root), "--lifetimes", "4", "--chunk", "2", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for claim in ("beats Extrinsic-EP", "beats Extrinsic-LIFE", "explores until the goal is found", "learns to avoid B",
                  "fail to open boxes", "changes around the swap"):
        assert claim in text, claim
    assert text.count("**reproduced**") + text.count("**not resolved**") + text.count("**contradicted**") >= 12
    assert "feed-forward reward" in text and "{{" not in text and "4.0x" in text  # the bench lines are read
    figures = sorted(p.name for p in (out.parent / "lifetime_rewards").glob("*.png"))
    assert "empty_rooms_intrinsic.png" in figures and "random_abc_ablations.png" in figures and len(figures) >= 9
    assert (seed0 / "lifetimes_test.pt").is_file()  # evaluations are cached

    # The run data is kept beside the figures: per run its summary, config, metrics and cached test
    # lifetimes (every run here was evaluated), and the bench lines; no checkpoint, W&B dir or log.
    kept = out.parent / "lifetime_rewards" / "runs.tar.xz"
    with tarfile.open(kept) as tar:
        files = sorted("/".join(Path(m.name).parts) for m in tar.getmembers() if m.isfile())
    names = ("config.yaml", "lifetimes_test.pt", "metrics.jsonl", "summary.json")
    assert files == sorted(["bench.jsonl"] + [f"{d}/{name}" for d in run_dirs for name in names])
    assert f"run data kept in {kept}" in result.stdout

    # A checkout without the runs: the kept data is restored and the doc rebuilt from the cached
    # lifetimes (no checkpoint to evaluate with), the same page.
    archive = kept.read_bytes()
    root.rename(tmp_path / "runs_before")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"restored the kept run data {kept} into {root}" in result.stdout
    assert not list(root.rglob("checkpoint.pt")) and out.read_text() == text
    cache = Path("random_abc", "learned", "seed0", "lifetimes_test.pt")
    assert (root / cache).read_bytes() == (tmp_path / "runs_before" / cache).read_bytes()  # read, not recomputed
    assert kept.read_bytes() == archive  # kept again unchanged: no churn in git


@pytest.mark.parametrize("runs", ["none", "unfinished"])
def test_report_without_runs_or_kept_data_exits_2_and_leaves_the_page(tmp_path, monkeypatch, capsys, runs):
    import sys

    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import lifetime_report

    root = tmp_path / "runs"
    if runs == "unfinished":  # a run still going: nothing the doc can show yet
        (root / "random_abc" / "learned" / "seed0").mkdir(parents=True)
        (root / "random_abc" / "learned" / "seed0" / "summary.json").write_text(json.dumps({"status": "running"}))
    out = tmp_path / "doc" / "lifetime_rewards.md"
    out.parent.mkdir()
    out.write_text("the published page\n")
    monkeypatch.setattr(sys, "argv", ["lifetime_report.py", "--root", str(root), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        lifetime_report.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert str(root) in err and str(out.parent / "lifetime_rewards" / "runs.tar.xz") in err and "lifetime_runs.sh" in err
    assert out.read_text() == "the published page\n" and [p.name for p in out.parent.iterdir()] == ["lifetime_rewards.md"]
