"""Collect real-game episodes into an episode dataset (`generator.data`), in parallel over Gymnasium vector envs.

Reproducibility: episode ``j`` of a dataset (``j`` counts from 0 over all runs into the same folder) is reset with
seed ``seed + j`` and acted on by a policy whose random stream is seeded from that same number, so its content
depends on ``(seed, j)`` only, not on the number of workers or on which worker ran it (provided the game is
deterministic given seed and actions; see docs/data-format.md for crafter 1.8.3's exception). Episodes are written
in index order. The vector env runs with ``AutoresetMode.DISABLED`` and the collector resets finished sub-envs
itself (``options={"reset_mask": ...}``), so every reset gets its episode's seed and no fake post-done
transition ever reaches the dataset.

Resume: rerunning into the same folder appends until ``episodes`` are present; finished episodes survive a kill
(see `generator.data.EpisodeWriter`), the unfinished ones are collected again with the same seeds.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from generator.data import EpisodeWriter, action_array_spec
from world_env.games.env import GameEnv

POLICIES = ("random", "sticky", "sb3:<path>")
# Policy streams are seeded with (episode seed, POLICY_STREAM) so they never coincide with the game's own stream.
POLICY_STREAM = 0x5EED


def _policy_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else [int(seed), POLICY_STREAM])


def _seeded_space(space: gymnasium.Space, rng: np.random.Generator) -> gymnasium.Space:
    space = copy.deepcopy(space)
    space.seed(int(rng.integers(2**31 - 1)))
    return space


class RandomPolicy:
    """Uniform random actions from the action space, one independent stream per env slot."""

    def __init__(self, action_space: gymnasium.Space, num_envs: int) -> None:
        self.action_space = action_space
        self._spaces = [_seeded_space(action_space, _policy_rng(None)) for _ in range(num_envs)]

    def describe(self) -> dict:
        return {"name": "random"}

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env slot ``i``'s new episode; ``seed`` (the episode's seed) makes its actions reproducible."""
        self._spaces[i] = _seeded_space(self.action_space, _policy_rng(seed))

    def act(self, obs_batch: np.ndarray) -> np.ndarray:
        """One action per observation (env slot ``i`` is row ``i``), stacked: ``(len(obs_batch), *action_shape)``."""
        return np.stack([np.asarray(space.sample()) for space in self._spaces[: len(obs_batch)]])


class StickyPolicy:
    """Random actions held for a random number of steps: each new action is repeated ``k ~ Geometric(1 / mean)``
    times (``k >= 1``, mean ``mean_repeat``), per env slot. Gives longer coherent motions than `RandomPolicy`,
    the usual trick for exploration data in world-model datasets."""

    def __init__(self, action_space: gymnasium.Space, num_envs: int, mean_repeat: float = 4.0) -> None:
        if mean_repeat < 1:
            raise ValueError(f"mean_repeat must be >= 1 (a repeat lasts at least one step), got {mean_repeat}")
        self.action_space = action_space
        self.mean_repeat = float(mean_repeat)
        self._rngs = [_policy_rng(None) for _ in range(num_envs)]
        self._spaces = [_seeded_space(action_space, rng) for rng in self._rngs]
        self._current: list[Any] = [None] * num_envs
        self._left = [0] * num_envs

    def describe(self) -> dict:
        return {"name": "sticky", "mean_repeat": self.mean_repeat}

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env slot ``i``'s new episode; ``seed`` (the episode's seed) makes its actions reproducible."""
        self._rngs[i] = _policy_rng(seed)
        self._spaces[i] = _seeded_space(self.action_space, self._rngs[i])
        self._current[i] = None
        self._left[i] = 0

    def act(self, obs_batch: np.ndarray) -> np.ndarray:
        """One action per observation (env slot ``i`` is row ``i``), stacked: ``(len(obs_batch), *action_shape)``."""
        for i in range(len(obs_batch)):
            rng = self._rngs[i]
            if self._left[i] == 0:
                self._current[i] = np.asarray(self._spaces[i].sample())
                self._left[i] = int(rng.geometric(1.0 / self.mean_repeat))
            self._left[i] -= 1
        return np.stack(self._current[: len(obs_batch)])


def _sb3_algorithm(path: Path) -> str:
    """Which SB3 class saved ``path``: read from the zip's JSON ``data`` entry (no unpickling)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip ({error})") from None
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if ".dqn." in module:
        return "DQN"
    return "PPO" if "clip_range" in data else "A2C"


class SB3Policy:
    """Actions from a saved Stable-Baselines3 PPO, A2C or DQN model (``model.zip``).

    SB3 zips contain pickles: loading one runs code from it. Only load models you trained yourself.
    Observations are the HWC uint8 frames; SB3 transposes them for a ``CnnPolicy`` trained on `GameEnv`.
    Actions are sampled (``deterministic=False``) one env slot at a time under a torch seed drawn from the slot's
    episode stream, so an episode's actions do not depend on the worker count (DQN's epsilon-greedy coin uses
    numpy's global RNG, which is seeded the same way).
    """

    def __init__(self, path: str | os.PathLike, action_space: gymnasium.Space, num_envs: int,
                 deterministic: bool = False) -> None:
        import stable_baselines3

        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise ValueError(f"SB3 model {self.path} not found")
        self.algorithm = _sb3_algorithm(self.path)
        self.model = getattr(stable_baselines3, self.algorithm).load(self.path, device="cpu")
        if self.model.action_space != action_space:
            raise ValueError(f"SB3 model {self.path} acts in {self.model.action_space}, the game in {action_space}")
        self.deterministic = bool(deterministic)
        self._rngs = [_policy_rng(None) for _ in range(num_envs)]
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._description = {"name": "sb3", "algorithm": self.algorithm, "path": str(self.path), "sha256": digest,
                             "deterministic": self.deterministic}

    def describe(self) -> dict:
        return dict(self._description)

    def reset(self, i: int, seed: int | None = None) -> None:
        self._rngs[i] = _policy_rng(seed)

    def act(self, obs_batch: np.ndarray) -> np.ndarray:
        import torch

        actions = []
        for obs, rng in zip(obs_batch, self._rngs):
            draw = int(rng.integers(2**31 - 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(draw)
                np_state = np.random.get_state()
                np.random.seed(draw)
                try:
                    action, _ = self.model.predict(obs, deterministic=self.deterministic)
                finally:
                    np.random.set_state(np_state)
            actions.append(np.asarray(action))
        return np.stack(actions)


def make_policy(
    policy: str,
    action_space: gymnasium.Space,
    num_envs: int,
    *,
    mean_repeat: float = 4.0,
    sb3_policy_path: str | os.PathLike | None = None,
) -> RandomPolicy | StickyPolicy | SB3Policy:
    """Build a collection policy by name: ``"random"``, ``"sticky"``, ``"sb3:<path>"`` (or ``"sb3"`` with
    ``sb3_policy_path``)."""
    if policy == "random":
        return RandomPolicy(action_space, num_envs)
    if policy == "sticky":
        return StickyPolicy(action_space, num_envs, mean_repeat)
    if policy == "sb3" or policy.startswith("sb3:"):
        path = policy[4:] or sb3_policy_path
        if not path:
            raise ValueError('policy "sb3" needs a model path: "sb3:<path>" or sb3_policy_path=')
        return SB3Policy(path, action_space, num_envs)
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


class _EpisodeBuffer:
    """Step-aligned arrays of one episode under construction (reset frame first, padding action/reward 0)."""

    def __init__(self, frame: np.ndarray, action_shape: tuple[int, ...], action_dtype: np.dtype) -> None:
        self.frames = [np.array(frame, copy=True)]
        self.actions = [np.zeros(action_shape, action_dtype)]
        self.rewards = [0.0]
        self.terminated = [False]
        self.truncated = [False]

    @property
    def transitions(self) -> int:
        return len(self.frames) - 1

    def add(self, action: Any, frame: np.ndarray, reward: float, terminated: bool, truncated: bool) -> None:
        self.actions.append(np.asarray(action))
        self.frames.append(np.array(frame, copy=True))
        self.rewards.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))

    def arrays(self, action_dtype: np.dtype) -> dict[str, np.ndarray]:
        return {
            "frames": np.stack(self.frames),
            "actions": np.stack(self.actions).astype(action_dtype),
            "rewards": np.asarray(self.rewards, dtype=np.float32),
            "terminated": np.asarray(self.terminated, dtype=bool),
            "truncated": np.asarray(self.truncated, dtype=bool),
        }


class ParkingEnv(gymnasium.Wrapper):
    """After its episode ends, further steps return the last frame (reward 0, not done) instead of raising.

    A vector env steps every sub-env together; a slot the collector has no episode left for is parked this way
    rather than reset, because a reset can cost seconds (Crafter generates a world).
    """

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        frame, info = self.env.reset(**kwargs)
        self._last_frame, self._over = frame, False
        return frame, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._over:
            return self._last_frame, 0.0, False, False, {}
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._last_frame, self._over = frame, bool(terminated or truncated)
        return frame, reward, terminated, truncated, info


def _make_parking_env(game: str, frame_size: tuple[int, int], game_kwargs: dict) -> ParkingEnv:
    return ParkingEnv(GameEnv(game, frame_size=frame_size, **game_kwargs))


def make_vector_env(
    game: str, num_envs: int, frame_size: tuple[int, int] = (64, 64), game_kwargs: dict | None = None
) -> gymnasium.vector.VectorEnv:
    """``num_envs`` `ParkingEnv`-wrapped `GameEnv` copies of ``game`` with autoreset disabled: one process
    (`SyncVectorEnv`) for a single env, a subprocess each (`AsyncVectorEnv`) otherwise."""
    make_env = functools.partial(_make_parking_env, game, tuple(frame_size), dict(game_kwargs or {}))
    mode = gymnasium.vector.AutoresetMode.DISABLED
    if num_envs == 1:
        return gymnasium.vector.SyncVectorEnv([make_env], autoreset_mode=mode)
    return gymnasium.vector.AsyncVectorEnv([make_env] * num_envs, autoreset_mode=mode)


def collect(
    game: str,
    out: str | os.PathLike,
    episodes: int,
    policy: str = "sticky",
    num_workers: int = 1,
    frame_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    mean_repeat: float = 4.0,
    max_steps: int | None = None,
    sb3_policy_path: str | os.PathLike | None = None,
    preview: bool = False,
    progress: bool = True,
    game_kwargs: dict | None = None,
) -> dict:
    """Collect episodes of ``game`` into the dataset folder ``out`` until it holds ``episodes`` of them.

    ``max_steps`` ends an episode after that many transitions (marked ``truncated``); ``None`` lets the game end it
    (Crafter: death or its own 10000-step limit). ``num_workers`` sub-envs run side by side (subprocesses when > 1).
    ``game_kwargs`` go to `make_game` (e.g. Crafter's ``area``) and are recorded in ``meta["extra"]``; resuming
    needs the same ones.
    Returns ``episodes_written`` (this run), ``episodes_total``, ``steps`` (transitions written this run),
    ``frames`` (stored frames written, reset frames included), ``env_steps`` (all env steps, unwritten included),
    ``seconds`` (wall time: env start-up, stepping, resets and writing; imports excluded) and ``frames_per_s``
    (``frames / seconds``).
    """
    from tqdm.auto import tqdm

    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    frame_size = (int(frame_size[0]), int(frame_size[1]))
    import tensordict  # noqa: F401  (imported by the first shard write; a slow import, kept out of the timing)

    started = time.perf_counter()
    stats = {"episodes_written": 0, "steps": 0, "frames": 0, "env_steps": 0}

    game_kwargs = dict(game_kwargs or {})
    probe = GameEnv(game, frame_size=frame_size, **game_kwargs)
    action_space, fps, game_name = probe.action_space, int(probe.metadata["render_fps"]), probe.game.name
    probe.close()
    actor = make_policy(policy, action_space, num_workers, mean_repeat=mean_repeat, sb3_policy_path=sb3_policy_path)
    writer = EpisodeWriter(out, game=game_name, frame_size=frame_size, action_space=action_space, fps=fps,
                           policy=actor.describe(), extra={"game_kwargs": game_kwargs})
    first = writer.num_episodes
    todo = max(0, episodes - first)
    if todo == 0:
        return _finish(stats, writer, started)

    num_envs = min(num_workers, todo)
    action_shape, action_dtype = action_array_spec(action_space)
    envs = make_vector_env(game, num_envs, frame_size, game_kwargs)
    bar = tqdm(total=todo * max_steps if max_steps else None, unit="step", disable=not progress,
               desc=f"collect {game_name}")
    next_episode = first  # next episode index to hand to a free env slot
    slot_episode: list[int | None] = [None] * num_envs
    buffers: list[_EpisodeBuffer | None] = [None] * num_envs
    finished: dict[int, dict[str, np.ndarray]] = {}
    next_to_write = first
    try:
        seeds = []
        for i in range(num_envs):
            slot_episode[i] = next_episode
            seeds.append(seed + next_episode)
            actor.reset(i, seed + next_episode)
            next_episode += 1
        obs, _ = envs.reset(seed=seeds)
        buffers = [_EpisodeBuffer(obs[i], action_shape, action_dtype) for i in range(num_envs)]

        while any(j is not None for j in slot_episode):
            actions = actor.act(obs)
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            stats["env_steps"] += num_envs
            reset_mask = np.zeros(num_envs, dtype=bool)
            reset_seeds: list[int | None] = [None] * num_envs
            for i in range(num_envs):
                done = bool(terminated[i] or truncated[i])
                j = slot_episode[i]
                if j is not None:
                    buffer = buffers[i]
                    capped = max_steps is not None and buffer.transitions + 1 >= max_steps
                    buffer.add(actions[i], obs[i], rewards[i], terminated[i], truncated[i] or (capped and not done))
                    bar.update(1)
                    if done or capped:
                        finished[j] = buffer.arrays(action_dtype)
                        done = True
                        slot_episode[i], buffers[i] = None, None
                        if next_episode < episodes:
                            slot_episode[i] = next_episode
                            reset_seeds[i] = seed + next_episode
                            next_episode += 1
                        actor.reset(i, reset_seeds[i])
                if done and slot_episode[i] is not None:
                    reset_mask[i] = True  # a slot with no episode left is parked (`ParkingEnv`), not reset
            while next_to_write in finished:
                episode = finished.pop(next_to_write)
                writer.write(episode, seed=seed + next_to_write, preview=preview)
                stats["episodes_written"] += 1
                stats["steps"] += len(episode["frames"]) - 1
                stats["frames"] += len(episode["frames"])
                next_to_write += 1
                bar.set_postfix(episodes=f"{writer.num_episodes}/{episodes}")
            if reset_mask.any():
                reset_obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                obs = np.where(reset_mask[:, None, None, None], reset_obs, obs)
                for i in np.flatnonzero(reset_mask):
                    buffers[i] = _EpisodeBuffer(obs[i], action_shape, action_dtype)
    finally:
        bar.close()
        envs.close()
    return _finish(stats, writer, started)


def _finish(stats: dict, writer: EpisodeWriter, started: float) -> dict:
    seconds = time.perf_counter() - started
    return {
        **stats,
        "episodes_total": writer.num_episodes,
        "seconds": seconds,
        "frames_per_s": stats["frames"] / seconds if seconds > 0 else 0.0,
    }
