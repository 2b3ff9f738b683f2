"""Episode dataset: round trips, resume and recovery, integrity errors that name the shard, windows, splits."""
import copy
import json
import os
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from generator.data import DatasetError, EpisodeDataset, EpisodeWriter, read_episode, split_episodes
from generator.actions import action_array_spec, space_from_json, space_to_json

SIZE = (6, 8)
DISCRETE = gymnasium.spaces.Discrete(4)


def make_episode(length: int, space: gymnasium.Space = DISCRETE, seed: int = 0, end: str = "truncated") -> dict:
    """A synthetic episode of ``length`` transitions (``length + 1`` steps) with random contents."""
    rng = np.random.default_rng(seed)
    steps = length + 1
    shape, dtype = action_array_spec(space)
    sampler = copy.deepcopy(space)
    sampler.seed(seed)
    actions = np.zeros((steps, *shape), dtype)
    for i in range(1, steps):
        actions[i] = sampler.sample()
    flags = {"terminated": np.zeros(steps, bool), "truncated": np.zeros(steps, bool)}
    flags[end][-1] = length > 0
    rewards = rng.normal(size=steps).astype(np.float32)
    rewards[0] = 0
    return {
        "frames": rng.integers(0, 256, (steps, *SIZE, 3), dtype=np.uint8),
        "actions": actions,
        "rewards": rewards,
        **flags,
    }


def new_writer(root: Path, space: gymnasium.Space = DISCRETE, game: str = "synthetic") -> EpisodeWriter:
    return EpisodeWriter(root, game=game, frame_size=SIZE, action_space=space, fps=15, policy={"name": "test"})


def test_space_json_round_trip_and_array_specs():
    spaces = [
        gymnasium.spaces.Discrete(5, start=-2),
        gymnasium.spaces.MultiDiscrete([2, 3, 11]),
        gymnasium.spaces.Box(-1.0, np.array([1.0, np.inf], np.float32), dtype=np.float32),
    ]
    for space in spaces:
        description = json.loads(json.dumps(space_to_json(space)))
        assert space_from_json(description) == space
    assert action_array_spec(spaces[0]) == ((), np.int64)
    assert action_array_spec(spaces[1]) == ((3,), np.int64)
    assert action_array_spec(spaces[2]) == ((2,), np.float32)
    with pytest.raises(ValueError, match="only Discrete, MultiDiscrete and Box"):
        space_to_json(gymnasium.spaces.Dict({"a": gymnasium.spaces.Discrete(2)}))
    with pytest.raises(ValueError, match="unsupported action space type"):
        space_from_json({"type": "Graph"})


@pytest.mark.parametrize(
    "space", [DISCRETE, gymnasium.spaces.MultiDiscrete([3, 5]), gymnasium.spaces.Box(-1, 1, (2,), np.float32)]
)
def test_round_trip(tmp_path, space):
    writer = new_writer(tmp_path / "ds", space)
    ends = ((5, "truncated"), (0, "truncated"), (3, "terminated"))
    episodes = [make_episode(n, space, seed=n, end=end) for n, end in ends]
    names = [writer.write(episode, seed=100 + k) for k, episode in enumerate(episodes)]
    assert names == ["episode_000000", "episode_000001", "episode_000002"]

    dataset = EpisodeDataset(tmp_path / "ds", verify="checksum")
    assert dataset.episode_names == names
    assert dataset.action_space == space
    assert dataset.frame_size == SIZE
    assert dataset.total_steps == 6 + 1 + 4
    meta = dataset.meta
    assert meta["game"] == "synthetic" and meta["fps"] == 15 and meta["policy"] == {"name": "test"}
    assert meta["seeds"] == [100, 101, 102] and meta["total_steps"] == 11
    assert [e["length"] for e in meta["episodes"]] == [5, 0, 3]
    assert {"torch", "tensordict", "gymnasium", "nextframe"} <= set(meta["versions"])
    for k, episode in enumerate(episodes):
        stored = dataset.episode(k)
        for key, array in episode.items():
            assert stored[key].numpy().dtype == array.dtype
            np.testing.assert_array_equal(stored[key].numpy(), array)
        np.testing.assert_array_equal(stored["is_first"].numpy(), np.arange(len(array)) == 0)
        np.testing.assert_array_equal(read_episode(tmp_path / "ds" / names[k])["frames"], episode["frames"])
    in_memory = EpisodeDataset(tmp_path / "ds", window=3, load_into_memory=True)
    lazy = EpisodeDataset(tmp_path / "ds", window=3)
    for i in range(len(lazy)):
        for key, value in lazy[i].items():
            assert torch.equal(value, in_memory[i][key])


def test_reopen_resumes_and_checks_compatibility(tmp_path):
    root = tmp_path / "ds"
    new_writer(root).write(make_episode(4))
    writer = new_writer(root)
    assert writer.num_episodes == 1
    assert writer.write(make_episode(2)) == "episode_000001"
    with pytest.raises(ValueError, match="game='synthetic'"):
        new_writer(root, game="crafter")
    with pytest.raises(ValueError, match="action_space"):
        new_writer(root, space=gymnasium.spaces.Discrete(5))
    with pytest.raises(ValueError, match="frame_size"):
        EpisodeWriter(root, game="synthetic", frame_size=(8, 8), action_space=DISCRETE, fps=15, policy={"name": "test"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not empty"):
        new_writer(tmp_path / "other")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.update(frames=e["frames"].astype(np.float32)), "'frames' must be uint8"),
        (lambda e: e.update(rewards=e["rewards"][:-1]), "disagree on the number of steps"),
        (lambda e: e.update(terminated=e["terminated"].astype(np.int64)), "'terminated' must be bool"),
        (lambda e: e.update(actions=e["actions"].astype(np.float64)), "'actions' must be integers"),
        (lambda e: e["actions"].__setitem__(2, 9), r"actions\[2\] = 9 is outside"),
        (lambda e: e["truncated"].__setitem__(1, True), "only the last step"),
        (lambda e: e.update(frames=e["frames"][..., :2]), "per-step shape"),
        (lambda e: e.update(velocity=e["rewards"]), "unknown arrays"),
        (lambda e: e.pop("rewards"), "missing arrays"),
    ],
)
def test_invalid_episode_rejected_and_nothing_written(tmp_path, change, message):
    root = tmp_path / "ds"
    writer = new_writer(root)
    writer.write(make_episode(3))
    meta_before = (root / "meta.json").read_bytes()
    episode = make_episode(4, seed=1)
    change(episode)
    with pytest.raises(ValueError, match=message):
        writer.write(episode)
    assert (root / "meta.json").read_bytes() == meta_before
    assert sorted(p.name for p in root.iterdir()) == ["episode_000000", "meta.json"]


def test_recovery_after_kill(tmp_path):
    """A leftover temporary shard is deleted; a renamed shard missing from meta.json is verified and adopted,
    a corrupt one deleted; finished shards are kept."""
    root = tmp_path / "ds"
    writer = new_writer(root)
    writer.write(make_episode(3), seed=0)
    writer.write(make_episode(4, seed=1), seed=1)
    meta_after_one = json.loads((root / "meta.json").read_text())
    meta_after_one["episodes"] = meta_after_one["episodes"][:1]
    (root / "meta.json").write_text(json.dumps(meta_after_one))  # killed between rename and index update
    (root / "episode_000002.tmp-dead").mkdir()  # killed while writing a shard
    (root / "episode_000002.tmp-dead" / "frames.memmap").write_bytes(b"partial")

    writer = new_writer(root)
    assert sorted(p.name for p in root.iterdir()) == ["episode_000000", "episode_000001", "meta.json"]
    assert [(e["name"], e["seed"]) for e in writer.meta["episodes"]] == [("episode_000000", 0), ("episode_000001", 1)]
    dataset = EpisodeDataset(root, verify="checksum")
    np.testing.assert_array_equal(dataset.episode(1)["frames"].numpy(), make_episode(4, seed=1)["frames"])

    # An orphan that fails its checksum is removed instead.
    writer.write(make_episode(2, seed=2))
    meta = json.loads((root / "meta.json").read_text())
    meta["episodes"] = meta["episodes"][:2]
    (root / "meta.json").write_text(json.dumps(meta))
    with open(root / "episode_000002" / "frames.memmap", "r+b") as handle:
        handle.write(b"\xff\x00\xff")
    writer = new_writer(root)
    assert writer.num_episodes == 2 and not (root / "episode_000002").exists()
    assert writer.write(make_episode(1)) == "episode_000002"


def _dataset_with_three(tmp_path) -> Path:
    root = tmp_path / "ds"
    writer = new_writer(root)
    for n in (3, 5, 2):
        writer.write(make_episode(n, seed=n))
    return root


def test_truncated_shard_is_named(tmp_path):
    root = _dataset_with_three(tmp_path)
    shard = root / "episode_000001"
    with open(shard / "frames.memmap", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(DatasetError, match=r"episode_000001.*frames\.memmap.*truncated"):
        EpisodeDataset(root)
    lazy = EpisodeDataset(root, window=2, verify="none")  # only noticed on first read, still by name
    with pytest.raises(DatasetError, match="episode_000001.*truncated"):
        [lazy[i] for i in range(len(lazy))]
    assert os.path.getsize(shard / "frames.memmap") == 100  # reading never extends the file


def test_corrupted_and_missing_shards_are_named(tmp_path):
    root = _dataset_with_three(tmp_path)
    with open(root / "episode_000002" / "actions.memmap", "r+b") as handle:
        handle.seek(8)
        handle.write(b"\x07")
    EpisodeDataset(root)  # shapes and sizes are still right
    with pytest.raises(DatasetError, match="episode_000002.*checksum mismatch"):
        EpisodeDataset(root, verify="checksum")
    (root / "episode_000000" / "rewards.memmap").unlink()
    with pytest.raises(DatasetError, match=r"episode_000000.*rewards\.memmap missing"):
        EpisodeDataset(root)
    (root / "episode_000000" / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="episode_000000.*unreadable"):
        EpisodeDataset(root)
    os.rename(root / "episode_000000", root / "moved")
    with pytest.raises(DatasetError, match="episode_000000: shard missing"):
        EpisodeDataset(root)
    (root / "meta.json").unlink()
    with pytest.raises(DatasetError, match="meta.json: missing"):
        EpisodeDataset(root)


def test_windows_shapes_and_valid_mask(tmp_path):
    root = _dataset_with_three(tmp_path)  # 4, 6 and 3 steps
    dataset = EpisodeDataset(root, window=4)
    assert len(dataset) == 1 + 3 + 1
    item = dataset[1]  # episode 1, start 0
    assert item["frames"].shape == (4, *SIZE, 3) and item["frames"].dtype == torch.uint8
    assert item["actions"].shape == (4,) and item["actions"].dtype == torch.int64
    for key in ("rewards", "terminated", "truncated", "is_first", "valid"):
        assert item[key].shape == (4,)
    assert item["rewards"].dtype == torch.float32 and item["valid"].dtype == torch.bool
    assert item["is_first"].tolist() == [True, False, False, False] and item["valid"].all()
    last = dataset[3]  # episode 1, start 2: steps 2..5, the last one ends the episode
    assert last["truncated"].tolist() == [False, False, False, True] and not last["is_first"].any()
    padded = dataset[4]  # episode 2 has 3 steps
    assert padded["valid"].tolist() == [True, True, True, False]
    assert padded["frames"][3].eq(0).all() and padded["truncated"].tolist() == [False, False, True, False]
    np.testing.assert_array_equal(padded["frames"][:3].numpy(), make_episode(2, seed=2)["frames"])

    batch = dataset.sample(6, torch.Generator().manual_seed(0))
    assert batch["frames"].shape == (6, 4, *SIZE, 3) and batch["valid"].shape == (6, 4)
    again = dataset.sample(6, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[key], again[key]) for key in batch)

    whole = EpisodeDataset(root)
    assert len(whole) == 3 and whole[1]["frames"].shape == (6, *SIZE, 3) and whole[1]["valid"].all()
    with pytest.raises(ValueError, match="fixed window"):
        whole.sample(2)


def test_split_by_episode_is_disjoint_and_stable(tmp_path):
    names = [f"episode_{i:06d}" for i in range(40)]
    train, val = split_episodes(names, 0.2)
    assert set(train).isdisjoint(val) and sorted(train + val) == names and 1 <= len(val) < 40
    more_train, more_val = split_episodes(names + [f"episode_{i:06d}" for i in range(40, 60)], 0.2)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)  # growing keeps each episode's side
    assert split_episodes(names[:2], 0.01)[1] and split_episodes(names[:2], 0.99)[0]

    root = _dataset_with_three(tmp_path)
    parts = {split: EpisodeDataset(root, window=2, split=split) for split in ("all", "train", "val")}
    assert set(parts["train"].episode_names).isdisjoint(parts["val"].episode_names)
    assert sorted(parts["train"].episode_names + parts["val"].episode_names) == parts["all"].episode_names
    assert parts["val"].num_episodes >= 1
    assert len(parts["train"]) + len(parts["val"]) == len(parts["all"])


def test_out_of_range_action_is_refused_on_read_naming_the_shard(tmp_path):
    root = _dataset_with_three(tmp_path)
    with open(root / "episode_000001" / "actions.memmap", "r+b") as handle:
        handle.seek(2 * 8)  # step 2 of an int64 action array
        handle.write(np.int64(99).tobytes())
    dataset = EpisodeDataset(root, window=2)  # sizes are right: opening does not read the values
    ok = [dataset[i]["actions"] for i in range(3)]  # episode 0's windows read fine
    assert all(int(a.max()) < 4 for a in ok)
    with pytest.raises(DatasetError, match=r"episode_000001.*actions\[2\] = 99 is outside Discrete\(4\)"):
        [dataset[i] for i in range(len(dataset))]
    with pytest.raises(DatasetError, match=r"episode_000001.*actions\[2\] = 99"):
        EpisodeDataset(root).episode(1)


def test_read_check_skips_the_padding_action_below_start(tmp_path):
    space = gymnasium.spaces.MultiDiscrete([2, 3], start=[1, -1])
    root = tmp_path / "data"
    new_writer(root, space=space).write(make_episode(4, space=space))
    dataset = EpisodeDataset(root, window=3)
    assert [dataset[i]["actions"].shape for i in range(len(dataset))] == [(3, 2)] * 3
