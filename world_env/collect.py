"""Collect real-game episodes into an episode dataset (`generator.data`), in parallel over Gymnasium vector envs.

Reproducibility: episode ``j`` of a dataset (``j`` counts from 0 over all runs into the same folder) is reset with
seed ``seed + j`` and acted on by a policy whose random stream is seeded from that same number, so its content
depends on ``(seed, j)`` only, not on the number of workers or on which worker ran it (provided the game is
deterministic given seed and actions; see docs/data-format.md for crafter 1.8.3's exception). Episodes are written
in index order. The vector env runs with ``AutoresetMode.DISABLED`` and the collector resets finished sub-envs
itself (``options={"reset_mask": ...}``), so every reset gets its episode's seed and no fake post-done
transition ever reaches the dataset.

Resume: rerunning into the same folder appends until ``episodes`` are present; finished episodes survive a kill
(see `generator.data.EpisodeWriter`), the unfinished ones are collected again with the same seeds. The seed and
``max_steps`` are recorded in ``meta["extra"]``; a resume with other values is refused (for datasets written before
they were recorded, the seed is checked against the stored episode seeds and the cap against the episode lengths).
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium
import numpy as np

from generator.data import EpisodeWriter
from generator.actions import action_array_spec
from world_env.games.env import GameEnv
from world_env.policies import make_policy

def check_resume(writer: EpisodeWriter, seed: int, max_steps: int | None) -> None:
    """Refuse to append to a dataset whose stored episodes were collected with another seed or a longer episode cap
    (the `meta["extra"]` comparison covers datasets that record both; this covers older ones)."""
    for j, stored in enumerate(writer.meta.get("seeds", [])):
        if stored is not None and stored != seed + j:
            raise ValueError(
                f"{writer.root}: episode {j} was collected with seed {stored} (--seed {stored - j}), not {seed + j} "
                f"(--seed {seed}); resume with --seed {stored - j} or write to a new folder"
            )
    longest = max((int(e["length"]) for e in writer.meta["episodes"]), default=0)
    if max_steps is not None and longest > max_steps:
        raise ValueError(
            f"{writer.root} holds an episode of {longest} steps, longer than --max-steps {max_steps}; resume with "
            "the --max-steps it was collected with or write to a new folder"
        )


class EpisodeBuffer:
    """Step-aligned arrays of one episode under construction (reset frame first, padding action/reward 0)."""

    def __init__(self, frame: np.ndarray, action_shape: tuple[int, ...], action_dtype: np.dtype,
                 achievements: int = 0) -> None:
        self.frames = [np.array(frame, copy=True)]
        self.actions = [np.zeros(action_shape, action_dtype)]
        self.rewards = [0.0]
        self.terminated = [False]
        self.truncated = [False]
        # the game's cumulative achievement counters after each step (zero at reset), when it reports them
        self.achievements = [np.zeros(achievements, np.int32)] if achievements else None

    @property
    def transitions(self) -> int:
        return len(self.frames) - 1

    def add(self, action: Any, frame: np.ndarray, reward: float, terminated: bool, truncated: bool,
            achievements: np.ndarray | None = None) -> None:
        self.actions.append(np.asarray(action))
        self.frames.append(np.array(frame, copy=True))
        self.rewards.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        if self.achievements is not None:
            if achievements is None:
                raise ValueError("the game reported no achievement counters for this step")
            self.achievements.append(np.asarray(achievements, np.int32))

    def arrays(self, action_dtype: np.dtype) -> dict[str, np.ndarray]:
        arrays = {
            "frames": np.stack(self.frames),
            "actions": np.stack(self.actions).astype(action_dtype),
            "rewards": np.asarray(self.rewards, dtype=np.float32),
            "terminated": np.asarray(self.terminated, dtype=bool),
            "truncated": np.asarray(self.truncated, dtype=bool),
        }
        if self.achievements is not None:
            arrays["achievements"] = np.stack(self.achievements)
        return arrays


class ParkingEnv(gymnasium.Wrapper):
    """After its episode ends, further steps return the last frame (reward 0, not done) instead of raising.

    A vector env steps every sub-env together; a slot the collector has no episode left for is parked this way
    rather than reset, because a reset can cost seconds (Crafter generates a world).
    """

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        frame, info = self.env.reset(**kwargs)
        self._last_frame, self._over = frame, False
        return frame, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._over:
            return self._last_frame, 0.0, False, False, {}
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._last_frame, self._over = frame, bool(terminated or truncated)
        return frame, reward, terminated, truncated, info


def _make_parking_env(game: str, frame_size: tuple[int, int], game_kwargs: dict) -> ParkingEnv:
    return ParkingEnv(GameEnv(game, frame_size=frame_size, **game_kwargs))


def make_vector_env(
    game: str, num_envs: int, frame_size: tuple[int, int] = (64, 64), game_kwargs: dict | None = None
) -> gymnasium.vector.VectorEnv:
    """``num_envs`` `ParkingEnv`-wrapped `GameEnv` copies of ``game`` with autoreset disabled: one process
    (`SyncVectorEnv`) for a single env, a subprocess each (`AsyncVectorEnv`) otherwise."""
    make_env = functools.partial(_make_parking_env, game, tuple(frame_size), dict(game_kwargs or {}))
    mode = gymnasium.vector.AutoresetMode.DISABLED
    if num_envs == 1:
        return gymnasium.vector.SyncVectorEnv([make_env], autoreset_mode=mode)
    return gymnasium.vector.AsyncVectorEnv([make_env] * num_envs, autoreset_mode=mode)


def collect(
    game: str,
    out: str | os.PathLike,
    episodes: int,
    policy: str = "sticky",
    num_workers: int = 1,
    frame_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    mean_repeat: float = 4.0,
    max_steps: int | None = None,
    sb3_policy_path: str | os.PathLike | None = None,
    preview: bool = False,
    progress: bool = True,
    game_kwargs: dict | None = None,
) -> dict:
    """Collect episodes of ``game`` into the dataset folder ``out`` until it holds ``episodes`` of them.

    ``max_steps`` ends an episode after that many transitions (marked ``truncated``); ``None`` lets the game end it
    (Crafter: death or its own 10000-step limit). ``num_workers`` sub-envs run side by side (subprocesses when > 1).
    ``game_kwargs`` go to `make_game` (e.g. Crafter's ``area``) and are recorded in ``meta["extra"]``; resuming
    needs the same ones.
    Returns ``episodes_written`` (this run), ``episodes_total``, ``steps`` (transitions written this run),
    ``frames`` (stored frames written, reset frames included), ``env_steps`` (all env steps, unwritten included),
    ``seconds`` (wall time: env start-up, stepping, resets and writing; imports excluded) and ``frames_per_s``
    (``frames / seconds``).
    """
    from tqdm.auto import tqdm

    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    frame_size = (int(frame_size[0]), int(frame_size[1]))
    import tensordict  # noqa: F401  (imported by the first shard write; a slow import, kept out of the timing)

    started = time.perf_counter()
    stats = {"episodes_written": 0, "steps": 0, "frames": 0, "env_steps": 0}

    game_kwargs = dict(game_kwargs or {})
    probe = GameEnv(game, frame_size=frame_size, **game_kwargs)
    action_space, fps, game_name = probe.action_space, int(probe.metadata["render_fps"]), probe.game.name
    achievements = list(probe.achievement_names)  # recorded where the game reports them
    probe.close()
    actor = make_policy(policy, action_space, num_workers, mean_repeat=mean_repeat, sb3_policy_path=sb3_policy_path)
    writer = EpisodeWriter(out, game=game_name, frame_size=frame_size, action_space=action_space, fps=fps,
                           policy=actor.describe(),
                           extra={"game_kwargs": game_kwargs, "seed": seed, "max_steps": max_steps},
                           achievements=achievements)
    check_resume(writer, seed, max_steps)
    first = writer.num_episodes
    todo = max(0, episodes - first)
    if todo == 0:
        return collection_summary(stats, writer, started)

    num_envs = min(num_workers, todo)
    action_shape, action_dtype = action_array_spec(action_space)
    envs = make_vector_env(game, num_envs, frame_size, game_kwargs)
    bar = tqdm(total=todo * max_steps if max_steps else None, unit="step", disable=not progress,
               desc=f"collect {game_name}")
    next_episode = first  # next episode index to hand to a free env slot
    slot_episode: list[int | None] = [None] * num_envs
    buffers: list[EpisodeBuffer | None] = [None] * num_envs
    finished: dict[int, dict[str, np.ndarray]] = {}
    next_to_write = first
    try:
        seeds = []
        for i in range(num_envs):
            slot_episode[i] = next_episode
            seeds.append(seed + next_episode)
            actor.reset(i, seed + next_episode)
            next_episode += 1
        obs, _ = envs.reset(seed=seeds)
        buffers = [EpisodeBuffer(obs[i], action_shape, action_dtype, len(achievements)) for i in range(num_envs)]

        while any(j is not None for j in slot_episode):
            actions = actor.act(obs)
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            counts = infos.get("achievement_counts") if achievements else None
            stats["env_steps"] += num_envs
            reset_mask = np.zeros(num_envs, dtype=bool)
            reset_seeds: list[int | None] = [None] * num_envs
            for i in range(num_envs):
                done = bool(terminated[i] or truncated[i])
                j = slot_episode[i]
                if j is not None:
                    buffer = buffers[i]
                    capped = max_steps is not None and buffer.transitions + 1 >= max_steps
                    buffer.add(actions[i], obs[i], rewards[i], terminated[i], truncated[i] or (capped and not done),
                               None if counts is None else counts[i])
                    bar.update(1)
                    if done or capped:
                        finished[j] = buffer.arrays(action_dtype)
                        done = True
                        slot_episode[i], buffers[i] = None, None
                        if next_episode < episodes:
                            slot_episode[i] = next_episode
                            reset_seeds[i] = seed + next_episode
                            next_episode += 1
                        actor.reset(i, reset_seeds[i])
                if done and slot_episode[i] is not None:
                    reset_mask[i] = True  # a slot with no episode left is parked (`ParkingEnv`), not reset
            while next_to_write in finished:
                episode = finished.pop(next_to_write)
                writer.write(episode, seed=seed + next_to_write, preview=preview)
                stats["episodes_written"] += 1
                stats["steps"] += len(episode["frames"]) - 1
                stats["frames"] += len(episode["frames"])
                next_to_write += 1
                bar.set_postfix(episodes=f"{writer.num_episodes}/{episodes}")
            if reset_mask.any():
                reset_obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                obs = np.where(reset_mask[:, None, None, None], reset_obs, obs)
                for i in np.flatnonzero(reset_mask):
                    buffers[i] = EpisodeBuffer(obs[i], action_shape, action_dtype, len(achievements))
    finally:
        bar.close()
        envs.close()
    return collection_summary(stats, writer, started)


def collection_summary(stats: dict, writer: EpisodeWriter, started: float) -> dict:
    """`stats` with the dataset's episode count, the seconds since `started` and the frames per second."""
    seconds = time.perf_counter() - started
    return {
        **stats,
        "episodes_total": writer.num_episodes,
        "seconds": seconds,
        "frames_per_s": stats["frames"] / seconds if seconds > 0 else 0.0,
    }


@dataclass
class CollectConfig:
    """`nextframe collect`: real-game (or dream) episodes into an episode dataset (docs/data-format.md).

    Episode j is seeded with `seed + j` whatever `workers` is; rerunning with the same `out` appends until `episodes`
    are present. `policy` sb3:PATH loads a Stable-Baselines3 zip, which contains pickles: only load your own.
    """

    episodes: int  # episodes the dataset should hold in total
    out: str  # dataset folder (created, or resumed)
    source: Literal["real", "dream"] = "real"  # where episodes come from
    # "crafter", "gym:<EnvId>" (or "gym:<module>:<EnvId>" to import the package that registers it) or "minerl:<EnvId>"
    game: str = "crafter"
    checkpoint: str | None = None  # source dream: the world-model folder to play (game, frames, actions: the model's)
    device: str = "auto"  # source dream: model device (auto, cpu, cuda)
    sampler_steps: int | None = None  # source dream: denoising steps (default: the model's)
    policy: str = "sticky"  # sticky | random | explorer | sb3:PATH
    workers: int = 1  # parallel envs (subprocesses when > 1; dream: envs stepping together)
    seed: int = 0  # episode j is reset with seed + j
    mean_repeat: float = 4.0  # sticky policy: mean action repeat
    max_steps: int = 1000  # transitions per episode at most (0: no cap; Crafter then ends at death or 10000 steps)
    frame_size: tuple[int, int] = (64, 64)  # N or HxW; an HxW of the game's aspect ratio keeps it, e.g. 64x48 (Atari)
    resize: Literal["stretch", "letterbox"] = "stretch"  # gym games: per-axis fit, or aspect ratio kept on black bars
    preview: bool = False  # also write previews/<episode>.mp4
    progress: bool = True  # progress bar


def run_collect(config: CollectConfig) -> dict:
    """Collect as `config` says; returns a summary of the dataset (and prints the collection speed)."""
    from generator.data import EpisodeDataset

    if config.source == "dream":
        from world_env.collect_dream import collect_dream

        if not config.checkpoint:
            raise ValueError("--source dream needs --checkpoint DIR")
        if not config.max_steps:
            raise ValueError("--source dream needs --max-steps >= 1 (a dream may never end on its own)")
        stats = collect_dream(
            config.checkpoint, config.out, config.episodes, policy=config.policy, num_envs=config.workers,
            seed=config.seed, mean_repeat=config.mean_repeat, max_steps=config.max_steps, device=config.device,
            sampler_steps=config.sampler_steps, preview=config.preview, progress=config.progress,
        )
    else:
        game_kwargs = {}
        if config.resize != "stretch":
            if not config.game.startswith("gym:"):
                raise ValueError("--resize applies to gym:<EnvId> games (crafter renders at --frame-size itself)")
            game_kwargs["resize"] = config.resize  # recorded in the dataset and, through training, in the model
        stats = collect(
            config.game, config.out, config.episodes, policy=config.policy, num_workers=config.workers,
            frame_size=config.frame_size, seed=config.seed, mean_repeat=config.mean_repeat,
            max_steps=config.max_steps or None, preview=config.preview, progress=config.progress,
            game_kwargs=game_kwargs,
        )
    print(f"wrote {stats['episodes_written']} episodes, {stats['frames']} frames in {stats['seconds']:.1f} s: "
          f"{stats['frames_per_s']:.1f} frames/s ({config.workers} worker(s))")
    dataset = EpisodeDataset(config.out)
    lengths = dataset.episode_lengths
    return {
        "dataset": str(config.out),
        "game": dataset.meta["game"],
        "frame_size": list(dataset.frame_size),
        "action_space": dataset.meta["action_space"],
        "policy": dataset.meta["policy"],
        "episodes": dataset.num_episodes,
        "total_steps": dataset.total_steps,
        "mean_length": sum(lengths) / len(lengths) if lengths else 0,
        "collect": {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()},
    }
