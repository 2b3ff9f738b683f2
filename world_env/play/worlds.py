"""The two worlds a play session switches between, behind one interface (`reset`, `step`, `frame`): the real game
(`RealWorld`) and the dream (`DreamWorld`, a `WorldModelEnv`)."""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from world_env.games import Game


class RealWorld:
    """The real game, remembering the last `prompt_frames` frames and actions of its episode to prompt a dream."""

    mode = "real"

    def __init__(self, game: Game, prompt_frames: int, seed: int | None = None):
        self.game = game
        self.history: deque[tuple[np.ndarray, Any]] = deque(maxlen=prompt_frames)
        self.base_seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None
        self.last_seed: int | None = None

    @property
    def started(self) -> bool:
        return self.frame is not None

    def reset(self) -> np.ndarray:
        self.last_seed = None if self.base_seed is None else self.base_seed + self.episodes
        self.episodes += 1
        self.frame = np.asarray(self.game.reset(self.last_seed)).copy()
        self.history.clear()
        self.history.append((self.frame, 0))  # the reset frame has no action (padding, as in datasets)
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated, _ = self.game.step(action)
        self.frame = np.asarray(frame).copy()
        self.history.append((self.frame, action))
        return self.frame, float(reward), bool(terminated), bool(truncated)

    def prompt(self) -> dict[str, np.ndarray]:
        """The last real frames `(P, H, W, 3)` and the actions that led to them `(P,)`, for `WorldModelEnv.reset`."""
        frames, actions = zip(*self.history)
        return {"frames": np.stack(frames), "actions": np.asarray(actions, dtype=np.int64)}


class DreamWorld:
    """The learned simulator (a `WorldModelEnv`), started from the checkpoint's prompt clips or a real clip."""

    mode = "dream"

    def __init__(self, env, seed: int | None = None):
        self.env = env
        self.base_seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None
        self.last_seed: int | None = None

    def reset(self, prompt: dict[str, np.ndarray] | None = None) -> np.ndarray:
        self.last_seed = None if self.base_seed is None else self.base_seed + self.episodes
        self.episodes += 1
        options = None if prompt is None else {"prompt": prompt}
        frame, _ = self.env.reset(seed=self.last_seed, options=options)
        self.frame = np.asarray(frame).copy()
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated, _ = self.env.step(action)
        self.frame = np.asarray(frame).copy()
        return self.frame, float(reward), bool(terminated), bool(truncated)


def prompt_length(world) -> int:
    """Frames a dream started from real play is prompted with: the checkpoint's prompt clip length, else
    ``window_frames - 1`` capped at 4; never more than the window leaves room for."""
    most = world.dit.config.window_frames - 1
    if world.prompts is not None:
        return max(1, min(int(world.prompts["frames"].shape[1]), most))
    return max(1, min(most, 4))


# ----------------------------------------------------------------------------------------------------------
# Segments and recording
