"""Rollouts of one persistent Gymnasium environment, as OpenAI baselines' ppo2 Runner collects them.

`EnvRunner` keeps the environment between calls (an episode may span several updates), normalises
observations and rewards with `metarun.rl.normalize.Normalizer`, records the true (undelayed)
return of every finished episode, and saves and restores all of it exactly: the MuJoCo simulation
state (`mujoco.mj_getState`: time, qpos, qvel, act, warm-start, ...), the environment's RNG, its
time-limit counter, the reward delay's pending sum, the normaliser and the episode counters.

`run_episodes` plays whole evaluation episodes in several fresh environments at once (one batched
policy call per step) from seeds that are a function of (seed, episode index) alone.
"""
from collections import deque

import gymnasium
import numpy as np
import torch

from metarun.rl.normalize import Normalizer


def mujoco_state(env):
    """The full integration state of a Gymnasium MuJoCo env's simulation, as a float64 tensor."""
    import mujoco

    model, data = env.unwrapped.model, env.unwrapped.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    return torch.from_numpy(state)


def set_mujoco_state(env, state):
    import mujoco

    model, data = env.unwrapped.model, env.unwrapped.data
    mujoco.mj_setState(model, data, state.numpy().astype(np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(model, data)  # derived quantities (contacts, sensors) as after a step; the state is untouched


def wrappers(env):
    """The wrappers of `env`, outermost first."""
    while isinstance(env, gymnasium.Wrapper):
        yield env
        env = env.env


def find_wrapper(env, cls):
    return next((w for w in wrappers(env) if isinstance(w, cls)), None)


def rng_state(generator):
    # Gymnasium's np.random.Generator (PCG64) state, its 128-bit integers as strings (weights_only-loadable).
    s = generator.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def set_rng_state(generator, state):
    generator.bit_generator.state = {"bit_generator": state["bit_generator"],
                                     "state": {"state": int(state["state"]), "inc": int(state["inc"])},
                                     "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


class EnvRunner:
    """nsteps at a time from one environment that persists across calls."""

    def __init__(self, env, gamma, normalize=True, clip=10.0, action_low=None, action_high=None, device="cpu", history=100):
        self.env, self.device = env, torch.device(device)
        self.action_low, self.action_high = action_low, action_high
        obs_shape = env.observation_space.shape
        self.normalizer = Normalizer(obs_shape, gamma, clip, clip, observations=normalize, rewards=normalize)
        self.obs = None  # the normalised observation the policy sees next (float64 numpy)
        self.episode_return, self.episode_length = 0.0, 0  # true (undelayed) return so far of the running episode
        self.recent = deque(maxlen=history)  # true returns of the last `history` finished episodes
        self.episodes, self.steps = 0, 0

    def reset(self, seed):
        obs, _ = self.env.reset(seed=seed)
        self.obs = self.normalizer.observation(obs)

    @torch.no_grad()
    def collect(self, act, nsteps):
        """Step `nsteps` times with `act(obs, t) -> action` (obs a (1, obs_dim) tensor on the device).

        Returns tensors on the device: obs, actions (as sampled; the environment gets them clipped to
        its action box), rewards (normalised, as the environment gives them: delayed), next_obs (the
        observation after each step; at an episode's end its final one, for the bootstrap), dones
        (the episode ended after this step), terminated (ended in a terminal state: no bootstrap),
        and `episodes`, the true returns and lengths of the episodes that ended.
        """
        n_obs = self.obs.shape[0]
        obs_buf, next_buf = np.empty((nsteps, n_obs)), np.empty((nsteps, n_obs))
        rewards, dones, terminated = np.empty(nsteps), np.empty(nsteps), np.empty(nsteps)
        actions = []
        finished = []
        for t in range(nsteps):
            obs_buf[t] = self.obs
            action = act(torch.from_numpy(self.obs).to(self.device, torch.float32)[None], t)[0]
            actions.append(action)
            a = action.cpu().numpy().astype(np.float64)  # the one host transfer per step (a no-op on the CPU)
            if self.action_low is not None:
                a = np.clip(a, self.action_low, self.action_high)
            obs, reward, term, trunc, info = self.env.step(a)
            done = term or trunc
            self.episode_return += info.get("undelayed_reward", reward)
            self.episode_length += 1
            rewards[t] = self.normalizer.reward(reward, done)
            dones[t], terminated[t] = done, term
            if done:
                next_buf[t] = self.normalizer.observation(obs, update=False)
                finished.append((self.episode_return, self.episode_length))
                self.recent.append(self.episode_return)
                self.episodes += 1
                self.episode_return, self.episode_length = 0.0, 0
                obs, _ = self.env.reset()
            self.obs = self.normalizer.observation(obs)
            if not done:
                next_buf[t] = self.obs
        self.steps += nsteps

        def tensor(x):
            return torch.from_numpy(x).to(self.device, torch.float32)

        return {"obs": tensor(obs_buf), "next_obs": tensor(next_buf), "actions": torch.stack(actions),
                "rewards": tensor(rewards), "dones": tensor(dones), "terminated": tensor(terminated),
                "episodes": finished}

    def state_dict(self):
        limit = find_wrapper(self.env, gymnasium.wrappers.TimeLimit)
        return {"mujoco": mujoco_state(self.env), "np_random": rng_state(self.env.unwrapped.np_random),
                "elapsed_steps": limit._elapsed_steps if limit else None,
                # wrappers with a state of their own (the reward delay's pending sum), outermost first
                "wrappers": [w.state_dict() for w in wrappers(self.env) if hasattr(w, "state_dict")],
                "normalizer": self.normalizer.state_dict(), "obs": torch.from_numpy(self.obs.copy()),
                "episode_return": float(self.episode_return), "episode_length": int(self.episode_length),
                "recent": [float(r) for r in self.recent], "episodes": self.episodes, "steps": self.steps}

    def load_state_dict(self, state):
        self.env.reset(seed=0)  # lets the wrappers (order checks, time limit) start; everything is overwritten below
        set_mujoco_state(self.env, state["mujoco"])
        set_rng_state(self.env.unwrapped.np_random, state["np_random"])
        limit = find_wrapper(self.env, gymnasium.wrappers.TimeLimit)
        if limit:
            limit._elapsed_steps = state["elapsed_steps"]
        for w, saved in zip([w for w in wrappers(self.env) if hasattr(w, "state_dict")], state["wrappers"], strict=True):
            w.load_state_dict(saved)
        self.normalizer.load_state_dict(state["normalizer"])
        self.obs = state["obs"].numpy().astype(np.float64).copy()
        self.episode_return, self.episode_length = float(state["episode_return"]), int(state["episode_length"])
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.episodes, self.steps = int(state["episodes"]), int(state["steps"])


def episode_seed(seed, index):
    """The reset seed of evaluation episode `index` of the set drawn with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@torch.no_grad()
def run_episodes(make_env, act, normalizer, seeds, action_low=None, action_high=None, device="cpu"):
    """True returns of one episode per seed, played in parallel environments with `act(obs) -> actions`.

    `normalizer` normalises the observations with its statistics frozen (not updated).
    """
    envs = [make_env() for _ in seeds]
    obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds)]
    returns, alive = np.zeros(len(envs)), np.ones(len(envs), bool)
    while alive.any():
        live = np.flatnonzero(alive)
        batch = np.stack([normalizer.observation(obs[i], update=False) for i in live])
        actions = act(torch.from_numpy(batch).to(device, torch.float32)).cpu().numpy().astype(np.float64)
        if action_low is not None:
            actions = np.clip(actions, action_low, action_high)
        for i, a in zip(live, actions):
            obs[i], reward, term, trunc, _ = envs[i].step(a)
            returns[i] += reward
            alive[i] = not (term or trunc)
    for env in envs:
        env.close()
    return returns
