"""Where dream episodes start: the checkpoint's prompt bank (the default) or recorded steps of real episodes.

A prompt source hands every row being reset one short real clip (`Clip`): the frames before and at the start step
and the actions that led to them. The dream commits the clip to the row's cache (the burn-in) and imagines on from
its last frame, which is the episode's first observation. A row's clip is chosen from that row's episode seed
alone, so a row's start never depends on the other rows or on the batch.

`ReplayStarts` starts episodes at any step of any recorded episode, as every world-model agent that transfers does:
DIAMOND (Alonso et al. 2024, Sec. 3 and App. D: burn-in from the replay, imagination horizon 15), IRIS (horizon
20), Delta-IRIS on Crafter (a 5-frame burn-in, horizon 15). The recorded episodes come from an episode dataset
(`generator.data.open_datasets`: a folder or comma-separated folders) or any replay buffer with the same three
doors: ``num_episodes``, ``episode_lengths`` and ``read_steps(index, start, stop)`` (`EpisodeList` is one in RAM).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from generator.sampler import mix_seed

BANK_STREAM = 0x5EED  # a row's bank clip: mix_seed(episode seed, BANK_STREAM) % clips
START_STREAM = 0x57A27  # a row's replay start is drawn from a generator seeded by (episode seed, START_STREAM)


@dataclass
class Clip:
    """One row's real prompt: frames `(P, H, W, 3)` uint8, actions `(P, ...)`, has_action `(P,)` bool (False on an
    episode's reset frame); `episode` and `step` say where it was taken (the dream starts at `frames[-1]`, step
    `step` of its episode, which sets the dream's frame positions: its clock)."""

    frames: torch.Tensor
    actions: torch.Tensor
    has_action: torch.Tensor
    episode: int
    step: int
    unlocked: torch.Tensor | None = None  # (E,) bool: achievements the episode had unlocked by `step`, where recorded


@runtime_checkable
class PromptSource(Protocol):
    """What the dream env asks of a prompt source."""

    def check(self, max_frames: int, frame_shape: tuple[int, ...]) -> None:
        """Raise ValueError when this source cannot prompt a model whose window holds `max_frames` prompt frames of
        shape `frame_shape` `(H, W, 3)`."""
        ...

    def clips(self, seeds: Sequence[int], max_frames: int) -> list[Clip]:
        """One clip of at most `max_frames` frames per episode seed; clip i depends on `seeds[i]` alone."""
        ...


@runtime_checkable
class EpisodeSource(Protocol):
    """Recorded episodes read step by step: `generator.data.EpisodeDataset(s)`, `EpisodeList`, a replay buffer."""

    @property
    def num_episodes(self) -> int: ...

    @property
    def episode_lengths(self) -> list[int]: ...

    def read_steps(self, index: int, start: int, stop: int) -> Mapping[str, Any]: ...


class PromptBank:
    """The checkpoint's prompt clips (`WorldModel.prompts`): a row takes clip `mix_seed(seed, BANK_STREAM) % M`."""

    def __init__(self, bank: Mapping[str, torch.Tensor] | None):
        if bank is None:
            raise RuntimeError(
                "this checkpoint holds no prompt clips; pass one with reset(options={'prompt': {'frames': ..., "
                "'actions': ...}}) or start from recorded episodes with prompt_source=<dataset folder>"
            )
        self.bank = bank

    def check(self, max_frames: int, frame_shape: tuple[int, ...]) -> None:
        if tuple(self.bank["frames"].shape[2:]) != tuple(frame_shape):
            raise ValueError(f"prompt bank frames are {tuple(self.bank['frames'].shape[2:])}, the model's {frame_shape}")

    def clips(self, seeds: Sequence[int], max_frames: int) -> list[Clip]:
        count, length = self.bank["frames"].shape[:2]
        picks = [mix_seed(seed, BANK_STREAM) % count for seed in seeds]
        # A clip's step is the episode step of its last frame where the bank records it (`steps`), else its length - 1.
        steps = self.bank["steps"].tolist() if "steps" in self.bank else [length - 1] * count
        return [Clip(self.bank["frames"][k], self.bank["actions"][k], self.bank["has_action"][k], k, int(steps[k]))
                for k in picks]


class EpisodeList:
    """Whole episodes held in memory, in the dataset's step-aligned layout (a minimal replay buffer).

    Each episode maps ``frames`` `(L + 1, H, W, 3)` uint8 and ``actions`` `(L + 1, ...)` (``actions[0]`` padding)
    to arrays; ``seed`` (optional) is the seed the real game was reset with. `append` adds one.
    """

    def __init__(self, episodes: Sequence[Mapping[str, Any]] = ()):
        self._episodes: list[dict[str, torch.Tensor]] = []
        self._seeds: list[int | None] = []
        for episode in episodes:
            self.append(episode)

    def append(self, episode: Mapping[str, Any]) -> None:
        frames = torch.as_tensor(np.asarray(episode["frames"]))
        actions = torch.as_tensor(np.asarray(episode["actions"]))
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"episode frames must be uint8 (L + 1, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        if actions.shape[0] != frames.shape[0]:
            raise ValueError(f"episode has {frames.shape[0]} frames but {actions.shape[0]} actions (both L + 1)")
        is_first = torch.zeros(frames.shape[0], dtype=torch.bool)
        is_first[0] = True
        stored = {"frames": frames, "actions": actions, "is_first": is_first}
        if episode.get("achievements") is not None:  # cumulative counters (L + 1, E): replay starts know what is unlocked
            stored["achievements"] = torch.as_tensor(np.asarray(episode["achievements"]))
            if stored["achievements"].shape[0] != frames.shape[0]:
                raise ValueError(f"episode has {frames.shape[0]} frames but {stored['achievements'].shape[0]} rows "
                                 "of achievement counters (both L + 1)")
        self._episodes.append(stored)
        self._seeds.append(None if episode.get("seed") is None else int(episode["seed"]))

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def episode_lengths(self) -> list[int]:
        return [int(e["frames"].shape[0]) - 1 for e in self._episodes]

    @property
    def episode_seeds(self) -> list[int | None]:
        return list(self._seeds)

    def read_steps(self, index: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        episode = self._episodes[index]
        if not 0 <= start < stop <= episode["frames"].shape[0]:
            raise IndexError(f"steps {start}:{stop} out of range for episode {index} of {episode['frames'].shape[0]}")
        return {key: value[start:stop] for key, value in episode.items()}


class ReplayStarts:
    """Dream episodes that start at a recorded step of a recorded episode, after a burn-in of real frames.

    Args:
        episodes: an `EpisodeSource`, or a dataset folder / comma-separated folders / list of folders (opened with
            `generator.data.open_datasets`, every episode).
        burn_in: real frames committed before imagination starts, the start frame included (None: as many as the
            model's window holds, `window_frames - 1`); fewer at an episode's first steps.
        recent_weight: probability of drawing the episode among the newest `recent_fraction` of the episodes
            (DIAMOND weighs its replay toward recent episodes so the model is corrected where the agent now goes);
            0 draws every episode alike.
        recent_fraction: the share of episodes, newest last, counted as recent.

    A row's start: its episode from a generator seeded by `(episode seed, START_STREAM)`, then a step uniformly
    among `0 .. L - 1` (a state the real game continues from).
    """

    def __init__(self, episodes: EpisodeSource | str | os.PathLike | Sequence[str], burn_in: int | None = None,
                 recent_weight: float = 0.0, recent_fraction: float = 0.25):
        if isinstance(episodes, (str, os.PathLike, list, tuple)):
            from generator.data import open_datasets

            episodes = open_datasets(episodes)
        if not isinstance(episodes, EpisodeSource):
            raise TypeError(f"episodes must be a dataset folder or have num_episodes, episode_lengths and read_steps; "
                            f"got {type(episodes).__name__}")
        if episodes.num_episodes < 1:
            raise ValueError("ReplayStarts needs at least one recorded episode")
        if burn_in is not None and burn_in < 1:
            raise ValueError(f"burn_in must be >= 1 frame (the start frame) or None, got {burn_in}")
        if not 0.0 <= recent_weight <= 1.0 or not 0.0 < recent_fraction <= 1.0:
            raise ValueError(f"recent_weight must be in [0, 1] and recent_fraction in (0, 1], got {recent_weight}, "
                             f"{recent_fraction}")
        self.episodes = episodes
        self.burn_in = burn_in
        self.recent_weight, self.recent_fraction = float(recent_weight), float(recent_fraction)
        self.lengths = np.asarray(episodes.episode_lengths, dtype=np.int64)

    def check(self, max_frames: int, frame_shape: tuple[int, ...]) -> None:
        if self.burn_in is not None and self.burn_in > max_frames:
            raise ValueError(f"burn_in {self.burn_in} exceeds the model's window: at most {max_frames} prompt frames "
                             "(window_frames - 1)")
        shape = tuple(self.episodes.read_steps(0, 0, 1)["frames"].shape[1:])
        if shape != tuple(frame_shape):
            raise ValueError(f"recorded frames are {shape}, the model's {tuple(frame_shape)}")

    def start(self, seed: int) -> tuple[int, int]:
        """`(episode, step)` where the episode seeded `seed` starts."""
        rng = np.random.default_rng([int(seed), START_STREAM])
        count = len(self.lengths)
        recent = max(1, math.ceil(self.recent_fraction * count))
        if self.recent_weight and recent < count and rng.random() < self.recent_weight:
            episode = count - recent + int(rng.integers(recent))
        elif self.recent_weight and recent < count:
            episode = int(rng.integers(count - recent))
        else:
            episode = int(rng.integers(count))
        step = int(rng.integers(max(1, int(self.lengths[episode]))))
        return episode, step

    def clip(self, episode: int, step: int, max_frames: int) -> Clip:
        """The real steps `step - P + 1 .. step` of `episode`, `P = min(burn_in, max_frames, step + 1)`."""
        frames = min(self.burn_in or max_frames, max_frames, step + 1)
        rows = self.episodes.read_steps(episode, step - frames + 1, step + 1)
        unlocked = torch.as_tensor(rows["achievements"][-1]) > 0 if "achievements" in rows else None
        return Clip(torch.as_tensor(rows["frames"]), torch.as_tensor(rows["actions"]),
                    ~torch.as_tensor(rows["is_first"]).bool(), episode, step, unlocked)

    def clips(self, seeds: Sequence[int], max_frames: int) -> list[Clip]:
        return [self.clip(*self.start(seed), max_frames) for seed in seeds]


def make_prompt_source(source: Any, bank: Mapping[str, torch.Tensor] | None, burn_in: int | None = None) -> PromptSource:
    """A `PromptSource` from what the env was given: None (the checkpoint's `bank`), a `PromptSource`, an
    `EpisodeSource` or dataset folder(s) (`ReplayStarts` with `burn_in`)."""
    if source is None:
        if burn_in is not None:
            raise ValueError("burn_in applies to starts from recorded episodes; pass prompt_source=<dataset> too")
        return PromptBank(bank)
    if isinstance(source, PromptSource):
        if burn_in is not None:
            raise ValueError("burn_in is given with the prompt source's own settings (e.g. ReplayStarts(burn_in=...))")
        return source
    return ReplayStarts(source, burn_in=burn_in)
