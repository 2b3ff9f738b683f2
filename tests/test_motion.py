"""The view-motion condition: labels read off the frames, a DiT told how the view moves, an outcome head that says it.

The scrolling tile game of `test_tiles` moves its 3x3 view right under action 1 and down under action 2; here its
action 0 is also a move (up) that a wall row at the top of the map stops, so whether the view moves depends on the
frame, as a blocked move in Crafter does.
"""
import numpy as np
import pytest
import torch

from generator.codec import build_tile_codebook, motion_geometry, save_codec
from generator.metrics import NOT_GIVEN_MOTION, SHIFTS, motion_labels
from generator.model import DiT, dit_config
from tiny_world import make_tiny_tile_world, tile_frames, tile_textures

WALL = 5  # the tile id of the wall row at the top of the map


def walled_scroll_game(root, textures, episodes=12, length=24, seed=0):
    """3x3 views of 5-px tiles over a 30x30 map of tiles 0..4 whose top row is WALL; action 0 moves the view up
    (stopped when the view's top row is the wall), 1 right, 2 down. +1 reward when the view's centre becomes tile 0."""
    import gymnasium

    from generator.data import EpisodeWriter

    rng = np.random.default_rng(seed)
    writer = EpisodeWriter(root, game="synthetic-tiles", frame_size=(16, 16), action_space=gymnasium.spaces.Discrete(3),
                           fps=10, policy={"name": "random"})
    for e in range(episodes):
        world = torch.from_numpy(rng.integers(0, WALL, size=(30, 30)))
        world[0] = WALL
        y, x = int(rng.integers(0, 3)), 0
        ids, actions, rewards = [], [0], [0.0]
        for i in range(length + 1):
            ids.append(world[y:y + 3, x:x + 3])
            if i < length:
                a = int(rng.choice(3, p=[0.5, 0.25, 0.25]))
                if a == 0 and y > 0:
                    y -= 1
                x, y = x + (a == 1), y + (a == 2)
                actions.append(a)
                rewards.append(float(world[y + 1, x + 1] == 0))
        terminated = np.zeros(length + 1, bool)
        writer.write({"frames": tile_frames(torch.stack(ids), textures).numpy(), "actions": np.array(actions),
                      "rewards": np.array(rewards, np.float32), "terminated": terminated,
                      "truncated": np.arange(length + 1) == length}, seed=e)
    return root


def tiny_codec(data, path):
    from generator.data import open_datasets

    dataset = open_datasets(data)
    codec = build_tile_codebook([dataset.episode(k)["frames"] for k in range(dataset.num_episodes)], (16, 16),
                                tile_size=5, threshold=0.1)
    codec.config.motion_view, codec.config.motion_player = (3, 3), (-1, -1)  # the whole grid scrolls, no player
    save_codec(codec, path)
    return codec


def test_motion_labels_read_the_view_shift_and_say_when_they_cannot():
    textures = tile_textures(6, seed=3)
    world = torch.randint(0, 6, (6, 6), generator=torch.Generator().manual_seed(0))
    views = torch.stack([world[1:4, 1:4], world[1:4, 2:5], world[1:4, 2:5], world[2:5, 2:5]])  # right, stay, down
    frames = tile_frames(views, textures)[None]  # (1, 4, 16, 16, 3)
    geometry = {"tile": 5, "view": (3, 3), "player": None}
    labels = motion_labels(frames, **geometry)
    # the view moving right carries its content left: SHIFTS (0, -1); moving down carries it up: (-1, 0)
    assert labels.tolist() == [[NOT_GIVEN_MOTION, SHIFTS.index((0, -1)), SHIFTS.index((0, 0)), SHIFTS.index((-1, 0))]]
    no_action = torch.tensor([[False, True, False, True]])
    assert motion_labels(frames, no_action, **geometry)[0, 2] == NOT_GIVEN_MOTION  # an episode start
    field = tile_frames(torch.zeros(1, 3, 3, 3, dtype=torch.long), textures)  # a uniform field fits every shift
    assert motion_labels(field, **geometry).tolist() == [[NOT_GIVEN_MOTION] * 3]
    from generator.codec import CodecConfig

    crafter = motion_geometry(CodecConfig(kind="tiles", codes=4))
    assert crafter == {"tile": 7, "view": (7, 9), "player": (3, 4)}  # the defaults are Crafter's geometry


def test_the_motion_condition_starts_as_a_no_op_and_then_conditions_every_frame():
    torch.manual_seed(0)
    dit = DiT(dit_config("tiles", latent_size=(15, 15), patch_size=5, dim=32, depth=2, heads=2, window_frames=4,
                         action_space={"type": "Discrete", "n": 3, "start": 0}, codebook_size=6, motion_classes=5,
                         motion_view=(3, 3)))
    with torch.no_grad():
        for p in dit.parameters():
            if p.dim() > 1 and not name_is_motion(dit, p):
                p.normal_(0, 0.05)
        dit.codebook.normal_()  # distinct tiles, so the expected tile moves with the code logits
    x = torch.randn(2, 3, 3, 15, 15)
    args = (x, torch.full((2, 3), 0.5), torch.zeros(2, 3, dtype=torch.long), torch.arange(3)[None].expand(2, 3))
    kwargs = dict(previous=torch.randn(2, 3, 3, 15, 15))
    plain = dit(*args, **kwargs).velocity
    moved = torch.tensor([[0, 1, 2], [3, 4, 5]])
    # zero-initialised embeddings: the motion only shifts each frame's previous-frame input, exactly as shifting the
    # previous frame by hand does (the view is the whole 3x3 grid here)
    shifted = kwargs["previous"].clone()
    for b in range(2):
        for t in range(3):
            m = int(moved[b, t])
            if m < len(SHIFTS):
                dy, dx = SHIFTS[m]
                source = kwargs["previous"][b, t].reshape(3, 3, 5, 3, 5)  # (C, rows, 5, cols, 5)
                target = source.clone()
                for y in range(3):
                    for x in range(3):
                        if 0 <= y - dy < 3 and 0 <= x - dx < 3:
                            target[:, y, :, x] = source[:, y - dy, :, x - dx]
                shifted[b, t] = target.reshape(3, 15, 15)
    by_hand = dit(*args, previous=shifted).velocity
    assert torch.allclose(dit(*args, motion=moved, **kwargs).velocity, by_hand, atol=1e-6)
    stayed = torch.tensor([[0, 0, 5], [5, 0, 0]])  # none, or not given: the input as it was
    assert torch.equal(dit(*args, motion=stayed, **kwargs).velocity, plain)
    with torch.no_grad():
        dit.motion.cond.weight.normal_(0, 1.0)
        dit.motion.tokens.weight.normal_(0, 1.0)
    told = dit(*args, motion=moved, **kwargs).velocity
    assert not torch.allclose(told, by_hand)
    other = moved.clone()
    other[1, 2] = 0
    again = dit(*args, motion=other, **kwargs).velocity
    assert torch.equal(again[0], told[0]) and not torch.allclose(again[1, 2], told[1, 2])  # per row, per frame
    with pytest.raises(ValueError, match="indices in"):
        dit(*args, motion=torch.full((2, 3), 6), **kwargs)
    plain_dit = DiT(dit_config("tiles", latent_size=(15, 15), patch_size=5, dim=32, depth=2, heads=2, window_frames=4,
                               action_space={"type": "Discrete", "n": 3, "start": 0}, codebook_size=6))
    with pytest.raises(ValueError, match="without a motion condition"):
        plain_dit(*args, motion=moved, **kwargs)


def name_is_motion(dit, parameter) -> bool:
    return any(parameter is p for name, p in dit.named_parameters() if name.startswith("motion."))


@pytest.fixture(scope="module")
def walled(tmp_path_factory):
    """The walled game's data, its codec, a motion-conditioned tile world fine-tuned from a plain one, and an
    outcome model with a motion head."""
    from generator.outcome import OutcomeTrainConfig, train_outcome
    from generator.train import TrainConfig, train

    root = tmp_path_factory.mktemp("motion")
    textures = tile_textures(6, seed=1)
    data = walled_scroll_game(root / "game", textures)
    tiny_codec(data, root / "codec")
    base = dict(data=str(data), model="tiles", codec=str(root / "codec"), batch_size=4, clip_frames=4, lr=3e-3,
                warmup_steps=2, ckpt_every=100, log_every=5, eval_windows=2, progress=False, sampler_steps=1,
                model_overrides={"dim": 32, "depth": 2, "heads": 2, "window_frames": 4, "reward_values": [0.0, 1.0]})
    train(TrainConfig(**base, out=str(root / "plain"), steps=4))
    # a fine-tune adds the condition to a model without it, self-rollouts included
    tuned = train(TrainConfig(**{**base, "model_overrides": {**base["model_overrides"], "motion_classes": 5}},
                              out=str(root / "tuned"), steps=6, init=str(root / "plain" / "model"),
                              self_rollout_prob=0.5, self_rollout_frames=2))
    outcome = train_outcome(OutcomeTrainConfig(world=str(root / "tuned" / "model"), data=str(data),
                                               out=str(root / "outcome"), steps=300, batch_size=64, lr=3e-3, dim=32,
                                               depth=2, heads=2, val_fraction=0.3, eval_every=0, log_every=100,
                                               progress=False, motion=True))
    return root, data, tuned, outcome


def test_the_outcome_motion_head_learns_when_a_move_is_stopped(walled):
    from generator.outcome import load_outcome

    root, data, tuned, outcome = walled
    assert tuned["step"] == 6
    report = outcome["val"]["motion"]
    # stayed: up-moves into the wall; moved: the rest. Both are read off the frame before and the action.
    assert report["moved_steps"] >= 50 and report["stayed_steps"] >= 10
    assert report["moved_agreement"] >= 0.9 and report["stayed_agreement"] >= 0.9
    model = load_outcome(root / "outcome")
    assert model.config.motion_classes == len(SHIFTS)
    before, actions = torch.zeros(3, 9, dtype=torch.long), torch.tensor([0, 1, 2])
    assert model.motion_logits(before, actions).shape == (3, 5)
    # the dream reads the action once, before the frame, and hands the reading to the outcome model after it
    after = torch.ones(3, 9, dtype=torch.long)
    once, twice = model(before, after, actions, action_reading=model.read_action(before, actions)), \
        model(before, after, actions)
    for a, b in zip(once, twice):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)


def test_the_dream_draws_each_rows_motion_from_its_own_stream(walled, tmp_path):
    from generator.checkpoint import CheckpointError
    from generator.outcome import OutcomeConfig, OutcomeModel, attach_outcome
    from generator.pretrained import WorldModel, export_model
    from generator.sampler import advance_rows, prompt_rows

    root, data, _, _ = walled
    world = export_model(root / "tuned" / "model", tmp_path / "world", outcome=root / "outcome")
    world = WorldModel.from_pretrained(tmp_path / "world")
    assert world.dit.config.motion_classes == 5 and world.outcome.config.motion_classes == 5
    prompt = world.prompts["frames"][:3, :2]
    latents = world.codec.encode(prompt)
    prompt_actions = world.prompts["actions"][:3, :2]
    has_action = world.prompts["has_action"][:3, :2]

    def step(rows, actions, motion=None):
        cache = world.dit.new_cache(len(rows))
        seeds = [10 + r for r in rows]
        previous = prompt_rows(world.dit, world.codec, world.sampling, cache, None, latents[rows],
                               prompt_actions[rows], has_action[rows], seeds)
        codes = world.codec.indices(latents[rows, -1])
        return advance_rows(world.dit, world.codec, world.sampling, cache, None, actions, [2] * len(rows), seeds,
                            previous, outcome=world.outcome, shown_codes=codes, motion=motion)

    actions = torch.tensor([0, 1, 2])
    together = step([0, 1, 2], actions)
    assert together["motion"].shape == (3,) and together["motion"].dtype == torch.long
    alone = step([2], actions[2:])
    assert torch.equal(alone["motion"], together["motion"][2:])  # a row's draw does not depend on the batch
    assert torch.equal(alone["latents"], together["latents"][2:])
    assert torch.equal(step([0, 1, 2], actions)["motion"], together["motion"])  # same seeds, same draws
    told = torch.tensor([4, 4, 4])
    assert torch.equal(step([0, 1, 2], actions, motion=told)["motion"], told)  # a caller that knows it decides
    sharp = export_model(tmp_path / "world", tmp_path / "sharp", motion_temperature=0.0)
    sharp = WorldModel.from_pretrained(tmp_path / "sharp")
    assert sharp.sampling.motion_temperature == 0.0
    reading = world.outcome.motion_logits(world.codec.indices(latents[:, -1]), actions)
    world.sampling = sharp.sampling
    assert torch.equal(step([0, 1, 2], actions)["motion"], reading.argmax(-1))  # the most likely motion
    without = OutcomeModel(OutcomeConfig(codes=world.outcome.config.codes, grid=(3, 3),
                                         action_space=world.dit.config.action_space, reward_values=(0.0, 1.0), dim=8,
                                         depth=1, heads=1), world.codec.codebook.cpu())
    with pytest.raises(CheckpointError, match="motion classes"):
        attach_outcome(world, without)
    import json

    config_path = tmp_path / "world" / "config.json"
    config = json.loads(config_path.read_text())
    config["codec"]["motion_view"] = [2, 3]  # labels read in another geometry than the DiT shifts
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shifts a view"):
        WorldModel.from_pretrained(tmp_path / "world")


def test_the_motion_temperature_sharpens_each_rows_draw_and_zero_takes_the_most_likely():
    from generator.sampler import draw_motion

    logits = torch.tensor([[0.0, 1.0, 0.5, -1.0, 0.2]]).repeat(2000, 1)
    seeds, positions = list(range(2000)), [3] * 2000
    counts = {t: torch.bincount(draw_motion(logits, seeds, positions, t), minlength=5) for t in (1.0, 0.25)}
    assert counts[1.0][1] < 0.5 * 2000 < counts[0.25][1]  # the most likely class gains share as the draw sharpens
    assert (counts[1.0] > 0).all()
    assert torch.equal(draw_motion(logits, seeds, positions, 0.0), torch.ones(2000, dtype=torch.long))
    assert torch.equal(draw_motion(logits, seeds, positions), draw_motion(logits, seeds, positions, 1.0))
    assert torch.equal(draw_motion(logits[:5], seeds[:5], positions[:5], 0.25),
                       draw_motion(logits, seeds, positions, 0.25)[:5])  # each row from its own stream
    with pytest.raises(ValueError, match="motion_temperature must be >= 0"):
        draw_motion(logits, seeds, positions, -0.5)


def test_a_shift_carries_the_view_but_not_the_player_sprite():
    from generator.model import shift_maps

    maps = shift_maps((4, 3), (3, 3), player=(1, 1))  # a 3x3 view over one status row, the player in the middle
    own = torch.arange(12).reshape(4, 3)
    right = maps[SHIFTS.index((0, 1))].reshape(4, 3)  # the content moves one tile right: the player walked left
    assert right[0].tolist() == [0, 0, 1]  # the left column entering the view keeps its own (stale) tokens
    assert right[1].tolist() == [3, 3, 5]  # the player's tile takes the tile it walked onto; its sprite stays put
    assert torch.equal(right[3], own[3])  # the status row never moves
    assert torch.equal(maps[NOT_GIVEN_MOTION], own.flatten()) and torch.equal(maps[0], own.flatten())


def test_sleep_motion_labels_say_when_the_view_falls_asleep_and_read_the_shift_across_waking():
    from generator.metrics import SLEEP_MOTION_CLASSES, grey_view, motion_shift, sleep_look

    textures = tile_textures(6, seed=3)
    world = torch.randint(0, 6, (6, 6), generator=torch.Generator().manual_seed(0))
    views = torch.stack([world[1:4, 1:4], world[1:4, 2:5], world[1:4, 2:5], world[1:4, 2:5], world[2:5, 2:5]])
    frames = tile_frames(views, textures)[None].clone()  # (1, 5, 16, 16, 3): moves right, stays twice, down
    frames[0, 2:4] = sleep_look(frames[0, 2:4])  # asleep on frames 2 and 3, awake again (and moved) on frame 4
    geometry = {"tile": 5, "view": (3, 3), "player": None}
    assert grey_view(frames, 5, (3, 3)).tolist() == [[False, False, True, True, False]]
    labels = motion_labels(frames, classes=SLEEP_MOTION_CLASSES, **geometry)
    asleep = len(SHIFTS)  # the "stayed" class into a sleeping view
    assert labels.tolist() == [[SLEEP_MOTION_CLASSES, SHIFTS.index((0, -1)), asleep, asleep, SHIFTS.index((-1, 0))]]
    # without the sleep classes, falling asleep and waking cannot be read as shifts
    assert motion_labels(frames, **geometry)[0, 2] == NOT_GIVEN_MOTION
    assert motion_labels(frames, **geometry)[0, 4] == NOT_GIVEN_MOTION
    # a dark, uniform sleeping view still came without a shift
    dark = sleep_look(tile_frames(torch.zeros(1, 2, 3, 3, dtype=torch.long), textures))
    assert motion_labels(dark, classes=SLEEP_MOTION_CLASSES, **geometry).tolist() == [[SLEEP_MOTION_CLASSES, asleep]]
    # the shift a class applies: awake or asleep alike; "not given" is the identity map's row
    assert motion_shift(torch.tensor([0, 3, 5, 8, 10]), SLEEP_MOTION_CLASSES).tolist() == [0, 3, 0, 3,
                                                                                            NOT_GIVEN_MOTION]
    assert motion_shift(torch.tensor([2, 5]), len(SHIFTS)).tolist() == [2, NOT_GIVEN_MOTION]


def test_a_motion_condition_widened_with_sleep_starts_as_the_source_and_then_tells_sleep_apart():
    from generator.metrics import SLEEP_MOTION_CLASSES
    from generator.model import widen_motion_state

    def build(classes):
        torch.manual_seed(0)
        return DiT(dit_config("tiles", latent_size=(15, 15), patch_size=5, dim=32, depth=2, heads=2, window_frames=4,
                              action_space={"type": "Discrete", "n": 3, "start": 0}, codebook_size=6,
                              motion_classes=classes, motion_view=(3, 3)))

    source, widened = build(len(SHIFTS)), build(SLEEP_MOTION_CLASSES)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.05)
    widened.load_state_dict(widen_motion_state(source.state_dict()))
    x = torch.randn(1, 3, 3, 15, 15)
    args = (x, torch.full((1, 3), 0.5), torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None])
    previous = torch.randn(1, 3, 3, 15, 15)
    shifts = torch.tensor([[1, 0, len(SHIFTS)]])  # right, stayed, not given
    expected = source(*args, previous=previous, motion=shifts).code_logits
    awake = widened(*args, previous=previous, motion=torch.tensor([[1, 0, SLEEP_MOTION_CLASSES]])).code_logits
    asleep = widened(*args, previous=previous, motion=torch.tensor([[6, 5, SLEEP_MOTION_CLASSES]])).code_logits
    assert torch.allclose(awake, expected, atol=1e-6) and torch.allclose(asleep, expected, atol=1e-6)
    with torch.no_grad():
        widened.motion.cond.weight[5:SLEEP_MOTION_CLASSES].normal_(0, 1.0)  # training tells the sleep half apart
    told = widened(*args, previous=previous, motion=torch.tensor([[1, 0, 10]])).code_logits
    assert torch.allclose(told, expected, atol=1e-6)
    told = widened(*args, previous=previous, motion=torch.tensor([[6, 5, 10]])).code_logits
    assert not torch.allclose(told[:, 0], expected[:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="awake or a sleeping view"):
        dit_config("tiles", motion_classes=7)


def test_the_motion_report_of_a_sleep_head_scores_shifts_and_the_sleeping_view():
    from generator.outcome import OutcomeTrainConfig, motion_report

    # (real, predicted): stayed asleep twice (one called awake), a move right called right-awake, an unclear step
    pairs = torch.tensor([[5, 5], [5, 0], [1, 1], [0, 5], [-1, 3]])
    report = motion_report(pairs, 10)
    assert report["moved_steps"] == 1 and report["moved_agreement"] == 1.0
    assert report["stayed_steps"] == 3 and report["stayed_agreement"] == 1.0  # every stayed step's shift is right
    assert report["asleep"]["precision"] == 0.5 and report["asleep"]["recall"] == 0.5
    with pytest.raises(ValueError, match="give motion too"):
        OutcomeTrainConfig(world="w", data="d", out="o", sleep=True)


def test_a_sleep_conditioned_world_fine_tunes_from_a_shift_one_and_its_dream_draws_the_joint_class(walled, tmp_path):
    from generator.metrics import SLEEP_MOTION_CLASSES
    from generator.outcome import OutcomeTrainConfig, train_outcome
    from generator.pretrained import WorldModel, export_model
    from generator.sampler import advance_rows, prompt_rows
    from generator.train import TrainConfig, train

    root, data, _, _ = walled
    overrides = {"dim": 32, "depth": 2, "heads": 2, "window_frames": 4, "reward_values": [0.0, 1.0],
                 "motion_classes": SLEEP_MOTION_CLASSES}
    train(TrainConfig(data=str(data), model="tiles", codec=str(root / "codec"), batch_size=4, clip_frames=4, lr=3e-3,
                      warmup_steps=2, ckpt_every=100, log_every=5, eval_windows=2, progress=False, sampler_steps=1,
                      model_overrides=overrides, out=str(tmp_path / "sleep"), steps=2,
                      init=str(root / "tuned" / "model")))
    from generator.outcome import load_outcome

    # the sleep head starts from the shift-only outcome model: each shift's logit copied to awake and asleep
    tune = dict(world=str(tmp_path / "sleep" / "model"), data=str(data), steps=1, batch_size=64, lr=0.0, dim=32,
                depth=2, heads=2, val_fraction=0.3, eval_every=0, log_every=100, progress=False, motion=True,
                sleep=True, init=str(root / "outcome"))
    train_outcome(OutcomeTrainConfig(**tune, out=str(tmp_path / "o")))
    source, widened = load_outcome(root / "outcome"), load_outcome(tmp_path / "o")
    assert widened.config.motion_classes == SLEEP_MOTION_CLASSES
    before, after, actions = torch.randint(0, 6, (4, 9)), torch.randint(0, 6, (4, 9)), torch.tensor([0, 1, 2, 0])
    theirs, ours = source(before, after, actions), widened(before, after, actions)
    assert torch.allclose(ours.reward_logits, theirs.reward_logits, atol=1e-5)
    assert torch.allclose(ours.motion_logits, theirs.motion_logits.repeat(1, 2), atol=1e-5)
    with pytest.raises(ValueError, match="differs"):
        train_outcome(OutcomeTrainConfig(**{**tune, "dim": 16}, out=str(tmp_path / "o2")))
    with pytest.raises(Exception, match="--sleep"):  # a shift-only outcome model cannot drive it
        export_model(tmp_path / "sleep" / "model", tmp_path / "bad", outcome=root / "outcome")
    export_model(tmp_path / "sleep" / "model", tmp_path / "world", outcome=tmp_path / "o")
    world = WorldModel.from_pretrained(tmp_path / "world")
    assert world.dit.config.motion_classes == world.outcome.config.motion_classes == SLEEP_MOTION_CLASSES
    latents = world.codec.encode(world.prompts["frames"][:2, :2])
    cache = world.dit.new_cache(2)
    previous = prompt_rows(world.dit, world.codec, world.sampling, cache, None, latents,
                           world.prompts["actions"][:2, :2], world.prompts["has_action"][:2, :2], [3, 4])
    step = advance_rows(world.dit, world.codec, world.sampling, cache, None, torch.tensor([0, 1]), [2, 2], [3, 4],
                        previous, outcome=world.outcome, shown_codes=world.codec.indices(latents[:, -1]))
    assert ((step["motion"] >= 0) & (step["motion"] < SLEEP_MOTION_CLASSES)).all()
    assert torch.equal(step["shift"], step["motion"] % len(SHIFTS))  # the shift the class applies
