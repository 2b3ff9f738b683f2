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


RESIZE_MODES = ("stretch", "letterbox")


def resize_frame(frame: np.ndarray, frame_size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 frame to ``frame_size = (height, width)``.

    ``mode="stretch"`` scales each axis on its own, so the aspect ratio changes with the frame's shape (VPT's agent
    squashes 640x360 to 128x128 the same way, ``agent.resize_image``); pick a ``frame_size`` of the game's aspect
    ratio (e.g. 64x48 for a 210x160 Atari screen) to keep it. ``mode="letterbox"`` keeps the aspect ratio: the frame
    is scaled to fit and centred on black bars. Shrinking uses box (area) filtering so thin details average instead
    of aliasing; growing is bilinear.
    """
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got dtype {frame.dtype}")
    height, width = frame_size
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    inner = (height, width)
    if mode == "letterbox":
        scale = min(height / frame.shape[0], width / frame.shape[1])
        inner = (max(1, round(frame.shape[0] * scale)), max(1, round(frame.shape[1] * scale)))
    shrinking = frame.shape[0] >= inner[0] and frame.shape[1] >= inner[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(frame).resize((inner[1], inner[0]), resample=resample))
    if inner == (height, width):
        return resized
    out = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - inner[0]) // 2, (width - inner[1]) // 2
    out[top : top + inner[0], left : left + inner[1]] = resized
    return out


def check_frame_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    """Return ``frame_size`` as a ``(height, width)`` tuple of positive ints, or raise ``ValueError``."""
    try:
        height, width = (int(v) for v in frame_size)
    except (TypeError, ValueError):
        raise ValueError(f"frame_size must be (height, width), got {frame_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"frame_size must be positive, got {frame_size!r}")
    return height, width
