"""MineRL/VPT action codec and the VPT recording importer, on synthetic recordings (no minerl needed)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from world_env.games.minerl import (
    CAMERA_SCALER,
    MINERL_EXTRA_BUTTONS,
    VPT_BUTTONS,
    MineRLActionCodec,
    bins_to_camera,
    camera_to_bins,
    is_null_action,
    noop_action,
    vpt_records_to_actions,
)
from world_env.games.vpt import find_vpt_recordings, import_vpt_recordings, read_vpt_recording

codec = MineRLActionCodec()


def test_action_space_layout():
    assert len(VPT_BUTTONS) == 20 and VPT_BUTTONS[:3] == ("attack", "back", "forward")
    assert codec.action_space == gymnasium.spaces.MultiDiscrete([2] * 20 + [11, 11])
    assert codec.encode(noop_action()).tolist() == codec.null_code.tolist() == [0] * 20 + [5, 5]


def test_camera_bins_match_vpt_mu_law():
    centres = bins_to_camera(np.arange(11))
    assert centres[5] == 0.0 and centres[0] == -10.0 and centres[10] == 10.0
    np.testing.assert_allclose(centres[6:], -centres[:5][::-1])
    # VPT CameraQuantizer(maxval=10, binsize=2, mu_law, mu=10): centre of bin 6 is 10 * (11**0.2 - 1) / 10
    np.testing.assert_allclose(centres[6], 11**0.2 - 1)
    assert camera_to_bins(np.array([[0.2, -0.2], [45.0, -90.0]])).tolist() == [[5, 5], [10, 0]]


def test_every_camera_code_round_trips_exactly():
    for pitch, yaw in itertools.product(range(11), range(11)):
        code = codec.null_code
        code[-2:] = (pitch, yaw)
        assert np.array_equal(codec.encode(codec.decode(code)), code)


def test_random_codes_round_trip_exactly():
    codec.action_space.seed(0)
    for _ in range(2000):
        code = codec.action_space.sample()
        decoded = codec.decode(code)
        assert all(type(decoded[name]) is int for name in VPT_BUTTONS)
        assert decoded["camera"].dtype == np.float64 and decoded["camera"].shape == (2,)
        re_encoded = codec.encode(decoded)
        assert re_encoded.dtype == np.int64 and np.array_equal(re_encoded, code)


def test_random_dict_actions_round_trip_within_one_bin():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        action = {name: int(rng.integers(2)) for name in VPT_BUTTONS}
        action["camera"] = rng.normal(0, 6, size=2)  # some beyond +-10 degrees, which clip
        decoded = codec.decode(codec.encode(action))
        assert {name: decoded[name] for name in VPT_BUTTONS} == {name: action[name] for name in VPT_BUTTONS}
        bins = camera_to_bins(action["camera"])
        assert np.array_equal(camera_to_bins(decoded["camera"]), bins)
        # the original (clipped) camera lies inside the decoded value's bin, whose edges are half a bin away
        clipped = np.clip(action["camera"], -10, 10)
        assert np.all(bins_to_camera(bins - 0.5) - 1e-9 <= clipped)
        assert np.all(clipped <= bins_to_camera(bins + 0.5) + 1e-9)


def test_encode_drops_minerl_only_buttons_and_rejects_bad_actions():
    action = {name: 1 for name in MINERL_EXTRA_BUTTONS}
    assert np.array_equal(codec.encode(action), codec.null_code)
    with pytest.raises(ValueError, match=r"unknown MineRL action keys \['atack'\]"):
        codec.encode({"atack": 1})
    with pytest.raises(ValueError, match="'jump' must be 0 or 1"):
        codec.encode({"jump": 2})
    with pytest.raises(ValueError, match="camera must be 2 finite degrees"):
        codec.encode({"camera": np.array([0.0, np.nan])})
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        codec.decode(np.array([0] * 20 + [11, 5]))
    with pytest.raises(ValueError, match="shape"):
        codec.decode(np.zeros(21, dtype=np.int64))


def _record(keys=(), dx=0.0, dy=0.0, buttons=(), new_buttons=(), hotbar=0) -> dict:
    return {
        "mouse": {
            "x": 320.0, "y": 180.0, "dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": list(new_buttons)
        },
        "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
        "isGuiOpen": False,
        "hotbar": hotbar,
        "tick": 0,
    }


def test_from_vpt_json_follows_vpt_conventions():
    action = codec.from_vpt_json(
        _record(keys=["key.keyboard.w", "key.keyboard.space", "key.keyboard.3", "key.keyboard.f", "key.keyboard.z"],
                dx=16, dy=-8, buttons=[0, 1, 2])
    )
    pressed = {name for name, value in action.items() if name != "camera" and value}
    assert pressed == {"forward", "jump", "hotbar.3", "swapHands", "attack", "use", "pickItem"}
    np.testing.assert_allclose(action["camera"], [-8 * CAMERA_SCALER, 16 * CAMERA_SCALER])  # [pitch=dy, yaw=dx]
    np.testing.assert_allclose(action["camera"], [-1.2, 2.4])
    assert is_null_action(codec.from_vpt_json(_record()))
    assert not is_null_action(codec.from_vpt_json(_record(dx=1)))


def test_vpt_records_fix_stuck_attack_and_hotbar_scroll():
    records = [
        _record(buttons=[0], new_buttons=[0]),  # attack held from the start: stuck, ignored
        _record(buttons=[0]),
        _record(buttons=[0], new_buttons=[0], hotbar=2),  # pressed anew; hotbar scrolled to slot 2
        _record(hotbar=2),
    ]
    actions = vpt_records_to_actions(records)
    assert [a["attack"] for a in actions] == [0, 0, 1, 0]
    assert [a["hotbar.3"] for a in actions] == [0, 0, 1, 0]


def _write_recording(folder: Path, stem: str, n_frames: int, n_records: int, size=(64, 64)):
    import imageio.v3 as iio

    colours = np.clip(np.array([40, 90, 100]) + 20 * np.arange(n_frames)[:, None], 0, 255)  # (N, 3)
    # flat colours that change by 20 per frame: easy to tell apart after lossy coding
    frames = np.broadcast_to(colours[:, None, None, :], (n_frames, *size, 3)).astype(np.uint8)
    video_path = folder / f"{stem}.mp4"
    iio.imwrite(video_path, frames, plugin="FFMPEG", fps=20)
    rng = np.random.default_rng(n_frames)
    key_names = ["key.keyboard.w", "key.keyboard.a", "key.keyboard.space", "key.keyboard.e", "key.keyboard.5"]
    records = [
        _record(keys=[k for k in key_names if rng.random() < 0.3], dx=float(rng.integers(-80, 80)),
                dy=float(rng.integers(-30, 30)), buttons=[b for b in (0, 1) if rng.random() < 0.3])
        for _ in range(n_records)
    ]
    jsonl_path = folder / f"{stem}.jsonl"
    jsonl_path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return video_path, jsonl_path, frames, records


def test_read_vpt_recording_aligns_actions_with_frames(tmp_path):
    video_path, jsonl_path, frames, records = _write_recording(tmp_path, "rec", n_frames=8, n_records=8)
    episode = read_vpt_recording(video_path, jsonl_path, frame_size=(64, 64))
    assert episode["frames"].shape == (8, 64, 64, 3) and episode["frames"].dtype == np.uint8
    assert np.abs(episode["frames"].astype(int) - frames.astype(int)).mean() < 6
    expected = [codec.encode(a) for a in vpt_records_to_actions(records[:7])]
    assert episode["actions"].shape == (8, 22) and episode["actions"].dtype == np.int64
    assert not episode["actions"][0].any()
    assert np.array_equal(episode["actions"][1:], np.stack(expected))  # record i leads to frame i + 1
    assert episode["rewards"].dtype == np.float32 and not episode["rewards"].any()
    assert episode["truncated"].tolist() == [False] * 7 + [True] and not episode["terminated"].any()


def test_read_vpt_recording_short_jsonl_and_resize(tmp_path):
    video_path, jsonl_path, _, records = _write_recording(tmp_path, "short", n_frames=8, n_records=4)
    episode = read_vpt_recording(video_path, jsonl_path, frame_size=(32, 48), end="terminated")
    assert episode["frames"].shape == (5, 32, 48, 3)
    assert episode["actions"].shape == (5, 22)
    assert episode["terminated"].tolist() == [False] * 4 + [True] and not episode["truncated"].any()
    assert find_vpt_recordings(tmp_path) == [(video_path, jsonl_path)]


def test_import_vpt_recordings_writes_a_dataset_that_reopens(tmp_path):
    from generator.data import EpisodeDataset

    recordings = tmp_path / "vpt"
    recordings.mkdir()
    _write_recording(recordings, "a", n_frames=6, n_records=6)
    _write_recording(recordings, "b", n_frames=5, n_records=5)
    names = import_vpt_recordings(recordings, tmp_path / "dataset", frame_size=(32, 32))
    assert len(names) == 2

    dataset = EpisodeDataset(tmp_path / "dataset", window=None, verify="checksum")
    assert dataset.num_episodes == 2 and dataset.episode_lengths == [5, 4]
    assert dataset.action_space == codec.action_space and dataset.frame_size == (32, 32)
    assert dataset.meta["game"] == "minerl:vpt" and dataset.meta["fps"] == 20
    expected = read_vpt_recording(recordings / "a.mp4", recordings / "a.jsonl", frame_size=(32, 32))
    stored = dataset.episode(0)
    for key, array in expected.items():
        assert np.array_equal(stored[key].numpy(), array), key

    # importing more into the same folder resumes it
    import_vpt_recordings([(recordings / "b.mp4", recordings / "b.jsonl")], tmp_path / "dataset", frame_size=(32, 32))
    assert EpisodeDataset(tmp_path / "dataset").num_episodes == 3
