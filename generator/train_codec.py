"""Train the per-frame KL autoencoder on an episode dataset (`generator.run.TrainingRun` runs the loop).

Layout of `out/`: `train_state/` (resumable), `model/` (the codec, with the latent statistics fitted after
training; `load_codec(out)` finds it), `tb/`, `reconstructions.png` (held-out originals over their reconstructions),
`metrics.json`. Re-running with the same `out` resumes exactly; raising `steps` continues a finished run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from generator.checkpoint import atomic_write
from generator.codec import (
    Codec,
    CodecConfig,
    KLAutoencoder,
    fit_latent_statistics,
    float_to_frames,
    frames_to_float,
    save_codec,
)
from generator.metrics import psnr
from generator.pretrained import resolve_device
from generator.run import TrainingRun, lr_schedule

CODEC_FIELDS = ("latent_channels", "downsample", "channels", "res_blocks", "norm_groups", "kl_weight", "recon_loss")


@dataclass
class CodecTrainConfig:
    data: str  # episode dataset folder
    out: str  # run folder: train_state/, model/ (the codec), tb/, reconstructions.png; rerunning resumes it
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int | None = None  # linear warm-up, then cosine decay; None: min(500, steps // 20)
    min_lr_ratio: float = 0.1  # the cosine decays to lr x this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    latent_channels: int = CodecConfig.latent_channels
    downsample: int = CodecConfig.downsample  # spatial factor H/h; one stride-2 stage per factor of 2
    channels: tuple[int, ...] = CodecConfig.channels  # widths, full resolution -> latent; len = log2(downsample) + 1
    res_blocks: int = CodecConfig.res_blocks
    norm_groups: int = CodecConfig.norm_groups
    kl_weight: float = CodecConfig.kl_weight
    recon_loss: Literal["l1", "l2", "l1+l2"] = CodecConfig.recon_loss
    device: str = "auto"  # auto (CUDA when present), cpu, cuda
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    eval_frames: int = 512  # held-out frames for the reconstruction PSNR
    stats_frames: int = 2048  # train frames for the latent statistics
    threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True
    stop_at: int = 0  # end this process at this step (resumable chunks); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time; 0: no limit

    def codec_config(self, frame_size: tuple[int, int]) -> CodecConfig:
        return CodecConfig(kind="kl", frame_size=tuple(frame_size), **{key: getattr(self, key) for key in CODEC_FIELDS})


# ----------------------------------------------------------------------------------------------------------
# Pure helpers


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
    the mean over frames (`generator.metrics.psnr`: a perfect frame counts as 100 dB); the last two entries hold 8
    frames spread over the set.
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
        scores.append(psnr(chunk, rebuilt[-1]))
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


def train_codec(config: CodecTrainConfig, datasets: tuple[Any, Any] | None = None) -> dict:
    """Train (or resume) a KL autoencoder on the frames of an episode dataset; returns final metrics.

    `datasets`: ``(train, val)`` objects with the EpisodeDataset interface instead of opening `config.data` (val may
    be None: PSNR is then measured on train and reported as such).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    device = resolve_device(config.device)
    train_data, val_data = datasets if datasets is not None else open_splits(config.data)
    codec_config = config.codec_config(train_data.frame_size)
    warmup_steps = min(500, config.steps // 20) if config.warmup_steps is None else config.warmup_steps

    torch.manual_seed(config.seed)
    codec = KLAutoencoder(codec_config).to(device)
    optimizer = torch.optim.AdamW(codec.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    scheduler = lr_schedule(optimizer, config.steps, warmup_steps, config.min_lr_ratio)
    data_generator = torch.Generator().manual_seed(config.seed)
    noise_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    run = TrainingRun(out, name="train_codec", config=asdict(config), steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules={"codec": codec}, optimizers={"optimizer": optimizer},
                      schedulers={"scheduler": scheduler},
                      generators={"data_generator": data_generator, "noise_generator": noise_generator},
                      fixed=CODEC_FIELDS)
    first_step = run.step
    codec.train()
    with run:
        while run.running:
            frames = valid_frames(train_data.sample(config.batch_size, data_generator))  # (N, H, W, 3)
            losses = codec.training_losses(frames_to_float(frames.to(device)), generator=noise_generator)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(codec.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            run.end_step({**{key: float(losses[key].detach()) for key in ("loss", "recon", "kl")},
                          "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]})
        if not run.done:
            return run.finish(steps_this_run=run.step - first_step)

        codec.eval()
        stats_generator = torch.Generator().manual_seed(config.seed + 2)
        chunk = min(256, config.stats_frames)
        chunks = (valid_frames(train_data.sample(chunk, stats_generator))
                  for _ in range(math.ceil(config.stats_frames / chunk)))
        latent_mean, latent_std = fit_latent_statistics(codec, chunks, max_frames=config.stats_frames)
        eval_split = "val" if val_data is not None else "train"
        evaluation = evaluate_codec(codec, val_data if val_data is not None else train_data,
                                    max_frames=config.eval_frames)
        run.log({"psnr": evaluation["psnr"]}, "eval")
        grid = image_grid([evaluation["originals"], evaluation["reconstructions"]], scale=2)
        if run.writer is not None:
            run.writer.add_image("eval/reconstructions", grid.numpy(), run.step, dataformats="HWC")
    write_png(out / "reconstructions.png", grid)
    recent = run.history[-config.log_every:]  # the last logging window of this process
    summary = {
        "steps_this_run": run.step - first_step,
        "params": sum(p.numel() for p in codec.parameters()),
        "latent_shape": list(codec.latent_shape),
        f"{eval_split}_psnr": evaluation["psnr"],
        "eval_split": eval_split,
        "eval_psnr": evaluation["psnr"],
        "eval_psnr_min": evaluation["psnr_min"],
        "eval_frames": evaluation["frames"],
        "latent_mean": latent_mean.tolist(),
        "latent_std": latent_std.tolist(),
        "model": str(out / "model"),
        **{f"final_{key}": sum(m[key] for m in recent) / len(recent) for key in (recent[0] if recent else {})},
    }
    run.save()  # the state keeps the fitted statistics too
    save_codec(codec, out / "model", extra_config={"training": {"step": run.step, "config": asdict(config),
                                                               "eval_psnr": evaluation["psnr"],
                                                               "eval_split": eval_split}})
    return run.finish(**summary)


def write_png(path: Path, image: torch.Tensor) -> None:
    """Write a uint8 ``(H, W, 3)`` image as PNG, atomically."""
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, image.numpy(), extension=".png"))
