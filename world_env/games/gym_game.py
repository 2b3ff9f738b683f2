"""Any Gymnasium environment seen through its RGB frames, as a `Game`."""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from world_env.games.base import check_frame_size, resize_frame


def _is_rgb_space(space: gymnasium.Space) -> bool:
    return (
        isinstance(space, gymnasium.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] == 3
    )


class GymGame:
    """A Gymnasium env id as a `Game` named ``"gym:<EnvId>"``.

    The env is made with ``render_mode="rgb_array"``. Frames are the observation when it is an ``(H, W, 3)``
    uint8 image (Atari, CarRacing) and ``env.render()`` otherwise (CartPole, MountainCar); either way they are
    resized to ``frame_size``. ``fps`` is the env's ``metadata["render_fps"]`` (30 when absent) and the
    action space is the env's own. Extra keyword arguments go to ``gymnasium.make``.
    """

    def __init__(self, env_id: str, frame_size: tuple[int, int] = (64, 64), **make_kwargs: Any) -> None:
        self.env_id = env_id
        self.name = f"gym:{env_id}"
        self.frame_size = check_frame_size(frame_size)
        self._env = gymnasium.make(env_id, render_mode="rgb_array", **make_kwargs)
        self.action_space = self._env.action_space
        self.fps = int(self._env.metadata.get("render_fps") or 30)
        self._frames_from_obs = _is_rgb_space(self._env.observation_space)
        self._episode_over: bool | None = None

    def _frame(self, observation: Any) -> np.ndarray:
        frame = observation if self._frames_from_obs else self._env.render()
        if frame is None:
            raise RuntimeError(f"{self.name}: render() returned None; the env does not render rgb_array frames")
        return resize_frame(np.asarray(frame), self.frame_size)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode; returns the first frame, ``(H, W, 3)`` uint8."""
        observation, _ = self._env.reset(seed=seed)
        self._episode_over = False
        return self._frame(observation)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one action of ``action_space``; returns ``(frame, reward, terminated, truncated, info)``.

        Raises ``ValueError`` for an action outside ``action_space`` and ``RuntimeError`` before ``reset``
        or after the episode ended.
        """
        if self._episode_over is None:
            raise RuntimeError(f"{self.name}: step called before reset()")
        if self._episode_over:
            raise RuntimeError(f"{self.name}: step called after the episode ended; call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"{self.name}: action {action!r} is not in {self.action_space}")
        observation, reward, terminated, truncated, info = self._env.step(action)
        self._episode_over = bool(terminated or truncated)
        return self._frame(observation), float(reward), bool(terminated), bool(truncated), dict(info)

    def close(self) -> None:
        self._env.close()
        self._episode_over = None
