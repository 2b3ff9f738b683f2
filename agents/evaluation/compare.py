"""Dream versus real on held-out episodes: start the dream from a real context, replay the real actions open loop,
and measure per horizon how far the dream drifts from what really happened.

For each of ``windows`` evenly spaced windows of ``context_frames + horizon`` steps from the dataset's ``val`` split,
`generator.rollout.open_loop_rollout` takes the first ``context_frames`` real frames (with the actions that led to
them) and generates ``horizon`` frames driven by the next real actions. Per horizon ``h = 1..horizon``:

- ``psnr``: PSNR of the mean squared error over all windows at ``h`` (`generator.metrics.psnr_from_mse`; well defined
  when a real frame repeats exactly), ``ssim``: mean `ssim`; both also for ``copy_last`` (the last context frame
  held still), the baseline a world model has to beat;
  ``ssim_gap``: the SSIM gap to copy-last paired by window, its mean and the standard error of that mean per
  horizon (whether "above copy-last at h" is more than the windows' spread);
- ``idm_accuracy_dream`` / ``idm_accuracy_real``: how often an inverse dynamics model (`agents.evaluation.idm`, trained on real
  play) recovers the real action from the dream's transition ``(dream[h-1], dream[h])`` versus from the real one
  (``dream[0]`` is the last real context frame). A dream that ignores its actions falls to the IDM's majority rate;
- ``view_shift``: on steps where the real view shift (`generator.metrics.view_shift`) is unambiguous, how often the
  dream's view shifted the same way, where the real view moved and where it stayed: action following read from
  the frames themselves, with no learned model in the loop; also over horizons 1-4 (``view_shift_short``) and split
  by whether the prompt showed the tile each move stepped towards (``view_shift_shown`` / ``view_shift_unshown``,
  `generator.metrics.shown_targets`): a move towards terrain the prompt never showed is decided by what the dream
  had to invent; and on the steps still in step (``view_shift_in_step``, `generator.metrics.in_step`): every
  earlier step's shift agreed, so the dream's player stands where the real one does. Past the first disagreement
  the two stand on different tiles, and the real game's shift says how far the worlds have parted, not whether the
  dream followed the action;
- ``reward`` and ``termination``: precision and recall of the model's outcome head against the real episode.
  A predicted reward counts as positive above ``reward_threshold`` (0.5), a real one likewise: Crafter pays +1 for
  an achievement unlocked and +-0.1 per health point, so 0.5 separates achievements from health changes. A
  predicted termination is a logit above ``termination_threshold`` (0, probability 1/2, the dream env's own rule).
  Real episodes end rarely, so read the ``positives`` counts before the rates (``None`` when undefined).

Frames past an episode's end (window padding) are left out of every metric.

`compare_redrawn_real` scores real Crafter itself the same way, replayed to each prompt's last frame with
everything outside the view redrawn by the game's own generator: a reference that says how much of each figure a
model conditioned on the prompt could get at all.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from generator.metrics import (grey_view, in_step, precision_recall, shift_counts, shown_targets, state_agreement,
                               summarize_shifts, summarize_states, view_shift)
from generator.data import EpisodeDataset
from generator.pretrained import WorldModel
from generator.metrics import mse, psnr_from_mse
from generator.rollout import open_loop_rollout
from agents.evaluation.plots import plot_metric

FVD_MISSING = ("FVD is not implemented: it needs an I3D network and its Kinetics-400 weights, which nextframe "
               "neither ships nor downloads. Run without --i3d.")


# ---------------------------------------------------------------------------------------------------------------
# SSIM


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)``: SSIM's weighting window (Wang et al. 2004, section III-C)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(x**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity of frames ``(..., H, W, 3)`` (uint8, or floats spanning ``data_range``), one value per
    frame ``(...)``.

    Wang et al. 2004: local means, variances and covariance under an 11x11 Gaussian window (sigma 1.5), computed on
    the 'valid' region only (no padding), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``; the SSIM map is averaged over
    space per channel, then over channels. 1 for identical frames. Frames must be at least ``window_size`` wide.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs frames of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    *lead, h, w, c = a.shape
    if min(h, w) < window_size:
        raise ValueError(f"ssim needs frames of at least {window_size}x{window_size}, got {h}x{w}")
    x = a.reshape(-1, h, w, c).permute(0, 3, 1, 2).double()  # (N, C, H, W)
    y = b.reshape(-1, h, w, c).permute(0, 3, 1, 2).double()
    g = gaussian_window(window_size, sigma).to(x.device)
    kernel_h = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)  # (C, 1, k, 1): depthwise, separable
    kernel_w = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_w, groups=c)  # (N, C, H-k+1, W-k+1)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1)).mean(-1).float().reshape(lead)  # per channel, then over channels


# ---------------------------------------------------------------------------------------------------------------
# Metrics


# The first horizons of open-loop play, where the dream still shows the prompt's world: view-shift agreement there
# measures the move rule, later also the world the dream invented where the view moved (`view_shift_short`).
SHORT_HORIZON = 4


def _evenly_spaced(total: int, windows: int) -> list[int]:
    count = min(windows, total)
    return [int(i * total / count) for i in range(count)]


@torch.no_grad()
def compare_dream_real(
    world: WorldModel,
    dataset: EpisodeDataset,
    context_frames: int = 4,
    horizon: int = 16,
    windows: int = 64,
    batch_size: int = 16,
    sampler_steps: int | None = None,
    idm=None,
    reward_threshold: float = 0.5,
    termination_threshold: float = 0.0,
    seed: int = 0,
    video_rows: int = 0,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Metrics per horizon (see the module docstring) and, for ``video_rows`` windows, the frames to watch.

    Returns ``(metrics, clips)``: ``clips = {"real": (R, context + horizon, H, W, 3), "dream": same, the context
    being the real frames}`` as uint8 numpy arrays (empty when ``video_rows == 0``).
    """
    def generate(picked: list[int], batch: dict) -> dict:
        frames, actions = batch["frames"], batch["actions"]
        return open_loop_rollout(world, frames[:, :context_frames], actions[:, :context_frames],
                                 actions[:, context_frames:], [seed * 1_000_003 + i for i in picked], sampler_steps,
                                 prompt_has_action=~batch["is_first"][:, :context_frames],
                                 prompt_steps=batch["step"][:, 0])

    # The view-shift metric knows Crafter's 64x64 geometry (7-px tiles); other games get None.
    info = getattr(world, "info", None)
    reads_view_shift = info is not None and info.game == "crafter" and tuple(info.frame_size) == (64, 64)
    metrics, clips = _compare_windows(dataset, generate, context_frames, horizon, windows, batch_size, idm,
                                      reward_threshold, termination_threshold, reads_view_shift, video_rows,
                                      progress, "dream vs real")
    metrics["sampler_steps"] = sampler_steps or world.sampling.sampler_steps
    return metrics, clips


@torch.no_grad()
def compare_redrawn_real(
    dataset: EpisodeDataset,
    context_frames: int = 4,
    horizon: int = 16,
    windows: int = 64,
    keep_field: bool | None = True,
    seed: int = 0,
    reward_threshold: float = 0.5,
    progress: bool = False,
) -> dict:
    """The metrics of `compare_dream_real` for the real game itself, with what the prompt did not show redrawn: a
    reference for every world model.

    Each window's episode is replayed in real Crafter from its recorded seed and actions up to the prompt's last
    frame (the replay must reproduce the recorded frames), then `CrafterGame.redraw_unseen` redraws everything
    outside the view (``keep_field``: from the episode's own noise field, more than the prompt shows; ``False``:
    from another world's) and the game plays on under the real actions. ``keep_field=None`` only replays (every
    figure then agrees with the real episode: a check of the replay). Its frames, rewards and terminations are
    scored as a dream's would be. Where the real game, redrawn, disagrees with the recorded continuation, the
    disagreement comes from what the prompt did not show, which no model conditioned on the prompt can know.
    Needs a Crafter dataset whose episodes record their seeds (`scripts/collect.py` does).
    """
    from world_env.games import replay_recorded

    if dataset.meta.get("game") != "crafter":
        raise ValueError(f"{dataset.root} holds {dataset.meta.get('game')!r} episodes; the redrawn reference "
                         f"replays Crafter only")

    def generate(picked: list[int], batch: dict) -> dict:
        frames, rewards, ends = [], [], []
        for row, index in enumerate(picked):
            k, start = dataset.window_origin(index)
            game, frame, matched = replay_recorded(dataset, k, start + context_frames - 1)
            if not matched:
                raise ValueError(f"{dataset.root}: replaying episode {dataset.episode_names[k]} from seed "
                                 f"{dataset.episode_seeds[k]} does not give its recorded frame at step "
                                 f"{start + context_frames - 1}; the episode was recorded with another crafter "
                                 f"version or game settings")
            if keep_field is not None:
                game.redraw_unseen(seed * 1_000_003 + index, keep_field=keep_field)
            row_frames, row_rewards, row_ends = [], [], []
            over = False
            for action in batch["actions"][row, context_frames:]:
                reward, terminated = 0.0, False
                if not over:  # past the episode's end the window is padding, left out of every metric
                    frame, reward, terminated, truncated, _ = game.step(int(action))
                    over = terminated or truncated
                row_frames.append(frame)
                row_rewards.append(reward)
                row_ends.append(terminated)
            frames.append(np.stack(row_frames))
            rewards.append(row_rewards)
            ends.append(row_ends)
        ended = torch.tensor(ends)
        return {"frames": torch.from_numpy(np.stack(frames)), "reward": torch.tensor(rewards),
                "termination_logit": torch.where(ended, math.inf, -math.inf)}

    reads_view_shift = tuple(dataset.frame_size) == (64, 64)
    metrics, _ = _compare_windows(dataset, generate, context_frames, horizon, windows, 16, None, reward_threshold,
                                  0.0, reads_view_shift, 0, progress, "redrawn game vs real")
    metrics["redrawn"] = {True: "noise field kept", False: "another world", None: "replay only"}[keep_field]
    return metrics


def _compare_windows(dataset: EpisodeDataset, generate, context_frames: int, horizon: int, windows: int,
                     batch_size: int, idm, reward_threshold: float, termination_threshold: float,
                     reads_view_shift: bool, video_rows: int, progress: bool, desc: str) -> tuple[dict, dict]:
    """The scoring of `compare_dream_real` for any continuation: ``generate(picked, batch)`` gives, for the windows
    ``picked`` (indices into ``dataset``; ``batch`` their stacked items), ``{"frames": (B, horizon, H, W, 3) uint8,
    "reward": (B, horizon), "termination_logit": (B, horizon)}`` after the first ``context_frames`` real frames."""
    from tqdm.auto import tqdm

    length = context_frames + horizon
    if dataset.window is not None and dataset.window < length:
        raise ValueError(f"dataset windows hold {dataset.window} steps; need context + horizon = {length}")
    chosen = _evenly_spaced(len(dataset), windows)
    if not chosen:
        raise ValueError(f"{dataset.root}: the {dataset.split!r} split has no windows of {length} steps")
    video_picks = set(_evenly_spaced(len(chosen), video_rows)) if video_rows else set()
    sums = {key: torch.zeros(horizon, dtype=torch.float64)
            for key in ("mse", "copy_mse", "ssim", "copy_ssim", "idm_dream", "idm_real", "count")}
    reward_pred, reward_real, end_pred, end_real, masks, ssim_gaps = [], [], [], [], [], []
    shifts, short_shifts, shown_shifts, unshown_shifts, in_step_shifts, asleep = [], [], [], [], [], []
    clips = {"real": [], "dream": []}
    for start in tqdm(range(0, len(chosen), batch_size), disable=not progress, desc=desc):
        picked = chosen[start : start + batch_size]
        items = [dataset[i] for i in picked]
        batch = {key: torch.stack([item[key][:length] for item in items]) for key in items[0]}
        frames, actions = batch["frames"], batch["actions"]  # (B, T, H, W, 3), (B, T, ...)
        out = generate(picked, batch)
        real, dream = frames[:, context_frames:], out["frames"]  # (B, K, H, W, 3)
        last = frames[:, context_frames - 1 : context_frames]  # (B, 1, H, W, 3)
        copy_last = last.expand_as(real)
        # A window is cut short only by its episode's end; the step before the horizon must be valid too.
        mask = (batch["valid"][:, context_frames:] & batch["valid"][:, context_frames - 1 : context_frames]).double()
        sums["mse"] += (mse(dream, real) * mask).sum(0)
        sums["copy_mse"] += (mse(copy_last, real) * mask).sum(0)
        window_ssim, window_copy_ssim = ssim(dream, real), ssim(copy_last, real)  # (B, K)
        sums["ssim"] += (window_ssim * mask).sum(0)
        sums["copy_ssim"] += (window_copy_ssim * mask).sum(0)
        ssim_gaps.append(window_ssim.double() - window_copy_ssim.double())
        sums["count"] += mask.sum(0)
        # View shifts from the last context frame on: step h is frame h-1 -> h of the real episode and the dream.
        if reads_view_shift:
            # Each step's shift read once, then scored under several masks (`shift_counts`).
            real_shift, real_clear = view_shift(torch.cat([last, real[:, :-1]], 1), real)
            dream_shift, _ = view_shift(torch.cat([last, dream[:, :-1]], 1), dream)
            counted = mask.bool()
            shifts.append(shift_counts(real_shift, real_clear, dream_shift, counted))
            early = counted.clone()
            early[:, SHORT_HORIZON:] = False
            short_shifts.append(shift_counts(real_shift, real_clear, dream_shift, early))
            # Split by whether the prompt showed the terrain that decided each step (`shown_targets`).
            shown = shown_targets(real_shift, real_clear, actions[:, context_frames:])
            for kept, into in ((shown, shown_shifts), (~shown, unshown_shifts)):
                into.append(shift_counts(real_shift, real_clear, dream_shift, counted & kept))
            together = in_step(real_shift, real_clear, dream_shift, actions[:, context_frames:])
            in_step_shifts.append(shift_counts(real_shift, real_clear, dream_shift, counted & together))
            asleep.append(state_agreement(grey_view(real), grey_view(dream), mask.bool()))  # a sleeping player
        if idm is not None:
            device = next(idm.parameters()).device
            labels = idm.labels(actions[:, context_frames:].reshape(-1, *actions.shape[2:]))  # (B*K, k)
            for name, video in (("idm_dream", dream), ("idm_real", real)):
                before = torch.cat([last, video[:, :-1]], dim=1)  # (B, K, H, W, 3)
                logits = idm(before.flatten(0, 1).to(device), video.flatten(0, 1).to(device))
                ok = torch.stack([l.argmax(-1).cpu() == labels[:, j] for j, l in enumerate(logits)], -1).all(-1)
                sums[name] += (ok.view(-1, horizon).double() * mask).sum(0)
        reward_pred.append(out["reward"] > reward_threshold)
        reward_real.append(batch["rewards"][:, context_frames:] > reward_threshold)
        end_pred.append(out["termination_logit"] > termination_threshold)
        end_real.append(batch["terminated"][:, context_frames:])
        masks.append(mask.bool())
        for j in range(len(picked)):
            if start + j in video_picks:
                clips["real"].append(frames[j].numpy())
                clips["dream"].append(torch.cat([frames[j, :context_frames], dream[j]]).numpy())

    empty = sums["count"] == 0  # horizons no window reached (every episode ended before): NaN, null in JSON
    count = sums["count"].masked_fill(empty, float("nan"))
    mask = torch.cat(masks)
    # The SSIM gap to copy-last per horizon, paired by window, with the standard error of its mean over windows.
    gaps, counted = torch.cat(ssim_gaps).masked_fill(~mask, 0.0), mask.double().sum(0)
    gap_mean = gaps.sum(0) / counted  # NaN where no window reached the horizon
    gap_var = ((gaps - gap_mean) ** 2 * mask).sum(0) / (counted - 1).clamp_min(1)
    gap_stderr = (gap_var / counted).sqrt().masked_fill(counted < 2, float("nan"))
    rp, rr, ep, er = (torch.cat(x) for x in (reward_pred, reward_real, end_pred, end_real))

    def events(predicted: torch.Tensor, real: torch.Tensor) -> dict:
        per_horizon = [precision_recall(predicted[:, h][mask[:, h]], real[:, h][mask[:, h]]) for h in range(horizon)]
        return {**precision_recall(predicted[mask], real[mask]),
                "per_horizon": {key: [p[key] for p in per_horizon] for key in ("precision", "recall", "positives")}}

    metrics = {
        "horizons": list(range(1, horizon + 1)),
        "psnr": psnr_from_mse(sums["mse"] / count).tolist(),
        "copy_last_psnr": psnr_from_mse(sums["copy_mse"] / count).tolist(),
        "ssim": (sums["ssim"] / count).tolist(),
        "copy_last_ssim": (sums["copy_ssim"] / count).tolist(),
        "ssim_gap": {"mean": gap_mean.tolist(), "stderr": gap_stderr.tolist()},
        "frames_per_horizon": sums["count"].long().tolist(),
        "view_shift": summarize_shifts(*shifts) if shifts else None,
        "view_shift_short": summarize_shifts(*short_shifts) if short_shifts else None,
        "view_shift_shown": summarize_shifts(*shown_shifts) if shown_shifts else None,
        "view_shift_unshown": summarize_shifts(*unshown_shifts) if unshown_shifts else None,
        "view_shift_in_step": summarize_shifts(*in_step_shifts) if in_step_shifts else None,
        "asleep": summarize_states(*asleep) if asleep else None,
        "reward": {"threshold": reward_threshold, **events(rp, rr)},
        "termination": {"threshold_logit": termination_threshold, **events(ep, er)},
        "windows": len(chosen),
        "context_frames": context_frames,
    }
    if idm is not None:
        dream_acc, real_acc = sums["idm_dream"] / count, sums["idm_real"] / count
        total = float(sums["count"].sum())
        metrics["idm"] = {
            "accuracy_dream": dream_acc.tolist(),
            "accuracy_real": real_acc.tolist(),
            "mean_accuracy_dream": float(sums["idm_dream"].sum()) / total if total else None,
            "mean_accuracy_real": float(sums["idm_real"].sum()) / total if total else None,
            "majority_accuracy": idm.training_report.get("val", {}).get("majority_accuracy")
            if hasattr(idm, "training_report") else None,
        }
    else:
        metrics["idm"] = None
    stacked = {key: np.stack(value) if value else np.zeros((0,), np.uint8) for key, value in clips.items()}
    return metrics, stacked


# ---------------------------------------------------------------------------------------------------------------
# Files: JSON, plots, videos


def write_comparison_videos(clips: dict, out: Path, fps: int, context_frames: int) -> list[Path]:
    """``compare.mp4`` and ``compare.gif``: one row per window, real | dream | difference (x2), context included
    (its frames are the real ones in both columns, so the difference starts black)."""
    from generator.videos import difference, side_by_side, write_video

    if len(clips["real"]) == 0:
        return []
    rows = [side_by_side(real, dream, difference(real, dream)) for real, dream in zip(clips["real"], clips["dream"])]
    grid = np.concatenate(rows, axis=1)  # (T, R*H, W', 3)
    return [write_video(out / "compare.mp4", grid, fps=fps), write_video(out / "compare.gif", grid, fps=fps)]


def json_safe(obj):
    """JSON has no NaN or infinity (a horizon no window reached): store them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class CompareConfig:
    """`compare_checkpoint` settings; `scripts/compare.py` maps its flags onto these fields."""

    checkpoint: str
    data: str
    out: str
    context_frames: int = 4
    horizon: int = 16
    windows: int = 64
    batch_size: int = 16
    split: str = "val"
    sampler_steps: int | None = None
    idm: str | None = None  # folder of an IDM saved by agents.evaluation.idm.train_idm
    i3d: str | None = None  # local I3D weights for FVD (not implemented)
    reward_threshold: float = 0.5
    termination_threshold: float = 0.0
    video_rows: int = 4
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def compare_checkpoint(config: CompareConfig) -> dict:
    """Run `compare_dream_real` for a saved world model and write ``compare.json``, ``psnr.png``, ``ssim.png``,
    ``idm_accuracy.png`` (with an IDM), ``compare.mp4`` and ``compare.gif`` into ``config.out``."""
    if config.i3d is not None:
        raise NotImplementedError(FVD_MISSING)
    from agents.evaluation.idm import load_idm

    world = WorldModel.from_pretrained(config.checkpoint, device=config.device)
    dataset = EpisodeDataset(config.data, window=config.context_frames + config.horizon, split=config.split)
    if tuple(dataset.frame_size) != tuple(world.info.frame_size):
        raise ValueError(f"{config.data} holds {dataset.frame_size} frames, the model makes {world.info.frame_size}")
    idm = load_idm(config.idm, device=config.device) if config.idm else None
    if idm is not None and idm.action_space != dataset.action_space:
        raise ValueError(f"the IDM predicts {idm.action_space}, the dataset acts in {dataset.action_space}")
    if idm is not None and tuple(idm.frame_size) != tuple(dataset.frame_size):
        raise ValueError(f"the IDM reads {idm.frame_size} frames, the dataset holds {dataset.frame_size}")
    started = time.time()
    metrics, clips = compare_dream_real(
        world, dataset, config.context_frames, config.horizon, config.windows, config.batch_size,
        config.sampler_steps, idm, config.reward_threshold, config.termination_threshold, config.seed,
        config.video_rows, config.progress,
    )
    metrics.update(
        checkpoint=str(config.checkpoint), data=str(config.data), split=config.split,
        idm_checkpoint=config.idm, seconds=time.time() - started,
        fvd=None, fvd_note="not computed: " + FVD_MISSING,
        beats_copy_last_psnr_at=[h for h, m, c in zip(metrics["horizons"], metrics["psnr"], metrics["copy_last_psnr"])
                                 if m > c],
        config=asdict(config),
    )
    if idm is None:
        metrics["idm_note"] = "missing: pass --idm DIR (an IDM trained with scripts/train_idm.py) for action accuracy"
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(json_safe(metrics), indent=2))
    plot_metric(metrics, "psnr", "copy_last_psnr", "PSNR (dB)", out / "psnr.png")
    plot_metric(metrics, "ssim", "copy_last_ssim", "SSIM", out / "ssim.png")
    if idm is not None:
        plot_metric(metrics, "idm.accuracy_dream", "idm.accuracy_real", "IDM action accuracy",
                    out / "idm_accuracy.png", labels=("on dream frames", "on real frames"))
    write_comparison_videos(clips, out, world.info.fps, config.context_frames)
    return metrics
