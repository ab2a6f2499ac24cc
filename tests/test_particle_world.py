"""Particle worlds on VMAS against the reference MPE (mpe2): observations and rewards on the same states,
the action mapping, the pinned VMAS bugs that the subclasses fix, the scripted prey, seeding."""
import numpy as np
import pytest
import torch

pytest.importorskip("vmas")
mpe2 = pytest.importorskip("mpe2")

from metarun.config import ConfigError  # noqa: E402
from metarun.tasks.particle_world import ParticleWorld, _scenarios, scripted_prey  # noqa: E402

MPE_ENVS = {"simple_world_comm": "simple_world_comm_v3", "simple_tag": "simple_tag_v3", "simple_spread": "simple_spread_v3"}


def mpe_world(name):
    module = getattr(__import__("mpe2", fromlist=[MPE_ENVS[name]]), MPE_ENVS[name])
    env = module.parallel_env()
    env.reset(seed=0)
    return env.unwrapped


def random_states(vmas_env, mpe_env, rng, into_forests=False):
    """Draw one state and write it into both simulators (batch element 0 of VMAS)."""
    v_world, m_world = vmas_env.world, mpe_env.world
    for va, ma in zip(v_world.agents, m_world.agents):
        pos, vel = rng.uniform(-1.2, 1.2, 2), rng.normal(0, 0.5, 2)
        va.set_pos(torch.tensor(pos, dtype=torch.float32)[None], batch_index=0)
        va.set_vel(torch.tensor(vel, dtype=torch.float32)[None], batch_index=0)
        ma.state.p_pos, ma.state.p_vel = pos.astype(np.float32).astype(np.float64), vel.astype(np.float32).astype(np.float64)
    for vl, ml in zip(v_world.landmarks, m_world.landmarks):
        pos = rng.uniform(-0.9, 0.9, 2)
        vl.set_pos(torch.tensor(pos, dtype=torch.float32)[None], batch_index=0)
        ml.state.p_pos = pos.astype(np.float32).astype(np.float64)
    if into_forests:  # put some agents (both kinds) inside the forests, so visibility rules matter
        forests = [ml.state.p_pos for ml in m_world.forests]
        for k, (va, ma) in enumerate(zip(v_world.agents, m_world.agents)):
            if rng.uniform() < 0.6:
                pos = (forests[rng.integers(len(forests))] + rng.uniform(-0.15, 0.15, 2)).astype(np.float32)
                va.set_pos(torch.tensor(pos)[None], batch_index=0)
                ma.state.p_pos = pos.astype(np.float64)
    if v_world.dim_c and not v_world.agents[0].silent:  # the leader's message
        say = rng.integers(4)
        c = np.eye(4, dtype=np.float32)[say]
        v_world.agents[0].state.c = torch.tensor(c)[None].repeat(v_world.batch_dim, 1)
        m_world.agents[0].state.c = c.astype(np.float64)
    vmas_env.scenario._fresh = None  # the state was written behind the scenario's back


def mpe_reward(name, mpe_env, agent):
    scenario, world = mpe_env.scenario, mpe_env.world
    r = scenario.reward(agent, world)
    if name == "simple_spread":  # mpe2's SimpleEnv mixes in the global reward with local_ratio 0.5
        r = 0.5 * scenario.global_reward(world) + 0.5 * r
    return r


@pytest.mark.parametrize("name", list(MPE_ENVS))
def test_observations_and_rewards_equal_mpe_on_the_same_states(name):
    task = ParticleWorld(name)
    env = task.make_env(1)
    env.reset(torch.Generator().manual_seed(0))
    m = mpe_world(name)
    rng = np.random.default_rng(1)
    checked_forest = 0
    for trial in range(60):
        random_states(env.vmas, m, rng, into_forests=name == "simple_world_comm" and trial % 2 == 0)
        for va, ma in zip(env.vmas.agents, m.world.agents):
            obs = env.vmas.scenario.observation(va)[0].numpy()
            ref = m.scenario.observation(ma, m.world)
            assert obs.shape == ref.shape, (name, va.name)
            np.testing.assert_allclose(obs, ref, atol=1e-5, err_msg=f"{name} {va.name} observation")
            assert float(env.vmas.scenario.reward(va)[0]) == pytest.approx(mpe_reward(name, m, ma), abs=1e-4), (name, va.name)
        if name == "simple_world_comm":
            checked_forest += any(m.scenario.is_collision(a, f) for a in m.world.agents for f in m.world.forests)
    if name == "simple_world_comm":
        assert checked_forest > 20  # the forest rules were exercised


def test_pinned_vmas_world_comm_has_the_bugs_the_subclass_fixes():
    import vmas
    from vmas.scenarios.mpe import simple_world_comm

    env = vmas.make_env(simple_world_comm.Scenario(), num_envs=1, continuous_actions=False, seed=0)
    world, scenario = env.world, env.scenario
    adv, prey = world.agents[1], world.agents[4]
    # Shaping: an adversary's reward does not depend on its distance to the prey (|a - a| = 0).
    rewards = []
    for x in (0.0, 0.5):
        for a in world.agents:
            a.set_pos(torch.tensor([[5.0 + 3 * world.agents.index(a), 5.0]]), batch_index=0)  # nobody collides
        adv.set_pos(torch.tensor([[x, 0.0]]), batch_index=0)
        prey.set_pos(torch.tensor([[0.8, 0.0]]), batch_index=0)
        rewards.append(float(scenario.reward(adv)[0]))
    assert rewards[0] == rewards[1] == 0.0  # MPE: -0.1 * 0.8 and -0.1 * 0.3
    # Forests: an agent inside a forest still reads in_forest = -1, and a plain adversary never sees anyone.
    forest = world.forests[0]
    adv.set_pos(forest.state.pos.clone(), batch_index=0)
    obs = scenario.observation(adv)[0]
    assert obs.shape[-1] == 60  # MPE: 34
    assert (obs[-6:-4] == -1).all()  # in_forest, though the adversary stands in forest 0
    assert (obs[14:54] == 0).all()  # every other agent's position and velocity hidden
    # The fixed scenario on the same state: in_forest = (1, ...), others visible where MPE shows them.
    fixed = _scenarios()["simple_world_comm"]()
    env2 = vmas.make_env(fixed, num_envs=1, continuous_actions=False, seed=0)
    for a, b in zip(env2.world.agents + env2.world.landmarks, world.agents + world.landmarks):
        a.set_pos(b.state.pos.clone(), batch_index=0)
    fixed._fresh = None
    assert float(fixed.observation(env2.world.agents[1])[0, -6]) == 1.0


def test_pinned_vmas_spread_reward_and_force_differ_from_mpe():
    import vmas
    from vmas.scenarios.mpe import simple_spread

    env = vmas.make_env(simple_spread.Scenario(), num_envs=1, continuous_actions=False, seed=0)
    assert env.world.agents[0].action.u_multiplier == 1.0  # MPE pushes with 5
    m = mpe_world("simple_spread")
    random_states(env, m, np.random.default_rng(0))
    vmas_r = float(env.scenario.reward(env.world.agents[0])[0])
    collisions = sum(m.scenario.is_collision(a, b) for a in m.world.agents for b in m.world.agents if a is not b)
    assert vmas_r == pytest.approx(3 * m.scenario.global_reward(m.world) - collisions, abs=1e-4)  # N x global - 2 x pairs
    assert vmas_r != pytest.approx(mpe_reward("simple_spread", m, m.world.agents[0]), abs=1e-3)


def one_step_velocity(env, actions):
    """Velocities after one step from rest, with no contacts (agents far apart)."""
    for k, a in enumerate(env.vmas.agents):
        a.set_pos(torch.tensor([[3.0 * k - 10, 10.0]]), batch_index=0)
        a.set_vel(torch.zeros(1, 2), batch_index=0)
    env.step(actions)
    return torch.stack([a.state.vel[0] for a in env.vmas.agents])


def test_moves_act_as_mpe_discrete_actions_and_the_leader_says_its_message():
    task = ParticleWorld("simple_world_comm")
    env = task.make_env(1)
    env.reset(torch.Generator().manual_seed(0))
    expected = {0: (0, 0), 1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}  # mpe2: stay, -x, +x, -y, +y
    for move, direction in expected.items():
        for say in range(4):
            v = one_step_velocity(env, torch.tensor([[move + 5 * say, move, move, move]]))
            learners = v[: task.n_agents]
            assert torch.equal(torch.sign(learners), torch.tensor([direction] * 4, dtype=torch.float32))
            # mpe2: p_vel = u * accel / mass * dt = 3 * 0.1 (before any damping)
            assert torch.allclose(learners.abs().sum(-1), torch.full((4,), 0.3 * (move > 0)), atol=1e-6)
            assert env.vmas.agents[0].state.c[0].tolist() == np.eye(4)[say].tolist()
    assert task.avail_actions.sum(-1).tolist() == [20, 5, 5, 5]


def test_spread_agents_push_with_mpes_force():
    task = ParticleWorld("simple_spread")
    env = task.make_env(1)
    env.reset(torch.Generator().manual_seed(0))
    v = one_step_velocity(env, torch.tensor([[2, 4, 1]]))
    assert torch.allclose(v, torch.tensor([[0.5, 0.0], [0.0, 0.5], [-0.5, 0.0]]), atol=1e-6)  # 5 * 0.1


def test_scripted_prey_flees_the_nearest_adversary_and_turns_back_at_the_border():
    prey = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.95, 0.0]]])
    hunters = torch.tensor([[[-0.2, 0.0], [0.0, 0.9]]])  # nearest: left for prey 0 and 1 ... and for prey 2
    moves = scripted_prey(prey, hunters)
    assert moves[0, 0] == 2  # +x: away from the adversary on its left
    assert scripted_prey(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.3], [0.0, -0.9]])).item() == 3  # -y
    # Chased towards the border: at x = 0.95 fleeing (1) still beats the pull back (5 * 0.15), at x = 1.1 (5 * 0.3) it does not.
    assert scripted_prey(torch.tensor([[0.95, 0.0]]), torch.tensor([[0.7, 0.0]])).item() == 2
    assert scripted_prey(torch.tensor([[1.1, 0.0]]), torch.tensor([[0.85, 0.0]])).item() == 1


def test_episodes_are_a_function_of_the_generator_only():
    task = ParticleWorld("simple_tag")
    first = task.make_env(4).reset(torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    second = task.make_env(4).reset(torch.Generator().manual_seed(3))
    other = task.make_env(4).reset(torch.Generator().manual_seed(4))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_bad_scenarios_and_agent_counts_are_config_errors():
    with pytest.raises(ConfigError, match="task.scenario"):
        ParticleWorld("simple_push")
    with pytest.raises(ConfigError, match="task.num_adversaries"):
        ParticleWorld("simple_tag", num_adversaries=1)
    with pytest.raises(ConfigError, match="task.n_agents"):
        ParticleWorld("simple_spread", n_agents=1)


def test_vmas_action_set_has_nine_moves_with_diagonals():
    task = ParticleWorld("simple_spread", actions="vmas")
    assert task.n_actions == 9 and task.avail_actions.all()
    env = task.make_env(1)
    env.reset(torch.Generator().manual_seed(0))
    for a, (x, y) in {0: (0, 0), 1: (0, -1), 2: (0, 1), 3: (-1, 0), 5: (-1, 1), 6: (1, 0), 7: (1, -1), 8: (1, 1)}.items():
        v = one_step_velocity(env, torch.tensor([[a, 0, 0]]))
        assert torch.equal(torch.sign(v[0]), torch.tensor([x, y], dtype=torch.float32)), a
