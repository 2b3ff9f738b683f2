"""Train the per-frame KL autoencoder on an episode dataset.

Output layout of ``out_dir``::

    checkpoint/          # codec + optimizer/scheduler/RNG state (generator.checkpoint folder); load_codec(out_dir)
    tb/                  # TensorBoard scalars: train/{loss,recon,kl,lr,grad_norm}, eval/psnr
    reconstructions.png  # held-out originals (top row) over their reconstructions (bottom row)
    metrics.json         # what `train_codec` returns

Calling `train_codec` again with the same ``out_dir`` resumes from ``checkpoint/`` exactly (same weights as an
uninterrupted run); raising ``steps`` continues a finished run.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from generator.checkpoint import (
    CONFIG_NAME,
    atomic_write_json,
    capture_rng_state,
    flatten_state,
    load_checkpoint,
    load_state_into,
    restore_rng_state,
    save_checkpoint,
    unflatten_state,
)
from generator.codec import (
    Codec,
    CodecConfig,
    KLAutoencoder,
    fit_latent_statistics,
    float_to_frames,
    frames_to_float,
    psnr,
)

PSNR_CAP_DB = 100.0  # a perfectly reconstructed frame counts as 100 dB instead of +inf in averages


# ----------------------------------------------------------------------------------------------------------
# Pure helpers


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def image_grid(rows: list[torch.Tensor], padding: int = 2, scale: int = 1) -> torch.Tensor:
    """Tile rows of uint8 frames ``(N, H, W, 3)`` into one ``(H', W', 3)`` uint8 image with white gaps."""
    count, height, width, _ = rows[0].shape
    grid = torch.full((len(rows) * (height + padding) + padding, count * (width + padding) + padding, 3), 255,
                      dtype=torch.uint8)
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[top: top + height, left: left + width] = frame.cpu()
    return grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def valid_frames(batch: dict) -> torch.Tensor:
    """The real frames of a dataset item or batch: ``frames[valid]`` flattened to ``(N, H, W, 3)`` uint8."""
    frames = torch.as_tensor(batch["frames"])
    valid = torch.as_tensor(batch["valid"]).bool()
    return frames[valid]  # (N, H, W, 3)


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_codec(codec: Codec, dataset: Any, max_frames: int = 512, batch_size: int = 64) -> dict:
    """Reconstruction PSNR of `codec` on up to `max_frames` frames spread evenly over `dataset`.

    Returns ``{"psnr", "psnr_min", "frames", "originals", "reconstructions"}``; PSNR (dB, on uint8 frames) is
    the mean over frames, each capped at `PSNR_CAP_DB`; the last two entries hold 8 frames spread over the set.
    """
    was_training = codec.training
    codec.eval()
    count = min(max_frames, len(dataset))
    picks = [int(i * len(dataset) / count) for i in range(count)]
    frames = [valid_frames(dataset[i]) for i in picks]
    frames = torch.cat(frames)[:max_frames] if frames else torch.empty(0)
    if len(frames) == 0:
        raise ValueError("evaluate_codec: the dataset has no frames")
    scores, rebuilt = [], []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start: start + batch_size]  # (n, H, W, 3)
        rebuilt.append(float_to_frames(codec.decode(codec.encode(chunk))).cpu())  # (n, H, W, 3)
        scores.append(psnr(chunk, rebuilt[-1]).clamp(max=PSNR_CAP_DB))
    codec.train(was_training)
    scores, rebuilt = torch.cat(scores), torch.cat(rebuilt)
    shown = torch.linspace(0, len(frames) - 1, min(8, len(frames))).round().long()
    return {"psnr": float(scores.mean()), "psnr_min": float(scores.min()), "frames": len(scores),
            "originals": frames[shown], "reconstructions": rebuilt[shown]}


# ----------------------------------------------------------------------------------------------------------
# The loop


def open_splits(dataset_dir: str | Path) -> tuple[Any, Any]:
    """Single-frame views of the dataset's train and val splits (val is None when empty or absent)."""
    from generator.data import EpisodeDataset

    train = EpisodeDataset(dataset_dir, window=1, split="train")
    try:
        val = EpisodeDataset(dataset_dir, window=1, split="val")
    except ValueError:
        val = None
    return train, (val if val is not None and len(val) > 0 else None)


def train_codec(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 1e-3,
    config: CodecConfig | None = None,
    device: str = "auto",
    seed: int = 0,
    log_every: int = 50,
    ckpt_every: int = 500,
    resume: bool = True,
    progress: bool = True,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    eval_frames: int = 512,
    stats_frames: int = 2048,
    datasets: tuple[Any, Any] | None = None,
) -> dict:
    """Train (or resume) a KL autoencoder on the frames of an episode dataset; returns final metrics.

    Args:
        dataset_dir: episode dataset folder (`generator.data.EpisodeDataset`).
        out_dir: run folder (layout in the module docstring).
        config: the codec; default `CodecConfig()`. Its `frame_size` is replaced by the dataset's.
        warmup_steps: linear LR warm-up; default ``min(500, steps // 20)``.
        eval_frames / stats_frames: held-out frames for PSNR; train frames for the latent statistics.
        datasets: ``(train, val)`` objects with the EpisodeDataset interface, instead of opening
            `dataset_dir` (val may be None: PSNR is then measured on train and reported as such).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoint"
    device = resolve_device(device)
    train_data, val_data = datasets if datasets is not None else open_splits(dataset_dir)
    config = config or CodecConfig()
    if config.kind != "kl":
        raise ValueError(f"codec kind {config.kind!r} has nothing to train; only 'kl' codecs are trained")
    config = replace(config, frame_size=tuple(train_data.frame_size))
    warmup_steps = min(500, steps // 20) if warmup_steps is None else warmup_steps

    torch.manual_seed(seed)
    codec = KLAutoencoder(config).to(device)
    optimizer = torch.optim.AdamW(codec.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup_steps, min_lr_ratio))
    data_generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
    step = 0

    if resume and (ckpt_dir / CONFIG_NAME).exists():
        saved, tensors = load_checkpoint(ckpt_dir)
        if CodecConfig.from_dict(saved["codec"]) != config:
            raise ValueError(f"{ckpt_dir} was trained with codec config {saved['codec']}, not "
                             f"{config.to_dict()}; use another out_dir or resume=False")
        load_state_into(codec, tensors["codec"], "codec")
        state = unflatten_state(tensors["state"], saved["state"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_generator.set_state(state["data_generator"])
        noise_generator.set_state(state["noise_generator"])
        restore_rng_state(state["rng"])
        step = int(saved["training"]["step"])

    def save(finished: bool, extra: dict | None = None) -> None:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_generator": data_generator.get_state(),
            "noise_generator": noise_generator.get_state(),
            "rng": capture_rng_state(),
        }
        tensors, skeleton = flatten_state(state)
        training = {"step": step, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                    "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay,
                    "grad_clip": grad_clip, "dataset": str(dataset_dir), "finished": finished, **(extra or {})}
        save_checkpoint(ckpt_dir, config={"codec": config.to_dict(), "training": training, "state": skeleton},
                        tensors={"codec": codec.state_dict(), "state": tensors})

    writer = SummaryWriter(str(out / "tb"), purge_step=step or None)
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="train_codec")
    sums: dict[str, float] = {}
    window_start, started = time.time(), time.time()
    first_step = step
    codec.train()
    while step < steps:
        frames = valid_frames(train_data.sample(batch_size, data_generator))  # (N, H, W, 3)
        images = frames_to_float(frames.to(device))  # (N, 3, H, W)
        losses = codec.training_losses(images, generator=noise_generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(codec.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        for key in ("loss", "recon", "kl"):
            sums[key] = sums.get(key, 0.0) + float(losses[key].detach())
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
        sums["count"] = sums.get("count", 0.0) + 1
        if step % log_every == 0 or step == steps:
            means = {k: v / sums["count"] for k, v in sums.items() if k != "count"}
            for key, value in means.items():
                writer.add_scalar(f"train/{key}", value, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/steps_per_second", sums["count"] / (time.time() - window_start), step)
            bar.set_postfix(loss=f"{means['loss']:.4f}", recon=f"{means['recon']:.4f}")
            last_means, sums, window_start = means, {}, time.time()
        if ckpt_every and step % ckpt_every == 0 and step < steps:
            save(finished=False)
    bar.close()
    train_seconds = time.time() - started

    codec.eval()
    stats_generator = torch.Generator().manual_seed(seed + 2)
    chunks = (valid_frames(train_data.sample(min(256, stats_frames), stats_generator))
              for _ in range(math.ceil(stats_frames / min(256, stats_frames))))
    latent_mean, latent_std = fit_latent_statistics(codec, chunks, max_frames=stats_frames)

    eval_split = "val" if val_data is not None else "train"
    evaluation = evaluate_codec(codec, val_data if val_data is not None else train_data, max_frames=eval_frames)
    writer.add_scalar("eval/psnr", evaluation["psnr"], step)
    grid = image_grid([evaluation["originals"], evaluation["reconstructions"]], scale=2)
    writer.add_image("eval/reconstructions", grid.numpy(), step, dataformats="HWC")
    _write_png(out / "reconstructions.png", grid)
    writer.close()

    metrics = {
        "step": step,
        "steps_this_run": step - first_step,
        "train_seconds": round(train_seconds, 1),
        "params": sum(p.numel() for p in codec.parameters()),
        "latent_shape": list(codec.latent_shape),
        f"{eval_split}_psnr": evaluation["psnr"],
        "eval_split": eval_split,
        "eval_psnr": evaluation["psnr"],
        "eval_psnr_min": evaluation["psnr_min"],
        "eval_frames": evaluation["frames"],
        "latent_mean": latent_mean.tolist(),
        "latent_std": latent_std.tolist(),
        "checkpoint": str(ckpt_dir),
    }
    if step > first_step:
        metrics.update({f"final_{k}": v for k, v in last_means.items()})
    save(finished=True, extra={"eval_psnr": evaluation["psnr"], "eval_split": eval_split})
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _write_png(path: Path, image: torch.Tensor) -> None:
    import imageio.v3 as iio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    iio.imwrite(tmp, image.numpy())
    os.replace(tmp, path)
