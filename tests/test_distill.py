"""NFD+ distillation: the TrigFlow conversion is exact, the JVP matches finite differences, the consistency sampler
with the KV cache equals full recomputation, and a distillation step trains, exports and resumes."""
import math

import pytest
import torch

from generator.distill import DistillConfig, distill, scm_tangent, trigflow_jvp
from generator.grad_kv_cache import GradKVCache
from generator.model import DiT, dit_config
from generator.pretrained import WorldModel
from generator.sampler import (
    flow_timesteps,
    frame_noise,
    generate_frames,
    previous_frames,
)
from generator.trigflow import (
    flow_input,
    flow_time,
    trig_denoise,
    trig_from_velocity,
    trig_noise,
    trig_time,
    trigflow_from_flow,
    velocity_from_trig,
)
from tiny_world import TINY, make_dataset, make_teacher, rollout_rows

CONTEXT_NOISE = 0.1


def tiny_model(seed: int = 0, dtype=torch.float32, **overrides) -> DiT:
    torch.manual_seed(seed)
    model = DiT(dit_config("tiny", **overrides)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def random_clip(model, b, t, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    latents = torch.randn(b, t, cfg.latent_channels, *cfg.latent_size, generator=g, dtype=dtype)
    actions = torch.randint(0, 17, (b, t), generator=g)
    positions = torch.arange(t)[None].repeat(b, 1)
    return latents, actions, positions, g


# ---------------------------------------------------------------------------------------------------------------
# TrigFlow conversion


def test_trigflow_algebra_is_exact_for_the_ideal_velocity():
    g = torch.Generator().manual_seed(0)
    sigma = 0.5
    y = torch.randn(2, 3, 3, 4, 4, generator=g, dtype=torch.float64)  # FM latents
    z = torch.randn(2, 3, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(2, 3, generator=g, dtype=torch.float64) * math.pi / 2
    x_t = trig_noise(sigma * y, z, t, sigma)
    s = flow_time(t)[..., None, None, None]
    assert torch.allclose(flow_input(x_t, t, sigma), (1 - s) * y + s * z)  # same point, FM coordinates
    assert torch.allclose(trig_time(flow_time(t)), t)
    trig = trig_from_velocity(z - y, x_t, t, sigma)  # the ideal FM velocity ...
    tt = t[..., None, None, None]
    assert torch.allclose(trig, torch.cos(tt) * z - torch.sin(tt) * y)  # ... is the ideal TrigFlow output
    assert torch.allclose(velocity_from_trig(trig, x_t, t, sigma), z - y)
    assert torch.allclose(trig_denoise(x_t, trig, t, sigma), sigma * y)


def test_trigflow_converted_teacher_reproduces_the_teacher():
    model = tiny_model(dtype=torch.float64)
    sigma = 0.5
    x_s, actions, positions, g = random_clip(model, 2, 3, dtype=torch.float64)
    s = torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01  # per-frame flow times
    with torch.no_grad():
        velocity = model(x_s, s, actions, positions).velocity.double()
        t = trig_time(s)
        x_t = sigma * (torch.sin(t) + torch.cos(t))[..., None, None, None] * x_s  # the same point in TrigFlow
        trig_model = trigflow_from_flow(model, sigma)
        trig, _ = trig_model(x_t, t, actions, positions)
        denoised = trig_model.denoise(x_t, t, actions, positions)
    assert torch.allclose(velocity_from_trig(trig, x_t, t, sigma), velocity, atol=1e-6)
    sv = s[..., None, None, None]
    assert torch.allclose(denoised / sigma, x_s - sv * velocity, atol=1e-6)  # the teacher's x0 prediction


# ---------------------------------------------------------------------------------------------------------------
# JVP


@pytest.mark.parametrize("cached, prediction", [(False, "velocity"), (True, "velocity"), (True, "x")])
def test_jvp_through_the_block_causal_dit_matches_finite_differences(cached, prediction):
    model = tiny_model(dtype=torch.float64, prediction=prediction)
    trig_model = trigflow_from_flow(model, 0.5)
    latents, actions, positions, g = random_clip(model, 2, 3, dtype=torch.float64)
    kwargs = {}
    if cached:  # distillation's layout: a cached context clip, every frame on its own row after it
        cache = GradKVCache.for_model(model, 2, slots=3)
        with torch.no_grad():
            model(latents, torch.full((2, 3), 0.1, dtype=torch.float64), actions, positions, cache=cache,
                  write_cache=True)
        cache.commit(None, positions)
        kwargs = dict(cache=cache, rows=torch.arange(2).repeat_interleave(3))
        actions, positions = actions.reshape(6, 1), positions.reshape(6, 1)
        latents = latents.reshape(6, 1, *latents.shape[2:])
    t = torch.rand(latents.shape[:2], generator=g, dtype=torch.float64) * 1.4 + 0.05  # independent per frame
    dx = torch.randn(latents.shape, generator=g, dtype=torch.float64)
    dt = torch.rand(t.shape, generator=g, dtype=torch.float64)
    trig, derivative = trigflow_jvp(trig_model, latents, t, dx, dt, actions, positions, **kwargs)
    h = 1e-4
    with torch.no_grad():
        plus = trig_model(latents + h * dx, t + h * dt, actions, positions, **kwargs)[0]
        minus = trig_model(latents - h * dx, t - h * dt, actions, positions, **kwargs)[0]
        assert torch.allclose(trig, trig_model(latents, t, actions, positions, **kwargs)[0], atol=1e-6)
    finite = (plus - minus) / (2 * h)
    assert (finite - derivative).norm() / derivative.norm() < 1e-3
    assert not model.blocks[0].attn.use_math  # fused attention restored


def test_tangent_is_normalised_per_frame():
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 3, 4, 4)
    trig_minus, trig_dt, dxt_dt, x_t = (torch.randn(shape, generator=g) for _ in range(4))
    dxt_dt[0, 1] *= 100  # one frame with a huge tangent does not shrink the others
    t = torch.rand(2, 3, generator=g)
    out = scm_tangent(trig_minus, trig_dt, dxt_dt, x_t, t, sigma_data=0.5, ramp=0.0, norm_c=0.1)
    cos2 = torch.cos(t)[..., None, None, None] ** 2
    raw = -cos2 * (0.5 * trig_minus - dxt_dt)
    norms = raw.flatten(2).norm(dim=-1)
    assert torch.allclose(out, raw / (norms[..., None, None, None] + 0.1), atol=1e-6)
    assert (out.flatten(2).norm(dim=-1) < 1).all()


# ---------------------------------------------------------------------------------------------------------------
# Few-step consistency sampler


def rollout_cached(model, seeds, prompt, prompt_actions, actions, steps):
    """The consistency sampler through the env's and the evaluation's step (`tiny_world.rollout_rows`)."""
    return rollout_rows(model, seeds, prompt, prompt_actions, actions, steps, CONTEXT_NOISE, "consistency")[0]


@torch.no_grad()
def rollout_full_recompute(model, seeds, prompt, prompt_actions, actions, steps):
    """Every consistency step recomputed from the whole (noised) history with the windowed block-causal mask; an
    independent reference (no KV cache, no `generator.sampler` step) for the cached sampler to equal."""
    b, p = prompt.shape[:2]
    shape = prompt.shape[2:]
    history = [(1 - CONTEXT_NOISE) * prompt[:, i] + CONTEXT_NOISE * frame_noise(seeds, [i] * b, shape)[:, 1]
               for i in range(p)]
    history_actions = [prompt_actions[:, i] for i in range(p)]
    times = flow_timesteps(steps)[:-1]
    frames = []
    for i in range(actions.shape[1]):
        noise = frame_noise(seeds, [p + i] * b, shape, extra=steps - 1)
        x = noise[:, 0]
        n = len(history)
        for k, s in enumerate(times):
            levels = torch.full((b, n + 1), CONTEXT_NOISE)
            levels[:, -1] = s
            has_action = torch.ones(b, n + 1, dtype=torch.bool)
            has_action[:, 0] = False
            sequence = torch.stack(history + [x], dim=1)
            recycled = {"previous": previous_frames(sequence, None)} if model.config.previous_frame_input else {}
            out = model(sequence, levels, torch.stack(history_actions + [actions[:, i]], 1),
                        torch.arange(n + 1)[None].repeat(b, 1), has_action=has_action, **recycled)
            denoised = x - s * out.velocity[:, -1]
            if k + 1 < len(times):
                x = (1 - times[k + 1]) * denoised + times[k + 1] * noise[:, 2 + k]
        frames.append(denoised)
        history.append((1 - CONTEXT_NOISE) * denoised + CONTEXT_NOISE * noise[:, 1])
        history_actions.append(actions[:, i])
    return torch.stack(frames, dim=1)


@pytest.mark.parametrize("steps, recycling", [(4, False), (2, False), (1, False), (4, True)])
def test_consistency_sampler_with_cache_equals_full_recomputation(steps, recycling):
    model = tiny_model(seed=1, previous_frame_input=recycling)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randn(2, 2, 3, 16, 16, generator=g)
    prompt_actions = torch.randint(0, 17, (2, 2), generator=g)
    actions = torch.randint(0, 17, (2, 5), generator=g)  # 7 frames > window 4: the window slides
    cached = rollout_cached(model, [4, 9], prompt, prompt_actions, actions, steps)
    full = rollout_full_recompute(model, [4, 9], prompt, prompt_actions, actions, steps)
    assert (cached - full).abs().max() < 1e-4


def test_consistency_sampler_contract():
    model = tiny_model()
    noise = frame_noise([1, 2], [5, 5], (3, 16, 16), extra=3)
    assert noise.shape == (2, 5, 3, 16, 16)
    assert torch.equal(noise[:, :2], frame_noise([1, 2], [5, 5], (3, 16, 16)))  # extra noise leaves the rest
    args = (model, None, None, torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]), noise[:, 0])
    one_euler = generate_frames(*args, 1)
    assert torch.equal(generate_frames(*args, 1, solver="consistency"), one_euler)  # one step: the same
    with pytest.raises(ValueError, match="extra=3"):
        generate_frames(*args, 4, solver="consistency")
    with pytest.raises(ValueError, match="unknown solver"):
        generate_frames(*args, 4, solver="heun")


# ---------------------------------------------------------------------------------------------------------------
# Distillation runs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "synthetic", episodes=3, length=8)


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory):
    return make_teacher(dataset, tmp_path_factory.mktemp("teacher") / "model")


def distill_config(dataset, teacher, out, **kw):
    base = dict(data=str(dataset), teacher=str(teacher), out=str(out), steps=1, batch_size=2, clip_frames=3,
                tangent_warmup=2, warmup_steps=1, lr=1e-3, ema_decay=0.5, progress=False, device="cpu", log_every=1)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def recycling_teacher(dataset, tmp_path_factory):
    return make_teacher(dataset, tmp_path_factory.mktemp("teacher") / "model", seed=1,
                        model_overrides=dict(TINY, previous_frame_input=True, prediction="x"))


@pytest.mark.parametrize("recycling", [False, True])
def test_one_distillation_step_changes_the_weights_and_exports_a_consistency_model(dataset, request, tmp_path,
                                                                                recycling):
    torch.set_num_threads(1)
    teacher = request.getfixturevalue("recycling_teacher" if recycling else "teacher")
    result = distill(distill_config(dataset, teacher, tmp_path / "run", adv_weight=0.5))
    assert result["step"] == 1 and math.isfinite(result["final"]["loss"])
    assert {"scm", "adversarial", "disc", "outcome"} <= set(result["final"])
    student = WorldModel.from_pretrained(tmp_path / "run" / "model")
    assert student.sampling.solver == "consistency" and student.sampling.sampler_steps == 4
    assert student.info.training["step"] == 1
    reference = WorldModel.from_pretrained(teacher)
    changed = [name for (name, a), b in zip(student.dit.state_dict().items(), reference.dit.state_dict().values())
               if not torch.equal(a, b)]
    assert any("blocks" in name for name in changed)
    assert student.prompts is not None or reference.prompts is None


@pytest.mark.parametrize("chunk_end", [dict(stop_at=1), dict(max_minutes=1e-9)])  # a step count or a time limit
def test_distillation_resumes_exactly(dataset, teacher, tmp_path, chunk_end):
    torch.set_num_threads(1)
    straight = distill(distill_config(dataset, teacher, tmp_path / "a", steps=2))
    assert distill(distill_config(dataset, teacher, tmp_path / "b", steps=2, **chunk_end))["step"] == 1
    resumed = distill(distill_config(dataset, teacher, tmp_path / "b", steps=2))
    assert resumed["final"]["loss"] == pytest.approx(straight["final"]["loss"], rel=1e-5, abs=1e-6)
    a = WorldModel.from_pretrained(tmp_path / "a" / "model").dit.state_dict()
    b = WorldModel.from_pretrained(tmp_path / "b" / "model").dit.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_distilled_model_samples_in_the_dream_loop(dataset, teacher, tmp_path):
    """The exported student drives the cached few-step sampler end to end (4, 2 and 1 steps)."""
    distill(distill_config(dataset, teacher, tmp_path / "run", adv_weight=0.0))
    world = WorldModel.from_pretrained(tmp_path / "run" / "model")
    prompt = world.codec.encode(torch.randint(0, 256, (1, 2, 16, 16, 3), dtype=torch.uint8))
    for steps in (4, 2, 1):
        frames = rollout_cached(world.dit, [0], prompt, torch.tensor([[0, 1]]), torch.tensor([[1, 2, 0]]), steps)
        assert frames.shape == (1, 3, 3, 16, 16) and torch.isfinite(frames).all()
