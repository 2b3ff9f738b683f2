"""Scripted and saved policies that play a real game or a dream, one independent random stream per env slot.

Every policy honours one interface: ``describe() -> dict`` (recorded in a dataset's meta), ``reset(i, seed)``
(start env slot ``i``'s new episode; the episode seed makes its actions reproducible) and
``act(obs_batch) -> actions`` (one row per env slot). `make_policy` builds one by name.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from generator.actions import space_from_json, space_to_json
from generator.data import EpisodeDataset
from generator.sampler import mix_seed

POLICIES = ("random", "sticky", "explorer", "sb3:<path>")
# Policy streams are seeded with (episode seed, POLICY_STREAM) so they never coincide with the game's own stream.
POLICY_STREAM = 0x5EED
# Whole action streams (`sticky_actions`, `random_actions`) are seeded apart from the collector's and each other's.
STICKY_STREAM = 0xBE4C
RANDOM_STREAM = 0x5A4D


def policy_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else [int(seed), POLICY_STREAM])


def seeded_space(space: gymnasium.Space, rng: np.random.Generator) -> gymnasium.Space:
    space = copy.deepcopy(space)
    space.seed(int(rng.integers(2**31 - 1)))
    return space


class RandomPolicy:
    """Uniform random actions from the action space, one independent stream per env slot."""

    def __init__(self, action_space: gymnasium.Space, num_envs: int) -> None:
        self.action_space = action_space
        self._spaces = [seeded_space(action_space, policy_rng(None)) for _ in range(num_envs)]

    def describe(self) -> dict:
        return {"name": "random"}

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env slot ``i``'s new episode; ``seed`` (the episode's seed) makes its actions reproducible."""
        self._spaces[i] = seeded_space(self.action_space, policy_rng(seed))

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
        self._rngs = [policy_rng(None) for _ in range(num_envs)]
        self._spaces = [seeded_space(action_space, rng) for rng in self._rngs]
        self._current: list[Any] = [None] * num_envs
        self._left = [0] * num_envs

    def describe(self) -> dict:
        return {"name": "sticky", "mean_repeat": self.mean_repeat}

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env slot ``i``'s new episode; ``seed`` (the episode's seed) makes its actions reproducible."""
        self._rngs[i] = policy_rng(seed)
        self._spaces[i] = seeded_space(self.action_space, self._rngs[i])
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


class ExplorerPolicy:
    """A movement-heavy sticky policy: with probability ``move_prob`` the next held action is a move, else any
    other action; moves are held ``k ~ Geometric(1 / move_repeat)`` steps, other actions
    ``k ~ Geometric(1 / other_repeat)``. Covers far more of the world per step than uniform play, so a world model
    sees the view shift often (Crafter: 24 % of sticky-random steps are moves, 60 % here by default).

    ``move_actions`` are indices of a `Discrete` space; the default is Crafter's left/right/up/down.
    """

    def __init__(self, action_space: gymnasium.Space, num_envs: int, move_actions: tuple[int, ...] = (1, 2, 3, 4),
                 move_prob: float = 0.6, move_repeat: float = 3.0, other_repeat: float = 2.0) -> None:
        if not isinstance(action_space, gymnasium.spaces.Discrete):
            raise ValueError(f"the explorer policy needs a Discrete action space, got {action_space}")
        n, start = int(action_space.n), int(action_space.start)
        moves = sorted({int(a) for a in move_actions})
        if not moves or any(not start <= a < start + n for a in moves):
            raise ValueError(f"move_actions {tuple(move_actions)} must be actions of {action_space}")
        if not 0.0 <= move_prob <= 1.0:
            raise ValueError(f"move_prob must be in [0, 1], got {move_prob}")
        if min(move_repeat, other_repeat) < 1:
            raise ValueError(f"repeats must be >= 1, got move_repeat={move_repeat}, other_repeat={other_repeat}")
        self.action_space = action_space
        self.move_actions = np.asarray(moves, dtype=np.int64)
        self.other_actions = np.asarray([a for a in range(start, start + n) if a not in moves], dtype=np.int64)
        self.move_prob = float(move_prob) if len(self.other_actions) else 1.0
        self.move_repeat, self.other_repeat = float(move_repeat), float(other_repeat)
        self._rngs = [policy_rng(None) for _ in range(num_envs)]
        self._current = [0] * num_envs
        self._left = [0] * num_envs

    def describe(self) -> dict:
        return {"name": "explorer", "move_actions": self.move_actions.tolist(), "move_prob": self.move_prob,
                "move_repeat": self.move_repeat, "other_repeat": self.other_repeat}

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env slot ``i``'s new episode; ``seed`` (the episode's seed) makes its actions reproducible."""
        self._rngs[i] = policy_rng(seed)
        self._current[i] = 0
        self._left[i] = 0

    def act(self, obs_batch: np.ndarray) -> np.ndarray:
        """One action per observation (env slot ``i`` is row ``i``): ``(len(obs_batch),)`` int64."""
        for i in range(len(obs_batch)):
            rng = self._rngs[i]
            if self._left[i] == 0:
                move = rng.random() < self.move_prob
                pool, repeat = (self.move_actions, self.move_repeat) if move else (self.other_actions, self.other_repeat)
                self._current[i] = int(rng.choice(pool))
                self._left[i] = int(rng.geometric(1.0 / repeat))
            self._left[i] -= 1
        return np.asarray(self._current[: len(obs_batch)], dtype=np.int64)


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
        self._rngs = [policy_rng(None) for _ in range(num_envs)]
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._description = {"name": "sb3", "algorithm": self.algorithm, "path": str(self.path), "sha256": digest,
                             "deterministic": self.deterministic}

    def describe(self) -> dict:
        return dict(self._description)

    def reset(self, i: int, seed: int | None = None) -> None:
        self._rngs[i] = policy_rng(seed)

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
) -> RandomPolicy | StickyPolicy | ExplorerPolicy | SB3Policy:
    """Build a collection policy by name: ``"random"``, ``"sticky"``, ``"explorer"`` (movement-heavy sticky),
    ``"sb3:<path>"`` (or ``"sb3"`` with ``sb3_policy_path``)."""
    if policy == "random":
        return RandomPolicy(action_space, num_envs)
    if policy == "sticky":
        return StickyPolicy(action_space, num_envs, mean_repeat)
    if policy == "explorer":
        return ExplorerPolicy(action_space, num_envs)
    if policy == "sb3" or policy.startswith("sb3:"):
        path = policy[4:] or sb3_policy_path
        if not path:
            raise ValueError('policy "sb3" needs a model path: "sb3:<path>" or sb3_policy_path=')
        return SB3Policy(path, action_space, num_envs)
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


# ----------------------------------------------------------------------------------------------------------------
# Action streams: `(length, num_envs, ...)` arrays that drive the demo, the benchmark and the evaluations


def sticky_actions(space: gymnasium.Space, num_envs: int, length: int, mean_repeat: float, seed: int) -> np.ndarray:
    """`(length, num_envs, ...)` sticky-random actions, one `StickyPolicy` stream per env.

    Env i's stream is seeded with `mix_seed(seed, i, STICKY_STREAM)`, not the collector's `seed + i`: a dataset
    collected with the sticky policy from the same seed would otherwise replay exactly these actions.
    """
    policy = StickyPolicy(space, num_envs, mean_repeat)
    for i in range(num_envs):
        policy.reset(i, mix_seed(seed, i, STICKY_STREAM))
    placeholder = np.zeros((num_envs, 1))
    return np.stack([policy.act(placeholder) for _ in range(length)])


def random_actions(space: gymnasium.Space, num_envs: int, length: int, seed: int) -> np.ndarray:
    """`(length, num_envs, ...)` uniformly random actions (`space.sample()`, seeded apart from the other streams)."""
    space = space_from_json(space_to_json(space))  # a copy: seeding it leaves the caller's space alone
    space.seed(mix_seed(seed, RANDOM_STREAM))
    return np.stack([np.stack([np.asarray(space.sample()) for _ in range(num_envs)]) for _ in range(length)])


def recorded_actions(dataset: EpisodeDataset, num_envs: int, length: int) -> np.ndarray:
    """`(length, num_envs, ...)` actions of real episodes in order: env i plays episodes i, i+1, ... back to back.

    `actions[0]` of a stored episode is padding (no action led to the reset frame) and is dropped.
    """
    if dataset.num_episodes == 0:
        raise ValueError(f"{dataset.root} holds no episodes")
    cache: dict[int, np.ndarray] = {}

    def episode_actions(k: int) -> np.ndarray:
        if k not in cache:
            cache[k] = dataset.episode(k)["actions"][1:].numpy()
        return cache[k]

    streams = []
    for i in range(num_envs):
        pieces, have, k = [], 0, i
        while have < length:
            actions = episode_actions(k % dataset.num_episodes)
            pieces.append(actions)
            have += len(actions)
            k += 1
        streams.append(np.concatenate(pieces)[:length])
    return np.stack(streams, axis=1)
