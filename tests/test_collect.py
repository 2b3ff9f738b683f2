"""Collection: exact step alignment, seeds independent of the worker count, resume after a kill, policies."""
import json

import gymnasium
import numpy as np
import pytest

from generator.data import EpisodeDataset, EpisodeWriter
from world_env.collect import collect
from world_env.policies import ExplorerPolicy, RandomPolicy, StickyPolicy
from world_env.games.env import GameEnv

# A 16x16 Crafter world generates in ~0.1 s instead of ~1 s; the game is otherwise unchanged.
SMALL_CRAFTER = {"area": (16, 16)}


def checksums(root) -> list[tuple[str, str, int]]:
    meta = json.loads((root / "meta.json").read_text())
    return [(e["name"], e["checksum"], e["seed"]) for e in meta["episodes"]]


def test_cartpole_episodes_are_step_aligned_and_resume(tmp_path):
    root = tmp_path / "cartpole"
    stats = collect("gym:CartPole-v1", root, 2, policy="random", frame_size=(16, 16), seed=7, max_steps=6,
                    progress=False)
    assert stats["episodes_written"] == 2 and stats["episodes_total"] == 2 and stats["frames_per_s"] > 0
    dataset = EpisodeDataset(root, verify="checksum")
    assert dataset.meta["game"] == "gym:CartPole-v1" and dataset.meta["seeds"] == [7, 8]
    assert dataset.action_space == gymnasium.spaces.Discrete(2)
    assert dataset.meta["policy"] == {"name": "random"}
    for k in range(2):
        episode = dataset.episode(k)
        length = len(episode["frames"]) - 1
        assert 1 <= length <= 6 and stats["steps"] >= length
        assert episode["actions"][0] == 0 and episode["rewards"][0] == 0 and episode["is_first"][0]
        assert bool(episode["terminated"][-1] or episode["truncated"][-1])
        assert not (episode["terminated"][:-1].any() or episode["truncated"][:-1].any())
        # Replaying the recorded actions from the recorded seed reproduces the recorded frames exactly.
        env = GameEnv("gym:CartPole-v1", frame_size=(16, 16))
        frame, _ = env.reset(seed=7 + k)
        np.testing.assert_array_equal(frame, episode["frames"][0].numpy())
        for i in range(1, length + 1):
            frame, reward, terminated, _, _ = env.step(int(episode["actions"][i]))
            np.testing.assert_array_equal(frame, episode["frames"][i].numpy())
            assert reward == episode["rewards"][i] and terminated == bool(episode["terminated"][i])
        env.close()

    again = collect("gym:CartPole-v1", root, 3, policy="random", frame_size=(16, 16), seed=7, max_steps=6,
                    progress=False)
    assert again["episodes_written"] == 1 and EpisodeDataset(root).meta["seeds"] == [7, 8, 9]
    assert collect("gym:CartPole-v1", root, 3, policy="random", frame_size=(16, 16), seed=7, max_steps=6,
                   progress=False)["episodes_written"] == 0
    with pytest.raises(ValueError, match="policy"):
        collect("gym:CartPole-v1", root, 4, policy="sticky", frame_size=(16, 16), progress=False)
    with pytest.raises(ValueError, match="extra.seed=7, not 8"):
        collect("gym:CartPole-v1", root, 4, policy="random", frame_size=(16, 16), seed=8, max_steps=6, progress=False)
    with pytest.raises(ValueError, match="extra.max_steps=6, not 7"):
        collect("gym:CartPole-v1", root, 4, policy="random", frame_size=(16, 16), seed=7, max_steps=7, progress=False)
    assert EpisodeDataset(root).num_episodes == 3


def test_resume_of_a_dataset_without_recorded_seed_and_cap_checks_its_episodes(tmp_path):
    """Datasets collected before the seed and cap were recorded stay resumable with the values they were made with."""
    root = tmp_path / "old"
    kwargs = dict(policy="random", frame_size=(8, 8), progress=False)
    collect("gym:CartPole-v1", root, 2, seed=3, max_steps=50, **kwargs)
    meta = json.loads((root / "meta.json").read_text())
    meta["extra"] = {"game_kwargs": {}}  # as written before
    (root / "meta.json").write_text(json.dumps(meta))
    longest = max(EpisodeDataset(root).episode_lengths)
    with pytest.raises(ValueError, match="--seed 3"):
        collect("gym:CartPole-v1", root, 3, seed=4, max_steps=50, **kwargs)
    with pytest.raises(ValueError, match=f"episode of {longest} steps, longer than --max-steps {longest - 1}"):
        collect("gym:CartPole-v1", root, 3, seed=3, max_steps=longest - 1, **kwargs)
    assert collect("gym:CartPole-v1", root, 3, seed=3, max_steps=50, **kwargs)["episodes_written"] == 1
    assert EpisodeDataset(root).meta["seeds"] == [3, 4, 5]


def test_crafter_same_dataset_for_one_and_two_workers(tmp_path):
    # 40 steps crosses crafter's creature rebalancing (every 10th step), which CrafterGame makes deterministic.
    for workers in (1, 2):
        collect("crafter", tmp_path / f"w{workers}", 3, num_workers=workers, seed=3, max_steps=40,
                progress=False, game_kwargs=SMALL_CRAFTER)
    assert checksums(tmp_path / "w1") == checksums(tmp_path / "w2")
    dataset = EpisodeDataset(tmp_path / "w2", window=8)
    assert dataset.meta["game"] == "crafter" and dataset.meta["extra"] == {"game_kwargs": {"area": [16, 16]}, "seed": 3,
                                                                      "max_steps": 40}
    assert dataset.frame_size == (64, 64) and dataset.meta["fps"] == 5
    lengths = dataset.episode_lengths
    assert all(1 <= n <= 40 for n in lengths) and len(dataset) == sum(n + 1 - 8 + 1 for n in lengths)
    assert dataset[0]["frames"].shape == (8, 64, 64, 3)


def test_cartpole_uneven_episodes_two_workers_match_one(tmp_path):
    """Episodes of different lengths finish out of order over two workers; they are still written in order."""
    for workers in (1, 2):
        collect("gym:CartPole-v1", tmp_path / f"w{workers}", 4, policy="random", num_workers=workers,
                frame_size=(8, 8), seed=0, max_steps=40, progress=False)
    assert checksums(tmp_path / "w1") == checksums(tmp_path / "w2")
    assert len(set(EpisodeDataset(tmp_path / "w1").episode_lengths)) > 1


def test_resume_after_interrupted_collection_loses_nothing(tmp_path, monkeypatch):
    kwargs = dict(policy="sticky", frame_size=(8, 8), seed=11, max_steps=5, progress=False)
    collect("gym:CartPole-v1", tmp_path / "reference", 3, **kwargs)

    root = tmp_path / "killed"
    real_write = EpisodeWriter.write

    def write_then_die(self, episode, **write_kwargs):
        if self.num_episodes == 2:
            raise KeyboardInterrupt  # the run dies while the third episode is being stored
        return real_write(self, episode, **write_kwargs)

    monkeypatch.setattr(EpisodeWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect("gym:CartPole-v1", root, 3, **kwargs)
    monkeypatch.undo()
    assert len(checksums(root)) == 2
    (root / "episode_000002.tmp-1234abcd").mkdir()  # what a kill during the shard write leaves behind
    (root / "episode_000002.tmp-1234abcd" / "frames.memmap").write_bytes(b"\0" * 10)

    stats = collect("gym:CartPole-v1", root, 3, **kwargs)
    assert stats["episodes_written"] == 1
    assert checksums(root) == checksums(tmp_path / "reference")
    assert sorted(p.name for p in root.iterdir()) == ["episode_000000", "episode_000001", "episode_000002",
                                                     "meta.json"]


def test_sticky_policy_repeats_and_is_seeded():
    space = gymnasium.spaces.Discrete(17)
    policy = StickyPolicy(space, num_envs=2, mean_repeat=4.0)
    policy.reset(0, seed=5)
    policy.reset(1, seed=5)
    obs = np.zeros((2, 1))
    actions = np.stack([policy.act(obs) for _ in range(4000)])  # (steps, envs)
    np.testing.assert_array_equal(actions[:, 0], actions[:, 1])  # same episode seed, same actions
    changes = np.count_nonzero(actions[1:, 0] != actions[:-1, 0])
    assert 3.0 < 4000 / (changes + 1) < 5.0  # mean run length ~ mean_repeat (a redraw can repeat an action)
    policy.reset(1, seed=6)
    assert not np.array_equal(np.stack([policy.act(obs) for _ in range(50)])[:, 1], actions[:50, 1])

    uniform = RandomPolicy(gymnasium.spaces.MultiDiscrete([3, 4]), num_envs=3)
    uniform.reset(2, seed=1)
    assert uniform.act(np.zeros((3, 1))).shape == (3, 2)
    with pytest.raises(ValueError, match="mean_repeat"):
        StickyPolicy(space, 1, mean_repeat=0.5)


def test_explorer_policy_moves_mostly_and_is_seeded():
    space = gymnasium.spaces.Discrete(17)
    policy = ExplorerPolicy(space, num_envs=2, move_prob=0.6, move_repeat=3.0, other_repeat=2.0)
    policy.reset(0, seed=3)
    policy.reset(1, seed=3)
    obs = np.zeros((2, 1))
    actions = np.stack([policy.act(obs) for _ in range(6000)])  # (steps, envs)
    np.testing.assert_array_equal(actions[:, 0], actions[:, 1])
    moves = np.isin(actions[:, 0], [1, 2, 3, 4]).mean()
    # held moves last 3 steps on average and other actions 2, so 0.6 * 3 / (0.6 * 3 + 0.4 * 2) ~ 0.69 of steps move
    assert 0.64 < moves < 0.74
    assert set(np.unique(actions[:, 0])) == set(range(17))
    with pytest.raises(ValueError, match="Discrete"):
        ExplorerPolicy(gymnasium.spaces.MultiDiscrete([3, 4]), 1)
    with pytest.raises(ValueError, match="move_actions"):
        ExplorerPolicy(gymnasium.spaces.Discrete(3), 1)


def test_sb3_policy_collects(tmp_path):
    from stable_baselines3 import PPO

    env = GameEnv("gym:CartPole-v1", frame_size=(8, 8))
    PPO("MlpPolicy", env, n_steps=8, batch_size=8, device="cpu", seed=0).save(tmp_path / "ppo.zip")
    env.close()
    root = tmp_path / "ds"
    collect("gym:CartPole-v1", root, 1, policy=f"sb3:{tmp_path / 'ppo.zip'}", frame_size=(8, 8), max_steps=4,
            progress=False)
    meta = EpisodeDataset(root, verify="checksum").meta
    assert meta["policy"]["name"] == "sb3" and meta["policy"]["algorithm"] == "PPO"
    assert len(meta["policy"]["sha256"]) == 64
    with pytest.raises(ValueError, match="unknown policy"):
        collect("gym:CartPole-v1", tmp_path / "x", 1, policy="greedy", progress=False)
