"""The outcome model: rewards and terminations read off the tile codes of the transition the dream shows."""
import pytest
import torch

from generator.checkpoint import CheckpointError
from generator.outcome import (OutcomeTrainConfig, dataset_transitions, draw_transitions, load_outcome,
                               read_outcomes, train_outcome)
from generator.pretrained import WorldModel, export_model
from test_tiles import scrolling_tile_game
from tiny_world import make_tiny_tile_world


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny tile world, its scrolling game (+1 when the view's centre becomes tile 0) and an outcome model."""
    root = tmp_path_factory.mktemp("outcome")
    world, textures = make_tiny_tile_world(reward_values=(0.0, 1.0), n_actions=3)
    world.save_pretrained(root / "model")
    data = scrolling_tile_game(root / "game", textures, episodes=10, length=30, seed=5)
    config = OutcomeTrainConfig(world=str(root / "model"), data=str(data), out=str(root / "run"), steps=200,
                                batch_size=64, lr=3e-3, dim=32, depth=1, heads=2, val_fraction=0.3, eval_every=0,
                                log_every=50, progress=False)
    result = train_outcome(config)
    return root, world, textures, data, result


def test_rewards_are_learned_from_the_frames_on_held_out_episodes(trained):
    root, world, _, data, result = trained
    val = result["val"]["reward_positive"]
    assert val["positives"] >= 5  # the held-out episodes have rewards to find
    assert val["precision"] >= 0.9 and val["recall"] >= 0.9
    model = load_outcome(root / "run")
    assert model.training_report["val"]["reward_positive"]["recall"] == val["recall"]
    held_out = dataset_transitions(world.codec, str(data), "val", 0.3)
    logits = model(held_out.before.long(), held_out.after.long(), held_out.actions)
    assert torch.equal(model.classes(held_out.rewards), torch.tensor([0, 1])[(held_out.rewards > 0).long()])
    assert ((logits.reward_logits.argmax(-1) == 1) == (held_out.rewards > 0)).float().mean() > 0.95


def test_events_are_drawn_with_their_share_and_weighted_back():
    events = torch.zeros(1000, dtype=torch.bool)
    events[:10] = True  # 1 % of transitions
    index, weights = draw_transitions(events, 20000, 0.25, torch.Generator().manual_seed(0))
    drawn = events[index].float().mean()
    assert abs(float(drawn) - 0.25) < 0.02
    # importance weights restore the natural share: the weighted event share is 1 %
    assert abs(float((weights * events[index].float()).sum() / weights.sum()) - 0.01) < 0.003
    plain, ones = draw_transitions(torch.zeros(50, dtype=torch.bool), 8, 0.25, torch.Generator().manual_seed(0))
    assert len(plain) == 8 and torch.equal(ones, torch.ones(8))


def test_an_attached_outcome_model_round_trips_and_a_foreign_codebook_is_refused(trained, tmp_path):
    root, world, _, _, _ = trained
    exported = export_model(root / "model", tmp_path / "with_outcome", outcome=root / "run")
    loaded = WorldModel.from_pretrained(tmp_path / "with_outcome")
    assert loaded.outcome is not None
    for name, tensor in exported.outcome.state_dict().items():
        assert torch.equal(tensor, loaded.outcome.state_dict()[name])
    assert loaded.info.training["export"]["outcome"]["val"]["reward_positive"]["recall"] is not None
    other, _ = make_tiny_tile_world(reward_values=(0.0, 1.0), n_actions=3, seed=9)  # other random tiles
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="another codebook"):
        export_model(tmp_path / "other", tmp_path / "mixed", outcome=root / "run")


def test_the_dream_hands_out_the_rewards_its_frames_show(trained, tmp_path):
    from world_env import WorldModelVecEnv

    root, _, _, _, _ = trained
    export_model(root / "model", tmp_path / "with_outcome", outcome=root / "run")
    loaded = WorldModel.from_pretrained(tmp_path / "with_outcome")
    with torch.no_grad():  # sharper logits (same argmax: confident readings), and never a termination
        loaded.outcome.head.weight.mul_(20.0)
        loaded.outcome.head.bias.mul_(20.0)
        loaded.outcome.head.bias[-1] = -1e4
    actions = torch.tensor([1, 2, 0])
    runs = []
    # twice plainly (the second time on three row workers at once: codes, rewards and unlocks joined from shards),
    # then with speculated frames (accepted: the actions repeat)
    for depth, workers in ((0, 1), (0, 3), (2, 1)):
        env = WorldModelVecEnv(loaded, num_envs=3, speculation_depth=depth, speculation="sync", workers=workers)
        obs, _ = env.reset(seed=7)
        steps = []
        for _ in range(12):
            before = torch.as_tensor(obs)
            obs, reward, terminated, _, _ = env.step(actions.numpy())
            steps.append((before, torch.as_tensor(obs), torch.as_tensor(reward), torch.as_tensor(terminated)))
        assert (env.core.stats["accepted"] > 0) == (depth > 0)
        env.close()
        runs.append(steps)
    for first, again, speculated in zip(*runs):  # same seed: same frames, same sampled rewards
        assert all(torch.equal(x, y) for x, y in zip(first, again))
        assert torch.equal(first[2], speculated[2]) and torch.equal(first[1], speculated[1])
    codec, sure = loaded.codec, {0: 0, 1: 0}
    for before, after, reward, terminated in runs[0]:
        with torch.no_grad():
            logits = read_outcomes(loaded.outcome, codec, codec.encode(before), codec.encode(after), actions)
        expected = loaded.outcome.reward(logits)  # P(reward class 1) with values (0, 1)
        assert not terminated.any()
        for value, p in zip(reward.tolist(), expected.tolist()):
            if p > 0.999 or p < 0.001:  # a confident reading of the shown frames decides the draw
                assert value == float(p > 0.5)
                sure[int(p > 0.5)] += 1
    assert sure[0] >= 6 and sure[1] >= 6  # the shown frames gave both rewards and none, read with confidence
