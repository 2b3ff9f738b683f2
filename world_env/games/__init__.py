"""Real games behind the dream, behind one small interface (`Game`).

`make_game` builds one by name; `GameEnv` turns one into a ``gymnasium.Env`` for vector envs.
Nothing here imports ``minerl`` until a ``"minerl:<EnvId>"`` game is made.
"""
from __future__ import annotations

from typing import Any

import numpy as np

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


def replay_recorded(data: Any, episode: int, step: int) -> tuple[Game, np.ndarray, bool]:
    """The real game a recorded episode came from, reset with the episode's recorded seed and replayed through its
    recorded actions up to ``step``: returns the game, its frame at ``step`` and whether that frame is the recorded
    one (the game must be deterministic given seed and actions).

    ``data`` is an `EpisodeDataset` or what `open_datasets` returns; its meta names the game and the ``game_kwargs``
    it was recorded with. Raises ``ValueError`` for an episode that records no seed.
    """
    seed = data.episode_seeds[episode]
    if seed is None:
        raise ValueError(f"episode {episode} of {getattr(data, 'root', None) or data.roots} records no seed, so the "
                         f"real game cannot replay it; record episodes with scripts/collect.py --seed")
    meta = data.meta
    # JSON gives lists where the game takes tuples (e.g. Crafter's area)
    kwargs = {key: tuple(value) if isinstance(value, list) else value
              for key, value in (meta.get("extra", {}).get("game_kwargs") or {}).items()}
    if meta["game"] == "crafter":
        kwargs.setdefault("length", None)  # the recording's own length limit ended it, not the game's
    recorded = data.read_steps(episode, 0, step + 1)
    game = make_game(meta["game"], tuple(data.frame_size), **kwargs)
    frame = game.reset(seed)
    for action in recorded["actions"][1:].numpy():
        frame, *_ = game.step(action if action.shape else int(action))
    return game, frame, bool(np.array_equal(frame, recorded["frames"][-1].numpy()))


__all__ = ["Game", "GameEnv", "CrafterGame", "GymGame", "make_game", "replay_recorded", "GAME_NAME_FORMS"]
