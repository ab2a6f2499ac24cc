"""Kaleidoscope's networks and algorithms: member layers against torch's per-member layers, FuPS with
open masks = the plain shared network, the unrolled agent = the reference's step-by-step loop, mixer
monotonicity, QMIX's targets, exact resume (replay buffer, epsilon schedule, environment state) and
bad input through the command line."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metarun.models.matd3 import MATD3Net
from metarun.models.qmix import QMIXNet, QMixer
from metarun.nn.masks import MaskedLinear
from metarun.nn.sharing import IndependentLinear, MemberGRU
from metarun.train import build, run
from test_algos import make_cfg
from test_resume import check_resume_equals_uninterrupted

pytest.importorskip("vmas")


def test_independent_linear_is_one_torch_linear_per_member():
    torch.manual_seed(0)
    layer = IndependentLinear(3, 4, n_members=2)
    x = torch.randn(2, 5, 7, 3)
    out = layer(x)
    for m in range(2):
        assert torch.allclose(out[m], F.linear(x[m], layer.weight[m], layer.bias[m]), atol=1e-6)
    assert not torch.equal(layer.weight[0], layer.weight[1])  # drawn separately
    assert layer.weight.abs().max() <= 1 / math.sqrt(3)  # nn.Linear's range


@pytest.mark.parametrize("shared", [True, False])
def test_member_gru_equals_torch_gru_cells_step_by_step(shared):
    torch.manual_seed(1)
    n, t, b, i, h = 3, 4, 2, 5, 6
    gru = MemberGRU(i, h, n, shared=shared)
    x, h0 = torch.randn(n, t, b, i), torch.randn(n, b, h)
    out = gru(x, h0)
    for m in range(n):
        cell = torch.nn.GRUCell(i, h)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(gru.grus[0 if shared else m], name + "_l0"))
        state = h0[m]
        for k in range(t):
            state = cell(x[m, k], state)
            assert torch.allclose(out[m, k], state, atol=1e-6)


def qmix_pair():
    """A FuPS and a Kaleidoscope QMIX network with the same weights; the Kaleidoscope masks all open."""
    torch.manual_seed(2)
    full = QMIXNet((7,), 5, n_agents=3, state_dim=21, share="full")
    kalei = QMIXNet((7,), 5, n_agents=3, state_dim=21, share="kaleidoscope")
    own = kalei.state_dict()
    own.update({k: v for k, v in full.state_dict().items() if k in own})
    kalei.load_state_dict(own)
    with torch.no_grad():
        for layer in kalei.agent.masked_layers():
            layer.thresholds.fill_(-60.0)  # sigmoid(-60) ~ 1e-26: nothing pruned, nothing shrunk
    return full, kalei


def test_fups_with_all_masks_open_equals_the_plain_shared_network():
    full, kalei = qmix_pair()
    obs = torch.randn(4, 6, 3, 7)
    h = full.agent.initial_state(4)
    (q_full, h_full), (q_kalei, h_kalei) = full.q_values(obs, h), kalei.q_values(obs, h)
    assert torch.allclose(q_full, q_kalei, atol=1e-6) and torch.allclose(h_full, h_kalei, atol=1e-6)
    # ... and their TD gradients on the shared weights agree too.
    for net, q in ((full, q_full), (kalei, q_kalei)):
        net.mixer(q.max(-1).values, obs.flatten(-2)).sum().backward()
    assert torch.allclose(full.agent.fc2.weight.grad, kalei.agent.fc2.weight.grad, atol=1e-5)


def test_unrolled_agent_equals_the_references_step_by_step_loop():
    torch.manual_seed(3)
    net = QMIXNet((7,), 5, n_agents=3, state_dim=21, share="kaleidoscope")
    with torch.no_grad():
        for layer in net.agent.masked_layers():  # masks that differ between agents
            layer.thresholds.copy_(torch.randn_like(layer.thresholds) * 2 - 2)
    obs = torch.randn(2, 5, 3, 7)
    q, _ = net.q_values(obs, net.agent.initial_state(2))
    # The reference (Kalei_RNNAgent_1R3): per time step and per sample, the agent's own masked weight.
    agent, cell = net.agent, torch.nn.GRUCell(64, 64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(agent.rnn.grus[0], name + "_l0"))
    ids = torch.eye(3)
    for a in range(3):
        def lin(layer, x):
            return x @ layer.masked_weights()[a].T + layer.bias
        h = torch.zeros(2, 64)
        for t in range(5):
            x = torch.cat([obs[:, t, a], ids[a].expand(2, 3)], -1)
            h = cell(F.relu(lin(agent.fc1, x)), h)
            ref = lin(agent.fc4, F.relu(lin(agent.fc3, F.relu(lin(agent.fc2, h)))))
            assert torch.allclose(q[:, t, a], ref, atol=1e-5)


def test_mixer_is_monotone_in_every_agents_q():
    torch.manual_seed(4)
    mixer = QMixer(n_agents=4, state_dim=10)
    qs = torch.randn(256, 4, requires_grad=True)
    states = torch.randn(256, 10) * 3
    grad, = torch.autograd.grad(mixer(qs, states).sum(), qs)
    assert (grad >= 0).all() and (grad > 0).any()
    # Raising one agent's Q never lowers Q_tot, whatever the state.
    for i in range(4):
        bumped = qs.detach().clone()
        bumped[:, i] += torch.rand(256) * 5
        assert (mixer(bumped, states) >= mixer(qs.detach(), states) - 1e-5).all()


QMIX_TINY = ["algo=kaleidoscope_qmix", "task=particle_world", "task.scenario=simple_spread", "task.episode_limit=5",
             "algo.episodes_per_iteration=4", "algo.batch_size=4", "algo.buffer_size=10", "algo.epsilon_anneal_steps=60",
             "algo.target_update_interval=3", "algo.reset_interval=15", "algo.reset_ratio=0.5", "model.hidden=16",
             "model.mixing_embed=8", "model.hypernet_embed=8", "eval_tasks=3", "eval_chunk=2", "threads=1"]


def test_qmix_targets_use_double_q_and_stop_at_the_episode_limit():
    _, _, _, algo = build(make_cfg(*QMIX_TINY))
    algo.step()
    algo.step()
    batch = algo.buffer.sample(4, torch.Generator().manual_seed(0))

    class Constant(torch.nn.Module):
        def forward(self, qs, states):
            return torch.full(qs.shape[:-1], 100.0)

    algo.target.mixer = Constant()
    stats = algo.reward_stats.state_dict()
    _, _, y = algo.td_loss(batch)
    algo.reward_stats.load_state_dict(stats)  # td_loss updated them; normalise as it did
    r = batch["reward"][:, :-1]
    algo.reward_stats.update(r)
    r = algo.reward_stats.normalize(r)
    assert torch.allclose(y[:, :-1], r[:, :-1] + 0.99 * 100.0, atol=1e-4)
    assert torch.allclose(y[:, -1], r[:, -1], atol=1e-6)  # no bootstrap at the episode limit


def test_double_q_takes_the_online_argmax_among_available_actions():
    from metarun.algos.qmix import bootstrap_values

    online = torch.tensor([[[1.0, 5.0, 9.0], [3.0, 2.0, 1.0]]])  # agent 0's action 2 is unavailable
    target = torch.tensor([[[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]])
    avail = torch.tensor([[True, True, False], [True, True, True]])
    assert bootstrap_values(online, target, avail, double_q=True).tolist() == [[20.0, 40.0]]
    assert bootstrap_values(online, target, avail, double_q=False).tolist() == [[20.0, 60.0]]


def test_epsilon_schedule_is_linear_then_flat():
    _, _, _, algo = build(make_cfg(*QMIX_TINY))
    values = []
    for _ in range(5):
        values.append(algo.epsilon())
        algo.env_steps += 20
    assert values == pytest.approx([1.0, 1.0 - 0.95 / 3, 1.0 - 2 * 0.95 / 3, 0.05, 0.05])


def test_qmix_resume_reproduces_buffer_epsilon_and_metrics(tmp_path, monkeypatch):
    from metarun.algos.qmix import QMIX

    overrides = [*QMIX_TINY, "iterations=8", "eval_every=4", "checkpoint_every=3", "log_every=1"]
    full, _ = check_resume_equals_uninterrupted(tmp_path, monkeypatch, QMIX, overrides, 5)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    epsilons = [r["train/epsilon"] for r in rows if "train/epsilon" in r]
    assert epsilons[0] == 1.0 and epsilons[-1] == pytest.approx(0.05)  # the schedule ran through
    assert rows[-1]["train/env_steps"] == 8 * 4 * 5
    assert "train/mask_distance" in rows[-1]
    # mode=eval on the run's checkpoint reproduces its test figure (the same seeded test episodes).
    from metarun.learner import evaluate_run

    again = evaluate_run(make_cfg(*overrides, "mode=eval", f"run_dir={tmp_path / 'full'}"), tmp_path / "eval")
    assert again["test/return"] == full["test/return"]


MATD3_TINY = ["algo=kaleidoscope_matd3", "task=mamujoco", "task.episode_limit=7", "algo.envs=2", "algo.steps_per_iteration=4",
              "algo.updates_per_iteration=2", "algo.warmup_steps=8", "algo.batch_size=8", "algo.buffer_size=40",
              "algo.n_step=3", "algo.n_critics=3", "algo.reset_interval=12", "algo.critic_reset_interval=12",
              "model.hidden=[16,16]", "eval_tasks=2", "eval_chunk=2", "threads=1"]


def test_matd3_resume_reproduces_buffer_environments_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("gymnasium_robotics")
    from metarun.algos.matd3 import MATD3

    overrides = [*MATD3_TINY, "iterations=7", "eval_every=3", "checkpoint_every=2", "log_every=1"]
    check_resume_equals_uninterrupted(tmp_path, monkeypatch, MATD3, overrides, 4)  # episodes of 7 straddle iterations of 4


def test_matd3_critic_ensemble_is_one_masked_mlp_with_layer_norm():
    net = MATD3Net((11,), 3, n_agents=2, state_dim=17, n_critics=5)
    layers = net.critic.masked_layers()
    assert len(layers) == 3 and all(isinstance(m, MaskedLinear) and m.n_masks == 5 for m in layers)
    assert layers[0].thresholds.min() >= -20 and layers[0].thresholds.max() <= 0  # -U * 20
    assert net.q_values(torch.randn(4, 17), torch.rand(4, 2, 3)).shape == (5, 4)
    acts = net.act(torch.randn(4, 2, 11))
    assert acts.shape == (4, 2, 3) and acts.abs().max() <= 1


@pytest.mark.parametrize("override,expected", [
    (["task.num_adversaries=1"], "task.num_adversaries=1 is not allowed: must be an integer >= 2"),
    (["task.scenario=simple_push"], "task.scenario='simple_push' is not allowed: one of simple_world_comm, simple_tag, simple_spread"),
    (["model.share=full"], "algo.share='kaleidoscope' is not allowed: a model with masked layers"),
])
def test_bad_multi_agent_input_gets_one_line_and_exit_code_2(tmp_path, override, expected):
    from conftest import run_metarun

    result = run_metarun("algo=kaleidoscope_qmix", "task=particle_world", *override, "iterations=1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("metarun: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_supervised_algorithm_on_a_multi_agent_task_is_refused():
    from metarun.config import ConfigError

    with pytest.raises(ConfigError, match="qmix or kaleidoscope_qmix for particle_world"):
        build(make_cfg("algo=maml", "task=particle_world", "task.scenario=simple_spread"))


@pytest.mark.slow  # about 2 min on the shared 2 cores: 3 QMIX runs, metarun-report, the doc script, one MATD3 run
def test_smoke_presets_run_the_three_arms_and_matd3_through_the_command_line(tmp_path):
    from conftest import run_metarun

    result = run_metarun("-m", "+experiment=kaleidoscope_smoke", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert [s["status"] for s in summaries] == ["completed"] * 3
    shares = sorted(OmegaConf.load(p).algo.share for p in (tmp_path / "sweep").glob("*/config.yaml"))
    assert shares == ["full", "kaleidoscope", "none"]
    assert all(math.isfinite(s["test/return"]) for s in summaries)
    report = run_metarun("sweep", cwd=tmp_path, command="metarun-report")  # algorithms without oracle counts
    assert report.returncode == 0, report.stderr[-2000:]
    assert "algo.share=kaleidoscope" in (tmp_path / "sweep" / "report" / "summary.md").read_text()
    # The doc script renders from such a sweep (parts not run are reported as such).
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "world").symlink_to(tmp_path / "sweep")
    (tmp_path / "runs" / "world_quick").symlink_to(tmp_path / "sweep")  # as if --time-quick had timed this sweep
    (tmp_path / "sweep" / "timing.json").write_text(json.dumps({
        "command": "metarun -m +experiment=kaleidoscope_world", "exit_code": 0, "wall_seconds": 1900.0, "cpus": 2,
        "machine_share": 0.55, "load_before": 0.1, "load_after": 1.9, "started": "2026-11-27T02:00:00"}))
    doc = subprocess.run([sys.executable, str(repo / "scripts" / "kaleidoscope_report.py"), "--root", str(tmp_path / "runs"),
                          "--template", str(repo / "docs" / "src" / "kaleidoscope.md"), "--out", str(tmp_path / "doc" / "k.md")],
                         capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0, doc.stderr[-2000:]
    text = (tmp_path / "doc" / "k.md").read_text()
    assert "| Kaleidoscope | 0 | 600 |" in text and "*Not run yet:*" in text and (tmp_path / "doc" / "kaleidoscope" / "world_return.png").is_file()
    assert ("**31.7 minutes** wall-clock for the 3 runs (target <= 30: **missed**)" in text
            and "on a machine shared (it had 55% of the machine's busy CPU seconds) (load average 0.1" in text)
    pytest.importorskip("gymnasium_robotics")
    result = run_metarun("+experiment=kaleidoscope_halfcheetah", "hydra.run.dir=cheetah", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "cheetah" / "summary.json").read_text())
    assert summary["status"] == "completed" and math.isfinite(summary["test/return"])
    rows = [json.loads(line) for line in (tmp_path / "cheetah" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/updates"] > 0 and rows[-1]["train/env_steps"] == 4 * 500


def test_mamujoco_hopper_terminations_are_stored_and_environments_reset():
    pytest.importorskip("gymnasium_robotics")
    _, _, _, algo = build(make_cfg(*MATD3_TINY, "task.scenario=Hopper", "task.agent_conf=3x1", "task.episode_limit=1000",
                                   "algo.warmup_steps=100000", "algo.steps_per_iteration=60"))
    assert algo.task.n_agents == 3 and algo.task.action_dim == 1
    algo.step()  # 120 random-action steps of 2 hoppers: they fall (terminated), long before 1000 steps
    data, rows = algo.buffer.data, algo.buffer.size
    terminated, done = data["terminated"][:rows], data["done"][:rows]
    assert terminated.any() and torch.equal(terminated, done)
    row, env = terminated.nonzero()[0].tolist()
    if row + 1 < rows:  # the next stored step starts a fresh episode near the reset pose
        assert not torch.allclose(data["obs"][row + 1, env], data["next_obs"][row, env])


def test_the_scripted_spread_yardstick_covers_the_landmarks_far_better_than_random_moves():
    """The doc's simple_spread yardstick (scripts/kaleidoscope_report.py) must be a strong policy: near
    the optimum's scale, far above an agent that moves at random on the same episodes."""
    import sys
    from pathlib import Path

    from metarun.tasks.particle_world import ParticleEnv, ParticleWorld

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from kaleidoscope_report import scripted_spread_return

    scripted, half = scripted_spread_return(episodes=50)
    task = ParticleWorld("simple_spread")
    env = ParticleEnv(task, 50)
    env.reset(torch.Generator().manual_seed(0))
    moves = torch.Generator().manual_seed(1)
    random = sum(env.step(torch.randint(5, (50, task.n_agents), generator=moves))[1] for _ in range(task.episode_limit)).mean()
    # A team return is 25 steps of 1.5 x (minus the summed landmark distances) less collisions: random moves
    # leave the landmarks about as far as the start (-100 or lower), covering them takes a few steps.
    assert random < -80 and -35 < scripted < -10 and half < 5, (random, scripted, half)


# scripts/kaleidoscope_report.py: the run data the page reads is kept beside the page, a fresh checkout
# rebuilds the page from it, and a build with no run data at all refuses rather than replacing the page.

def kaleidoscope_report():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import kaleidoscope_report

    return kaleidoscope_report


def build_page(monkeypatch, root, out):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr("sys.argv", ["kaleidoscope_report.py", "--root", str(root), "--out", str(out),
                                     "--template", str(repo / "docs" / "src" / "kaleidoscope.md")])
    kaleidoscope_report().main()


def fake_world_sweep(sweep):
    """A finished World sweep of 2 arms x 2 seeds as `metarun -m` leaves it (tiny numbers), with what the page
    does not read beside it: every run's checkpoints, log and W&B dir, metarun-report's report/."""
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "report").mkdir()
    (sweep / "report" / "summary.md").write_text("report\n")
    for job, (arm, seed) in enumerate([("kaleidoscope", 0), ("kaleidoscope", 1), ("full", 0), ("full", 1)]):
        d = sweep / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- algo.share={arm}\n- seed={seed}\n")
        OmegaConf.save(OmegaConf.create({"seed": seed, "iterations": 3, "eval_every": 1, "eval_tasks": 10, "threads": 1,
                                         "algo": {"share": arm, "episodes_per_iteration": 4, "reset_interval": 200},
                                         "task": {"episode_limit": 25}}), d / ".hydra" / "config.yaml")
        rows = []
        for k in (1, 2, 3):
            row = {"iteration": k, "train/env_steps": 100 * k, "time": 10.0 * k, "eval/return": -50.0 + k + seed}
            if arm == "kaleidoscope":
                row["train/mask_distance"] = 0.1 * k
                row.update({f"train/keep_agent{a}_fc{lay}": 0.9 - 0.01 * k for a in range(3) for lay in (2, 3, 4)})
                row.update({f"train/mask_distance_{i}_{j}": 0.1 * k for i in range(3) for j in range(i + 1, 3)})
            rows.append(json.dumps(row))
        (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        (d / "summary.json").write_text(json.dumps({"status": "completed", "test/return": -45.0 + seed, "time": 30.0,
                                                    "wall_time": 40.0, "iteration": 3}))
        torch.manual_seed(job)
        net = QMIXNet((7,), 5, n_agents=3, state_dim=21, share=arm, hidden=8)
        torch.save({"model": net.state_dict()}, d / "checkpoint.pt")
        torch.save({"model": net.state_dict()}, d / "best.pt")
        (d / "metarun.log").write_text("log\n")
        (d / "wandb").mkdir()
        (d / "wandb" / "run.wandb").write_text("w\n")


def test_the_kept_run_data_is_what_the_page_reads_and_a_fresh_checkout_rebuilds_the_same_page(tmp_path, monkeypatch, capsys):
    import shutil

    root, out = tmp_path / "runs", tmp_path / "doc" / "k.md"
    fake_world_sweep(root / "world")
    (root / "world_quick").mkdir()
    (root / "world_quick" / "sweep.log").write_text("log\n")
    (root / "world_quick" / "timing.json").write_text(json.dumps({
        "command": "metarun -m +experiment=kaleidoscope_world", "exit_code": 0, "wall_seconds": 1500.0, "cpus": 2,
        "cpu_slots": "2", "load_before": 0.1, "load_after": 1.9, "started": "2026-11-27T02:00:00"}))
    build_page(monkeypatch, root, out)
    kept = tmp_path / "doc" / "kaleidoscope" / "runs.tar.xz"
    assert f"its run data kept in {kept}" in capsys.readouterr().out
    page, archive = out.read_text(), kept.read_bytes()
    # The World parts are built from the runs (the dead-weight share from the Kaleidoscope checkpoints), the rest is not run yet.
    assert "| Kaleidoscope | 0, 1 |" in page and "% of fc2..fc4's weights are pruned" in page and "*Not run yet:*" in page
    checkpoints = {job: (root / "world" / job / "checkpoint.pt").read_bytes() for job in ("0", "1")}

    shutil.rmtree(root)  # a fresh checkout: no work dir, only the kept archive
    build_page(monkeypatch, root, out)
    assert f"restored the kept run data {kept} into {root}" in capsys.readouterr().out
    assert out.read_text() == page
    assert kept.read_bytes() == archive  # a rebuild from restored data does not churn the archive in git
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    run_files = [".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "summary.json"]
    assert files == sorted(["world/multirun.yaml", "world_quick/timing.json", "world/0/checkpoint.pt", "world/1/checkpoint.pt",
                            *(f"world/{job}/{f}" for job in "0123" for f in run_files)])
    assert {job: (root / "world" / job / "checkpoint.pt").read_bytes() for job in ("0", "1")} == checkpoints


def test_a_build_with_no_run_data_and_no_kept_archive_refuses_and_leaves_the_page(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "runs", tmp_path / "doc" / "k.md"
    out.parent.mkdir()
    out.write_text("the published page\n")
    with pytest.raises(SystemExit) as exit_:
        build_page(monkeypatch, root, out)
    err = capsys.readouterr().err
    kept = tmp_path / "doc" / "kaleidoscope" / "runs.tar.xz"
    assert exit_.value.code == 2 and err.count("\n") == 1 and str(root) in err and str(kept) in err and "metarun -m" in err
    assert out.read_text() == "the published page\n" and not kept.parent.exists()
