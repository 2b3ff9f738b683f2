"""Teacher training: flow matching with an independent noise level per frame (diffusion forcing), one pass per clip.

Runs as one process on CPU or GPU, or as many under `torchrun` (DDP over gloo on CPU, NCCL on GPU). Exact resume:
the training state (model, EMA, optimizer, scheduler, step, every RNG the loop draws from) is one checkpoint.

Layout of `out/`: `train_state/` (resumable, rewritten atomically every `ckpt_every` steps), `model/` (EMA weights as a
`WorldModel` for `from_pretrained`), `tb/` (TensorBoard), `samples/` (open-loop rollout videos), `metrics.json`.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from generator.checkpoint import load_state_into
from generator.codec import CodecConfig, build_codec, load_codec
from generator.data import EpisodeDataset, open_datasets
from generator.metrics import SHIFTS, SLEEP_MOTION_CLASSES
from generator.model import DiT, dit_config, widen_motion_state
from generator.pretrained import (SamplingConfig, WorldModel, WorldModelInfo, build_prompts, resolve_device,
                                  resolved_folders)
from generator.run import TrainingRun, lr_schedule, update_ema
from generator.sampler import cache_level, context_latents, logit_normal, previous_frames


@dataclass
class TrainConfig:
    data: str  # episode dataset folder (scripts/collect.py)
    out: str  # run folder: train_state/, model/, tb/, samples/; rerunning resumes it
    model: str = "small"  # size preset of generator.model
    codec: str = "pixels"  # "pixels" or the folder of a trained codec (scripts/train_codec.py)
    steps: int = 20_000  # optimizer steps in all
    batch_size: int = 16  # per process
    clip_frames: int = 0  # frames per training clip, at most the model's window (0: 16, or the window if smaller)
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 500  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine decays to lr x this
    grad_clip: float = 1.0  # gradient-norm clip
    ema_decay: float = 0.999  # of the exported (EMA) weights
    noise_mean: float = 0.0  # mean of the logit-normal flow-time distribution (SD3)
    noise_std: float = 1.0  # standard deviation of that logit-normal
    # Context-noise augmentation: a fraction of frames are drawn as "slightly noised context" in
    # [0, context_noise_max], the regime generated context is fed at inference (SamplingConfig.context_noise).
    context_frame_prob: float = 0.3
    # Fraction of the other frames put at flow time exactly 1 (pure noise: predicted from the context alone). A
    # logit-normal puts ~0.2 % of frames above 0.95, so without these a one-step sampler, which starts at 1, would
    # query a level the network was hardly trained at.
    full_noise_prob: float = 0.25
    context_noise_max: float = 0.2  # highest flow time of a context-augmented frame
    context_noise: float = 0.1  # inference level stored with the model
    sampler_steps: int = 8  # default sampler steps stored with the model
    # False: train a one-pass model (`SamplingConfig.commit_pass=False`): every frame of a clip but the last is
    # presented as its final sampling pass at `sampler_steps` would cache it (at flow time `cache_level`, 1.0 for
    # one step), so the keys/values later frames attend to in training are those of that pass at inference.
    commit_pass: bool = True
    outcome_weight: float = 0.1  # weight of the reward + termination losses
    # Codebook models (the "tiles" codec): weight of the per-token cross-entropy on the true code of each frame.
    code_weight: float = 1.0
    # Extra weight of the tokens whose code differs from the previous frame's in the cross-entropy (about 1 token in
    # 10 in Crafter): copying gets the others right for free, and dynamics live in these.
    changed_token_weight: float = 0.0
    # Probability that a sampled window is one holding a rare event (a non-zero reward or a termination); 0 samples
    # windows uniformly. Events are a few percent of Crafter's windows; oversampling lets the reward and termination
    # classes be learned (DIAMOND likewise waits for rare reward classes before training on them).
    event_fraction: float = 0.0
    # Probability that a sampled window is one holding a termination (taken out of `event_fraction`'s share when both
    # are set). Deaths are ~1 rare event in 25 and ~1 step in 200, so even event-rich batches hold one every few
    # batches and the termination head learns never to fire; a share of their own balances the class.
    termination_fraction: float = 0.0
    # Discrete actions whose transitions also count as rare events for `event_fraction` (Crafter: 6, sleep: the dream
    # must learn when a sleep starts and ends, which pays only at the wake-up, many frames later).
    event_actions: tuple[int, ...] = ()
    # Probability that a clip is presented as a commit pass sees it: every frame at a context level (uniform in
    # [0, context_noise_max]). When > 0 the reward and termination losses count only these clips, because the
    # commit pass, which reads a transition's outcome at inference, sees the frame and its predecessors nearly
    # clean; learned on noised frames the outcome head hedges and misses most rewards. 0: every clip's levels
    # are drawn per frame and every transition teaches the outcome head.
    outcome_clip_prob: float = 0.0
    # Train only the DiT modules whose names start with one of these (e.g. "outcome_head,outcome_pool": teach the
    # reward and termination heads of a finished model without touching its frames); empty: train everything.
    train_only: tuple[str, ...] = ()
    # Self-rollout (DIAMOND's autoregressive denoiser training, cheap form): with this probability per batch, the
    # frames before a clip's last one are replaced, from a random point on, by the model's own one-step predictions
    # (no gradient, snapped by the codec), and the last frame is learned from that self-made context.
    self_rollout_prob: float = 0.0
    self_rollout_frames: int = 3  # own predictions before a clip's last frame in a self-rollout
    # Motion-conditioned models (`DiTConfig.motion_classes`, e.g. --model-overrides '{"motion_classes": 5}'): each
    # frame is told how the view moved into it, read off the real frames (`generator.metrics.motion_labels`); this
    # share of frames is told "not given" instead, so the model still works where no motion is drawn.
    motion_dropout: float = 0.1
    seed: int = 0  # initial weights, data order and noise
    device: str = "auto"  # auto (CUDA when present), cpu, cuda
    verify_data: str = "shape"  # dataset check at open: "shape" (sizes, stat calls only) or "checksum" (every byte)
    log_every: int = 50  # TensorBoard scalars every this many steps
    ckpt_every: int = 1000  # save train_state/ and model/ every this many steps (and at the end or a stop)
    eval_every: int = 0  # open-loop PSNR on validation windows (0: only at the end)
    eval_windows: int = 16  # validation windows in an evaluation
    sample_every: int = 0  # rollout videos (0: only at the end)
    progress: bool = True  # progress bar
    stop_at: int = 0  # end this process at this step (resumable chunks, e.g. a short GPU lease); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time (resumable); 0: no limit
    model_overrides: dict = field(default_factory=dict)  # DiTConfig fields over the preset, e.g. {"depth": 4}
    # Fine-tuning, e.g. a two-pass model into a one-pass one with --no-commit-pass; the network built from `model`,
    # `codec` and the data must have the checkpoint's architecture.
    init: str | None = None  # a WorldModel folder whose DiT weights start the run


# ---------------------------------------------------------------------------------------------------------------
# The objective


def sample_noise_levels(shape, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Independent flow time per frame: logit-normal or exactly 1 (pure noise), or for context-augmented frames
    uniform in [0, max]."""
    levels = logit_normal(shape, config.noise_mean, config.noise_std, generator=generator)
    if config.full_noise_prob:
        levels = torch.where(torch.rand(shape, generator=generator) < config.full_noise_prob, 1.0, levels)
    context = torch.rand(shape, generator=generator) < config.context_frame_prob
    low = torch.rand(shape, generator=generator) * config.context_noise_max
    return torch.where(context, low, levels)


def flow_matching_loss(
    model: torch.nn.Module,
    latents: torch.Tensor,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
    code_targets: torch.Tensor | None = None,
    learn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one clip batch: flow MSE on every valid frame + reward MSE + termination BCE (+ code cross-entropy
    against `code_targets` `(B, T, N)` for codebook models). `learn_mask` `(B, T)` restricts the learned frames.

    The flow MSE is the velocity error, or for clean-frame ("x") models the clean-frame error.

    latents: `(B, T, C, h, w)` clean latents; batch holds actions, rewards, terminated, is_first, valid `(B, T, ...)`.
    """
    b, t = latents.shape[:2]
    device = latents.device
    levels = sample_noise_levels((b, t), config, generator).to(device)  # (B, T)
    if not config.commit_pass:
        # One-pass models cache each frame's final sampling pass: context frames are presented at its flow time;
        # only the clip's last frame, which no frame attends to, takes a free level.
        levels[:, :-1] = cache_level(config.sampler_steps)
    outcome_rows = torch.ones(b, dtype=torch.bool, device=device)
    if config.outcome_clip_prob:
        outcome_rows = (torch.rand(b, generator=generator) < config.outcome_clip_prob).to(device)
        committed = (torch.rand((b, t), generator=generator) * config.context_noise_max).to(device)
        levels = torch.where(outcome_rows[:, None], committed, levels)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    s = levels[:, :, None, None, None]
    noisy = (1 - s) * latents + s * noise
    valid = batch["valid"].to(device)
    is_first = batch["is_first"].to(device)
    has_action = ~is_first
    positions = batch["step"].to(device) if "step" in batch else torch.arange(t, device=device)[None].expand(b, t)
    previous, learn = None, valid
    if getattr(model, "module", model).config.previous_frame_input:
        # Each frame also reads its previous frame as it would sit in the cache at inference: re-noised to a
        # context level. The clip's first frame has no previous frame in the clip, so it only serves as context,
        # unless it starts the episode (then it is its own previous frame, as at inference).
        context_levels = (torch.rand((b, t, 1, 1, 1), generator=generator) * config.context_noise_max).to(device)
        committed = context_latents(latents, torch.randn(latents.shape, generator=generator).to(device), context_levels)
        previous = previous_frames(committed, None)
        learn = valid & (torch.arange(t, device=device)[None] > 0) | (valid & is_first)
    if learn_mask is not None:
        learn = learn & learn_mask.to(device)
    told = {}
    classes = getattr(model, "module", model).config.motion_classes
    if classes:
        told["motion"] = batch_motion(batch, config.motion_dropout, generator, classes).to(device)
    out = model(noisy, levels, batch["actions"].to(device), positions, has_action=has_action, valid=valid,
                previous=previous, **told)
    target = noise - latents
    squared = (out.velocity - target) ** 2
    dit_config = getattr(model, "module", model).config
    if dit_config.prediction == "x":
        # Clean-frame models are trained on the clean-frame error, `(v_hat - v)^2 * max(s, x_min)^2 =
        # (x0_hat - x0)^2`: every noise level weighs alike. The velocity error alone would weigh a frame by
        # 1 / s^2, so near-clean (context-augmented) frames would swamp the predictions of the next frame.
        squared = squared * levels.clamp_min(dit_config.x_min_level).square()[:, :, None, None, None]
    per_frame = squared.mean(dim=(2, 3, 4))  # (B, T)
    weight = learn.float()
    flow = (per_frame * weight).sum() / weight.sum().clamp_min(1)
    transition = (learn & has_action & outcome_rows[:, None]).float()  # the outcome of a transition into the frame
    rewards = batch["rewards"].to(device).float()
    if out.reward_logits is not None:
        classes = reward_classes(rewards, getattr(model, "module", model).reward_values)
        reward_error = F.cross_entropy(out.reward_logits.flatten(0, 1), classes.flatten(), reduction="none").view(b, t)
    else:
        reward_error = (out.reward - rewards) ** 2
    reward = (reward_error * transition).sum() / transition.sum().clamp_min(1)
    termination = (
        F.binary_cross_entropy_with_logits(out.termination_logit, batch["terminated"].to(device).float(), reduction="none")
        * transition
    ).sum() / transition.sum().clamp_min(1)
    loss = flow + config.outcome_weight * (reward + termination)
    metrics = {"flow": flow.item(), "reward": reward.item(), "termination": termination.item()}
    if code_targets is not None:
        # Cross-entropy of every learned frame's tokens against the true code; the flow loss alone would only pull
        # the expected tile towards it.
        ce = F.cross_entropy(out.code_logits.flatten(0, 2), code_targets.flatten(), reduction="none").view(b, t, -1)
        token_weight = torch.ones_like(ce)
        if config.changed_token_weight:
            token_weight[:, 1:] += config.changed_token_weight * (code_targets[:, 1:] != code_targets[:, :-1]).float()
        ce = (ce * token_weight).sum(-1) / token_weight.sum(-1)  # (B, T)
        code = (ce * weight).sum() / weight.sum().clamp_min(1)
        loss = loss + config.code_weight * code
        with torch.no_grad():
            hit = (out.code_logits.argmax(-1) == code_targets).float().mean(-1)
            metrics["code"] = code.item()
            metrics["code_accuracy"] = ((hit * weight).sum() / weight.sum().clamp_min(1)).item()
            # Tokens whose code differs from the previous frame's: what copying cannot get right.
            changed = code_targets[:, 1:] != code_targets[:, :-1]  # (B, T-1, N)
            right = (out.code_logits[:, 1:].argmax(-1) == code_targets[:, 1:]) & changed
            counted = changed & (weight[:, 1:, None] > 0)
            if counted.any():
                metrics["code_accuracy_changed"] = ((right & counted).sum() / counted.sum()).item()
    metrics["loss"] = loss.item()
    return loss, metrics


def label_motion(batch: dict, codec, classes: int = len(SHIFTS)) -> dict:
    """`batch` with ``motion`` `(B, T)`: how the view moved into each frame of its real clips
    (`generator.metrics.motion_labels`, in the tile codec's view geometry; with `SLEEP_MOTION_CLASSES` `classes`
    also whether the frame shows the sleeping view), what a motion-conditioned model learns under."""
    from generator.codec import motion_geometry
    from generator.metrics import motion_labels

    return {**batch, "motion": motion_labels(batch["frames"], ~batch["is_first"], classes,
                                             **motion_geometry(codec.config))}


def batch_motion(batch: dict, dropout: float, generator: torch.Generator, classes: int = len(SHIFTS)) -> torch.Tensor:
    """The batch's ``motion`` labels (`label_motion`) with a share `dropout` of the frames told "not given"
    (`classes`, the model's motion classes)."""
    if "motion" not in batch:
        raise ValueError("a motion-conditioned model trains on batches with motion labels: label_motion(batch, codec)")
    motion = batch["motion"]
    if dropout:
        motion = torch.where(torch.rand(motion.shape, generator=generator) < dropout, classes, motion)
    return motion


def reward_classes(rewards: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Class of each reward: the index of the nearest of `values` `(K,)` (ties to the lower value)."""
    return (rewards[..., None] - values.to(rewards.device)).abs().argmin(-1)


@torch.no_grad()
def self_rollout(
    model, codec, sampling, latents: torch.Tensor, batch: dict, frames: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace frames `r .. T-2` of each clip `(B, T, C, h, w)` by the model's own predictions (one sampler step; a
    one-pass model's own steps), generated autoregressively from the real frames before `r` with the real actions
    (`generator.sampler.advance_rows`, so snapped exactly as at inference); `r = T - 1 - frames`. Returns the new
    clips and the mask `(B, T)` of frames still to learn: the real ones before `r` and the last frame, whose target
    stays real (DIAMOND's `num_autoregressive_steps`: the model learns to recover the real next frame from its own
    context).
    """
    from generator.sampler import advance_rows, prompt_rows

    b, t = latents.shape[:2]
    r = t - 1 - frames
    if r < 1:
        raise ValueError(f"self_rollout_frames {frames} leaves no real prompt in clips of {t} frames (at most {t - 2})")
    dit = getattr(model, "module", model)
    seeds = torch.randint(2**62, (b,), generator=generator).tolist()
    actions = batch["actions"].to(latents.device)
    has_action = ~batch["is_first"].to(latents.device)
    was_training = dit.training
    dit.eval()
    cache = dit.new_cache(b)
    # One sampler step is the cheap rollout; a one-pass model caches its frames at its own final step's level
    # (`cache_level`), which its training presents context frames at, so it rolls out with its own steps.
    steps = 1 if sampling.commit_pass else sampling.sampler_steps
    first = batch["step"][:, 0].tolist() if "step" in batch else [0] * b  # each clip's first step in its episode
    previous = prompt_rows(dit, codec, sampling, cache, None, latents[:, :r], actions[:, :r], has_action[:, :r], seeds,
                           sampler_steps=steps, first_positions=first)
    # a motion-conditioned model rolls out under the real clip's motion, which its last frame is then learned with
    motion = batch_motion(batch, 0.0, generator, dit.config.motion_classes).to(latents.device) \
        if dit.config.motion_classes else None
    rolled = latents.clone()
    for i in range(r, t - 1):
        out = advance_rows(dit, codec, sampling, cache, None, actions[:, i], [q + i for q in first], seeds, previous,
                           sampler_steps=steps, motion=None if motion is None else motion[:, i])
        rolled[:, i] = out["latents"]
        previous = out["committed"]
    dit.train(was_training)
    learn = torch.zeros(b, t, dtype=torch.bool, device=latents.device)
    learn[:, :r] = True
    learn[:, -1] = True
    # Episodes that end inside the rolled stretch keep their real frames: a rollout past the end means nothing.
    ended = ~batch["valid"].to(latents.device)[:, : t]
    keep_real = ended.any(dim=1)
    rolled[keep_real] = latents[keep_real]
    learn[keep_real] = True
    return rolled, learn


# ---------------------------------------------------------------------------------------------------------------
# Set-up helpers


def setup_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; initialises the process group if > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, local_rank, world_size


def make_codec(spec: str, frame_size: tuple[int, int]):
    if spec == "pixels":
        return build_codec(CodecConfig(kind="pixels", frame_size=tuple(frame_size)))
    return load_codec(spec)


def rare_window_weights(dataset, config: TrainConfig) -> torch.Tensor | None:
    """Window sampling weights that give windows with a termination `termination_fraction` of the draws, windows with
    another rare event (a non-zero reward) `event_fraction` less that, and the other windows the rest, each group
    drawn uniformly; an empty group's share goes to the rest. None (uniform) when neither fraction is set. With
    `event_actions`, a transition under one of those actions counts as an event too."""
    if not config.event_fraction and not config.termination_fraction:
        return None
    events = torch.from_numpy(dataset.window_events(actions=tuple(config.event_actions)))
    ends = torch.zeros_like(events)
    if config.termination_fraction:
        ends = torch.from_numpy(dataset.window_events(terminations_only=True))
        events &= ~ends
    weights = torch.zeros(len(ends), dtype=torch.float64)
    rest = torch.ones(len(ends), dtype=torch.bool)
    share = 1.0
    for group, fraction in ((ends, config.termination_fraction),
                            (events, max(config.event_fraction - config.termination_fraction, 0.0))):
        if fraction and group.any():
            weights[group] = fraction / int(group.sum())
            rest &= ~group
            share -= fraction
    if not rest.any() or bool(rest.all()):
        return None
    weights[rest] = share / int(rest.sum())
    return weights


# DiT parts a fine-tune (`TrainConfig.init`) may add to a model without them: (config field, its value when absent,
# module name). Each starts as a no-op, so the fine-tune starts from the source model's outputs.
ADDABLE_PARTS = (("day_period", 0, "day_embed"), ("outcome_pool", False, "outcome_pool"),
                 ("motion_classes", 0, "motion"))


def resolve_clip_frames(config: TrainConfig) -> TrainConfig:
    """`config` with `clip_frames` filled in for its model preset (0: 16, or the window if smaller); a clear error
    when the clip would not fit the model's window."""
    window = dit_config(config.model, **config.model_overrides).window_frames
    clip_frames = config.clip_frames or min(16, window)
    if not 1 <= clip_frames <= window:
        raise ValueError(f"clip_frames {clip_frames} must be in [1, {window}] for --model {config.model} (its window "
                         f"holds {window} frames); pass --clip-frames {window} or fewer, or leave it at 0")
    if config.event_actions and not config.event_fraction:
        raise ValueError(f"event_actions {tuple(config.event_actions)} only weight windows through event_fraction; "
                         "give --event-fraction > 0 too")
    if not 0 <= config.motion_dropout <= 1:
        raise ValueError(f"motion_dropout {config.motion_dropout} must be in [0, 1]")
    if not 0 <= config.event_fraction < 1 or not 0 <= config.termination_fraction < 1:
        raise ValueError(f"event_fraction {config.event_fraction} and termination_fraction "
                         f"{config.termination_fraction} must be in [0, 1)")
    if config.event_fraction and config.termination_fraction > config.event_fraction:
        raise ValueError(f"termination_fraction {config.termination_fraction} is part of event_fraction "
                         f"{config.event_fraction}; keep it at most that (or leave event_fraction at 0)")
    if not 0 <= config.outcome_clip_prob <= 1:
        raise ValueError(f"outcome_clip_prob {config.outcome_clip_prob} must be in [0, 1]")
    if config.outcome_clip_prob and not config.commit_pass:
        raise ValueError(f"outcome_clip_prob {config.outcome_clip_prob} presents clips as a commit pass sees them, "
                         "and a one-pass model (--no-commit-pass) has none; leave it at 0 for one-pass models")
    return replace(config, clip_frames=clip_frames)


def patch_size_for(height: int, width: int) -> int:
    """Patch size for `small`/`base` at another latent size: about 64 tokens per frame. `height // 8` when it divides
    the width too; otherwise the divisor of both sides closest to that (a 48x64 frame: 8, not 6)."""
    target = max(1, height // 8)
    if width % target == 0:
        return target
    common = math.gcd(height, width)
    return min((p for p in range(1, common + 1) if common % p == 0), key=lambda p: (abs(p - target), -p))


def build_world_model(config: TrainConfig, dataset: EpisodeDataset) -> WorldModel:
    """The untrained WorldModel for this dataset: codec, DiT sized to its latents and the game's action space."""
    from generator.actions import space_to_json

    codec = make_codec(config.codec, dataset.frame_size)
    channels, h, w = codec.latent_shape
    overrides = dict(latent_channels=channels, latent_size=(h, w), action_space=space_to_json(dataset.action_space))
    if config.model in ("small", "base") and (h, w) != (64, 64):
        overrides["patch_size"] = patch_size_for(h, w)
    if codec.config.kind == "tiles":
        overrides["codebook_size"] = codec.config.codes
        overrides["patch_size"] = codec.config.tile_size
        # the view a motion shifts and the player's tile in it: the codec's geometry
        overrides["motion_view"], overrides["motion_player"] = codec.config.motion_view, codec.config.motion_player
    overrides.update(config.model_overrides)
    dit = DiT(dit_config(config.model, **overrides))
    if dit.config.motion_classes and codec.config.kind != "tiles":
        raise ValueError("a motion-conditioned model (motion_classes > 0) needs the tiles codec: the motion is read "
                         "off the tile grid's view")
    if dit.config.codebook_size:
        if codec.config.kind != "tiles" or dit.config.patch_size != codec.config.tile_size:
            raise ValueError("a codebook head (codebook_size > 0) needs the tile codec with patch_size == tile_size")
        dit.bind_codebook(codec.codebook)
    if config.clip_frames > dit.config.window_frames:
        raise ValueError(f"clip_frames {config.clip_frames} exceeds the model window {dit.config.window_frames}")
    if config.init:
        source = WorldModel.from_pretrained(config.init)
        theirs, ours = source.dit.config.to_dict(), dit.config.to_dict()
        differ = {key: (theirs.get(key), ours[key]) for key in ours if theirs.get(key) != ours[key]}
        state = source.dit.state_dict()
        for key, off, module in ADDABLE_PARTS:
            if key in differ and differ[key][0] == off:
                # Added to a model without it: the part starts as a no-op (zero weights), the rest is the source.
                del differ[key]
                state = {**state, **{k: v for k, v in dit.state_dict().items() if k.startswith(module + ".")}}
        if differ.get("motion_classes") == (len(SHIFTS), SLEEP_MOTION_CLASSES):
            # Shifts widened to shifts into an awake or a sleeping view: both start as the source's shift.
            del differ["motion_classes"]
            state = widen_motion_state(state)
        if differ:
            raise ValueError(f"--init {config.init}: its DiT differs from the one this run builds (init, run): {differ}")
        load_state_into(dit, state, what=f"{config.init}/model.safetensors")
    meta = dataset.meta
    info = WorldModelInfo(
        game=meta["game"],
        game_kwargs=dict(meta.get("extra", {}).get("game_kwargs", {})),
        frame_size=tuple(dataset.frame_size),
        fps=int(meta.get("fps", 15)),
        action_space=space_to_json(dataset.action_space),
        dataset=resolved_folders(config.data),
    )
    sampling = SamplingConfig(sampler_steps=config.sampler_steps, context_noise=config.context_noise,
                              commit_pass=config.commit_pass)
    return WorldModel(dit, codec, sampling, info)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig) -> dict:
    """Train (or resume) a teacher; returns `generator.run.TrainingRun.finish()`'s summary, plus the final
    open-loop evaluation once the run is done. See the module docstring for the output layout."""
    config = resolve_clip_frames(config)  # before anything is written: a bad value leaves no empty folder behind
    rank, local_rank, world_size = setup_distributed()
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main = rank == 0

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    dataset = open_datasets(config.data, window=config.clip_frames, split="train", verify=config.verify_data)
    world = build_world_model(config, dataset).to(device)
    window_weights = rare_window_weights(dataset, config)
    world.prompts = build_prompts(config.data, verify=config.verify_data)
    if world.prompts is None and main:
        print(f"warning: {config.data} has no window of 4 steps without an episode end: the model will carry no "
              "prompt clips (reset the env with options={'prompt': ...})", flush=True)
    model, codec = world.dit, world.codec
    codec.requires_grad_(False)
    if config.train_only:
        names = [name for name, _ in model.named_parameters() if name.startswith(tuple(config.train_only))]
        if not names:
            raise ValueError(f"train_only {tuple(config.train_only)} names no parameter of the model; its modules: "
                             f"{sorted({name.split('.')[0] for name, _ in model.named_parameters()})}")
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in names)
    ema = copy.deepcopy(model).requires_grad_(False)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    scheduler = lr_schedule(optimizer, config.steps, config.warmup_steps, config.min_lr_ratio)
    data_generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    noise_generator = torch.Generator().manual_seed(config.seed * 1000 + 500 + rank)

    def export(step: int) -> None:
        exported = WorldModel(ema, codec, world.sampling, world.info, world.prompts)
        exported.info.training = {"step": step, "train_config": asdict(config)}
        exported.save_pretrained(Path(config.out) / "model")

    run = TrainingRun(config.out, name="train", config=asdict(config), steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules={"model": model, "ema": ema},
                      optimizers={"optimizer": optimizer}, schedulers={"scheduler": scheduler},
                      generators={"data_generator": data_generator, "noise_generator": noise_generator},
                      export=export, rank=rank, world_size=world_size)
    ddp_model = model
    if world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    evaluation = {}
    model.train()
    with run:
        while run.running:
            batch = dataset.sample(config.batch_size, data_generator, weights=window_weights)
            if model.config.motion_classes:
                batch = label_motion(batch, codec, model.config.motion_classes)
            with torch.no_grad():
                latents = codec.encode(batch["frames"].to(device))  # (B, T, C, h, w)
            learn_mask = None
            draw = float(torch.rand((), generator=noise_generator)) if config.self_rollout_prob else 1.0
            if draw < config.self_rollout_prob:
                latents, learn_mask = self_rollout(model, codec, world.sampling, latents, batch,
                                                   config.self_rollout_frames, noise_generator)
            code_targets = codec.indices(latents) if model.config.codebook_size else None
            with autocast:
                loss, metrics = flow_matching_loss(ddp_model, latents, batch, config, noise_generator, code_targets,
                                                   learn_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
            optimizer.step()
            scheduler.step()
            # EMA warm-up: early on the average would still be mostly the (zero-output) initial weights.
            update_ema(ema, model, min(config.ema_decay, (1 + run.step) / (10 + run.step)))
            run.end_step({**metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]})
            if main and config.eval_every and run.step % config.eval_every == 0 and run.running:
                evaluate_and_log(WorldModel(ema, codec, world.sampling, world.info), config, run, Path(config.out))
                model.train()
        if main and run.done:
            exported = WorldModel(ema, codec, world.sampling, world.info, world.prompts)
            evaluation = evaluate_and_log(exported, config, run, Path(config.out), videos=True)
    result = run.finish(**evaluation)
    if world_size > 1:
        dist.barrier()
    return result


def evaluate_and_log(world: WorldModel, config: TrainConfig, run: TrainingRun, out: Path, videos: bool = False) -> dict:
    """Open-loop PSNR on validation windows (context 4, horizon clip-4) and, optionally, a rollout video."""
    from generator.rollout import evaluate_open_loop

    world.eval()
    context = min(4, config.clip_frames // 2)
    horizon = config.clip_frames - context
    try:
        val = open_datasets(config.data, window=config.clip_frames, split="val")
    except ValueError:
        return {}
    if len(val) == 0:
        return {}
    metrics = evaluate_open_loop(world, val, context, horizon, windows=config.eval_windows, seed=config.seed)
    for h, (p_model, p_copy) in enumerate(zip(metrics["psnr"], metrics["copy_last_psnr"]), start=1):
        if h in (1, horizon):
            run.log({f"psnr_h{h}": p_model, f"copy_last_psnr_h{h}": p_copy}, "eval")
    if videos:
        from generator.videos import save_rollout_video

        save_rollout_video(world, val, out / "samples" / f"rollout_step{run.step:07d}.gif", context, horizon)
    return {"eval": metrics}
