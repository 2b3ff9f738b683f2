"""Keyboard play: key maps, scripts, and a headless session that toggles dream / real and records both."""
import json
import re
from pathlib import Path

import gymnasium
import pytest
import torch

from generator.data import EpisodeDataset
from tiny_world import make_tiny_world
from world_env.games import make_game
from world_env.games.crafter_game import CRAFTER_ACTIONS
from world_env.play import CONTROL_KEYS, Tick, keymap_for, parse_script, play

CRAFTER_SPACE = {"type": "Discrete", "n": 17, "start": 0}
# 16x16 keeps the tiny DiT at 16 tokens a frame; crafter needs a smaller view to draw 16x16 frames.
SMALL_CRAFTER = {"area": [16, 16], "view": [4, 4]}


@pytest.fixture
def one_thread():
    # Two threads on two shared cores is several times slower than one for this tiny model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def crafter_checkpoint(tmp_path):
    path = tmp_path / "tiny_crafter"
    make_tiny_world(action_space=CRAFTER_SPACE, frame_size=(16, 16)).save_pretrained(path)
    return path


def test_crafter_keymap_follows_crafters_own_gui():
    import crafter

    keymap = keymap_for("crafter", gymnasium.spaces.Discrete(17))
    gui = (Path(crafter.__file__).parent / "run_gui.py").read_text()
    pairs = re.findall(r"pygame\.K_(\w+): '(\w+)'", gui)
    assert len(pairs) == 16
    for key, action in pairs:
        assert keymap.name(keymap.action([key.lower()])) == action
    arrows = {"left": "move_left", "right": "move_right", "up": "move_up", "down": "move_down"}
    assert {keymap.name(keymap.action([k])) for k in arrows} == set(arrows.values())
    assert keymap.action([]) == keymap.action(["x"]) == CRAFTER_ACTIONS.index("noop")
    assert keymap.action(["space", "a"]) == CRAFTER_ACTIONS.index("do")  # the first pressed key wins
    assert not set(CONTROL_KEYS) & set(keymap.keys)


def test_generic_keymap_and_unsupported_spaces():
    keymap = keymap_for("gym:Some-v0", gymnasium.spaces.Discrete(3, start=1), ["left", "stay", "right"])
    assert [keymap.action([k]) for k in "012"] == [1, 2, 3]
    assert keymap.action([]) == 1 and keymap.name(3) == "right"
    with pytest.raises(ValueError, match="needs a Discrete action space"):
        keymap_for("gym:Car-v0", gymnasium.spaces.Box(-1, 1, (3,)))
    with pytest.raises(ValueError, match="12 actions; the generic keyboard map covers 10"):
        keymap_for("gym:Big-v0", gymnasium.spaces.Discrete(12))


def test_parse_script():
    keymap = keymap_for("crafter", gymnasium.spaces.Discrete(17))
    ticks = parse_script("right*2, space+left, m, noop, toggle, q", keymap)
    assert ticks == [Tick((), 2), Tick((), 2), Tick((), 5), Tick(("toggle",), None), Tick((), 0),
                     Tick(("toggle",), None), Tick(("quit",), None)]
    assert parse_script(["make_wood_pickaxe*0", "1"], keymap) == [Tick((), 11)]
    with pytest.raises(ValueError, match="'jump' is not a key"):
        parse_script("right,jump", keymap)


def test_headless_session_toggles_and_records(crafter_checkpoint, tmp_path, one_thread):
    record = tmp_path / "session"
    summary = play(
        crafter_checkpoint, "crafter", game_kwargs=SMALL_CRAFTER, record=record,
        script="right*3,space,m,left*2,m,down,q", realtime=False, start="real", seed=0, device="cpu",
    )
    assert (summary["steps"], summary["real_steps"], summary["dream_steps"], summary["toggles"]) == (7, 5, 2, 2)
    assert [s["mode"] for s in summary["segments"]] == ["real", "dream", "real"]
    assert summary["ended_by"] == "quit" and summary["final_mode"] == "real"
    assert summary["recorded"] == {"real": 2, "dream": 1}

    real = EpisodeDataset(record / "real", split="all", verify="checksum")
    dream = EpisodeDataset(record / "dream", split="all", verify="checksum")
    assert real.meta["extra"]["source"] == "real" and dream.meta["extra"]["source"] == "dream"
    assert real.meta["policy"] == dream.meta["policy"]
    assert real.episode_lengths == [4, 1] and dream.episode_lengths == [2]
    first, second, dreamed = real.episode(0), real.episode(1), dream.episode(0)
    assert first["actions"].tolist() == [0, 2, 2, 2, 5] and dreamed["actions"].tolist() == [0, 1, 1]
    assert second["actions"].tolist() == [0, 4]
    assert first["truncated"][-1] and not first["terminated"].any()
    # real -> dream starts from the last real frame; dream -> real resumes the real game where it was left
    assert torch.equal(dreamed["frames"][0], first["frames"][-1])
    assert torch.equal(second["frames"][0], first["frames"][-1])

    log = [json.loads(line) for line in (record / "segments.jsonl").read_text().splitlines()]
    assert [(e["mode"], e["started_by"], e["ended_by"]) for e in log] == [
        ("real", "start", "toggle"), ("dream", "toggle", "toggle"), ("real", "toggle", "quit")]
    assert log[1]["prompt"] == "real" and log[2]["continues"] == log[0]["episode"] == "real/episode_000000"

    # The same folder resumes (constant policy); a dream start uses the checkpoint's prompt clips.
    summary = play(crafter_checkpoint, "crafter", game_kwargs=SMALL_CRAFTER, record=record, script="n,noop*5",
                   max_steps=2, realtime=False, speculation_depth=0, device="cpu")
    assert summary["ended_by"] == "max_steps" and summary["resets"] == 1 and summary["steps"] == 2
    assert [s["prompt"] for s in summary["segments"]] == ["checkpoint", "checkpoint"]
    assert EpisodeDataset(record / "dream", split="all").episode_lengths == [2, 2]


def test_mismatched_game_is_refused(crafter_checkpoint, one_thread):
    game = make_game("gym:CartPole-v1", frame_size=(16, 16))
    try:
        with pytest.raises(ValueError, match="has actions Discrete\\(2\\), the model Discrete\\(17\\)"):
            play(crafter_checkpoint, game, script="q", device="cpu")
    finally:
        game.close()
