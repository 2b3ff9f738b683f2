"""Recording a play session: every stretch of play in one mode is one episode of the episode format, and
`segments.jsonl` says which episode came from which mode, in play order."""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from generator.data import EpisodeWriter
from world_env.games import Game
from world_env.play.input import MODES


SEGMENTS_LOG = "segments.jsonl"


POLICY = {"name": "human", "interface": "keyboard"}  # constant: EpisodeWriter refuses a folder with another policy


@dataclass
class Segment:
    """A contiguous stretch of play in one mode: one recorded episode."""

    mode: str
    started_by: str  # "start", "toggle", "reset" or "episode_end"
    first_frame: np.ndarray
    seed: int | None = None  # the game's reset seed when the segment starts at a real reset
    prompt: str | None = None  # dream only: "checkpoint" (its prompt clips) or "real" (the last real frames)
    keep_frames: bool = False
    frames: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def __post_init__(self):
        if self.keep_frames:
            self.frames.append(self.first_frame)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    def add(self, action: int, frame: np.ndarray, reward: float) -> None:
        self.actions.append(int(action))
        self.rewards.append(float(reward))
        if self.keep_frames:
            self.frames.append(frame)

    def episode(self, terminated: bool) -> dict[str, np.ndarray]:
        """The segment in the episode format; a segment that did not end in a terminal state ends truncated."""
        length = self.steps
        ends = np.zeros(length + 1, dtype=bool)
        ends[-1] = True
        return {
            "frames": np.stack(self.frames),
            "actions": np.asarray([0, *self.actions], dtype=np.int64),
            "rewards": np.asarray([0.0, *self.rewards], dtype=np.float32),
            "terminated": ends & terminated,
            "truncated": ends & (not terminated),
        }


class SessionRecorder:
    """Records play under `root`: real segments in the dataset `root/real`, dreamed ones in `root/dream`.

    Both datasets share the policy `POLICY` and differ in `extra["source"]` (``"real"`` / ``"dream"``), so a real
    dataset never mixes in generated frames. `root/segments.jsonl` lists every written segment in play order:
    session, mode, episode name, how it started and ended, its dream prompt, and the real episode it continues.
    Segments without a transition are not written.
    """

    def __init__(self, root: str | os.PathLike, game: Game, fps: int, game_kwargs: dict, checkpoint: str):
        self.root = Path(root)
        self.session = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.checkpoint = checkpoint
        self.writers = {
            mode: EpisodeWriter(
                self.root / mode, game=game.name, frame_size=game.frame_size, action_space=game.action_space,
                fps=fps, policy=POLICY,
                extra={"source": mode, **({"game_kwargs": game_kwargs} if mode == "real" else {})},
            )
            for mode in MODES
        }
        self.written = {mode: 0 for mode in MODES}
        self.count = 0

    def write(self, segment: Segment, ended_by: str, terminated: bool, continues: str | None) -> str | None:
        if segment.steps == 0:
            return None
        name = self.writers[segment.mode].write(segment.episode(terminated), seed=segment.seed)
        self.written[segment.mode] += 1
        entry = {
            "session": self.session, "segment": self.count, "mode": segment.mode, "episode": f"{segment.mode}/{name}",
            "length": segment.steps, "return": float(sum(segment.rewards)), "started_by": segment.started_by,
            "ended_by": ended_by, "terminated": terminated, "prompt": segment.prompt,
            "continues": continues, "checkpoint": self.checkpoint,
        }
        self.count += 1
        with open(self.root / SEGMENTS_LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return name


# ----------------------------------------------------------------------------------------------------------
# Screen
