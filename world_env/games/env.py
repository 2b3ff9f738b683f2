"""`GameEnv`: a real `Game` as a ``gymnasium.Env``, so Gymnasium's vector envs can run many side by side."""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from world_env.games.base import Game


class GameEnv(gymnasium.Env):
    """A real game as a Gymnasium env whose observations are its RGB frames.

    ``GameEnv("crafter")``, ``GameEnv("gym:CartPole-v1", frame_size=(96, 96))`` or ``GameEnv(game)`` for an
    already built `Game`; keyword arguments other than ``frame_size`` and ``render_mode`` go to `make_game`.
    Picklable constructors make it usable as ``SyncVectorEnv([lambda: GameEnv("crafter")] * n)`` or
    ``AsyncVectorEnv`` alike.

    Spaces: ``observation_space = Box(0, 255, (H, W, 3), uint8)``; ``action_space`` is the game's.
    ``metadata["render_fps"]`` is the game's ``fps``; the only render mode is ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        game: str | Game = "crafter",
        *,
        frame_size: tuple[int, int] = (64, 64),
        render_mode: str | None = None,
        **game_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if isinstance(game, str):
            from world_env.games import make_game

            game = make_game(game, frame_size, **game_kwargs)
        elif game_kwargs:
            raise ValueError(f"keyword arguments {sorted(game_kwargs)} only apply when the game is given by name")
        self.game = game
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "render_fps": game.fps, "game": game.name}
        height, width = game.frame_size
        self.observation_space = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = game.action_space
        self._last_frame: np.ndarray | None = None

    @property
    def achievement_names(self) -> tuple[str, ...]:
        """The achievement counters the game reports in ``info["achievement_counts"]`` (``()``: none); datasets
        record them (docs/data-format.md)."""
        return tuple(getattr(self.game, "achievement_names", ()))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; returns ``(frame, info)``. The same ``seed`` gives the same first frame and,
        under the same actions, the same trajectory; ``seed=None`` continues to a new episode."""
        super().reset(seed=seed)
        self._last_frame = self.game.reset(seed)
        return self._last_frame, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply ``action``; returns ``(frame, reward, terminated, truncated, info)``.

        ``terminated``: the game reached a terminal state (e.g. the Crafter player died); ``truncated``: it
        stopped for a time limit. Raises ``ValueError`` for an invalid action and ``RuntimeError`` when called
        before ``reset`` or after the episode ended.
        """
        frame, reward, terminated, truncated, info = self.game.step(action)
        self._last_frame = frame
        return frame, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The last frame, ``(H, W, 3)`` uint8, when ``render_mode == "rgb_array"``; otherwise ``None``."""
        if self.render_mode is None:
            return None
        if self._last_frame is None:
            raise RuntimeError("GameEnv.render called before reset()")
        return self._last_frame.copy()

    def close(self) -> None:
        self.game.close()
