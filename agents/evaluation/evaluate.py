"""Held-out open-loop evaluation of a world model against the copy-last-frame baseline, with a plot."""
from __future__ import annotations

import json
import time
from pathlib import Path

from generator.data import EpisodeDataset
from generator.pretrained import WorldModel
from generator.rollout import evaluate_open_loop
from agents.evaluation.plots import plot_metric


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    context_frames: int = 4,
    horizon: int = 16,
    windows: int = 64,
    sampler_steps: int | None = None,
    split: str = "val",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Open-loop PSNR per horizon on `split` windows of `data`; writes `out/open_loop.json` and `.png`."""
    world = WorldModel.from_pretrained(checkpoint, device=device)
    dataset = EpisodeDataset(data, window=context_frames + horizon, split=split)
    started = time.time()
    metrics = evaluate_open_loop(
        world, dataset, context_frames, horizon, windows=windows, sampler_steps=sampler_steps, seed=seed, progress=True
    )
    metrics.update(
        checkpoint=str(checkpoint), data=str(data), split=split, seconds=time.time() - started,
        beats_copy_last_at=[h for h, m, c in zip(metrics["horizons"], metrics["psnr"], metrics["copy_last_psnr"]) if m > c],
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_loop.json").write_text(json.dumps(metrics, indent=2))
    plot_metric(metrics, "psnr", "copy_last_psnr", "PSNR (dB)", out / "open_loop.png",
                labels=(f"model ({metrics['sampler_steps']} steps)", "copy last frame"),
                title="open-loop PSNR on held-out episodes")
    return metrics
