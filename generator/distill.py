"""NFD+ few-step distillation: continuous-time consistency (sCM) distillation of the flow teacher, plus an
adversarial term whose discriminator is the frozen teacher with small trainable heads.

Recipe (NFD arXiv 2506.01380 Sec. "NFD+"; sCM arXiv 2410.11081 Alg. 1; SANA-Sprint arXiv 2503.09641):
- the teacher and the student (initialised from the teacher) are read as TrigFlow models through the exact
  training-free conversion of `generator.trigflow`; the student stays a plain flow-matching DiT, so the result is a
  normal `WorldModel` sampled with `SamplingConfig(solver="consistency")`;
- every frame has its own TrigFlow time from sCM's proposal `tan(t) = e^tau / sigma_d`, `tau ~ N(P_mean, P_std^2)`;
- the sCM tangent `g` uses the teacher's PF-ODE `dx_t/dt = sigma_d F_teacher` and `dF_student/dt` from a
  forward-mode JVP (`torch.func.jvp`) through the stop-grad student, with the warm-up ramp `r` and the
  normalisation `g / (||g|| + c)` taken per frame (NFD);
- the loss is sCM's adaptively weighted `e^{w(t)} / D ||F - F^- - g||^2 - w(t)` with a small MLP `w(t)`;
- adversarial hinge loss (LADD/SANA-Sprint): the frozen teacher backbone scores re-noised real and generated
  frames; per-frame logits come from heads on mean-pooled hidden tokens of some of its blocks (forward hooks).

How a clip is used, and why: at inference a frame is denoised while its past sits in the KV cache at
`context_noise`, unchanged during the frame's steps. The consistency condition we need is therefore that of one
frame's trajectory *given fixed context*. Each training clip is written once into a cache as lightly noised
real context (flow levels `U(0, context_noise_max)`), then every frame of the clip is a target on its own row,
at its own time, attending only to the cached frames before it (the `rows` argument of the DiT maps B*T target
rows onto B cached clips). One JVP then gives every frame's own `dF/dt` with the context held fixed, which a
single joint pass over a clip with independent per-frame times would not (later frames would also see the
earlier frames move). With input recycling (`DiTConfig.previous_frame_input`) a target reads the cached frame before
it as its previous frame; a clip's first frame has none, so it serves as context only.

Layout of `out/`: `train_state/` (resumable), `model/` (EMA student as a `WorldModel`, 4-step consistency sampler),
`tb/`, `metrics.json`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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
from generator.model import DiT, DiTOutput, timestep_embedding
from generator.pretrained import WorldModel, resolve_device
from generator.run import TrainingRun, lr_schedule, update_ema
from generator.sampler import logit_normal, previous_frames
from generator.trigflow import HALF_PI, TrigFlowModel, proposal_times, trig_denoise, trig_noise, trigflow_from_flow


@dataclass
class DistillConfig:
    data: str
    teacher: str  # WorldModel folder of the flow-matching teacher (scripts/train.py's out/model)
    out: str
    steps: int = 2000
    batch_size: int = 8
    clip_frames: int = 8  # frames per clip; at most the model window
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear learning-rate warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    sigma_data: float = 1.0  # TrigFlow data = sigma_d * FM latent; our codecs normalise latents to ~unit scale
    p_mean: float = 0.0  # sCM time proposal; NFD+ uses (0, 1.6)
    p_std: float = 1.6
    tangent_warmup: int = 500  # steps over which the ramp r of the tangent goes 0 -> 1 (sCM: 10k at scale)
    tangent_norm: float = 0.1  # c in g / (||g|| + c), norm per frame
    context_noise_max: float = 0.2  # cached real context frames get flow levels U(0, max) (inference: 0.1)
    adv_weight: float = 0.1  # weight of the adversarial generator loss (0: sCM only)
    disc_lr: float = 1e-4  # discriminator heads
    disc_blocks: str = "all"  # teacher blocks whose pooled tokens feed the heads: "all" or e.g. "1,3"
    disc_noise_mean: float = 0.0  # logit-normal flow level real/generated frames are re-noised to for the discriminator
    disc_noise_std: float = 1.0
    outcome_weight: float = 0.1  # keep the reward/termination head trained on the (student's) context pass
    sampler_steps: int = 4  # consistency steps stored with the distilled model
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    ckpt_every: int = 500
    progress: bool = True
    stop_at: int = 0  # end this process at this step (resumable chunks); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time (a short GPU lease); 0: no limit


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces


def scm_tangent(
    trig_minus: torch.Tensor,
    trig_minus_dt: torch.Tensor,
    dxt_dt: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    sigma_data: float,
    ramp: float,
    norm_c: float,
) -> torch.Tensor:
    """sCM's normalised tangent (Alg. 1), per frame.

    `g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r (cos(t) sin(t) x_t + sigma_d dF^-/dt)`, where `trig_minus_dt` is the
    JVP of the stop-grad student along `(cos t sin t dx_t/dt, cos t sin t)` (sCM's scaled tangents), then
    `g / (||g|| + c)` with the norm over each frame's elements (NFD's per-frame normalisation).
    Latent-shaped tensors are `(B, T, C, h, w)`; `t` is `(B, T)`.
    """
    tt = t.reshape(*t.shape, 1, 1, 1)
    cos, sin = torch.cos(tt), torch.sin(tt)
    g = -cos**2 * (sigma_data * trig_minus - dxt_dt) - ramp * (cos * sin * x_t + sigma_data * trig_minus_dt)
    norm = g.flatten(2).norm(dim=-1).reshape(*t.shape, 1, 1, 1)  # (B, T, 1, 1, 1)
    return g / (norm + norm_c)


def trigflow_jvp(
    trig_model: TrigFlowModel, x_t: torch.Tensor, t: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor, actions,
    positions, **dit_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(F, dF)`: F of the TrigFlow model and its forward-mode derivative along `(dx, dt)`; no graph is kept.

    Runs the DiT's math attention (fused attention kernels have no forward-mode AD); per-frame times `t` `(B, T)`.
    """
    dit = trig_model.dit

    def trig_of(x, times):
        return trig_model(x, times, actions, positions, **dit_kwargs)[0]

    dit.use_math_attention(True)
    try:
        with torch.no_grad():
            return torch.func.jvp(trig_of, (x_t, t), (dx, dt))
    finally:
        dit.use_math_attention(False)


class AdaptiveWeight(nn.Module):
    """sCM's learned loss weight `w(t)`: a small MLP on a sinusoidal embedding of the TrigFlow time."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 1))
        nn.init.zeros_(self.mlp[-1].weight)  # start at w = 0: every frame weighted 1
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t / HALF_PI, self.channels).to(self.mlp[0].weight.dtype)
        return self.mlp(emb).squeeze(-1)


def context_cache(
    dit: DiT, latents: torch.Tensor, levels: torch.Tensor, actions, positions, has_action, valid, slots: int
) -> tuple[GradKVCache, DiTOutput]:
    """Write a clip `(B, T, C, h, w)` at flow `levels` `(B, T)` into a fresh differentiable cache; padding stays
    invisible. With input recycling each frame reads the clip's frame before it (the first frame itself)."""
    cache = GradKVCache.for_model(dit, latents.shape[0], slots=slots)
    out = dit(latents, levels, actions, positions, has_action=has_action, valid=valid, cache=cache, write_cache=True,
              **recycled_input(dit, previous_frames(latents, None)))
    cache.commit(None, positions, valid)
    return cache, out


# ---------------------------------------------------------------------------------------------------------------
# The objective


def distill_losses(
    student: DiT,
    teacher: DiT,
    weighting: AdaptiveWeight,
    discriminator: FrameDiscriminator | None,
    latents: torch.Tensor,
    batch: dict[str, torch.Tensor],
    config: DistillConfig,
    generator: torch.Generator,
    ramp: float,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """(student loss, discriminator loss or None, metrics) of one clip batch `latents` `(B, T, C, h, w)`."""
    b, t = latents.shape[:2]
    device, sigma = latents.device, config.sigma_data
    valid = batch["valid"].to(device)
    has_action = ~batch["is_first"].to(device)
    actions = batch["actions"].to(device)
    positions = torch.arange(t, device=device)[None].expand(b, t)

    def draw_noise(shape):
        return torch.randn(shape, generator=generator).to(device)

    # Cached context: the real clip lightly noised, as generated context is at inference.
    context_levels = (torch.rand((b, t), generator=generator) * config.context_noise_max).to(device)
    lv = context_levels[:, :, None, None, None]
    context = (1 - lv) * latents + lv * draw_noise(latents.shape)
    clip_args = (context, context_levels, actions, positions, has_action, valid, t)

    # Targets: every frame on its own row at its own TrigFlow time, seeing the cached frames before it.
    rows = torch.arange(b, device=device).repeat_interleave(t)  # (B*T,)
    row_args = dict(actions=as_rows(actions), positions=as_rows(positions), has_action=as_rows(has_action), rows=rows,
                    **recycled_input(teacher, as_rows(previous_frames(context, None))))
    clean = as_rows(latents)  # (R, 1, C, h, w)
    times = proposal_times((b * t, 1), config.p_mean, config.p_std, sigma, generator).to(device)  # (R, 1)
    x_t = trig_noise(sigma * clean, draw_noise(clean.shape), times, sigma)
    row_valid = as_rows(valid)[:, 0].float()  # (R,)
    if recycles(teacher):  # a clip's first frame has no previous frame to read: context only
        row_valid = row_valid * as_rows(positions > 0)[:, 0].float()
    count = row_valid.sum().clamp_min(1)

    teacher_trig, student_trig = trigflow_from_flow(teacher, sigma), trigflow_from_flow(student, sigma)
    with torch.no_grad():
        teacher_cache, _ = context_cache(teacher, *clip_args)
        dxt_dt = sigma * teacher_trig(x_t, times, cache=teacher_cache, **row_args)[0]  # teacher PF-ODE
    student_cache, context_out = context_cache(student, *clip_args)

    # sCM Alg. 1: JVP of the stop-grad student along the teacher's trajectory, tangents scaled by cos(t) sin(t).
    cos_sin = torch.cos(times) * torch.sin(times)
    trig_minus, trig_minus_dt = trigflow_jvp(
        student_trig, x_t, times, cos_sin[:, :, None, None, None] * dxt_dt, cos_sin,
        cache=student_cache.detached(), **row_args,
    )
    g = scm_tangent(trig_minus, trig_minus_dt, dxt_dt, x_t, times, sigma, ramp, config.tangent_norm)
    trig, _ = student_trig(x_t, times, cache=student_cache, **row_args)
    w = weighting(times[:, 0])  # (R,)
    per_frame = ((trig - trig_minus - g) ** 2).mean(dim=(1, 2, 3, 4))  # (R,) = ||.||^2 / D
    scm = ((torch.exp(w) * per_frame - w) * row_valid).sum() / count
    student_loss = scm
    metrics = {"scm": scm.item(), "scm_mse": ((per_frame * row_valid).sum() / count).item(),
               "tangent_ramp": ramp, "weight_mean": w.mean().item()}

    if config.outcome_weight:
        learn = valid & ((positions > 0) | ~has_action) if recycles(student) else valid  # first frame: see above
        outcome = outcome_loss(context_out, batch, learn, has_action)
        student_loss = student_loss + config.outcome_weight * outcome
        metrics["outcome"] = outcome.item()

    disc_loss = None
    if discriminator is not None:
        # Adversarial hinge (LADD): frozen teacher + heads on re-noised real / one-step-denoised frames.
        fake = trig_denoise(x_t, trig, times, sigma) / sigma  # (R, 1, C, h, w) FM latents
        levels = logit_normal((b * t, 1), config.disc_noise_mean, config.disc_noise_std, generator=generator).to(device)
        noise = draw_noise(clean.shape)
        lv = levels[:, :, None, None, None]
        disc_args = dict(cache=teacher_cache, **row_args)
        fake_features = discriminator.features((1 - lv) * fake + lv * noise, levels, **disc_args)
        with torch.no_grad():
            real_features = discriminator.features((1 - lv) * clean + lv * noise, levels, **disc_args)
        fake_logits = discriminator.logits(fake_features)[:, 0]  # (R,)
        adversarial = -(fake_logits * row_valid).sum() / count
        student_loss = student_loss + config.adv_weight * adversarial
        real_logits = discriminator.logits(real_features)[:, 0]
        detached_logits = discriminator.logits([f.detach() for f in fake_features])[:, 0]
        disc_loss = ((F.relu(1 - real_logits) + F.relu(1 + detached_logits)) * row_valid).sum() / count
        metrics.update(adversarial=adversarial.item(), disc=disc_loss.item(),
                       disc_real=real_logits.mean().item(), disc_fake=fake_logits.mean().item())
    metrics["loss"] = student_loss.item()
    return student_loss, disc_loss, metrics


# ---------------------------------------------------------------------------------------------------------------
# The loop


def distill(config: DistillConfig) -> dict:
    """Distill (or resume distilling) a teacher into a few-step consistency student; returns
    `generator.run.TrainingRun.finish()`'s summary."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    teacher_world = load_two_pass_model(config.teacher, device)
    teacher, codec = teacher_world.dit.requires_grad_(False), teacher_world.codec.requires_grad_(False)
    if config.clip_frames > teacher.config.window_frames:
        raise ValueError(f"clip_frames {config.clip_frames} exceeds the model window {teacher.config.window_frames}")
    dataset = EpisodeDataset(config.data, window=config.clip_frames, split="train")
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    ema = copy.deepcopy(teacher)
    weighting = AdaptiveWeight().to(device)
    modules = {"model": student, "ema": ema, "weighting": weighting}
    optimizer = torch.optim.AdamW([*student.parameters(), *weighting.parameters()], lr=config.lr,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.99))
    optimizers = {"optimizer": optimizer}
    scheduler = lr_schedule(optimizer, config.steps, config.warmup_steps)  # constant after the warm-up
    discriminator = disc_optimizer = None
    if config.adv_weight:
        discriminator = FrameDiscriminator(teacher, parse_blocks(config.disc_blocks, teacher.config.depth)).to(device)
        disc_optimizer = torch.optim.Adam(discriminator.heads.parameters(), lr=config.disc_lr, betas=(0.0, 0.99))
        modules["disc_heads"], optimizers["disc_optimizer"] = discriminator.heads, disc_optimizer
    data_generator = torch.Generator().manual_seed(config.seed * 1000)
    noise_generator = torch.Generator().manual_seed(config.seed * 1000 + 500)
    sampling = replace(teacher_world.sampling, sampler_steps=config.sampler_steps, solver="consistency")

    def export(step: int) -> None:
        info = copy.deepcopy(teacher_world.info)
        info.training = {"step": step, "distill_config": asdict(config), "teacher": str(Path(config.teacher).resolve()),
                         "teacher_training": teacher_world.info.training}
        WorldModel(ema, codec, sampling, info, teacher_world.prompts).save_pretrained(Path(config.out) / "model")

    run = TrainingRun(config.out, name="distill", config=asdict(config), steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules=modules, optimizers=optimizers,
                      schedulers={"scheduler": scheduler},
                      generators={"data_generator": data_generator, "noise_generator": noise_generator}, export=export)
    with run:
        while run.running:
            batch = dataset.sample(config.batch_size, data_generator)
            with torch.no_grad():
                latents = codec.encode(batch["frames"].to(device))  # (B, T, C, h, w)
            ramp = min(1.0, run.step / max(1, config.tangent_warmup))
            loss, disc_loss, metrics = distill_losses(
                student, teacher, weighting, discriminator, latents, batch, config, noise_generator, ramp
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            if disc_optimizer is not None:
                disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator loss left on the heads
                disc_loss.backward()
                disc_optimizer.step()
            update_ema(ema, student, config.ema_decay)
            run.end_step({**metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]})
    return run.finish()
