"""Collect episodes in the dream into an episode dataset, in the same format as real-game collection.

A dream dataset is interchangeable with a real one (docs/data-format.md): ``game`` is the model's game, frames,
action space and fps are the model's, and ``meta["extra"]`` says ``{"source": "dream", "checkpoint": ...}`` with the
model weights' sha256, so training, the IDM and evaluation read either without knowing which it is.

Episode ``j`` (counted over the whole folder) starts from the prompt clip and noise that the dream env derives from
seed ``seed + j`` and is acted on by a policy stream seeded with the same number (as in `world_env.collect`), so
its content depends on ``(seed, j)`` and the model only, not on ``num_envs``: a row's noise is a pure function of
its seed and frame position (`generator.sampler.frame_noise`). The env runs with ``AutoresetMode.DISABLED``; the
collector resets ended rows itself with their next episode's seed. The frame a dream episode starts on (the last
frame of its prompt clip) is the episode's reset frame ``frames[0]``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from gymnasium.vector import AutoresetMode

from generator.data import EpisodeWriter
from generator.actions import action_array_spec
from world_env.collect import EpisodeBuffer, check_resume, collection_summary
from world_env.policies import make_policy
from world_env.env import WorldModelVecEnv


def _weights_digest(checkpoint: Path) -> str | None:
    try:
        config = json.loads((checkpoint / "config.json").read_text())
        return config["files"]["model"]["sha256"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def collect_dream(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    episodes: int,
    policy: str = "sticky",
    num_envs: int = 1,
    seed: int = 0,
    mean_repeat: float = 4.0,
    max_steps: int = 1000,
    sb3_policy_path: str | os.PathLike | None = None,
    device: str = "auto",
    sampler_steps: int | None = None,
    preview: bool = False,
    progress: bool = True,
) -> dict:
    """Collect dream episodes of the world model at ``checkpoint`` into ``out`` until it holds ``episodes``.

    ``max_steps`` is required (>= 1): a dream ends only when its termination head fires, which a model may never
    do; episodes reaching it are marked ``truncated``. ``num_envs`` rows step together on ``device``.
    ``sampler_steps`` overrides the checkpoint's (and is recorded in ``extra``: resuming needs the same value).
    Returns the same statistics as `world_env.collect.collect`.
    """
    from tqdm.auto import tqdm

    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if max_steps is None or max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (dream episodes may never terminate on their own), got {max_steps}")
    import tensordict  # noqa: F401  (slow first import, kept out of the timing as in `collect`)

    checkpoint = Path(checkpoint).resolve()
    started = time.perf_counter()
    stats = {"episodes_written": 0, "steps": 0, "frames": 0, "env_steps": 0}
    envs = WorldModelVecEnv(checkpoint, num_envs=num_envs, device=device, sampler_steps=sampler_steps,
                            max_episode_steps=max_steps, autoreset_mode=AutoresetMode.DISABLED)
    try:
        info = envs.world.info
        action_space = envs.single_action_space
        actor = make_policy(policy, action_space, num_envs, mean_repeat=mean_repeat, sb3_policy_path=sb3_policy_path)
        extra = {"source": "dream", "checkpoint": str(checkpoint), "weights_sha256": _weights_digest(checkpoint),
                 "sampler_steps": sampler_steps or envs.world.sampling.sampler_steps, "seed": seed,
                 "max_steps": max_steps}
        writer = EpisodeWriter(out, game=info.game, frame_size=tuple(info.frame_size), action_space=action_space,
                               fps=int(info.fps), policy=actor.describe(), extra=extra)
        check_resume(writer, seed, max_steps)
        first = writer.num_episodes
        todo = max(0, episodes - first)
        if todo == 0:
            return collection_summary(stats, writer, started)
        action_shape, action_dtype = action_array_spec(action_space)
        bar = tqdm(total=todo * max_steps, unit="step", disable=not progress, desc=f"collect dream {info.game}")
        next_episode = first
        slot_episode: list[int | None] = [None] * num_envs
        seeds = []
        for i in range(num_envs):
            # Rows with no episode to play (num_envs > todo) still step; their frames are dropped.
            if next_episode < episodes:
                slot_episode[i] = next_episode
                next_episode += 1
            episode = slot_episode[i] if slot_episode[i] is not None else episodes + i
            seeds.append(seed + episode)
            actor.reset(i, seed + episode)
        obs, _ = envs.reset(seed=seeds)
        buffers = [EpisodeBuffer(obs[i], action_shape, action_dtype) for i in range(num_envs)]
        finished: dict[int, dict[str, np.ndarray]] = {}
        next_to_write = first
        try:
            while any(j is not None for j in slot_episode):
                actions = actor.act(obs)
                obs, rewards, terminated, truncated, _ = envs.step(actions)
                stats["env_steps"] += num_envs
                reset_mask = terminated | truncated
                for i in range(num_envs):
                    j = slot_episode[i]
                    if j is not None:
                        buffers[i].add(actions[i], obs[i], rewards[i], terminated[i], truncated[i])
                        bar.update(1)
                        if reset_mask[i]:
                            finished[j] = buffers[i].arrays(action_dtype)
                            slot_episode[i] = None
                            if next_episode < episodes:
                                slot_episode[i] = next_episode
                                next_episode += 1
                    if reset_mask[i]:
                        episode = slot_episode[i] if slot_episode[i] is not None else episodes + i
                        seeds[i] = seed + episode
                        actor.reset(i, seeds[i])
                while next_to_write in finished:
                    episode_arrays = finished.pop(next_to_write)
                    writer.write(episode_arrays, seed=seed + next_to_write, preview=preview)
                    stats["episodes_written"] += 1
                    stats["steps"] += len(episode_arrays["frames"]) - 1
                    stats["frames"] += len(episode_arrays["frames"])
                    next_to_write += 1
                    bar.set_postfix(episodes=f"{writer.num_episodes}/{episodes}")
                if reset_mask.any() and any(j is not None for j in slot_episode):
                    reset_obs, _ = envs.reset(seed=seeds, options={"reset_mask": reset_mask})
                    obs = np.where(reset_mask[:, None, None, None], reset_obs, obs)
                    for i in np.flatnonzero(reset_mask):
                        buffers[i] = EpisodeBuffer(obs[i], action_shape, action_dtype)
        finally:
            bar.close()
        return collection_summary(stats, writer, started)
    finally:
        envs.close()
