"""Real games behind the dream, behind one small interface (`Game`).

`make_game` builds one by name; `GameEnv` turns one into a ``gymnasium.Env`` for vector envs.
Nothing here imports ``minerl`` until a ``"minerl:<EnvId>"`` game is made.
"""
from __future__ import annotations

from typing import Any

from world_env.games.base import Game
from world_env.games.crafter_game import CrafterGame
from world_env.games.env import GameEnv
from world_env.games.gym_game import GymGame

GAME_NAME_FORMS = ('"crafter"', '"gym:<EnvId>"', '"minerl:<EnvId>"')


def make_game(name: str = "crafter", frame_size: tuple[int, int] = (64, 64), **kwargs: Any) -> Game:
    """Build a real game by name; ``kwargs`` go to the game's constructor.

    - ``"crafter"``: `CrafterGame` (kwargs: ``seed``, ``length``, ``reward``, ``area``, ``view``, ``fps``);
    - ``"gym:<EnvId>"``: `GymGame` for any Gymnasium id rendering RGB frames (kwargs go to ``gymnasium.make``);
    - ``"minerl:<EnvId>"``: `MineRLGame` with VPT-binned actions (needs MineRL 1.0 installed).

    Raises ``ValueError`` for any other name.
    """
    if name == "crafter":
        return CrafterGame(frame_size, **kwargs)
    prefix, _, env_id = name.partition(":")
    if prefix == "gym" and env_id:
        return GymGame(env_id, frame_size, **kwargs)
    if prefix == "minerl" and env_id:
        from world_env.games.minerl import MineRLGame

        return MineRLGame(env_id, frame_size, **kwargs)
    raise ValueError(f"unknown game {name!r}; valid forms: {', '.join(GAME_NAME_FORMS)}")


__all__ = ["Game", "GameEnv", "CrafterGame", "GymGame", "make_game", "GAME_NAME_FORMS"]
