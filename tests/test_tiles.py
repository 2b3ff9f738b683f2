"""Tile tokens: the nearest-tile codebook, snapping, the codebook head, reward classes and their sampling."""
import numpy as np
import pytest
import torch

from generator.checkpoint import CheckpointError
from generator.codec import CodecConfig, build_tile_codebook, float_to_frames, load_codec, save_codec
from generator.pretrained import WorldModel
from generator.sampler import advance_rows, draw_codes, frame_noise, prompt_rows, sample_outcomes
from tiny_world import make_tiny_tile_world, tile_frames, tile_textures


def test_codebook_keeps_one_code_per_distinct_tile_and_round_trips_exactly():
    textures = tile_textures(5)
    ids = torch.randint(0, 5, (20, 3, 3), generator=torch.Generator().manual_seed(1))
    ids[0] = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 2, 3]])
    frames = tile_frames(ids, textures)  # (20, 16, 16, 3), black outside the 15x15 tile area
    codec = build_tile_codebook([frames[:10], frames[10:]], (16, 16), tile_size=5, threshold=0.5)
    assert codec.config.codes == 5 and codec.config.tile_grid == (3, 3)
    assert codec.latent_shape == (3, 15, 15)
    assert torch.equal(float_to_frames(codec.decode(codec.encode(frames))), frames)
    assert codec.indices(codec.encode(frames)).shape == (20, 9)


def test_a_tile_near_a_code_joins_it_and_codes_never_move():
    textures = tile_textures(2)
    frames = tile_frames(torch.zeros(1, 3, 3, dtype=torch.long), textures)
    nudged = frames.clone()
    nudged[0, :5, :5] = (nudged[0, :5, :5].int() + 3).clamp(0, 255).to(torch.uint8)  # a few grey levels off
    codec = build_tile_codebook([frames, nudged], (16, 16), tile_size=5, threshold=0.75)
    assert codec.config.codes == 1  # the nudged tile is within the threshold: no new code
    assert torch.equal(float_to_frames(codec.decode(codec.encode(nudged))), frames)  # snapped to the first tile
    far = tile_frames(torch.ones(1, 3, 3, dtype=torch.long), textures)
    assert build_tile_codebook([frames, far], (16, 16), tile_size=5, threshold=0.75).config.codes == 2


def test_snap_is_per_row_and_deterministic():
    world, textures = make_tiny_tile_world()
    codec = world.codec
    ids = torch.randint(0, 6, (4, 3, 3), generator=torch.Generator().manual_seed(2))
    clean = codec.encode(tile_frames(ids, textures))
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    snapped = codec.snap(noisy)
    assert torch.equal(snapped, clean)
    assert torch.equal(torch.cat([codec.snap(noisy[i:i + 1]) for i in range(4)]), snapped)
    assert torch.equal(codec.snap(noisy), snapped)


def test_tile_codec_config_is_checked():
    with pytest.raises(ValueError, match="does not fit"):
        CodecConfig(kind="tiles", frame_size=(16, 16), tile_size=7, tile_grid=(3, 3), codes=4)
    with pytest.raises(ValueError, match="codes >= 1"):
        CodecConfig(kind="tiles", frame_size=(16, 16), tile_size=5, tile_grid=(3, 3), codes=0)


def test_saved_tile_codec_loads_and_a_mismatched_codebook_is_refused(tmp_path):
    world, _ = make_tiny_tile_world()
    save_codec(world.codec, tmp_path / "codec")
    assert torch.equal(load_codec(tmp_path / "codec").codebook, world.codec.codebook)
    world.save_pretrained(tmp_path / "model")
    assert torch.equal(WorldModel.from_pretrained(tmp_path / "model").dit.codebook, world.codec.codebook)
    other, _ = make_tiny_tile_world(seed=5)  # same sizes, other tiles
    other.dit.load_state_dict(world.dit.state_dict())
    other.save_pretrained(tmp_path / "mixed")  # the DiT's codebook is world's, the codec's is other's
    with pytest.raises(CheckpointError, match="different codebooks"):
        WorldModel.from_pretrained(tmp_path / "mixed")


@torch.no_grad()
def rollout(world, seeds, steps=6, rows=None):
    dit, codec, sampling = world.dit, world.codec, world.sampling
    prompts = world.prompts
    b = len(seeds)
    cache = dit.new_cache(b)
    latents = codec.encode(prompts["frames"][:b])
    previous = prompt_rows(dit, codec, sampling, cache, None, latents, prompts["actions"][:b],
                           prompts["has_action"][:b], seeds)
    frames, outcomes = [], []
    actions = torch.arange(steps)[None].repeat(b, 1) % int(world.dit.config.action_space["n"])
    for i in range(steps):
        out = advance_rows(dit, codec, sampling, cache, None, actions[:, i], [2 + i] * b, seeds, previous)
        previous = out["committed"]
        frames.append(out["latents"])
        outcomes.append((out["sampled_reward"], out["terminated"]))
    return torch.stack(frames, 1), outcomes


@pytest.mark.parametrize("solver, steps", [("euler", 1), ("euler_codes", 2), ("categorical", 1), ("categorical", 2)])
def test_generated_frames_are_made_of_codebook_tiles(solver, steps):
    world, _ = make_tiny_tile_world(solver=solver, sampler_steps=steps)
    frames, _ = rollout(world, [1, 2, 3])
    assert torch.equal(world.codec.snap(frames), frames)
    ids = world.codec.indices(frames)
    assert torch.equal(world.codec.from_indices(ids), frames)


@pytest.mark.parametrize("solver, steps", [("euler", 1), ("euler_codes", 2), ("categorical", 1), ("categorical", 2)])
def test_a_row_does_not_depend_on_its_batch(solver, steps):
    world, _ = make_tiny_tile_world(solver=solver, sampler_steps=steps)
    with torch.no_grad():
        world.dit.copy_log_scale.fill_(-20.0)  # no copy bias: the sampled codes are uncertain
    together, _ = rollout(world, [7, 8, 9])
    alone, _ = rollout(world, [7])  # the same prompt clip (row 0) and seed, without the other rows
    assert torch.equal(together[0], alone[0])
    other_seed, _ = rollout(world, [70])
    if solver == "categorical":  # the seed decides the sampled codes
        assert not torch.equal(together[0], other_seed[0])


def test_code_draws_follow_the_temperature_and_the_seed():
    world, textures = make_tiny_tile_world()
    logits = torch.tensor([[[2.0, 1.0, 0.0, 0.0, 0.0, 0.0]] * 9] * 2000)  # (R, N, K): code 0 most likely
    uniforms = torch.randn(2000, 3, 15, 15, generator=torch.Generator().manual_seed(0))
    codes = lambda t: world.codec.indices(draw_codes(world.dit, logits, uniforms, t))  # noqa: E731
    share = lambda t: (codes(t) == 0).float().mean().item()  # noqa: E731
    expected = logits[0, 0].softmax(-1)[0].item()  # 0.61
    assert abs(share(1.0) - expected) < 0.02  # the draws follow the logits
    assert share(0.5) > share(1.0) + 0.1 and share(1e-3) == 1.0  # colder: toward the most likely code
    assert torch.equal(codes(1.0), codes(1.0))  # a function of the uniforms' source alone
    with pytest.raises(ValueError, match="temperature must be > 0"):
        world.sampling.temperature = 0.0
        rollout(world, [1])


def test_multi_step_categorical_keeps_the_last_passs_most_likely_code():
    from generator.sampler import code_tiles, denoise, extra_draws

    world, _ = make_tiny_tile_world(solver="categorical", sampler_steps=2)
    dit = world.dit
    with torch.no_grad():  # codes that depend on the input frame, no pull toward the previous frame
        dit.copy_log_scale.fill_(-20.0)
        dit.code_head.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(3, 3, 15, 15, generator=g)
    renoise = torch.randn(3, extra_draws("categorical", 2), 3, 15, 15, generator=g)
    args = (dit, None, None, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), noise, 2)
    kw = dict(solver="categorical", previous=world.codec.encode(world.prompts["frames"][:3, -1]))
    x, out = denoise(*args, renoise=renoise, **kw)
    assert torch.equal(x, code_tiles(dit, out.code_logits[:, 0].argmax(-1)))
    assert torch.equal(denoise(*args, renoise=renoise, **kw)[0], x)  # same draws, same frame
    other, _ = denoise(*args, renoise=torch.randn(renoise.shape, generator=g), **kw)
    assert not torch.equal(other, x)  # the first pass's draws reach the frame
    with pytest.raises(ValueError, match="needs renoise"):
        denoise(*args, **kw)


def test_euler_codes_steps_from_the_most_likely_codes_and_is_euler_at_one_step():
    from generator.sampler import code_tiles, denoise

    world, _ = make_tiny_tile_world(sampler_steps=2)
    dit = world.dit
    with torch.no_grad():  # codes that depend on the input frame, no pull toward the previous frame
        dit.copy_log_scale.fill_(-20.0)
        dit.code_head.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 3, 15, 15, generator=torch.Generator().manual_seed(3))
    previous = world.codec.encode(world.prompts["frames"][:3, -1])
    zeros = torch.zeros(3, dtype=torch.long)
    args = (dit, None, None, zeros, zeros, noise)
    one_euler, _ = denoise(*args, 1, solver="euler", previous=previous)
    assert torch.equal(denoise(*args, 1, solver="euler_codes", previous=previous)[0], one_euler)
    inputs = []
    hook = dit.register_forward_hook(lambda module, a, output: inputs.append(a[0][:, 0].clone()))
    x, _ = denoise(*args, 2, solver="euler_codes", previous=previous)
    hook.remove()
    first = dit(noise[:, None], torch.ones(3, 1), zeros[:, None], zeros[:, None], previous=previous[:, None])
    codes = code_tiles(dit, first.code_logits[:, 0].argmax(-1))
    torch.testing.assert_close(inputs[1], 0.5 * codes + 0.5 * noise)  # real tiles re-noised to the second pass's time
    assert not torch.equal(x, denoise(*args, 2, solver="euler", previous=previous)[0])
    dit.config.codebook_size, size = 0, dit.config.codebook_size  # as a model without a codebook head
    try:
        with pytest.raises(ValueError, match="euler_codes solver needs a model with a codebook head"):
            denoise(*args, 2, solver="euler_codes", previous=previous)
    finally:
        dit.config.codebook_size = size


def test_untrained_codebook_model_copies_the_previous_frame():
    world, textures = make_tiny_tile_world()
    with torch.no_grad():
        world.dit.code_head.weight.zero_()
    frames, _ = rollout(world, [4, 5], steps=3)
    last_prompt = world.codec.encode(world.prompts["frames"][:2, -1])
    for i in range(3):
        assert torch.equal(frames[:, i], last_prompt)


def test_outcome_classes_are_sampled_from_the_rows_own_stream():
    logits = torch.tensor([[0.0, 0.0, 0.0]] * 4)  # three equally likely reward classes
    values = torch.tensor([-1.0, 0.0, 1.0])
    termination = torch.zeros(4)  # p = 1/2
    a = sample_outcomes([1, 2, 3, 4], [10] * 4, torch.zeros(4), termination, logits, values)
    b = sample_outcomes([1, 2, 3, 4], [10] * 4, torch.zeros(4), termination, logits, values)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seeds and positions, same outcomes
    alone = sample_outcomes([3], [10], torch.zeros(1), termination[:1], logits[:1], values)
    assert alone[0][0] == a[0][2] and alone[1][0] == a[1][2]  # a row's draw ignores its batch
    many = sample_outcomes(list(range(3000)), [0] * 3000, torch.zeros(3000), torch.zeros(3000),
                           torch.zeros(3000, 3), values)
    counts = np.bincount((many[0] + 1).long().numpy(), minlength=3) / 3000
    assert np.allclose(counts, 1 / 3, atol=0.04) and abs(float(many[1].float().mean()) - 0.5) < 0.04
    sure = sample_outcomes([1, 2], [0, 0], torch.zeros(2), torch.full((2,), 30.0), torch.tensor([[0, 0, 30.0]] * 2),
                           values)
    assert sure[0].tolist() == [1.0, 1.0] and sure[1].tolist() == [True, True]


def test_rollout_outcomes_repeat_with_the_seed():
    world, _ = make_tiny_tile_world()
    _, first = rollout(world, [11, 12])
    _, again = rollout(world, [11, 12])
    for (r1, t1), (r2, t2) in zip(first, again):
        assert torch.equal(r1, r2) and torch.equal(t1, t2)
    assert {float(v) for r, _ in first for v in r} <= {-1.0, 0.0, 1.0}


def scrolling_tile_game(root, textures, episodes=6, length=20, seed=0, policy="random", achievements=False):
    """A 16x16 grid game: a 3x3 view of 5-px tiles over a random tile map; action 1 scrolls right, 2 down, 0 stays;
    a reward of +1 when the view's centre tile is tile 0, and the last episode ends by termination.

    With `achievements`, the game counts how often the centre became tile 0 and tile 1 (counters "saw_0", "saw_1",
    recorded in the dataset) and pays +1 only the first time each counter rises in an episode, as Crafter does."""
    import gymnasium

    from generator.data import EpisodeWriter

    rng = np.random.default_rng(seed)
    names = ["saw_0", "saw_1"] if achievements else None
    writer = EpisodeWriter(root, game="synthetic-tiles", frame_size=(16, 16), action_space=gymnasium.spaces.Discrete(3),
                           fps=10, policy={"name": policy}, achievements=names)
    for e in range(episodes):
        world = torch.from_numpy(rng.integers(0, len(textures), size=(40, 40)))
        y, x = 0, 0
        ids, actions, rewards = [], [0], [0.0]
        counts = [np.zeros(2, np.int32)]
        for i in range(length + 1):
            ids.append(world[y:y + 3, x:x + 3])
            if i < length:
                a = int(rng.integers(0, 3))
                x, y = x + (a == 1), y + (a == 2)
                actions.append(a)
                centre = int(world[y + 1, x + 1])
                count = counts[-1].copy()
                if a and centre < 2:
                    count[centre] += 1
                new = bool(((count > 0) & (counts[-1] == 0)).any())
                counts.append(count)
                rewards.append(float(new) if achievements else float(centre == 0))
        terminated = np.zeros(length + 1, bool)
        terminated[-1] = e == episodes - 1
        episode = {"frames": tile_frames(torch.stack(ids), textures).numpy(), "actions": np.array(actions),
                   "rewards": np.array(rewards, np.float32), "terminated": terminated,
                   "truncated": ~terminated & (np.arange(length + 1) == length)}
        if achievements:
            episode["achievements"] = np.stack(counts)
        writer.write(episode, seed=e)
    return root


def test_tile_training_runs_with_every_option_and_resumes(tmp_path):
    import json

    from generator.codec import learn_tile_places
    from generator.data import open_datasets
    from generator.train import TrainConfig, train

    textures = tile_textures(6)
    first = scrolling_tile_game(tmp_path / "a", textures, seed=0)
    second = scrolling_tile_game(tmp_path / "b", textures, seed=1, policy="sticky")
    data = f"{first},{second}"
    assert open_datasets(data, window=4).num_episodes == 12
    codec = build_tile_codebook([open_datasets(first).episode(k)["frames"] for k in range(6)], (16, 16), tile_size=5,
                                threshold=0.1)
    # tile places learned from a few frames only: the training frames show codes where these never did, and their
    # targets must then be codes of the place (else the masked code logits would make the loss infinite)
    codec = learn_tile_places(codec, [open_datasets(first).episode(0)["frames"][::4]])
    assert not codec.places.all()
    save_codec(codec, tmp_path / "codec")
    config = TrainConfig(
        data=data, out=str(tmp_path / "run"), model="tiles", codec=str(tmp_path / "codec"), steps=12, batch_size=4,
        clip_frames=4, lr=3e-3, warmup_steps=2, ckpt_every=6, log_every=2, eval_windows=2, progress=False,
        event_fraction=0.5, self_rollout_prob=0.5, self_rollout_frames=2, sampler_steps=1,
        model_overrides={"dim": 32, "depth": 2, "heads": 2, "window_frames": 4, "reward_values": [0.0, 1.0]},
    )
    train(TrainConfig(**{**config.__dict__, "stop_at": 6}))
    resumed = train(config)
    assert resumed["step"] == 12
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["loss"])
    world = WorldModel.from_pretrained(tmp_path / "run" / "model")
    assert torch.equal(world.dit.code_places, codec.places)
    assert world.dit.config.codebook_size == codec.config.codes and world.dit.config.reward_values == (0.0, 1.0)
    assert torch.equal(world.dit.codebook, codec.codebook)
    frames, _ = rollout(world, [1, 2])
    assert torch.equal(world.codec.snap(frames), frames)


@pytest.mark.parametrize("commit_pass, steps, levels", [(True, 1, {1.0, 0.1}), (False, 2, {1.0, 0.5})])
def test_self_rollout_replaces_the_middle_of_a_clip_by_snapped_predictions(commit_pass, steps, levels):
    from generator.train import self_rollout

    world, textures = make_tiny_tile_world(sampler_steps=steps)
    world.sampling.commit_pass = commit_pass
    seen = set()  # flow times of the passes over one new frame: a one-pass model rolls out with its own steps
    world.dit.register_forward_hook(
        lambda module, args, output: seen.update(args[1].flatten().tolist()) if args[0].shape[1] == 1 else None)
    ids = torch.randint(0, 6, (2, 5, 3, 3), generator=torch.Generator().manual_seed(4))
    latents = world.codec.encode(tile_frames(ids, textures))  # (2, 5, 3, 15, 15)
    batch = {"actions": torch.zeros(2, 5, dtype=torch.long), "is_first": torch.tensor([[True] + [False] * 4] * 2),
             "valid": torch.ones(2, 5, dtype=torch.bool)}
    with torch.no_grad():
        world.dit.code_head.weight.zero_()  # an untrained model copies: the rolled frames repeat frame r - 1
    rolled, learn = self_rollout(world.dit, world.codec, world.sampling, latents, batch, 2, torch.Generator())
    r = 5 - 1 - 2
    assert torch.equal(rolled[:, :r], latents[:, :r]) and torch.equal(rolled[:, -1], latents[:, -1])
    for i in range(r, 4):
        assert torch.equal(rolled[:, i], latents[:, r - 1])
    assert learn.tolist() == [[True, True, False, False, True]] * 2
    assert {round(level, 4) for level in seen} == levels
    with pytest.raises(ValueError, match="no real prompt"):
        self_rollout(world.dit, world.codec, world.sampling, latents, batch, 4, torch.Generator())


def test_rare_event_windows_are_found_and_oversampled(tmp_path):
    from generator.data import EpisodeDataset

    root = scrolling_tile_game(tmp_path / "d", tile_textures(6), episodes=3, length=10)
    dataset = EpisodeDataset(root, window=3)
    events = dataset.window_events()
    assert len(events) == len(dataset)
    for i in range(len(dataset)):
        item = dataset[i]
        has = bool(((item["rewards"][1:] != 0) | item["terminated"][1:])[item["valid"][1:]].any())
        assert bool(events[i]) == has
    weights = torch.where(torch.from_numpy(events), 1.0, 0.0)
    batch = dataset.sample(64, torch.Generator().manual_seed(0), weights=weights)
    assert bool(((batch["rewards"][:, 1:] != 0) | batch["terminated"][:, 1:]).any(1).all())


def test_fidelity_evaluation_writes_every_figure(tmp_path):
    import json

    from agents.evaluation.fidelity import FidelityConfig, evaluate_fidelity

    world, textures = make_tiny_tile_world(reward_values=(0.0, 1.0), n_actions=3)
    world.save_pretrained(tmp_path / "model")
    sticky = scrolling_tile_game(tmp_path / "sticky", textures, episodes=3, length=14, seed=3)
    config = FidelityConfig(models=[f"tiles={tmp_path / 'model'}@1", f"cat={tmp_path / 'model'}@1"],
                            streams=[f"sticky={sticky}"], out=str(tmp_path / "fid"), context_frames=2, horizon=4,
                            windows=4, rollout_frames=20, rollout_rows=2, health_span=5, tile_size=5, view_tiles=(3, 3), player_tile=(1, 1),
                            move_actions=(1, 2), rule_span=8,
                            progress=False)
    summary = evaluate_fidelity(config)
    for name in ("fidelity.json", "fidelity.md", "open_loop_sticky.png", "health.png", "strip.png"):
        assert (tmp_path / "fid" / name).exists()
    row = summary["models"]["tiles"]
    assert len(row["streams"]["sticky"]["open_loop"]["psnr"]) == 4
    assert row["rollout"]["last"]["within_threshold"] == 1.0  # snapped frames are codebook tiles
    assert summary["real_reference"]["within_threshold"] == 1.0
    assert 0.0 <= row["rollout"]["last"]["tiles_in_place"] <= 1.0 and "player_visible" in summary["real_reference"]
    outcomes = row["streams"]["sticky"]["outcomes"]
    assert outcomes["reward_positive"]["count"] == 3 * 14  # every real transition read once
    assert summary["move_rule_reference"]["free_rate"] == 1.0  # real frames obey the rule learned from others
    rates, real_rates = row["rollout"]["outcomes"], summary["outcome_reference"]
    assert rates["steps"] == 2 * 20 and 0 <= rates["positive"] <= 100 and rates["termination"] < 1e-3  # bias -20
    assert real_rates["steps"] == 3 * 14 and real_rates["termination"] == 100 / 42  # the last episode ends
    assert set(row["move_rule"]) == {"all", "last"} and "Move rule" in (tmp_path / "fid" / "fidelity.md").read_text()
    assert json.loads((tmp_path / "fid" / "fidelity.json").read_text())["config"]["horizon"] == 4
    # the redrawn-game reference replays Crafter only; this synthetic game is named as skipped, with the reason
    assert summary["redrawn_reference"]["streams"] == {}
    assert "replays Crafter" in summary["redrawn_reference"]["skipped"]["sticky"]
    assert "No redrawn-game reference" in (tmp_path / "fid" / "fidelity.md").read_text()


def test_tiles_out_of_place_and_a_missing_player_are_seen():
    from agents.evaluation.fidelity import FidelityConfig, health, tile_places

    world, textures = make_tiny_tile_world()
    # 3x3 tiles: a 2x3 world view over one inventory row; the player stands at (1, 1)
    config = FidelityConfig(tile_size=5, view_tiles=(2, 3), player_tile=(1, 1))
    real = torch.tensor([[[0, 1, 2], [2, 3, 0], [4, 5, 4]], [[1, 1, 0], [0, 3, 2], [5, 4, 5]]])
    places = tile_places(tile_frames(real, textures), world.codec, config)
    assert places.world.tolist() == [True, True, True, True, False, False]  # glyphs 4, 5 only in the inventory
    assert places.player.tolist() == [False, False, False, True, False, False]
    dream = torch.tensor([[[0, 4, 2], [2, 3, 0], [4, 5, 4]], [[1, 1, 0], [0, 0, 2], [5, 4, 5]]])
    figures = health(tile_frames(dream, textures), world.codec, config, places)
    assert figures["tiles_in_place"].tolist() == pytest.approx([5 / 6, 1.0])  # a glyph in the world
    assert figures["player_visible"].tolist() == [1.0, 0.0]  # the second frame lost its player
    assert health(tile_frames(real, textures), world.codec, config, places)["tiles_in_place"].tolist() == [1.0, 1.0]


def test_a_model_without_copy_prior_has_no_copy_term():
    from generator.model import DiT, dit_config

    config = dict(latent_size=(15, 15), patch_size=5, dim=32, depth=1, heads=2, window_frames=4, codebook_size=6)
    without = DiT(dit_config("tiles", copy_prior=0, **config))
    assert not hasattr(without, "copy_log_scale")
    with_prior = DiT(dit_config("tiles", **config))
    assert float(with_prior.copy_log_scale.detach().exp()) * 12.0 == pytest.approx(8.0)


def test_tile_places_keep_each_position_to_the_codes_real_frames_show_there(tmp_path):
    from generator.codec import learn_tile_places

    world, textures = make_tiny_tile_world()
    # real frames: the centre (the "player") always holds code 5, which nothing else ever shows
    ids = torch.randint(0, 5, (30, 3, 3), generator=torch.Generator().manual_seed(0))
    ids[:, 1, 1] = 5
    placed = learn_tile_places(world.codec, [tile_frames(ids[:15], textures), tile_frames(ids[15:], textures)])
    assert placed.config.tile_places and torch.equal(placed.codebook, world.codec.codebook)
    assert placed.places[4].tolist() == [False] * 5 + [True]  # the centre: only code 5
    assert not placed.places[[0, 1, 2, 3, 5, 6, 7, 8], 5].any()  # code 5 nowhere else
    real = tile_frames(ids, textures)
    assert torch.equal(placed.decode(placed.encode(real)), world.codec.decode(world.codec.encode(real)))
    # a frame with the player off centre and grass on the centre snaps back into place, tile by tile
    wrong = ids[:1].clone()
    wrong[0, 0, 0], wrong[0, 1, 1] = 5, 0
    snapped = placed.indices(placed.encode(tile_frames(wrong, textures)))[0]
    assert snapped[4] == 5 and snapped[0] != 5
    # saved and loaded with the world model, binding the code head: generated frames keep their places
    world.codec = placed
    world.prompts["frames"] = tile_frames(ids[:4, None].repeat(1, 2, 1, 1), textures)
    world.save_pretrained(tmp_path / "placed")
    loaded = WorldModel.from_pretrained(tmp_path / "placed")
    assert torch.equal(loaded.codec.places, placed.places) and torch.equal(loaded.dit.code_places, placed.places)
    with torch.no_grad():  # without places this model would draw code 5 everywhere
        loaded.dit.code_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 8.0]))
    loaded.sampling.solver = "categorical"
    frames, _ = rollout(loaded, [1, 2], steps=4)
    codes = loaded.codec.indices(frames)
    assert (codes[..., 4] == 5).all() and not (codes[..., [0, 1, 2, 3, 5, 6, 7, 8]] == 5).any()


def test_export_learns_tile_places_and_older_codecs_load_without(tmp_path):
    from generator.pretrained import export_model

    world, textures = make_tiny_tile_world(reward_values=(0.0, 1.0), n_actions=3)
    world.save_pretrained(tmp_path / "model")
    assert WorldModel.from_pretrained(tmp_path / "model").codec.places is None  # a codec saved without places
    data = scrolling_tile_game(tmp_path / "data", textures, episodes=4, length=10)
    exported = export_model(tmp_path / "model", tmp_path / "placed", places_from=str(data))
    assert exported.codec.places is not None and exported.codec.places.any(-1).all()
    assert WorldModel.from_pretrained(tmp_path / "placed").info.training["export"]["places_from"] == str(data.resolve())
    with pytest.raises(ValueError, match="do not fit"):
        world.dit.bind_places(torch.ones(4, 6, dtype=torch.bool))


def test_build_codebook_command_learns_codes_and_places(tmp_path):
    from generator.codec import CodebookConfig, build_codebook

    data = scrolling_tile_game(tmp_path / "data", tile_textures(6), episodes=6, length=12)
    report = build_codebook(CodebookConfig(data=str(data), out=str(tmp_path / "codec"), tile_size=5, frame_stride=1))
    codec = load_codec(tmp_path / "codec")
    assert report["codes"] == codec.config.codes == 6  # one code per texture
    assert report["val_psnr"] > 90  # exact reconstruction (PSNR of identical frames is capped)
    assert codec.config.tile_places and codec.places.shape == (9, 6)
    assert report["allowed_codes_per_place"] == [int(codec.places.sum(-1).min()), int(codec.places.sum(-1).max())]


def walker_frames(world_map: torch.Tensor, actions: list[int], textures: torch.Tensor, start=(32, 32),
                  walk_through: bool = False, never_move: bool = False) -> torch.Tensor:
    """Frames `(T, 26, 26, 3)` of a 5x5 view of 5-px tiles centred on a player (texture 5) over `world_map`:
    actions 1-4 move left/right/up/down unless the target tile is a wall (texture 0), anything else stays.
    `walk_through` ignores walls and `never_move` never moves: two broken "dreams"."""
    y, x = start
    views = []
    for i in range(len(actions) + 1):
        view = world_map[y - 2:y + 3, x - 2:x + 3].clone()
        view[2, 2] = 5
        views.append(view)
        if i < len(actions) and actions[i] in (1, 2, 3, 4) and not never_move:
            dy, dx = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}[actions[i]]
            if walk_through or world_map[y + dy, x + dx] != 0:
                y, x = y + dy, x + dx
    return tile_frames(torch.stack(views), textures, frame_size=(26, 26))


def test_the_move_rule_is_learned_from_real_frames_and_scores_broken_physics():
    from agents.evaluation.fidelity import FidelityConfig, learn_move_rule, move_rule_agreement
    from generator.codec import build_tile_codebook

    textures = tile_textures(6)
    g = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, 5, (64, 64), generator=g) for _ in range(4)]  # texture 0 (a wall) on a fifth of tiles
    runs = [torch.randint(0, 6, (30,), generator=g).tolist() for _ in range(4)]  # actions 0..5: moves are 1..4
    real = [walker_frames(m, a, textures) for m, a in zip(maps, runs)]
    codec = build_tile_codebook(real, (26, 26), tile_size=5, tile_grid=(5, 5), threshold=0.1)
    config = FidelityConfig(tile_size=5, view_tiles=(5, 5), player_tile=(2, 2))
    # episodes store the action into each frame, with padding on the first
    rule = learn_move_rule([(f, torch.tensor([0] + a)) for f, a in zip(real[:3], runs[:3])], codec, config,
                           min_moves=2)
    assert rule.shifts == {1: 1, 2: 2, 3: 3, 4: 4}  # moving left shifts the content right, and so on
    wall = int(codec.indices(codec.encode(tile_frames(torch.zeros(1, 5, 5, dtype=torch.long), textures,
                                                      (26, 26))[None]))[0, 0, 0])
    assert bool(rule.known[wall]) and not bool(rule.walkable[wall])
    assert bool(rule.walkable[rule.known].sum() >= 3)  # the floor textures take the player

    def score(**broken):
        frames = walker_frames(maps[3], runs[3], textures, **broken)
        return move_rule_agreement(frames[None], torch.tensor(runs[3])[None], codec, rule, config)

    honest = score()
    assert honest["free_rate"] == honest["blocked_rate"] == honest["other_rate"] == 1.0
    assert honest["free_steps"] > 0 and honest["blocked_steps"] > 0 and honest["other_steps"] > 0
    ghost = score(walk_through=True)  # walks through walls
    assert ghost["blocked_rate"] == 0.0 and ghost["free_rate"] == 1.0 and ghost["other_rate"] == 1.0
    frozen = score(never_move=True)  # ignores its moves
    assert frozen["free_rate"] == 0.0 and frozen["blocked_rate"] in (None, 1.0) and frozen["other_rate"] == 1.0


def test_termination_windows_get_their_own_share_of_the_draws(tmp_path):
    from generator.data import EpisodeDataset
    from generator.train import TrainConfig, rare_window_weights

    root = scrolling_tile_game(tmp_path / "d", tile_textures(6), episodes=4, length=12)  # the last episode terminates
    dataset = EpisodeDataset(root, window=3)
    ends = dataset.window_events(terminations_only=True)
    assert ends.sum() == 1 and ends[-1]  # the window that holds the last step of the last episode
    events = dataset.window_events()
    assert (events >= ends).all() and events.sum() > ends.sum()
    both = rare_window_weights(dataset, TrainConfig(data="-", out="-", event_fraction=0.5, termination_fraction=0.2))
    assert float(both[torch.from_numpy(ends)].sum()) == pytest.approx(0.2)
    assert float(both[torch.from_numpy(events & ~ends)].sum()) == pytest.approx(0.3)
    assert float(both.sum()) == pytest.approx(1.0)
    old = rare_window_weights(dataset, TrainConfig(data="-", out="-", event_fraction=0.5))  # terminations are events
    assert float(old[torch.from_numpy(events)].sum()) == pytest.approx(0.5)
    assert rare_window_weights(dataset, TrainConfig(data="-", out="-")) is None


def test_windows_under_event_actions_count_as_events(tmp_path):
    """`event_actions` (Crafter's sleep): a window holding one of those actions after its first step is drawn with
    the rare events, whatever its rewards."""
    from generator.data import EpisodeDataset
    from generator.train import TrainConfig, rare_window_weights

    root = scrolling_tile_game(tmp_path / "d", tile_textures(6), episodes=3, length=10)
    dataset = EpisodeDataset(root, window=3)
    plain = dataset.window_events()
    action = int(dataset[0]["actions"][1])
    flagged = dataset.window_events(actions=(action,))
    for i in range(len(dataset)):
        item = dataset[i]
        taken = item["actions"][1:][item["valid"][1:]]
        assert bool(flagged[i]) == (bool(plain[i]) or bool((taken == action).any()))
    assert flagged.sum() > plain.sum()
    weights = rare_window_weights(dataset, TrainConfig(data="-", out="-", event_fraction=0.5, event_actions=(action,)))
    assert float(weights[torch.from_numpy(flagged)].sum()) == pytest.approx(0.5)
    from generator.train import resolve_clip_frames

    with pytest.raises(ValueError, match="event-fraction"):
        resolve_clip_frames(TrainConfig(data="-", out="-", model="tiny", event_actions=(action,)))


def test_carried_tiles_keep_the_pixels_they_were_shown_with_under_the_views_shift():
    world, textures = make_tiny_tile_world()
    codec = world.codec  # 16x16 frames, a 3x3 grid of 5-px tiles; the last pixel row and column are black
    g = torch.Generator().manual_seed(4)
    before_ids = torch.randint(0, 6, (2, 3, 3), generator=g)
    before = tile_frames(before_ids, textures)
    lit = (before.short() + torch.randint(-4, 5, before.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    lit[:, 15:], lit[:, :, 15:] = 0, 0  # outside the tile area stays as the codec fills it
    codes_before = codec.frame_codes(lit)[0]
    assert torch.equal(codes_before, before_ids.flatten(1))  # the other light is within reach of the same codes
    # Row 0 stays in place: its middle column changes. Row 1's grid shifts one column right: column 0 is new.
    after_ids = before_ids.clone()
    after_ids[0, :, 1] = (before_ids[0, :, 1] + 1) % 6
    after_ids[1, :, 1:] = before_ids[1, :, :-1]
    after_ids[1, :, 0] = (before_ids[1, :, 0] + 2) % 6
    decoded = tile_frames(after_ids, textures)
    own = torch.arange(9).reshape(3, 3)
    shifted = own.clone()
    shifted[:, 1:] = own[:, :-1]
    source = torch.stack([own.flatten(), shifted.flatten()])
    shown = codec.carry_tiles(decoded, after_ids.flatten(1), lit, codes_before, source)

    def tile(frames, r, y, x):
        return frames[r, 5 * y:5 * y + 5, 5 * x:5 * x + 5]

    for y in range(3):
        for x in range(3):
            assert torch.equal(tile(shown, 0, y, x), tile(decoded if x == 1 else lit, 0, y, x))
            expected = tile(decoded, 1, y, 0) if x == 0 else tile(lit, 1, y, x - 1)  # carried along the shift
            assert torch.equal(tile(shown, 1, y, x), expected)
    assert torch.equal(shown[:, 15:], decoded[:, 15:]) and torch.equal(shown[:, :, 15:], decoded[:, :, 15:])
    # per row: a row's frame does not depend on the others
    alone = codec.carry_tiles(decoded[1:], after_ids[1:].flatten(1), lit[1:], codes_before[1:], source[1:])
    assert torch.equal(alone[0], shown[1])
    with pytest.raises(ValueError, match="carry_tiles needs frames"):
        codec.carry_tiles(decoded, after_ids.flatten(1)[:, :4], lit, codes_before, source)


def test_carried_tiles_change_only_what_is_shown_and_need_a_tile_codec(tmp_path):
    from generator.pretrained import export_model
    from generator.rollout import open_loop_rollout
    from tiny_world import make_tiny_world

    world, _ = make_tiny_tile_world()
    prompt = (world.prompts["frames"][:3].short() + 3).clamp(0, 255).to(torch.uint8)  # another light
    actions = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(1))
    args = (prompt, world.prompts["actions"][:3], actions, [1, 2, 3])
    plain = open_loop_rollout(world, *args)
    world.sampling.carry_tiles = True
    carried = open_loop_rollout(world, *args)
    assert torch.equal(carried["latents"], plain["latents"])  # the model reads the same codes
    assert torch.equal(carried["reward"], plain["reward"])
    assert not torch.equal(carried["frames"], plain["frames"])
    assert torch.equal(world.codec.frame_codes(carried["frames"])[0], world.codec.frame_codes(plain["frames"])[0])
    pixels = make_tiny_world()
    pixels.save_pretrained(tmp_path / "pixels")
    with pytest.raises(ValueError, match="carry_tiles needs a tile-codec model"):
        export_model(tmp_path / "pixels", tmp_path / "out", carry_tiles=True)
    assert not (tmp_path / "out").exists()


def test_speculated_frames_carry_the_tiles_plain_stepping_carries():
    from world_env.env import WorldModelVecEnv

    world, _ = make_tiny_tile_world()
    world.sampling.carry_tiles = True
    prompt = {"frames": (world.prompts["frames"][:3].short() + 3).clamp(0, 255).to(torch.uint8).numpy(),
              "actions": world.prompts["actions"][:3].numpy()}
    actions = np.array([[1, 1, 2], [1, 1, 2], [1, 0, 2], [3, 0, 2], [3, 0, 4], [3, 0, 4]])

    def frames(**kw):
        env = WorldModelVecEnv(world, num_envs=3, device="cpu", **kw)
        env.reset(seed=[1, 2, 3], options={"prompt": prompt})
        out = [env.step(a)[0] for a in actions]
        stats = env.speculation_stats if kw else None
        env.close()
        return np.stack(out), stats

    plain, _ = frames()
    speculated, stats = frames(speculation_depth=2, speculation="sync")
    assert stats["accepted"] > 0 and stats["rejected"] > 0
    assert np.array_equal(speculated, plain)
