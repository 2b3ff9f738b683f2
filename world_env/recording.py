"""Recording dream episodes to video."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from generator.videos import write_video


def record_video(env, path: str | Path, steps: int, seed: int | None = None, policy=None, fps: int | None = None) -> Path:
    """Run `env` (a single `gymnasium.Env` with `render_mode="rgb_array"`) for `steps` steps and save the frames.

    `policy(obs) -> action` defaults to uniform random actions. Episodes that end are reset and recording goes on.
    """
    policy = policy or (lambda obs: env.action_space.sample())
    if seed is not None:
        env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        frames.append(env.render())
        if terminated or truncated:
            obs, _ = env.reset()
    return write_video(path, np.stack(frames), fps=fps or env.metadata.get("render_fps", 15))
