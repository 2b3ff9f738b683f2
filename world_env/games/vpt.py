"""Import OpenAI VPT contractor recordings (``.mp4`` + ``.jsonl``) as episodes of our dataset.

A VPT recording is a 20 Hz 640x360 video and one JSON record per video frame; record ``i`` is the input held
while frame ``i`` was on screen, so it is the action that leads from frame ``i`` to frame ``i + 1``. In our
step-aligned format (``docs/architecture.md``) that makes ``actions[i + 1] = encode(record i)``; the last
record leads past the end of the video and is dropped. A recording is a cut of a longer session, so its
episode ends ``truncated`` (pass ``end="terminated"`` for recordings that end in death or completion).

Frames are squashed to ``frame_size`` like VPT's agent does (``agent.resize_image``). Not reproduced from
VPT's loader: the mouse cursor it draws on GUI frames, and its skipping of null actions (a world model must
see every frame).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from world_env.games.base import check_frame_size, resize_frame
from world_env.games.minerl import MineRLActionCodec, vpt_records_to_actions

VPT_FPS = 20
PathLike = str | os.PathLike


def read_vpt_jsonl(path: PathLike) -> list[dict]:
    """The records of a VPT ``.jsonl`` file, one JSON object per non-empty line."""
    records = []
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
    return records


def read_video_frames(path: PathLike, frame_size: tuple[int, int], max_frames: int | None = None) -> np.ndarray:
    """Decode an mp4 with imageio's ffmpeg plugin, resizing each frame; returns ``(N, H, W, 3)`` uint8."""
    import imageio.v3 as iio

    frame_size = check_frame_size(frame_size)
    frames = []
    for frame in iio.imiter(path, plugin="FFMPEG"):
        if max_frames is not None and len(frames) >= max_frames:
            break
        frames.append(resize_frame(np.asarray(frame, dtype=np.uint8)[..., :3], frame_size))
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)


def read_vpt_recording(
    video_path: PathLike,
    jsonl_path: PathLike,
    frame_size: tuple[int, int] = (64, 64),
    *,
    codec: MineRLActionCodec | None = None,
    end: Literal["truncated", "terminated"] = "truncated",
) -> dict[str, np.ndarray]:
    """One VPT recording -> episode dict in the dataset's step-aligned layout.

    Returns ``frames`` (L+1, H, W, 3) uint8, ``actions`` (L+1, 22) int64 codes of `MineRLActionCodec`
    (``actions[0]`` zeros), ``rewards`` (L+1,) float32 zeros, ``terminated`` / ``truncated`` (L+1,) bool with
    only the last step set according to ``end``. L+1 is the number of video frames, capped at one more than
    the number of records when the ``.jsonl`` is shorter.
    """
    if end not in ("truncated", "terminated"):
        raise ValueError(f"end must be 'truncated' or 'terminated', got {end!r}")
    codec = codec or MineRLActionCodec()
    records = read_vpt_jsonl(jsonl_path)
    if not records:
        raise ValueError(f"{jsonl_path}: no records")
    frames = read_video_frames(video_path, frame_size, max_frames=len(records) + 1)
    if len(frames) < 2:
        raise ValueError(f"{video_path}: need at least 2 frames for one transition, got {len(frames)}")
    steps = len(frames)
    actions = np.zeros((steps, *codec.action_space.shape), dtype=np.int64)
    for index, action in enumerate(vpt_records_to_actions(records[: steps - 1])):
        actions[index + 1] = codec.encode(action)
    terminated = np.zeros(steps, dtype=bool)
    truncated = np.zeros(steps, dtype=bool)
    (terminated if end == "terminated" else truncated)[-1] = True
    return {
        "frames": frames,
        "actions": actions,
        "rewards": np.zeros(steps, dtype=np.float32),
        "terminated": terminated,
        "truncated": truncated,
    }


def find_vpt_recordings(folder: PathLike) -> list[tuple[Path, Path]]:
    """``(mp4, jsonl)`` pairs in ``folder`` (recursively) sharing a stem, sorted by path; unpaired mp4s are skipped."""
    pairs = []
    for video_path in sorted(Path(folder).rglob("*.mp4")):
        jsonl_path = video_path.with_suffix(".jsonl")
        if jsonl_path.exists():
            pairs.append((video_path, jsonl_path))
    return pairs


def import_vpt_recordings(
    recordings: PathLike | Iterable[tuple[PathLike, PathLike]],
    out_dir: PathLike,
    frame_size: tuple[int, int] = (64, 64),
    *,
    end: Literal["truncated", "terminated"] = "truncated",
    game: str = "minerl:vpt",
    policy: dict | None = None,
    skip_errors: bool = False,
) -> list[str]:
    """Write VPT recordings into the episode dataset at ``out_dir``; returns what ``EpisodeWriter.write`` returned.

    ``recordings`` is a folder (searched with `find_vpt_recordings`) or a list of ``(mp4, jsonl)`` pairs. The
    dataset's ``game`` defaults to ``"minerl:vpt"``, with the `MineRLActionCodec` action space and fps 20. With
    ``skip_errors`` an unreadable recording is skipped (its error is printed) instead of raising.
    """
    from generator.data import EpisodeWriter

    frame_size = check_frame_size(frame_size)
    if isinstance(recordings, (str, os.PathLike)):
        pairs = find_vpt_recordings(recordings)
        if not pairs:
            raise ValueError(f"no (.mp4, .jsonl) recording pairs under {recordings}")
    else:
        pairs = [(Path(video), Path(jsonl)) for video, jsonl in recordings]
    codec = MineRLActionCodec()
    writer = EpisodeWriter(
        out_dir,
        game=game,
        frame_size=frame_size,
        action_space=codec.action_space,
        fps=VPT_FPS,
        policy=policy or {"name": "vpt-contractors"},
        extra={"source": "openai/Video-Pre-Training", "action_codec": "vpt-mu-law-11"},
    )
    written = []
    for video_path, jsonl_path in pairs:
        try:
            episode = read_vpt_recording(video_path, jsonl_path, frame_size, codec=codec, end=end)
        except (OSError, ValueError) as error:
            if not skip_errors:
                raise
            print(f"skipping {video_path}: {error}")
            continue
        written.append(writer.write(episode))
    return written
