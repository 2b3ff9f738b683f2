"""Any Gymnasium environment seen through its RGB frames, as a `Game`."""
from __future__ import annotations

import importlib
from typing import Any

import gymnasium
import numpy as np

from world_env.games.base import RESIZE_MODES, check_frame_size, resize_frame

# Gymnasium >= 1.0 no longer loads env plugins by itself: these namespaces' envs exist once their package is imported.
NAMESPACE_MODULES = {"ALE": "ale_py"}


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, importing the package of a known namespace (`NAMESPACE_MODULES`) whose
    envs are not registered yet; a clear error naming the ``"module:EnvId"`` spelling for any other."""
    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.NamespaceNotFound:
        namespace = env_id.partition(":")[2].partition("/")[0] if ":" in env_id else env_id.partition("/")[0]
        module = NAMESPACE_MODULES.get(namespace)
        if module is None:
            raise gymnasium.error.NamespaceNotFound(
                f"Gymnasium knows no namespace {namespace!r} (of {env_id!r}); name the package that registers it: "
                f"'gym:<module>:{env_id}' (e.g. 'gym:ale_py:ALE/Pong-v5')"
            ) from None
        try:
            importlib.import_module(module)
        except ImportError as error:
            package = module.replace("_", "-")
            raise ImportError(f"{env_id} needs the {module} package (pip install {package})") from error
        return gymnasium.make(env_id, **kwargs)


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
    resized to ``frame_size`` (``resize``: ``"stretch"`` or ``"letterbox"``, see `resize_frame`). ``fps`` is the
    env's ``metadata["render_fps"]`` (30 when absent) and the action space is the env's own. Extra keyword
    arguments go to ``gymnasium.make``.

    Ids from a package that registers its envs on import work either as ``"module:EnvId"`` (Gymnasium's own
    spelling, e.g. ``"ale_py:ALE/Pong-v5"``) or, for the namespaces in `NAMESPACE_MODULES`, as the bare id
    (``"ALE/Pong-v5"`` imports ``ale_py`` first).
    """

    def __init__(self, env_id: str, frame_size: tuple[int, int] = (64, 64), resize: str = "stretch",
                 **make_kwargs: Any) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.env_id = env_id
        self.name = f"gym:{env_id}"
        self.frame_size = check_frame_size(frame_size)
        self.resize = resize
        self._env = make_env(env_id, render_mode="rgb_array", **make_kwargs)
        self.action_space = self._env.action_space
        self.fps = int(self._env.metadata.get("render_fps") or 30)
        self._frames_from_obs = _is_rgb_space(self._env.observation_space)
        self._episode_over: bool | None = None

    def _frame(self, observation: Any) -> np.ndarray:
        frame = observation if self._frames_from_obs else self._env.render()
        if frame is None:
            raise RuntimeError(f"{self.name}: render() returned None; the env does not render rgb_array frames")
        return resize_frame(np.asarray(frame), self.frame_size, self.resize)

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
