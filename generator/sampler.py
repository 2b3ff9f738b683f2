"""Frame-by-frame sampling with a KV cache: denoise one frame per row with N Euler steps, then commit it.

One autoregressive step per row is
1. `generate_frames`: start from that row's noise for this frame and integrate the flow ODE from s=1 to s=0 in
   `sampler_steps` Euler steps (`solver="euler"`, flow teachers) or run the few-step consistency sampler
   (`solver="consistency"`, distilled students: denoise, re-noise to the next time, repeat); every step attends to
   the cached past and to the frame itself, writes nothing;
2. `commit_frames`: re-noise the finished latent to the small `context_noise` level (NFD's context-noise
   injection: generated context is trusted a little less), run it once with that level and write its keys/values
   into the cache. This pass also yields the reward and termination of the transition into the frame.

One-pass models (`SamplingConfig.commit_pass=False`, AAPT's recycling, arXiv 2506.09350) skip step 2: the cache keeps
the keys/values of the final sampling pass itself (`generate_and_cache_frames`), whose input is the frame being
denoised at that pass's flow time (`cache_level`; pure noise at 1.0 for one step) and whose previous-frame input
carries the generated frame to the next one. A one-step frame then costs one pass instead of two. Such a model
must be trained with context frames presented the same way (`generator.train`, `TrainConfig.commit_pass=False`);
real prompt frames are written by `cache_context_frames`.

Noise is a pure function of (row seed, frame position) (`frame_noise`), never of a shared generator's state, so a
row's noise does not depend on which other rows share the batch, on restarts of other rows, or on speculation; its
frames depend on them only through float rounding (docs/architecture.md, Sampling).
"""
from __future__ import annotations

import functools

import torch

from generator.codec import TileCodec, float_to_frames, untile
from generator.kv_cache import KVCache
from generator.metrics import motion_shift
from generator.model import DiT, DiTOutput, shift_maps

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 finaliser), stable across runs and platforms."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


def frame_noise(
    seeds: list[int], positions: list[int], shape: tuple[int, ...], device="cpu", extra: int = 0
) -> torch.Tensor:
    """Noise `(R, 2 + extra, *shape)` per row: `[:, 0]` starts the frame's ODE, `[:, 1]` re-noises it at commit,
    `[:, 2:]` re-noise between the steps of the consistency sampler (`extra = sampler_steps - 1`).

    Row r's noise is drawn from a generator seeded by `(seeds[r], positions[r])` alone; `[:, :2]` do not depend on
    `extra`.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device)
    out = []
    for seed, position in zip(seeds, positions):
        generator.manual_seed(mix_seed(seed, position))
        draws = torch.randn((2, *shape), generator=generator, device=device)
        if extra:
            draws = torch.cat([draws, torch.randn((extra, *shape), generator=generator, device=device)])
        out.append(draws)
    return torch.stack(out)


def flow_timesteps(steps: int, shift: float = 1.0, device="cpu") -> torch.Tensor:
    """Flow times from 1 (noise) to 0 (clean), `(steps + 1,)`; `shift > 1` spends more steps at high noise (SD3)."""
    if steps < 1:
        raise ValueError(f"sampler_steps must be >= 1, got {steps}")
    s = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * s / (1 + (shift - 1) * s)


def logit_normal(shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0, generator=None, device="cpu"):
    """SD3's logit-normal distribution of flow times, used independently for every frame in training."""
    return torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))


def cache_level(sampler_steps: int, shift: float = 1.0) -> float:
    """Flow time of a sampler's final pass: the level at which a one-pass model (`SamplingConfig.commit_pass=False`)
    caches its frames, and at which its training presents context frames. 1.0 for one-step sampling."""
    return float(flow_timesteps(sampler_steps, shift)[-2])


@torch.no_grad()
def generate_frames(
    model: DiT,
    cache: KVCache | None,
    rows: torch.Tensor | None,
    actions: torch.Tensor,
    positions: torch.Tensor,
    noise: torch.Tensor,
    sampler_steps: int,
    shift: float = 1.0,
    solver: str = "euler",
    renoise: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    temperature: float = 1.0,
    motion: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise one new frame per row from `noise` `(R, C, h, w)`; returns clean latents `(R, C, h, w)`.

    `actions` `(R, ...)` led to the new frames; `positions` `(R,)` are their frame positions. `solver` is
    `SamplingConfig.solver`; the consistency solver with `sampler_steps > 1` needs `renoise`
    `(R, sampler_steps - 1, C, h, w)` (`frame_noise(..., extra=sampler_steps - 1)[:, 2:]`). With one step both
    solvers compute `noise - velocity(noise, s=1)`. `previous` `(R, C, h, w)` is each row's last committed
    latent (`context_latents` of it), required by models with `previous_frame_input`. `temperature` divides the
    code logits of the categorical solver's draws. `motion` `(R,)`: how the view moves into the new frames (models
    with `DiTConfig.motion_classes`; None: not given).
    """
    x, _ = denoise(model, cache, rows, actions, positions, noise, sampler_steps, shift, solver, renoise, previous,
                   temperature=temperature, motion=motion)
    return x


@torch.no_grad()
def generate_and_cache_frames(
    model: DiT,
    cache: KVCache,
    rows: torch.Tensor | None,
    actions: torch.Tensor,
    positions: torch.Tensor,
    noise: torch.Tensor,
    sampler_steps: int,
    shift: float = 1.0,
    solver: str = "euler",
    renoise: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    temperature: float = 1.0,
    motion: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DiTOutput]:
    """One network pass per frame for one-step models (`SamplingConfig.commit_pass=False`, AAPT arXiv 2506.09350):
    `generate_frames`, whose final pass also writes the new frames' keys/values into the cache, so no commit
    pass follows. Returns the clean latents `(R, C, h, w)` and that final pass's `DiTOutput` (one frame per row:
    its reward and termination predictions are the transition's). Same arguments as `generate_frames`."""
    x, out = denoise(model, cache, rows, actions, positions, noise, sampler_steps, shift, solver, renoise, previous,
                     write_cache=True, temperature=temperature, motion=motion)
    cache.commit(rows, positions[:, None])
    return x, out


def denoise(model, cache, rows, actions, positions, noise, sampler_steps, shift=1.0, solver="euler", renoise=None,
            previous=None, write_cache=False, temperature=1.0, motion=None):
    """The sampler behind `generate_frames` (Euler on the flow ODE, the few-step consistency sampler, or the
    categorical sampler of codebook models): returns the clean latents and the `DiTOutput` of the final pass, which
    writes the cache when `write_cache`.

    `euler_codes` (codebook models) is Euler whose passes but the last step from their most likely codes (each
    token's argmax tile) rather than from the expected tile values; with one step it is `euler`.
    The categorical solver with one step draws every token's code from its logits at flow time 1. With more steps
    it draws codes at every pass but the last, re-noises the drawn frame to the next time with `renoise[:, k]`, and
    keeps the last pass's most likely code per token: the draws give new tiles the variety of the real game, the
    last pass makes them agree with their neighbours. Its renoise holds `2 * (sampler_steps - 1)` draws: the
    re-noising ones, then the uniforms of passes 2.."""
    if solver not in ("euler", "euler_codes", "consistency", "categorical"):
        raise ValueError(f"unknown solver {solver!r}; choose 'euler', 'euler_codes', 'consistency' or 'categorical'")
    if solver in ("categorical", "euler_codes") and not model.config.codebook_size:
        raise ValueError(f"the {solver} solver needs a model with a codebook head (DiTConfig.codebook_size > 0)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    draws = extra_draws(solver, sampler_steps)
    if draws and (renoise is None or renoise.shape[1] < draws):
        raise ValueError(
            f"the {solver} solver with {sampler_steps} steps needs renoise (R, {draws}, C, h, w); "
            f"draw it with frame_noise(..., extra={draws})[:, 2:]"
        )
    times = flow_timesteps(sampler_steps, shift, device=noise.device)
    # The cache does not change while this frame is denoised: gather the rows once; the final pass of a one-pass
    # model writes into the cache itself.
    view, view_rows = cache, rows
    if cache is not None and rows is not None and sampler_steps > 1:
        view, view_rows = cache.gather(rows), None
    x = noise
    ones = torch.ones(noise.shape[0], 1, device=noise.device)
    for k, (s, s_next) in enumerate(zip(times[:-1], times[1:])):
        last = k == sampler_steps - 1
        out = model(x[:, None], s * ones, actions[:, None], positions[:, None],
                    cache=cache if last and write_cache else view, rows=rows if last and write_cache else view_rows,
                    write_cache=last and write_cache, previous=None if previous is None else previous[:, None],
                    motion=None if motion is None else motion[:, None])
        if solver == "euler" or (solver == "euler_codes" and last):
            x = x + (s_next - s) * out.velocity[:, 0]
        elif solver == "euler_codes":
            # An Euler step whose clean estimate is each token's most likely code instead of the expectation over
            # codes: the next pass reads real tiles re-noised to its time, as training presents context frames (and
            # as a one-pass model's final pass then caches them). x = (1 - s) x0 + s eps, so v = (x - x0) / s.
            clean = code_tiles(model, out.code_logits[:, 0].argmax(-1)).to(x.dtype)
            x = x + (s_next - s) / s * (x - clean)
        elif solver == "categorical" and (not last or sampler_steps == 1):
            uniform_from = noise if k == 0 else renoise[:, sampler_steps - 2 + k]
            x = draw_codes(model, out.code_logits[:, 0], uniform_from, temperature)
            if not last:
                x = (1 - s_next) * x + s_next * renoise[:, k]
        elif solver == "categorical":
            # The last pass of a multi-step categorical sampler keeps each token's most likely code: an expectation
            # over two likely codes (the player facing left or down) can be nearer a third tile (bare grass).
            x = code_tiles(model, out.code_logits[:, 0].argmax(-1)).to(x.dtype)
        else:
            # sCM's few-step sampler (arXiv 2410.11081, Sec. 2): denoise `x0 = x_s - s v(x_s, s)`, then re-noise
            # it to the next time with fresh noise `renoise[:, k]`; the last `x0` is the sample.
            x = x - s * out.velocity[:, 0]
            if not last:
                x = (1 - s_next) * x + s_next * renoise[:, k]
    return x, out


def extra_draws(solver: str, sampler_steps: int) -> int:
    """Noise draws beyond a frame's two (`frame_noise(..., extra=)`) that `solver` needs at `sampler_steps`."""
    return {"consistency": sampler_steps - 1, "categorical": 2 * (sampler_steps - 1)}.get(solver, 0)


def draw_codes(model: DiT, code_logits: torch.Tensor, uniform_from: torch.Tensor, temperature: float = 1.0):
    """A frame `(R, C, h, w)` of codebook tiles, each token's code drawn from `code_logits / temperature`
    `(R, N, K)` by the inverse CDF of one uniform per token: `Phi` of the first N values of `uniform_from`
    `(R, C, h, w)`, so a row's draw is a function of its seed and position only."""
    probs = (code_logits.float() / temperature).softmax(-1)
    n = probs.shape[1]
    uniform = torch.special.ndtr(uniform_from.reshape(uniform_from.shape[0], -1)[:, :n].double()).float()  # (R, N)
    codes = torch.searchsorted(probs.cumsum(-1), uniform[..., None]).squeeze(-1).clamp_max(probs.shape[-1] - 1)
    return code_tiles(model, codes).to(uniform_from.dtype)


def code_tiles(model: DiT, codes: torch.Tensor) -> torch.Tensor:
    """The frames `(R, C, h, w)` whose tokens are the codebook tiles `codes` `(R, N)`."""
    return untile(model.codebook[codes], model.config.patch_size, model.config.grid)


@torch.no_grad()
def context_latents(latents: torch.Tensor, noise: torch.Tensor, context_noise: float) -> torch.Tensor:
    """Latents as they enter the cache: re-noised to the `context_noise` flow time."""
    return (1 - context_noise) * latents + context_noise * noise


def previous_frames(committed: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Each frame's previous frame `(R, T, C, h, w)` for committed frames `(R, T, ...)` following `previous`
    `(R, C, h, w)`; with no previous frame (an episode's first frame) a frame is its own previous frame."""
    first = committed[:, :1] if previous is None else previous[:, None]
    return torch.cat([first, committed[:, :-1]], dim=1)


@torch.no_grad()
def commit_frames(
    model: DiT,
    cache: KVCache,
    rows: torch.Tensor | None,
    latents: torch.Tensor,
    actions: torch.Tensor,
    positions: torch.Tensor,
    noise: torch.Tensor,
    context_noise: float,
    has_action: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    full_output: bool = False,
    outputs: bool = True,
    motion: torch.Tensor | None = None,
):
    """Write T frames per row `(R, T, C, h, w)` into the cache at `positions` `(R, T)`.

    Frames are re-noised to `context_noise` with `noise` (same shape as `latents`). `previous` `(R, C, h, w)` is
    the committed latent just before the first of them (models with `previous_frame_input`; None at an
    episode's first frame). Returns the predicted reward and termination logit of each transition, `(R, T)` each
    (with `full_output`, the whole `DiTOutput` of the pass). The committed latents themselves are
    `context_latents(latents, noise, context_noise)`. `outputs=False` writes the keys/values only and returns None
    (`DiT.forward(outputs=False)`: for a caller that reads the outcome elsewhere).
    """
    out = cache_context_frames(model, cache, rows, latents, actions, positions, noise, context_noise, None, has_action,
                               previous, full_output=True, outputs=outputs, motion=motion)
    return out if full_output or out is None else (out.reward, out.termination_logit)


@torch.no_grad()
def cache_context_frames(
    model: DiT,
    cache: KVCache,
    rows: torch.Tensor | None,
    latents: torch.Tensor,
    actions: torch.Tensor,
    positions: torch.Tensor,
    noise: torch.Tensor,
    level: float,
    recycled: torch.Tensor | None,
    has_action: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    full_output: bool = False,
    outputs: bool = True,
    motion: torch.Tensor | None = None,
):
    """Write T known frames per row `(R, T, C, h, w)` (a real prompt) into the cache of a one-pass model
    (`SamplingConfig.commit_pass=False`) as their final sampling pass would have written them: each frame at flow
    time `level` (`cache_level`) from its noise `noise` `(R, T, C, h, w)`, reading its previous frame as the
    recycled input `recycled` `(R, T, C, h, w)` gives it (the frames re-noised to the context level; `previous`
    `(R, C, h, w)` before the first, None at an episode's start). This is how training presents context frames.
    `recycled=None` recycles the frames as written here (the two-pass `commit_frames`). Returns the reward and
    termination logit of each transition, `(R, T)` each (with `full_output`, the whole `DiTOutput` of the pass).
    `motion` `(R, T)`: how the view moved into each frame (motion-conditioned models; None: not given)."""
    levels = torch.full(positions.shape, float(level), device=latents.device)
    noisy = context_latents(latents, noise, level)
    recycled = noisy if recycled is None else recycled
    before = previous_frames(recycled, previous) if model.config.previous_frame_input else None
    out = model(noisy, levels, actions, positions, has_action=has_action, cache=cache, rows=rows, write_cache=True,
                previous=before, outputs=outputs, motion=motion)
    cache.commit(rows, positions)
    return out if full_output or out is None else (out.reward, out.termination_logit)


# ----------------------------------------------------------------------------------------------------------------
# The autoregressive step: the one place where a prompt is committed and a frame is generated, snapped and committed.
# The dream env, the evaluation rollouts and self-rollout training all call these two functions.


OUTCOME_STREAM = 0x0C7C0E  # outcome draws are seeded apart from the frame noise of the same (seed, position)
EVENT_STREAM = 0x0E7E27  # and the achievement-event draw of an outcome model with an event head apart from both
MOTION_STREAM = 0x307105  # and the view-motion draw of a motion-conditioned model apart from all three


def row_uniforms(seeds: list[int], positions: list[int], stream: int, count: int) -> torch.Tensor:
    """`count` uniforms per row `(R, count)` float64, from a generator seeded by `(seed, position, stream)` alone."""
    generator = torch.Generator()
    uniforms = []
    for seed, position in zip(seeds, positions):
        generator.manual_seed(mix_seed(seed, position, stream))
        uniforms.append(torch.rand(count, generator=generator, dtype=torch.float64))
    return torch.stack(uniforms) if uniforms else torch.zeros(0, count, dtype=torch.float64)


def sample_outcomes(
    seeds: list[int], positions: list[int], reward: torch.Tensor, termination_logit: torch.Tensor,
    reward_logits: torch.Tensor | None = None, reward_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw each row's reward and termination `(R,)` from the outcome head, with two uniforms from a generator
    seeded by `(seed, position)` of that row alone (so the draw does not depend on the batch or on speculation).

    Reward-class models (`reward_logits` `(R, K)` over `reward_values` `(K,)`) sample a class and return its value;
    older models return their regressed `reward`. Termination is `Bernoulli(sigmoid(termination_logit))`."""
    u = row_uniforms(seeds, positions, OUTCOME_STREAM, 2)  # (R, 2)
    if reward_logits is not None:
        cumulative = reward_logits.double().softmax(-1).cpu().cumsum(-1)  # (R, K)
        index = torch.searchsorted(cumulative, u[:, :1].contiguous()).squeeze(-1).clamp_max(cumulative.shape[-1] - 1)
        sampled = reward_values.cpu().float()[index]
    else:
        sampled = reward.detach().float().cpu()
    terminated = u[:, 1] < torch.sigmoid(termination_logit.detach().double().cpu())
    return sampled, terminated


@torch.no_grad()
def prompt_rows(
    dit: DiT,
    codec,
    sampling,
    cache: KVCache,
    rows: torch.Tensor | None,
    latents: torch.Tensor,
    actions: torch.Tensor,
    has_action: torch.Tensor,
    seeds: list[int],
    sampler_steps: int | None = None,
    first_positions: list[int] | None = None,
) -> torch.Tensor:
    """Commit real prompt latents `(R, P, C, h, w)` (row r at positions `first_positions[r] + 0..P-1`, its frames'
    steps in their episode, default from 0; noise from each row's seed and position) to `rows` of the cache; returns
    each row's last frame as cached `(R, C, h, w)`: the previous-frame input of its next frame. One-pass models
    (`sampling.commit_pass=False`) cache the prompt as the final pass of `sampler_steps` (default: the model's)
    would have (`cache_context_frames`). A motion-conditioned model (`DiTConfig.motion_classes`) is told how the
    view moved into each prompt frame, read off the frames (`generator.metrics.motion_labels`), as in training."""
    r, p = latents.shape[:2]
    device = latents.device
    shape = tuple(latents.shape[2:])
    first = [0] * r if first_positions is None else [int(q) for q in first_positions]
    positions = torch.tensor(first, device=device)[:, None] + torch.arange(p, device=device)[None]
    draws = torch.stack([frame_noise(seeds, [q + i for q in first], shape, device) for i in range(p)],
                        dim=1)  # (R, P, 2, C, h, w)
    noise = draws[:, :, 1]
    motion = prompt_motion(dit, codec, latents, has_action)
    if sampling.commit_pass:
        commit_frames(dit, cache, rows, latents, actions, positions, noise, sampling.context_noise, has_action,
                      outputs=False, motion=motion)
    else:
        level = cache_level(int(sampler_steps or sampling.sampler_steps), sampling.shift)
        cache_context_frames(dit, cache, rows, latents, actions, positions, draws[:, :, 0], level,
                             context_latents(latents, noise, sampling.context_noise), has_action, motion=motion)
    return context_latents(latents[:, -1].float(), noise[:, -1], sampling.context_noise)


def prompt_motion(dit: DiT, codec, latents: torch.Tensor, has_action: torch.Tensor | None) -> torch.Tensor | None:
    """How the view moved into each of the real frames `(R, T, C, h, w)` (`generator.metrics.motion_labels`), for a
    motion-conditioned model; None for the others."""
    if not dit.config.motion_classes:
        return None
    from generator.codec import float_to_frames, motion_geometry
    from generator.metrics import motion_labels

    decoded = codec.decode(latents.flatten(0, 1).float())  # (R * T, 3, H, W)
    frames = float_to_frames(decoded).reshape(*latents.shape[:2], *decoded.shape[-2:], 3)
    return motion_labels(frames, has_action, dit.config.motion_classes, **motion_geometry(codec.config)).to(
        latents.device)


def draw_motion(motion_logits: torch.Tensor, seeds: list[int], positions: list[int],
                temperature: float = 1.0) -> torch.Tensor:
    """Each row's view motion `(R,)` into its next frame, drawn from the outcome model's motion head's logits
    `(R, M)` (`OutcomeModel.motion_logits`: it reads the frame shown and the action) divided by `temperature` with
    one uniform from the row's own `(seed, position)` stream; `temperature` 0 takes each row's most likely motion."""
    from generator.outcome import draw_classes

    if temperature < 0:
        raise ValueError(f"motion_temperature must be >= 0 (0: the most likely motion), got {temperature}")
    if temperature == 0:
        return motion_logits.argmax(-1)
    motion_logits = motion_logits / temperature
    uniforms = row_uniforms(seeds, [int(q) for q in positions], MOTION_STREAM, 1)[:, 0]
    return draw_classes(motion_logits, uniforms).to(motion_logits.device)


@torch.no_grad()
def advance_rows(
    dit: DiT,
    codec,
    sampling,
    cache: KVCache,
    rows: torch.Tensor | None,
    actions: torch.Tensor,
    positions: list[int],
    seeds: list[int],
    previous: torch.Tensor,
    sampler_steps: int | None = None,
    outcome=None,
    shown_codes: torch.Tensor | None = None,
    unlocked: torch.Tensor | None = None,
    motion: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Advance `rows` of the cache by one frame each: generate it under `actions` `(R, ...)` at `positions`, snap it
    to what the codec represents (`codec.snap`: real tiles for the tile codec), commit it re-noised to the context
    level. Noise comes from `frame_noise(seeds, positions)` only. One-pass models (`sampling.commit_pass=False`)
    skip the commit: the final sampling pass wrote the cache and predicted the outcome (`generate_and_cache_frames`);
    the snapped frame is what is shown and recycled as the next frame's previous frame.

    With an `outcome` model (`generator.outcome.OutcomeModel`, tile codecs) and `shown_codes` `(R, N)`, the tile codes
    of each row's previous frame as it was shown, the reward and termination are read off the shown transition
    instead of the DiT's outcome head, and `codes` `(R, N)` (the new frame's) is returned for the next step. An outcome
    model with an event head also draws which achievement counter the transition raised (`event` `(R,)`, from the
    row's own `(seed, position)` stream) and pays `unlock_reward` only where that achievement is not in the row's
    `unlocked` set `(R, E)` bool (None: nothing unlocked yet); the updated set is returned as `unlocked` (Crafter's
    once-per-episode rule), and `reward` / `reward_logits` are those of what is paid (`OutcomeModel.pay_once`).

    A motion-conditioned model (`DiTConfig.motion_classes`) is told how the view moves into the new frame:
    `motion` `(R,)` where the caller knows it (self-rollout training: the real clip's), else drawn per row from an
    outcome model with a motion head reading `shown_codes` and the action (`draw_motion`), else not given. The
    motion used is returned as `motion`, and the view shift it names as `shift` (`generator.metrics.motion_shift`;
    both None for other models).

    Returns `latents` `(R, C, h, w)` (the frame shown), `reward` and `termination_logit` `(R,)` (the outcome head's
    expected reward and termination logit), `reward_logits` `(R, K)` for reward-class models (else None),
    `sampled_reward` and `terminated` `(R,)` on the CPU (`sample_outcomes`: what an env hands its agent) and
    `committed` `(R, C, h, w)` (the frame as cached: the next frame's previous-frame input).
    """
    steps = int(sampler_steps or sampling.sampler_steps)
    device = previous.device
    pos = torch.as_tensor(positions, device=device)
    shape = tuple(previous.shape[1:])
    noise = frame_noise(seeds, [int(q) for q in positions], shape, device, extra=extra_draws(sampling.solver, steps))
    reading = None  # the outcome model's reading of the shown frame and the action, where the motion is drawn from it
    if dit.config.motion_classes and motion is None and outcome is not None and outcome.config.motion_classes \
            and shown_codes is not None:
        reading = outcome.read_action(shown_codes, actions)
        motion = draw_motion(outcome.motion_logits(shown_codes, actions, action_reading=reading), seeds, positions,
                             getattr(sampling, "motion_temperature", 1.0))
    sample = dict(solver=sampling.solver, renoise=noise[:, 2:], previous=previous,
                  temperature=sampling.temperature, motion=motion)
    with_codes = reads_shown_codes(sampling, outcome)
    if sampling.commit_pass:
        x = generate_frames(dit, cache, rows, actions, pos, noise[:, 0], steps, sampling.shift, **sample)
        x, codes = _snap(codec, x, with_codes)
        # With an outcome model the commit pass's own heads are not read: it only writes keys/values.
        out = commit_frames(dit, cache, rows, x[:, None], actions[:, None], pos[:, None], noise[:, 1, None],
                            sampling.context_noise, previous=previous, full_output=True, outputs=outcome is None,
                            motion=None if motion is None else motion[:, None])
    else:
        x, out = generate_and_cache_frames(dit, cache, rows, actions, pos, noise[:, 0], steps, sampling.shift, **sample)
        x, codes = _snap(codec, x, with_codes)
    if outcome is not None:
        if shown_codes is None:
            raise ValueError("an outcome model reads the transition as shown: pass shown_codes=, the tile codes of "
                             "each row's previous frame")
        logits = outcome(shown_codes, codes, actions, action_reading=reading)
        paid = outcome.pay_once(logits, unlocked)
        reward, termination_logit = outcome.reward(paid), logits.termination_logit
        reward_logits, reward_values = logits.reward_logits, outcome.reward_values
    else:
        reward, termination_logit = out.reward[:, 0].float(), out.termination_logit[:, 0].float()
        reward_logits = None if out.reward_logits is None else out.reward_logits[:, 0].float()
        reward_values = getattr(dit, "reward_values", None)
    sampled_reward, terminated = sample_outcomes(
        seeds, [int(q) for q in positions], reward, termination_logit, reward_logits, reward_values,
    )
    extra = {}
    if outcome is not None and logits.event_logits is not None:
        from generator.outcome import draw_classes

        event = draw_classes(logits.event_logits, row_uniforms(seeds, [int(q) for q in positions], EVENT_STREAM, 1)[:, 0])
        held = torch.zeros(len(event), len(outcome.config.events), dtype=torch.bool) if unlocked is None \
            else unlocked.bool().cpu().clone()
        rows_with = torch.nonzero(event > 0).squeeze(-1)
        new = torch.zeros(len(event), dtype=torch.bool)
        new[rows_with] = ~held[rows_with, event[rows_with] - 1]
        held[rows_with, event[rows_with] - 1] = True
        sampled_reward = sampled_reward + outcome.config.unlock_reward * new.float()
        reward_logits = paid.reward_logits
        extra = {"event": event, "unlocked": held.to(device)}
    return {
        "latents": x,
        "reward": reward,
        "termination_logit": termination_logit,
        "reward_logits": reward_logits,
        "sampled_reward": sampled_reward,
        "terminated": terminated,
        "committed": context_latents(x, noise[:, 1], sampling.context_noise),
        "codes": codes,
        "motion": motion,
        "shift": None if motion is None else motion_shift(motion, dit.config.motion_classes),
        **extra,
    }


def reads_shown_codes(sampling, outcome) -> bool:
    """Whether the steps of a world need each row's previous frame's tile codes as shown (`shown_codes`): an
    outcome model reads the transition off them, and carried tiles (`SamplingConfig.carry_tiles`) compare with
    them; `advance_rows` then returns each new frame's codes."""
    return outcome is not None or bool(getattr(sampling, "carry_tiles", False))


@functools.lru_cache(maxsize=None)
def _tile_sources(grid: tuple[int, int], view: tuple[int, int], player: tuple[int, int]) -> torch.Tensor:
    return shift_maps(grid, view, player)


def shown_frames(codec, sampling, step: dict, previous_frames: torch.Tensor | None,
                 previous_codes: torch.Tensor | None) -> torch.Tensor:
    """The frames an `advance_rows` `step` shows, uint8 `(R, H, W, 3)` on its device: its latents decoded, and with
    `sampling.carry_tiles` (tile codecs) every tile whose code is the code of the tile it came from keeping that
    tile's pixels in `previous_frames` `(R, H, W, 3)`, the frames shown before it, whose codes are `previous_codes`
    `(R, N)` (`TileCodec.carry_tiles`). A tile comes from the same place, or under the step's view motion (motion-
    conditioned models) from where the view's shift takes it (`generator.model.shift_maps`). The one place a step's
    frame is made for showing: the dream and the open-loop evaluation both call it."""
    frames = float_to_frames(codec.decode(step["latents"]).float())
    if not getattr(sampling, "carry_tiles", False):
        return frames
    if not isinstance(codec, TileCodec):
        raise ValueError(f"carry_tiles needs a tile codec, got a {codec.config.kind!r} codec; export the model with "
                         "carry_tiles off")
    if previous_frames is None or previous_codes is None or step.get("codes") is None:
        raise ValueError("carry_tiles shows unchanged tiles as they were shown: pass the previous frames shown and "
                         "their codes (advance_rows returns a frame's codes when sampling.carry_tiles is on)")
    config, shift = codec.config, step.get("shift")
    if shift is None:
        source = torch.arange(config.tile_grid[0] * config.tile_grid[1]).expand(len(frames), -1)
    else:
        maps = _tile_sources(tuple(config.tile_grid), tuple(config.motion_view), tuple(config.motion_player))
        source = maps[shift.long().cpu()]
    return codec.carry_tiles(frames, step["codes"], previous_frames, previous_codes, source)


def _snap(codec, x: torch.Tensor, with_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`codec.snap(x)`, and with `with_codes` the tile codes it snapped to (found once, for an outcome model)."""
    if not with_codes:
        return codec.snap(x.float()), None
    codes = codec.indices(x.float())
    return codec.from_indices(codes).float(), codes
