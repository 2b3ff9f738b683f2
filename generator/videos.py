"""Side-by-side videos (real | generated | difference) people would rather watch than read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenate `(T, H, W, 3)` uint8 videos horizontally with a white gap."""
    t, h = videos[0].shape[:2]
    spacer = np.full((t, h, gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, video in enumerate(videos):
        if i:
            parts.append(spacer)
        parts.append(video)
    return np.concatenate(parts, axis=2)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute per-pixel difference, amplified x2 for visibility, as uint8."""
    return np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 2, 0, 255).astype(np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 10, upscale: int = 4) -> Path:
    """Write `(T, H, W, 3)` uint8 frames as .gif or .mp4 (by suffix), nearest-upscaled for viewing."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.repeat(np.repeat(frames, upscale, axis=1), upscale, axis=2)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1)
    return path


@torch.no_grad()
def save_rollout_video(world, dataset, path: str | Path, context_frames: int, horizon: int, rows: int = 4) -> Path:
    """Open-loop rollouts of `rows` validation windows stacked vertically: real | generated | difference."""
    from generator.rollout import open_loop_rollout

    length = context_frames + horizon
    rows = min(rows, len(dataset))
    picks = [int(i * len(dataset) / rows) for i in range(rows)]
    items = [dataset[i] for i in picks]
    frames = torch.stack([it["frames"][:length] for it in items])
    actions = torch.stack([it["actions"][:length] for it in items])
    is_first = torch.stack([it["is_first"][:length] for it in items])
    out = open_loop_rollout(
        world, frames[:, :context_frames], actions[:, :context_frames], actions[:, context_frames:],
        seeds=picks, prompt_has_action=~is_first[:, :context_frames],
        prompt_steps=torch.stack([it["step"][0] for it in items]),
    )
    real = frames[:, context_frames:].numpy()
    dream = out["frames"].numpy()
    grid = np.concatenate([side_by_side(r, d, difference(r, d)) for r, d in zip(real, dream)], axis=1)
    return write_video(path, grid, fps=world.info.fps)
