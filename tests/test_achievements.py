"""Achievements pay once per episode: recorded counters, an outcome model that reads which one rose, and a dream
that keeps each row's unlocked set (Crafter's rule, which two frames alone cannot know)."""
import gymnasium
import numpy as np
import pytest
import torch

from generator.data import DatasetError, EpisodeDataset, EpisodeWriter
from generator.outcome import OutcomeTrainConfig, dataset_transitions, event_labels, load_outcome, train_outcome
from generator.pretrained import WorldModel, export_model
from test_tiles import scrolling_tile_game
from tiny_world import make_tiny_tile_world


def _episode(length=4, counts=None):
    frames = np.zeros((length + 1, 8, 8, 3), np.uint8)
    episode = {"frames": frames, "actions": np.array([0] + [1] * length), "rewards": np.zeros(length + 1, np.float32),
               "terminated": np.zeros(length + 1, bool), "truncated": np.arange(length + 1) == length}
    if counts is not None:
        episode["achievements"] = np.asarray(counts, np.int32)
    return episode


def _writer(root, achievements=None):
    return EpisodeWriter(root, game="g", frame_size=(8, 8), action_space=gymnasium.spaces.Discrete(2), fps=5,
                         policy={"name": "random"}, achievements=achievements)


def test_achievement_counters_round_trip_and_bad_ones_are_refused(tmp_path):
    counts = [[0, 0], [0, 0], [1, 0], [2, 0], [2, 1]]
    writer = _writer(tmp_path / "a", ["wood", "stone"])
    writer.write(_episode(counts=counts), seed=3)
    data = EpisodeDataset(tmp_path / "a", verify="checksum")
    assert data.achievements == ["wood", "stone"]
    assert torch.equal(data.episode(0)["achievements"], torch.tensor(counts, dtype=torch.int32))
    assert torch.equal(data.read_steps(0, 2, 4)["achievements"], torch.tensor(counts[2:4], dtype=torch.int32))
    assert "achievements" not in EpisodeDataset(tmp_path / "a", window=3)[0]  # windows keep the core arrays
    with pytest.raises(ValueError, match="never decrease"):
        writer.write(_episode(counts=[[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]))
    with pytest.raises(ValueError, match="missing arrays"):
        writer.write(_episode())
    with pytest.raises(ValueError, match="declares no achievement counters"):
        _writer(tmp_path / "b").write(_episode(counts=counts))
    with pytest.raises(ValueError, match="achievements="):  # resuming with other counters
        _writer(tmp_path / "a", ["wood"])
    assert EpisodeDataset(tmp_path / "a").num_episodes == 1  # nothing written by the refused calls
    _writer(tmp_path / "c").write(_episode())  # a dataset without counters reads as before
    assert EpisodeDataset(tmp_path / "c").achievements == [] and "achievements" not in EpisodeDataset(
        tmp_path / "c").episode(0)
    (tmp_path / "a" / "episode_000000" / "achievements.memmap").write_bytes(b"\0" * 8)
    with pytest.raises(DatasetError, match="achievements"):
        EpisodeDataset(tmp_path / "a")


def test_crafter_records_counters_whose_first_rises_are_its_achievement_rewards(tmp_path):
    from world_env.collect import collect

    collect("crafter", tmp_path / "crafter", episodes=2, policy="explorer", seed=4, max_steps=150, progress=False)
    data = EpisodeDataset(tmp_path / "crafter")
    assert len(data.achievements) == 22 and data.achievements[-1] == "wake_up"
    unlocks = 0
    for k in range(data.num_episodes):
        episode = data.episode(k)
        labels = event_labels(episode["achievements"], episode["rewards"], 1.0)
        # crafter pays +1 exactly when a counter first rises; the rest of its reward is the health change
        assert torch.equal(labels["new"], episode["rewards"][1:] > 0.5)
        assert torch.all(labels["rest"].abs() < 0.95)
        unlocks += int(labels["new"].sum())
    assert unlocks >= 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny tile world, its scrolling game that pays each of two achievements once per episode, and outcome models
    trained with and without reading the counters."""
    root = tmp_path_factory.mktemp("achievements")
    world, textures = make_tiny_tile_world(reward_values=(0.0, 1.0), n_actions=3)
    world.save_pretrained(root / "model")
    data = scrolling_tile_game(root / "game", textures, episodes=12, length=30, seed=5, achievements=True)
    results = {}
    for events, name in ((True, "transition"), (False, "transition"), (True, "action")):
        out = root / (f"run_{events}" if name == "transition" else f"run_{name}")
        # the action's effect on a neighbouring tile takes a second layer and longer to learn
        steps, depth = (600, 2) if name == "action" else (250, 1)
        config = OutcomeTrainConfig(world=str(root / "model"), data=str(data), out=str(out), steps=steps, batch_size=64,
                                    lr=3e-3, dim=32, depth=depth, heads=2, val_fraction=0.3, eval_every=0, log_every=50,
                                    progress=False, events=events, event_input=name)
        results[events if name == "transition" else name] = train_outcome(config)
    return root, world, data, results


def test_reading_the_counters_finds_rewards_two_frames_cannot(trained):
    root, world, data, results = trained
    held_out = dataset_transitions(world.codec, str(data), "val", 0.3)
    assert held_out.achievements == ("saw_0", "saw_1")
    repeated = int(((held_out.event > 0) & ~held_out.rest.bool() & (held_out.rewards == 0)).sum())
    assert repeated >= 5  # counters that rose again and paid nothing: not a function of the two frames
    with_events, without = results[True]["val"], results[False]["val"]
    assert with_events["event"]["precision"] >= 0.9 and with_events["event"]["recall"] >= 0.9
    assert with_events["event_class"] >= 0.9
    paid = with_events["reward_positive"]
    assert paid["precision"] >= 0.9 and paid["recall"] >= 0.9
    # the same network without the counters cannot tell a first visit from a later one
    assert without["reward_positive"]["precision"] is None or without["reward_positive"]["precision"] < 0.8 \
        or without["reward_positive"]["recall"] < 0.8
    assert load_outcome(root / "run_True").config.events == ("saw_0", "saw_1")


def test_events_read_off_the_action_ignore_items_a_dream_draws_from_nowhere(trained):
    root, world, data, results = trained
    val = results["action"]["val"]
    # on real play the state before and the action tell the event as well as the whole transition does
    assert val["event"]["precision"] >= 0.9 and val["event"]["recall"] >= 0.9
    assert val["reward_positive"]["precision"] >= 0.9 and val["reward_positive"]["recall"] >= 0.9
    held_out = dataset_transitions(world.codec, str(data), "val", 0.3)
    real = held_out.event > 0
    # the same frames after, but the player stood still (action 0): in this game nothing can have risen, yet the
    # frame after shows the centre tile that counts. A dream that drew it from nowhere is paid only by the model
    # that reads the frame after.
    still = torch.zeros_like(held_out.actions)
    reading = {}
    for name, run in (("transition", "run_True"), ("action", "run_action")):
        model = load_outcome(root / run)
        assert model.config.event_input == name
        with torch.no_grad():
            logits = model(held_out.before.long()[real], held_out.after.long()[real], still[real])
        reading[name] = float(logits.event_logits.softmax(-1)[:, 1:].sum(-1).mean())
    assert reading["action"] < 0.1 < reading["transition"]


def _world(root, tmp_path, event_bias=None):
    """The tiny world with the trained outcome model; with `event_bias`, an outcome model fixed to pay no health
    reward, never terminate and draw the event classes with logits `event_bias` whatever the frames."""
    export_model(root / "model", tmp_path / "with_outcome", outcome=root / "run_True")
    loaded = WorldModel.from_pretrained(tmp_path / "with_outcome")
    if event_bias is not None:
        head, r = loaded.outcome.head, len(loaded.outcome.config.reward_values)
        with torch.no_grad():
            head.weight.zero_()
            head.bias[:r] = torch.tensor([20.0, -20.0])  # reward class 0.0
            head.bias[r] = -1e4  # never a termination
            head.bias[r + 1:] = torch.tensor(event_bias)
    return loaded


def test_the_dream_pays_each_achievement_once_per_episode_per_row(trained, tmp_path):
    from world_env import WorldModelVecEnv

    root, _, _, _ = trained
    # "saw_0" rises on half of all steps: a reward read off the frames would pay it ~20 times in 40 steps
    loaded = _world(root, tmp_path, event_bias=[0.0, 0.0, -1e4])
    runs = []
    for depth in (0, 0, 2):  # twice plainly, then with speculated frames
        env = WorldModelVecEnv(loaded, num_envs=4, speculation_depth=depth, speculation="sync")
        episodes = []
        for seed in (11, 12):  # a new episode unlocks afresh
            env.reset(seed=seed)
            assert not env.core.unlocked.any()
            rewards = torch.stack([torch.as_tensor(env.step(np.full(4, 1))[1]) for _ in range(40)])
            episodes.append((rewards, env.core.unlocked.clone()))
        env.close()
        runs.append(episodes)
    for episodes in runs:
        for rewards, unlocked in episodes:
            assert torch.equal(rewards.sum(0), torch.ones(4))  # paid exactly once in each row
            assert unlocked[:, 0].all() and not unlocked[:, 1].any()
            first = rewards.argmax(0)
            assert (first < 10).all()  # the first draw that rose paid (P = 1/2 per step)
    for (a, _), (b, _) in zip(runs[0], runs[1]):
        assert torch.equal(a, b)  # same seed, same draws
    for (a, _), (c, _) in zip(runs[0], runs[2]):
        assert torch.equal(a, c)  # speculation changes nothing: draws are per (seed, position)


def test_a_replay_start_knows_what_its_episode_had_unlocked(trained, tmp_path):
    from world_env import WorldModelVecEnv
    from world_env.prompts import ReplayStarts

    root, _, data, _ = trained
    loaded = _world(root, tmp_path)
    starts = ReplayStarts(str(data), burn_in=2)
    env = WorldModelVecEnv(loaded, num_envs=6, prompt_source=starts, speculation_depth=0)
    env.reset(seed=3)
    dataset = EpisodeDataset(data)
    for row, (episode, step) in enumerate(env.starts):
        recorded = dataset.episode(int(episode))["achievements"][int(step)] > 0
        assert torch.equal(env.core.unlocked[row].cpu(), recorded)
    assert env.core.unlocked.any()  # some starts came after an unlock
    env.close()
