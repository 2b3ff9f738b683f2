"""Held-out open-loop evaluation of a world model against the copy-last-frame baseline, with a plot."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from generator.data import EpisodeDataset
from generator.pretrained import WorldModel
from generator.rollout import evaluate_open_loop


def plot_psnr(metrics: dict, path: str | Path, title: str = "open-loop PSNR on held-out episodes") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(metrics["horizons"], metrics["psnr"], "o-", label=f"model ({metrics['sampler_steps']} steps)")
    ax.plot(metrics["horizons"], metrics["copy_last_psnr"], "s--", label="copy last frame")
    ax.set_xlabel("horizon (frames after the real context)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    plot_psnr(metrics, out / "open_loop.png")
    return metrics
