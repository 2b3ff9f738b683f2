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


def resize_frame(frame: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 frame to ``frame_size = (height, width)``.

    Shrinking uses box (area) filtering so thin details average instead of aliasing; growing is bilinear.
    The aspect ratio is not kept: VPT's agent squashes 640x360 to 128x128 the same way (``agent.resize_image``).
    """
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got dtype {frame.dtype}")
    height, width = frame_size
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    shrinking = frame.shape[0] >= height and frame.shape[1] >= width
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))


def check_frame_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    """Return ``frame_size`` as a ``(height, width)`` tuple of positive ints, or raise ``ValueError``."""
    try:
        height, width = (int(v) for v in frame_size)
    except (TypeError, ValueError):
        raise ValueError(f"frame_size must be (height, width), got {frame_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"frame_size must be positive, got {frame_size!r}")
    return height, width
