"""Open-loop rollouts from real context, and the metrics that compare them with the real frames.

An open-loop rollout starts the model from P real frames (and the actions that led to them), then generates K
frames driven by the recorded real actions, never seeing real frames again: the standard test of a world model.
"""
from __future__ import annotations

import torch

from generator.metrics import mse, psnr, psnr_from_mse
from generator.sampler import advance_rows, prompt_rows, reads_shown_codes, shown_frames


@torch.no_grad()
def open_loop_rollout(
    world,
    prompt_frames: torch.Tensor,
    prompt_actions: torch.Tensor,
    actions: torch.Tensor,
    seeds: list[int],
    sampler_steps: int | None = None,
    prompt_has_action: torch.Tensor | None = None,
    prompt_steps: torch.Tensor | None = None,
    prompt_unlocked: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Generate K frames per row after a real prompt; `prompt_steps` `(B,)` is the episode step of each row's first
    prompt frame (the frame positions, which a model with a day clock reads; default 0); `prompt_unlocked` `(B, E)`
    the achievements unlocked by the last prompt frame (outcome models with an event head; None: none).

    Args:
        world: a `generator.pretrained.WorldModel`.
        prompt_frames: `(B, P, H, W, 3)` uint8 real frames.
        prompt_actions: `(B, P, ...)` actions that led to them.
        actions: `(B, K, ...)` actions driving the K generated frames.
        seeds: one noise seed per row.
    Returns: frames `(B, K, H, W, 3)` uint8, latents `(B, K, C, h, w)`, reward and termination_logit `(B, K)`,
    reward_logits `(B, K, R)` (reward-class models; else None), from the world's outcome model where it has one.
    """
    dit, codec, sampling = world.dit, world.codec, world.sampling
    device = world.device
    b, p = prompt_frames.shape[:2]
    k = actions.shape[1]
    latents = codec.encode(prompt_frames.to(device))  # (B, P, C, h, w)
    cache = dit.new_cache(b)
    if prompt_has_action is None:
        prompt_has_action = torch.ones(b, p, dtype=torch.bool)
        prompt_has_action[:, 0] = False
    first = [0] * b if prompt_steps is None else [int(q) for q in prompt_steps]
    previous = prompt_rows(dit, codec, sampling, cache, None, latents, prompt_actions.to(device),
                           prompt_has_action.to(device), seeds, sampler_steps, first_positions=first)
    frames, out_latents, rewards, terminations, reward_logits = [], [], [], [], []
    actions = actions.to(device)
    outcome = getattr(world, "outcome", None)
    # the last prompt frame's tiles and pixels as shown (`reads_shown_codes`, `shown_frames`)
    codes = codec.indices(latents[:, -1].float()) if reads_shown_codes(sampling, outcome) else None
    shown = prompt_frames[:, -1].to(device)
    unlocked = prompt_unlocked
    for i in range(k):
        out = advance_rows(dit, codec, sampling, cache, None, actions[:, i], [q + p + i for q in first], seeds,
                           previous, sampler_steps, outcome=outcome, shown_codes=codes, unlocked=unlocked)
        shown = shown_frames(codec, sampling, out, shown, codes)
        previous, codes, unlocked = out["committed"], out["codes"], out.get("unlocked")
        out_latents.append(out["latents"])
        frames.append(shown)
        rewards.append(out["reward"])
        terminations.append(out["termination_logit"])
        if out["reward_logits"] is not None:
            reward_logits.append(out["reward_logits"])
    return {
        "frames": torch.stack(frames, dim=1).cpu(),
        "latents": torch.stack(out_latents, dim=1),
        "reward": torch.stack(rewards, dim=1).cpu(),
        "termination_logit": torch.stack(terminations, dim=1).cpu(),
        "reward_logits": torch.stack(reward_logits, dim=1).cpu() if reward_logits else None,
    }


@torch.no_grad()
def evaluate_open_loop(
    world,
    dataset,
    context_frames: int,
    horizon: int,
    windows: int = 32,
    batch_size: int = 16,
    sampler_steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """PSNR per horizon (1..horizon) of open-loop rollouts on `dataset` windows, and copy-last-frame's.

    `psnr` is the PSNR of the mean squared error over all evaluated frames at that horizon (well defined even when
    a real frame repeats exactly, where copy-last-frame's per-frame PSNR is infinite); `psnr_frame_mean` is the
    mean of per-frame PSNRs capped at 100 dB. `dataset` yields windows of at least `context_frames + horizon` steps (`generator.data.EpisodeDataset`);
    `windows` of them, evenly spaced over the dataset, are used; padding frames are excluded.
    """
    from tqdm.auto import tqdm

    length = context_frames + horizon
    total = len(dataset)
    count_windows = min(windows, total)
    chosen = [int(i * total / count_windows) for i in range(count_windows)]  # evenly spaced, distinct
    model_sum, copy_sum = torch.zeros(horizon), torch.zeros(horizon)  # summed MSE
    model_psnr_sum, copy_psnr_sum = torch.zeros(horizon), torch.zeros(horizon)
    count = torch.zeros(horizon)
    for start in tqdm(range(0, len(chosen), batch_size), disable=not progress, desc="open-loop eval"):
        items = [dataset[i] for i in chosen[start : start + batch_size]]
        frames = torch.stack([it["frames"][:length] for it in items])
        actions = torch.stack([it["actions"][:length] for it in items])
        valid = torch.stack([it["valid"][:length] for it in items])
        is_first = torch.stack([it["is_first"][:length] for it in items])
        if frames.shape[1] < length:
            raise ValueError(f"dataset windows hold {frames.shape[1]} steps; need {length}")
        seeds = [seed * 1_000_003 + chosen[start + j] for j in range(len(items))]
        out = open_loop_rollout(
            world,
            frames[:, :context_frames],
            actions[:, :context_frames],
            actions[:, context_frames:],
            seeds,
            sampler_steps,
            prompt_has_action=~is_first[:, :context_frames],
            prompt_steps=torch.stack([it["step"][0] for it in items]),
        )
        real = frames[:, context_frames:]
        last = frames[:, context_frames - 1 : context_frames].expand_as(real)
        mask = valid[:, context_frames:].float() * valid[:, context_frames - 1 : context_frames].float()
        model_sum += (mse(out["frames"], real) * mask).sum(0)
        copy_sum += (mse(last, real) * mask).sum(0)
        model_psnr_sum += (psnr(out["frames"], real) * mask).sum(0)
        copy_psnr_sum += (psnr(last, real) * mask).sum(0)
        count += mask.sum(0)
    count = count.clamp_min(1)
    return {
        "horizons": list(range(1, horizon + 1)),
        "psnr": psnr_from_mse(model_sum / count).tolist(),
        "copy_last_psnr": psnr_from_mse(copy_sum / count).tolist(),
        "psnr_frame_mean": (model_psnr_sum / count).tolist(),
        "copy_last_psnr_frame_mean": (copy_psnr_sum / count).tolist(),
        "windows": len(chosen),
        "context_frames": context_frames,
        "sampler_steps": sampler_steps or world.sampling.sampler_steps,
    }
