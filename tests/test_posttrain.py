"""AAPT post-training: the student-forced training rollout is the inference rollout, gradients flow through the
KV cache within a segment (not across), and a post-training step trains both players, exports and resumes."""
import math

import pytest
import torch

from generator.grad_kv_cache import GradKVCache
from generator.posttrain import PosttrainConfig, posttrain, rollout_segments
from generator.pretrained import WorldModel
from generator.rollout import open_loop_rollout
from generator.sampler import frame_noise
from tiny_world import TINY, make_dataset, make_teacher
from tiny_world import make_tiny_world


def training_rollout(world, prompt_frames, prompt_actions, actions, seeds, segment_frames):
    """`rollout_segments` fed the noise `open_loop_rollout` draws from `frame_noise`."""
    b, p = prompt_frames.shape[:2]
    k = actions.shape[1]
    prompt = world.codec.encode(prompt_frames)
    shape = tuple(prompt.shape[2:])
    prompt_noise = torch.stack([frame_noise(seeds, [i] * b, shape)[:, 1] for i in range(p)], dim=1)
    noise = torch.stack([frame_noise(seeds, [p + i] * b, shape) for i in range(k)], dim=1)  # (B, K, 2, ...)
    has_action = torch.ones(b, p, dtype=torch.bool)
    has_action[:, 0] = False
    cache = GradKVCache.for_model(world.dit, b)
    segments = rollout_segments(world.dit, cache, prompt, prompt_actions, has_action, actions, noise[:, :, 0],
                                noise[:, :, 1], prompt_noise, world.sampling.context_noise, segment_frames)
    return segments


@pytest.mark.parametrize("previous_frame_input", [False, True])
def test_student_forced_rollout_equals_the_inference_rollout(previous_frame_input):
    tiny_world = make_tiny_world(previous_frame_input=previous_frame_input)
    g = torch.Generator().manual_seed(0)
    prompt_frames = torch.randint(0, 256, (2, 2, 16, 16, 3), generator=g, dtype=torch.uint8)
    prompt_actions = torch.randint(0, 5, (2, 2), generator=g)
    actions = torch.randint(0, 5, (2, 6), generator=g)  # 8 frames > window 4: the cache ring wraps
    seeds = [3, 8]
    inference = open_loop_rollout(tiny_world, prompt_frames, prompt_actions, actions, seeds, sampler_steps=1)
    segments = training_rollout(tiny_world, prompt_frames, prompt_actions, actions, seeds, segment_frames=4)
    training = torch.cat([frames for _, frames in segments], dim=1)
    assert training.requires_grad
    assert (training.detach() - inference["latents"]).abs().max() < 1e-5


def test_gradients_flow_through_the_cache_within_a_segment_only(tiny_world):
    g = torch.Generator().manual_seed(1)
    prompt_frames = torch.randint(0, 256, (1, 1, 16, 16, 3), generator=g, dtype=torch.uint8)
    prompt_actions = torch.zeros(1, 1, dtype=torch.long)
    actions = torch.tensor([[1, 2]])
    weight = tiny_world.dit.blocks[0].attn.qkv.weight

    def second_frame_grad(segment_frames):
        tiny_world.dit.zero_grad(set_to_none=True)
        values = []
        for start, frames in training_rollout(tiny_world, prompt_frames, prompt_actions, actions, [5], segment_frames):
            if start + frames.shape[1] == 2:  # the segment holding frame 1
                frames[:, -1].square().sum().backward()
            values.append(frames.detach())
        return torch.cat(values, dim=1), weight.grad.clone()

    together, through_cache = second_frame_grad(segment_frames=2)
    apart, detached = second_frame_grad(segment_frames=1)
    assert torch.equal(together, apart)  # detaching changes no value ...
    assert not torch.allclose(through_cache, detached)  # ... only where gradients go


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "synthetic", episodes=3, length=8)


@pytest.fixture(scope="module")
def generator_dir(dataset, tmp_path_factory):
    return make_teacher(dataset, tmp_path_factory.mktemp("student") / "model", seed=1)


@pytest.fixture(scope="module")
def recycling_generator_dir(dataset, tmp_path_factory):
    return make_teacher(dataset, tmp_path_factory.mktemp("student") / "model", seed=2,
                        model_overrides=dict(TINY, previous_frame_input=True, prediction="x"))


def posttrain_config(dataset, generator_dir, out, **kw):
    base = dict(data=str(dataset), generator=str(generator_dir), out=str(out), steps=1, batch_size=2,
                prompt_frames=1, rollout_frames=4, segment_frames=2, lr=1e-3, disc_lr=1e-3, progress=False,
                device="cpu", log_every=1)
    base.update(kw)
    return PosttrainConfig(**base)


@pytest.mark.parametrize("student_forcing, recycling", [(True, False), (False, False), (True, True), (False, True)])
def test_one_posttrain_step_trains_both_players_and_exports_a_one_step_model(dataset, request, tmp_path,
                                                                          student_forcing, recycling):
    torch.set_num_threads(1)
    generator_dir = request.getfixturevalue("recycling_generator_dir" if recycling else "generator_dir")
    out = tmp_path / "run"
    result = posttrain(posttrain_config(dataset, generator_dir, out, student_forcing=student_forcing))
    metrics = result["final"]
    assert result["step"] == 1 and all(math.isfinite(v) for v in metrics.values())
    assert {"gen", "disc", "r1", "r2", "outcome"} <= set(metrics)
    world = WorldModel.from_pretrained(out / "model")
    assert world.sampling.sampler_steps == 1 and world.sampling.solver == "consistency"
    assert world.info.training["posttrain_config"]["student_forcing"] == student_forcing
    start = WorldModel.from_pretrained(generator_dir).dit.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in world.dit.state_dict().items() if "blocks" in k)
    from generator.checkpoint import load_checkpoint

    _, state = load_checkpoint(out / "train_state")
    disc = state["disc"]
    assert any(not torch.equal(disc[f"backbone.{k}"], v) for k, v in start.items() if "blocks" in k)


def test_posttraining_resumes_exactly(dataset, generator_dir, tmp_path):
    torch.set_num_threads(1)
    straight = posttrain(posttrain_config(dataset, generator_dir, tmp_path / "a", steps=2))
    posttrain(posttrain_config(dataset, generator_dir, tmp_path / "b", steps=2, stop_at=1))
    resumed = posttrain(posttrain_config(dataset, generator_dir, tmp_path / "b", steps=2))
    for key in ("gen", "disc", "r1"):
        assert resumed["final"][key] == pytest.approx(straight["final"][key], rel=1e-5, abs=1e-6)


def test_a_time_limit_ends_the_run_saved_and_resumable(dataset, generator_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = posttrain(posttrain_config(dataset, generator_dir, out, steps=3, max_minutes=1e-9))  # out of time at once
    assert first["step"] == 1 and not (out / "metrics.json").exists()
    saved, _ = saved_training_state(out)
    assert saved["step"] == 1 and (out / "model" / "config.json").exists()
    assert posttrain(posttrain_config(dataset, generator_dir, out, steps=3))["step"] == 3


def test_the_rollout_regression_pulls_generated_frames_to_the_recorded_ones(dataset, generator_dir):
    """With `regression_weight`, repeated generator updates on one batch (same noise) shrink the generated frames'
    MSE to the recorded frames; the term is reported and off by default."""
    from generator.data import EpisodeDataset
    from generator.distill import FrameDiscriminator, parse_blocks
    from generator.posttrain import posttrain_step

    torch.manual_seed(0)
    config = posttrain_config(dataset, generator_dir, "unused", rollout_frames=4, regression_weight=10.0, lr=3e-3)
    world = WorldModel.from_pretrained(generator_dir)
    gen = world.dit.requires_grad_(True).train()
    backbone = WorldModel.from_pretrained(generator_dir).dit
    disc = FrameDiscriminator(backbone, parse_blocks("all", backbone.config.depth)).train()
    gen_optimizer = torch.optim.RMSprop(gen.parameters(), lr=config.lr, alpha=0.9)
    disc_optimizer = torch.optim.RMSprop(disc.parameters(), lr=config.disc_lr, alpha=0.9)
    batch = EpisodeDataset(dataset, window=5, split="train").sample(2, torch.Generator().manual_seed(0))
    latents = world.codec.encode(batch["frames"])
    errors = []
    for _ in range(8):
        metrics = posttrain_step(gen, disc, latents, batch, config, 0.0, torch.Generator().manual_seed(1),
                                 gen_optimizer, disc_optimizer)
        errors.append(metrics["regression"])
    assert errors[-1] < 0.6 * errors[0], errors
    plain = posttrain_step(gen, disc, latents, batch, posttrain_config(dataset, generator_dir, "unused",
                           rollout_frames=4), 0.0, torch.Generator().manual_seed(1), gen_optimizer, disc_optimizer)
    assert "regression" not in plain


def saved_training_state(out) -> tuple[dict, dict]:
    """(config.json, the nested rest: optimizer states, generators) of a post-training run's train_state/."""
    from generator.checkpoint import load_checkpoint, unflatten_state

    saved, tensors = load_checkpoint(out / "train_state")
    return saved, unflatten_state(tensors["state"], saved["state"])


def test_resuming_with_new_learning_rates_uses_them(dataset, generator_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    posttrain(posttrain_config(dataset, generator_dir, out, steps=1))
    posttrain(posttrain_config(dataset, generator_dir, out, steps=2, lr=3e-4, disc_lr=2e-4, disc_head_lr=5e-3))
    saved, rest = saved_training_state(out)
    assert saved["step"] == 2
    assert [g["lr"] for g in rest["gen_optimizer"]["param_groups"]] == [3e-4]
    assert [g["lr"] for g in rest["disc_optimizer"]["param_groups"]] == [5e-3, 2e-4]  # heads, backbone
    assert {int(s["step"]) for s in rest["gen_optimizer"]["state"].values()} == {2}  # moments kept, not reset


def test_discriminator_warmup_trains_only_the_discriminator(dataset, generator_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = posttrain(posttrain_config(dataset, generator_dir, out, steps=1, disc_warmup_steps=1,
                                        disc_head_lr=1e-2))
    assert "gen" not in result["final"] and math.isfinite(result["final"]["disc"])
    start = WorldModel.from_pretrained(generator_dir).dit.state_dict()
    after = WorldModel.from_pretrained(out / "model").dit.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in after.items())  # the generator did not move ...
    from generator.checkpoint import load_checkpoint

    _, state = load_checkpoint(out / "train_state")
    assert any(not torch.equal(state["disc"][f"backbone.{k}"], v) for k, v in start.items() if "blocks" in k)


def test_several_discriminator_updates_per_generator_update(dataset, generator_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = posttrain(posttrain_config(dataset, generator_dir, out, steps=2, disc_warmup_steps=1, disc_steps=3))
    assert result["step"] == 2 and "gen" in result["final"]
    _, rest = saved_training_state(out)

    def updates(optimizer_state):
        return {int(s["step"]) for s in optimizer_state["state"].values()}

    assert updates(rest["gen_optimizer"]) == {1}  # the warm-up step does not move the generator
    assert updates(rest["disc_optimizer"]) == {1 + 3}  # warm-up: one update; then 3 per generator update
    with pytest.raises(ValueError, match="disc_steps"):
        posttrain_config(dataset, generator_dir, tmp_path, disc_steps=0)


@pytest.mark.parametrize("student_forcing", [True, False])
def test_a_trained_stretch_after_a_gradient_free_burn_in(dataset, generator_dir, tmp_path, student_forcing):
    """`train_frames` < `rollout_frames`: a random stretch of whole segments trains, both players move."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = posttrain(posttrain_config(dataset, generator_dir, out, steps=2, rollout_frames=6, segment_frames=2,
                                        train_frames=2, student_forcing=student_forcing))
    assert result["step"] == 2 and all(math.isfinite(v) for v in result["final"].values())
    start = WorldModel.from_pretrained(generator_dir).dit.state_dict()
    after = WorldModel.from_pretrained(out / "model").dit.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in after.items() if "blocks" in k)


def test_bad_train_frames_are_refused(dataset, generator_dir, tmp_path):
    with pytest.raises(ValueError, match="train_frames"):
        posttrain_config(dataset, generator_dir, tmp_path, rollout_frames=6, segment_frames=4, train_frames=2)
    with pytest.raises(ValueError, match="train_frames"):
        posttrain_config(dataset, generator_dir, tmp_path, rollout_frames=4, segment_frames=2, train_frames=6)
