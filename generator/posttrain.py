"""AAPT-style one-step adversarial post-training with student forcing (Seaweed-APT2, arXiv 2506.09350 Sec. 2.2-2.3).

The generator (initialised from the distilled consistency student) makes every frame in one forward pass from
pure noise, `x = noise - v(noise, s=1)`: the one-step case of both samplers in `generator.sampler`.

- **Student forcing** (AAPT Sec. 2.3): the generator starts from real prompt frames and then rolls out on its own
  outputs with the KV cache exactly as at inference (`generate_frames` + `commit_frames`): each generated frame is
  re-noised to `context_noise` and committed by one pass that writes its keys/values. The recycled frame is
  detached (AAPT: stability), but the commit pass runs with gradients, so gradients flow through the KV cache
  (`GradKVCache`) into every parameter. DiTs with input recycling (`DiTConfig.previous_frame_input`) also read the
  last committed frame, detached, as at inference. `student_forcing=False` is AAPT's failing teacher-forcing ablation
  (App. D): real frames are committed instead, and the discriminator judges each generated frame after the real past.
- **Long rollouts** (AAPT Sec. 2.4): the rollout is cut into segments of `segment_frames`; after each segment its
  loss is back-propagated (gradient accumulation) and the cache is detached; the discriminator sees each segment
  with `overlap_frames` preceding frames as context.
- **Discriminator**: a copy of the causal backbone (the teacher by default) with per-frame logit heads
  (`generator.adversarial.FrameDiscriminator`), scoring every frame of a segment in one parallel pass on inputs
  re-noised to per-frame flow levels `U(0, 1)` (AAPT: unshifted).
- **Loss** (R3GAN relativistic pairing): `L_G = softplus(D(real) - D(fake))`, `L_D = softplus(D(fake) - D(real))`
  paired per frame (same prompt, actions, re-noising), plus approximate R1/R2 `lambda ||D(x) - D(x + sigma n)||^2`
  with AAPT's `sigma = 0.1`, `lambda = 1000` (`lambda sigma^2 = 10` is the weight of the gradient penalty it
  approximates, which does not depend on model size, so we keep the paper's values). RMSProp, alpha 0.9.

Scale choices for small models (documented, not from the paper): `lr = 1e-5` (paper 3e-6 at 8B, batch 256); real
windows of `prompt_frames + rollout_frames` steps pair every generated frame with the real frame at its position
(frames past an episode's end are masked out of the losses).

Small-compute options (off by default; not in the paper): `disc_warmup_steps` trains only the discriminator for
its first steps, so the generator's first updates follow a discriminator that already separates real from
generated rather than random heads (what happens without it: docs/results.md);
`disc_head_lr` gives the freshly initialised heads their own learning rate; `train_frames` trains a random
stretch of whole segments of a long rollout and rolls out the frames before it without gradients, so every step
reaches late positions — where a one-step generator drifts — for the price of the stretch; `disc_steps` gives the
discriminator that many updates per generator update (the extra ones are warm-up-style steps on fresh batches), for
when the generator keeps fooling a discriminator that could separate its frames (docs/results.md, the probe).

Layout of `out/`: `train_state/` (resumable), `model/` (the generator as a `WorldModel`, 1-step sampler), `tb/`,
`metrics.json`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from generator.adversarial import (
    FrameDiscriminator,
    as_rows,
    load_two_pass_model,
    outcome_loss,
    parse_blocks,
    recycled_input,
    recycles,
)
from generator.data import EpisodeDataset
from generator.grad_kv_cache import GradKVCache
from generator.model import DiT, DiTOutput
from generator.pretrained import WorldModel, resolve_device
from generator.run import TrainingRun
from generator.sampler import previous_frames


@dataclass
class PosttrainConfig:
    data: str
    generator: str  # WorldModel folder the generator starts from (the distilled student, scripts/distill.py)
    out: str
    discriminator: str = ""  # WorldModel folder the discriminator backbone starts from (the teacher); "": generator's
    steps: int = 500
    batch_size: int = 4
    prompt_frames: int = 1  # real frames the rollout starts from (AAPT: the first frame)
    rollout_frames: int = 8  # generated frames per rollout (may exceed the model window)
    segment_frames: int = 4  # frames per segment: loss back-propagated and KV cache detached after each
    train_frames: int = 0  # frames trained per step, a random stretch of whole segments; earlier ones are rolled
    # out without gradients (cheap burn-in to late positions), later ones not at all; 0: every rollout frame
    overlap_frames: int = 1  # preceding frames the discriminator sees before each segment
    student_forcing: bool = True  # False: teacher-forcing ablation (real frames committed, real-context judging)
    lr: float = 1e-5
    disc_lr: float = 1e-5
    disc_head_lr: float = 0.0  # learning rate of the freshly initialised logit heads; 0: disc_lr
    disc_warmup_steps: int = 0  # first steps train only the discriminator (the generator's rollout runs, frozen)
    disc_steps: int = 1  # discriminator updates per generator update; the extra ones on fresh batches, generator frozen
    rmsprop_alpha: float = 0.9
    r1_sigma: float = 0.1
    r1_lambda: float = 1000.0
    grad_clip: float = 1.0
    disc_blocks: str = "all"  # backbone blocks whose pooled tokens feed the logit heads
    train_disc_backbone: bool = True  # AAPT trains the whole discriminator; False: heads only
    outcome_weight: float = 0.1  # keep the reward/termination head trained (teacher-forced pass on the real window)
    regression_weight: float = 0.0  # + this x MSE of each trained generated frame to the recorded frame at its
    # position, for rollout frames before `regression_frames` (a rollout regression: pulls a drifting student-forced
    # rollout back to the recorded trajectory, which the real actions make predictable for a while); 0: adversarial
    # only, as AAPT
    regression_frames: int = 32  # rollout frames the regression applies to (later ones have left the recording)
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    ckpt_every: int = 100
    progress: bool = True
    stop_at: int = 0  # end this process at this step (resumable chunks); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time (a short GPU lease); 0: no limit

    def __post_init__(self):
        if min(self.prompt_frames, self.rollout_frames, self.segment_frames) < 1:
            raise ValueError("prompt_frames, rollout_frames and segment_frames must be >= 1")
        if self.train_frames and (self.train_frames % self.segment_frames or self.train_frames > self.rollout_frames):
            raise ValueError(f"train_frames ({self.train_frames}) must be a multiple of segment_frames "
                             f"({self.segment_frames}) and at most rollout_frames ({self.rollout_frames})")
        if self.disc_warmup_steps < 0:
            raise ValueError("disc_warmup_steps must be >= 0")
        if self.regression_weight < 0 or self.regression_frames < 0:
            raise ValueError("regression_weight and regression_frames must be >= 0")
        if self.disc_steps < 1:
            raise ValueError(f"disc_steps must be >= 1, got {self.disc_steps}")


# ---------------------------------------------------------------------------------------------------------------
# The rollout, as at inference but differentiable


def one_step_frames(dit: DiT, cache: GradKVCache, actions: torch.Tensor, positions: torch.Tensor, noise: torch.Tensor,
                    previous: torch.Tensor | None = None) -> torch.Tensor:
    """One new frame per row in one pass, `noise - v(noise, s=1)` (`generate_frames` with one step), with gradients.

    `previous` `(B, C, h, w)`: the last committed latent, read by DiTs with input recycling."""
    ones = torch.ones(noise.shape[0], 1, device=noise.device)
    recycled = recycled_input(dit, None if previous is None else previous[:, None])
    out = dit(noise[:, None], ones, actions[:, None], positions[:, None], cache=cache, **recycled)
    return noise - out.velocity[:, 0]


def commit(dit: DiT, cache: GradKVCache, latents, actions, positions, noise, context_noise: float, has_action=None,
           previous: torch.Tensor | None = None) -> tuple[DiTOutput, torch.Tensor]:
    """`commit_frames` with gradients: re-noise `(B, T, C, h, w)` to `context_noise`, write keys/values, commit.

    Returns the model output and the committed (re-noised) latents; `previous` as in `one_step_frames`."""
    level = torch.full(positions.shape, float(context_noise), device=latents.device)
    noisy = (1 - context_noise) * latents + context_noise * noise
    out = dit(noisy, level, actions, positions, has_action=has_action, cache=cache, write_cache=True,
              **recycled_input(dit, previous_frames(noisy, previous)))
    cache.commit(None, positions)
    return out, noisy


def rollout_segments(
    dit: DiT,
    cache: GradKVCache,
    prompt: torch.Tensor,
    prompt_actions: torch.Tensor,
    prompt_has_action: torch.Tensor | None,
    actions: torch.Tensor,
    start_noise: torch.Tensor,
    commit_noise: torch.Tensor,
    prompt_noise: torch.Tensor,
    context_noise: float,
    segment_frames: int,
    recycled: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Student-forced one-step rollout, yielding `(start, frames (B, n, C, h, w))` per segment, with gradients.

    Commits the real `prompt` `(B, P, C, h, w)` (re-noised with `prompt_noise`), then makes K = `actions.shape[1]`
    frames: frame i from `start_noise[:, i]` at position P + i, committed (detached) with `commit_noise[:, i]`;
    `recycled` `(B, K, C, h, w)` commits those frames instead (teacher forcing). The caller back-propagates a
    segment's loss before asking for the next one; the cache is detached in between. Given the noise of
    `generator.sampler.frame_noise`, the frames equal `generator.rollout.open_loop_rollout` with one step.
    """
    b, p = prompt.shape[:2]
    k = actions.shape[1]
    device = prompt.device
    _, committed = commit(dit, cache, prompt, prompt_actions, torch.arange(p, device=device)[None].repeat(b, 1),
                          prompt_noise, context_noise, prompt_has_action)
    previous = committed[:, -1].detach()  # input recycling reads the last committed frame, detached (AAPT)
    for start in range(0, k, segment_frames):
        frames = []
        for i in range(start, min(k, start + segment_frames)):
            positions = torch.full((b,), p + i, device=device)
            x = one_step_frames(dit, cache, actions[:, i], positions, start_noise[:, i], previous)
            frames.append(x)
            source = x.detach() if recycled is None else recycled[:, i]
            _, committed = commit(dit, cache, source[:, None], actions[:, i, None], positions[:, None],
                                  commit_noise[:, i, None], context_noise, previous=previous)
            previous = committed[:, 0].detach()
        yield start, torch.stack(frames, dim=1)
        cache.detach_()


# ---------------------------------------------------------------------------------------------------------------
# Discriminating one segment


class SegmentWindow(NamedTuple):
    """What the discriminator sees around one segment: `c` context frames then the `n` segment frames."""

    real: torch.Tensor  # (B, c + n, C, h, w) real frames at these positions
    fake_context: torch.Tensor  # (B, c, C, h, w) context of the generated frames (student forcing: generated)
    actions: torch.Tensor  # (B, c + n, ...)
    positions: torch.Tensor  # (B, c + n)
    has_action: torch.Tensor  # (B, c + n)
    valid: torch.Tensor  # (B, c + n)
    levels: torch.Tensor  # (B, c + n) flow levels the discriminator re-noises to
    noise: torch.Tensor  # (B, c + n, C, h, w)
    context: int


def renoise(x: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    lv = levels[:, :, None, None, None]
    return (1 - lv) * x + lv * noise


def score_real(disc: FrameDiscriminator, w: SegmentWindow, segment: torch.Tensor) -> tuple[torch.Tensor, GradKVCache]:
    """Logits `(B, n)` of real segment frames after their real context, and the cache of that window."""
    c = w.context
    frames = torch.cat([w.real[:, :c], segment], dim=1)
    cache = GradKVCache.for_model(disc.backbone, frames.shape[0], slots=frames.shape[1])
    logits = disc(renoise(frames, w.levels, w.noise), w.levels, w.actions, w.positions, has_action=w.has_action,
                  valid=w.valid, cache=cache, write_cache=True,
                  **recycled_input(disc.backbone, previous_frames(frames, None)))
    cache.commit(None, w.positions, w.valid)
    return logits[:, c:], cache


def score_fake(disc: FrameDiscriminator, w: SegmentWindow, segment: torch.Tensor, real_cache: GradKVCache | None,
               student_forcing: bool) -> torch.Tensor:
    """Logits `(B, n)` of generated segment frames, each judged with the past it was generated from.

    Student forcing: one parallel pass over the generated context and segment. Teacher forcing (AAPT App. D): each
    frame on its own row after the real window's cached frames before it.
    """
    c = w.context
    if student_forcing:
        frames = torch.cat([w.fake_context, segment], dim=1)
        return disc(renoise(frames, w.levels, w.noise), w.levels, w.actions, w.positions, has_action=w.has_action,
                    valid=w.valid, **recycled_input(disc.backbone, previous_frames(frames, None)))[:, c:]
    b, n = segment.shape[:2]
    tail = slice(c, None)
    real_previous = previous_frames(w.real, None)[:, tail]  # what each frame was generated after
    logits = disc(
        as_rows(renoise(segment, w.levels[:, tail], w.noise[:, tail])), as_rows(w.levels[:, tail]),
        as_rows(w.actions[:, tail]), as_rows(w.positions[:, tail]), has_action=as_rows(w.has_action[:, tail]),
        cache=real_cache, rows=torch.arange(b, device=segment.device).repeat_interleave(n),
        **recycled_input(disc.backbone, as_rows(real_previous)),
    )  # (B*n, 1)
    return logits.reshape(b, n)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    return (x * mask).sum() / mask.sum().clamp_min(1)


def relativistic_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, mask: torch.Tensor):
    """`-f_G(D(fake) - D(real))` with `f_G(x) = -log(1 + e^-x)`: softplus(D(real) - D(fake)), per pair."""
    return masked_mean(F.softplus(real_logits - fake_logits), mask)


def relativistic_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, mask: torch.Tensor):
    """`-f_D(D(fake) - D(real))` with `f_D(x) = -log(1 + e^x)`: softplus(D(fake) - D(real)), per pair."""
    return masked_mean(F.softplus(fake_logits - real_logits), mask)


# ---------------------------------------------------------------------------------------------------------------
# One training step


def posttrain_step(
    gen: DiT,
    disc: FrameDiscriminator,
    latents: torch.Tensor,
    batch: dict[str, torch.Tensor],
    config: PosttrainConfig,
    context_noise: float,
    generator: torch.Generator,
    gen_optimizer: torch.optim.Optimizer,
    disc_optimizer: torch.optim.Optimizer,
    train_generator: bool = True,
) -> dict[str, float]:
    """One generator update (student-forced rollout, segment by segment) then one discriminator update.

    `train_generator=False` (discriminator warm-up): the same rollout without gradients, no generator update."""
    b, length = latents.shape[:2]
    p, k = config.prompt_frames, length - config.prompt_frames
    device = latents.device
    actions = batch["actions"].to(device)
    has_action = ~batch["is_first"].to(device)
    valid = batch["valid"].to(device)
    positions = torch.arange(length, device=device)[None].expand(b, length)

    def draw_noise(shape):
        return torch.randn(shape, generator=generator).to(device)

    frame_shape = latents.shape[2:]
    start_noise, commit_noise = draw_noise((b, k, *frame_shape)), draw_noise((b, k, *frame_shape))
    prompt_noise = draw_noise((b, p, *frame_shape))

    def window(start: int, end: int, generated: list[torch.Tensor]) -> SegmentWindow:
        lo = max(0, p + start - config.overlap_frames)
        history = torch.cat([latents[:, :p], *generated], dim=1)  # (B, p + start, ...) what the generator saw
        span = slice(lo, p + end)
        n_all = p + end - lo
        return SegmentWindow(
            real=latents[:, span], fake_context=history[:, lo:], actions=actions[:, span],
            positions=positions[:, span], has_action=has_action[:, span], valid=valid[:, span],
            levels=torch.rand((b, n_all), generator=generator).to(device), noise=draw_noise((b, n_all, *frame_shape)),
            context=p + start - lo,
        )

    # Generator: roll out, judge each segment, back-propagate it, go on from the detached cache.
    disc.requires_grad_(False)
    gen_optimizer.zero_grad(set_to_none=True)
    cache = GradKVCache.for_model(gen, b)
    recycled = None if config.student_forcing else latents[:, p:]
    generated: list[torch.Tensor] = []
    gen_total, regression_total, metrics = 0.0, 0.0, {}
    # The trained stretch: `trained` frames from `first` (whole segments, drawn among stretches holding a real frame
    # to pair with); before it the rollout runs without gradients (a burn-in that reaches late positions cheaply),
    # after it the rollout stops.
    trained = config.train_frames or k
    starts = [f for f in range(0, k - trained + 1, config.segment_frames) if valid[:, p + f : p + f + trained].any()]
    starts = starts or [0]  # (a window is never all padding past its first frame; kept total for safety)
    first = starts[int(torch.randint(len(starts), (), generator=generator))]
    end_all = first + trained
    segments = iter(rollout_segments(
        gen, cache, latents[:, :p], actions[:, :p], has_action[:, :p], actions[:, p : p + end_all],
        start_noise[:, :end_all], commit_noise[:, :end_all], prompt_noise, context_noise, config.segment_frames,
        None if recycled is None else recycled[:, :end_all],
    ))
    for start in range(0, end_all, config.segment_frames):
        learn_segment = train_generator and start >= first
        with torch.set_grad_enabled(learn_segment):
            _, segment = next(segments)
        if learn_segment:
            end = start + segment.shape[1]
            w = window(start, end, generated if config.student_forcing else [latents[:, p : p + start]])
            with torch.no_grad():
                real_logits, real_cache = score_real(disc, w, latents[:, p + start : p + end])
            fake_logits = score_fake(disc, w, segment, real_cache, config.student_forcing)
            loss = relativistic_generator_loss(real_logits, fake_logits, valid[:, p + start : p + end])
            gen_total += loss.item() * segment.shape[1] / trained
            if config.regression_weight:
                near = torch.arange(start, end, device=device) < config.regression_frames
                error = (segment - latents[:, p + start : p + end]).pow(2).mean(dim=(2, 3, 4))  # (B, n)
                regression = masked_mean(error, valid[:, p + start : p + end] & near)
                loss = loss + config.regression_weight * regression
                regression_total += regression.item() * segment.shape[1] / trained
            (loss * segment.shape[1] / trained).backward()
        generated.append(segment.detach())
    if config.outcome_weight and train_generator:
        span = min(length, p + trained)  # a real clip the length of the trained stretch, teacher-forced
        clip = {key: value[:, :span] for key, value in batch.items()}
        c_actions, c_positions, c_has_action, c_valid = (x[:, :span] for x in (actions, positions, has_action, valid))
        level = torch.full((b, span), float(context_noise), device=device)
        noisy = (1 - context_noise) * latents[:, :span] + context_noise * draw_noise((b, span, *frame_shape))
        out = gen(noisy, level, c_actions, c_positions, has_action=c_has_action, valid=c_valid,
                  **recycled_input(gen, previous_frames(noisy, None)))
        # a clip's first frame is context
        learn = c_valid & ((c_positions > 0) | ~c_has_action) if recycles(gen) else c_valid
        outcome = outcome_loss(out, clip, learn, c_has_action)
        (config.outcome_weight * outcome).backward()
        metrics["outcome"] = outcome.item()
    if train_generator:
        metrics["gen_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(gen.parameters(), config.grad_clip))
        gen_optimizer.step()
        metrics["gen"] = gen_total
        if config.regression_weight:
            metrics["regression"] = regression_total

    # Discriminator: relativistic pairing + approximate R1 (real) and R2 (generated), segment by segment.
    disc.heads.requires_grad_(True)
    disc.backbone.requires_grad_(config.train_disc_backbone)
    disc_optimizer.zero_grad(set_to_none=True)
    disc_total = r1_total = r2_total = 0.0
    fake_mean = real_mean = 0.0
    for index, segment in enumerate(generated):
        start = index * config.segment_frames
        if start < first:
            continue
        end = start + segment.shape[1]
        history = generated[:index] if config.student_forcing else [latents[:, p : p + start]]
        w = window(start, end, history)
        mask = valid[:, p + start : p + end]
        real = latents[:, p + start : p + end]
        real_logits, real_cache = score_real(disc, w, real)
        fake_logits = score_fake(disc, w, segment, real_cache, config.student_forcing)
        pairing = relativistic_discriminator_loss(real_logits, fake_logits, mask)
        sigma, lam = config.r1_sigma, config.r1_lambda
        real_perturbed, _ = score_real(disc, w, real + sigma * draw_noise(real.shape))
        fake_perturbed = score_fake(disc, w, segment + sigma * draw_noise(segment.shape), real_cache,
                                    config.student_forcing)
        r1 = lam * masked_mean((real_logits - real_perturbed) ** 2, mask)
        r2 = lam * masked_mean((fake_logits - fake_perturbed) ** 2, mask)
        share = segment.shape[1] / trained
        ((pairing + r1 + r2) * share).backward()
        disc_total += pairing.item() * share
        r1_total, r2_total = r1_total + r1.item() * share, r2_total + r2.item() * share
        real_mean += real_logits.mean().item() * share
        fake_mean += fake_logits.mean().item() * share
    metrics["disc_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(disc.parameters(), config.grad_clip))
    disc_optimizer.step()
    metrics.update(disc=disc_total, r1=r1_total, r2=r2_total, disc_real=real_mean, disc_fake=fake_mean)
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The loop


def posttrain(config: PosttrainConfig) -> dict:
    """Adversarially post-train (or resume) a one-step generator; returns `generator.run.TrainingRun.finish()`'s
    summary."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    world = load_two_pass_model(config.generator, device)
    gen, codec = world.dit.requires_grad_(True).train(), world.codec.requires_grad_(False)
    backbone = WorldModel.from_pretrained(config.discriminator or config.generator, device=device).dit
    if backbone.config != gen.config:
        raise ValueError("the discriminator backbone must have the generator's DiT config")
    disc = FrameDiscriminator(backbone, parse_blocks(config.disc_blocks, backbone.config.depth)).to(device).train()
    disc.backbone.requires_grad_(config.train_disc_backbone)
    dataset = EpisodeDataset(config.data, window=config.prompt_frames + config.rollout_frames, split="train")
    gen_optimizer = torch.optim.RMSprop(gen.parameters(), lr=config.lr, alpha=config.rmsprop_alpha)
    disc_groups = [{"params": list(disc.heads.parameters()), "lr": config.disc_head_lr or config.disc_lr}]
    if config.train_disc_backbone:
        disc_groups.append({"params": list(disc.backbone.parameters())})
    disc_optimizer = torch.optim.RMSprop(disc_groups, lr=config.disc_lr, alpha=config.rmsprop_alpha)
    data_generator = torch.Generator().manual_seed(config.seed * 1000)
    noise_generator = torch.Generator().manual_seed(config.seed * 1000 + 500)
    sampling = replace(world.sampling, sampler_steps=1, solver="consistency")
    context_noise = world.sampling.context_noise

    def export(step: int) -> None:
        info = copy.deepcopy(world.info)
        info.training = {"step": step, "posttrain_config": asdict(config),
                         "generator": str(Path(config.generator).resolve()), "generator_training": world.info.training}
        WorldModel(gen, codec, sampling, info, world.prompts).save_pretrained(Path(config.out) / "model")

    def sample() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = dataset.sample(config.batch_size, data_generator)
        with torch.no_grad():
            return codec.encode(batch["frames"].to(device)), batch  # latents (B, P + K, C, h, w)

    run = TrainingRun(config.out, name="posttrain", config=asdict(config), steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules={"model": gen, "disc": disc},
                      optimizers={"gen_optimizer": gen_optimizer, "disc_optimizer": disc_optimizer},
                      generators={"data_generator": data_generator, "noise_generator": noise_generator}, export=export)
    with run:
        while run.running:
            train_generator = run.step >= config.disc_warmup_steps
            for _ in range(config.disc_steps - 1 if train_generator else 0):
                posttrain_step(gen, disc, *sample(), config, context_noise, noise_generator, gen_optimizer,
                               disc_optimizer, train_generator=False)
            run.end_step(posttrain_step(gen, disc, *sample(), config, context_noise, noise_generator, gen_optimizer,
                                        disc_optimizer, train_generator=train_generator))
    return run.finish()
