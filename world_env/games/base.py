"""The interface every real game behind the dream honours.

A `Game` is deliberately smaller than `gymnasium.Env`: frames in, frames out, one action space. The dream env,
the collector and `scripts/play.py` drive real games and the learned simulator through the same few calls.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np


@runtime_checkable
class Game(Protocol):
    """A real game seen as RGB frames.

    Attributes:
        name: short id recorded in dataset metadata (``"crafter"``, ``"gym:CartPole-v1"``, ...).
        action_space: the game's Gymnasium action space; the dream env exposes the same one.
        frame_size: ``(height, width)`` of every frame returned.
        fps: frames per second the game is meant to be played at (metadata for play and videos).
    """

    name: str
    action_space: gymnasium.Space
    frame_size: tuple[int, int]
    fps: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode; returns the first frame, ``(H, W, 3)`` uint8."""
        ...

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one action; returns ``(frame, reward, terminated, truncated, info)``."""
        ...

    def close(self) -> None:
        ...
