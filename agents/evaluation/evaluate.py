"""Held-out open-loop evaluation of a world model against the copy-last-frame baseline, with a plot."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from generator.checkpoint import atomic_write_json
from generator.data import EpisodeDataset
from generator.pretrained import WorldModel
from generator.rollout import evaluate_open_loop
from agents.evaluation.plots import plot_metric


@dataclass
class EvaluateConfig:
    """`nextframe evaluate`: open-loop PSNR of a world model on held-out episodes, beside copy-last-frame."""

    checkpoint: str  # world-model folder
    data: str  # episode dataset folder
    out: str  # writes open_loop.json and open_loop.png here
    context_frames: int = 4  # real frames before the rollout
    horizon: int = 16  # generated frames per window
    windows: int = 64  # evenly spaced windows of the split
    sampler_steps: int | None = None  # denoising steps (default: the model's)
    split: Literal["val", "train", "all"] = "val"
    device: str = "cpu"
    seed: int = 0


def evaluate_checkpoint(config: EvaluateConfig) -> dict:
    """Open-loop PSNR per horizon on `split` windows of `data`; writes `out/open_loop.json` and `.png`."""
    world = WorldModel.from_pretrained(config.checkpoint, device=config.device)
    dataset = EpisodeDataset(config.data, window=config.context_frames + config.horizon, split=config.split)
    started = time.time()
    metrics = evaluate_open_loop(world, dataset, config.context_frames, config.horizon, windows=config.windows,
                                 sampler_steps=config.sampler_steps, seed=config.seed, progress=True)
    metrics.update(
        checkpoint=str(config.checkpoint), data=str(config.data), split=config.split, seconds=time.time() - started,
        beats_copy_last_at=[h for h, m, c in zip(metrics["horizons"], metrics["psnr"], metrics["copy_last_psnr"]) if m > c],
    )
    out = Path(config.out)
    atomic_write_json(out / "open_loop.json", metrics)
    plot_metric(metrics, "psnr", "copy_last_psnr", "PSNR (dB)", out / "open_loop.png",
                labels=(f"model ({metrics['sampler_steps']} steps)", "copy last frame"),
                title="open-loop PSNR on held-out episodes")
    return metrics
