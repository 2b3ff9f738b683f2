"""Crafter (danijar/crafter) as a `Game`: 64x64 RGB frames, 17 discrete actions."""
from __future__ import annotations

import functools
from typing import Any

import gymnasium
import numpy as np

from world_env.games.base import check_frame_size

# crafter's achievements in the order of `crafter.constants.achievements` (sorted by name); a dataset's
# ``achievements`` counters follow it (docs/data-format.md).
CRAFTER_ACHIEVEMENTS = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling", "collect_stone",
    "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant", "make_iron_pickaxe",
    "make_iron_sword", "make_stone_pickaxe", "make_stone_sword", "make_wood_pickaxe", "make_wood_sword",
    "place_furnace", "place_plant", "place_stone", "place_table", "wake_up",
)
# crafter pays this once per episode for each achievement unlocked (and (health change) / 10 every step).
CRAFTER_UNLOCK_REWARD = 1.0

# crafter's own data.yaml order; index i is action i.
CRAFTER_ACTIONS = (
    "noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone", "place_table",
    "place_furnace", "place_plant", "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe",
    "make_wood_sword", "make_stone_sword", "make_iron_sword",
)


@functools.cache
def _ordered_crafter_env() -> type:
    """`crafter.Env` whose creature balancing is reproducible from the seed (built on first use: importing crafter
    takes half a second).

    Every 10th step crafter 1.8.3 balances each chunk's creatures (``Env._balance_object``), picking the creature to
    despawn by a random index into a list built from the chunk's Python set, which is ordered by object id (memory
    address), so the same seed and actions give different worlds in different processes. We hand it the set sorted
    by each object's index in ``world._objects`` (its insertion order); the random draws are unchanged.
    """
    import crafter

    class OrderedCrafterEnv(crafter.Env):
        def _balance_object(self, chunk, objs, *args, **kwargs):
            slots = self._world._obj_map  # (W, H): each cell's object index in world._objects, 0 if empty
            ordered = sorted(objs, key=lambda obj: int(slots[tuple(obj.pos)]))
            return super()._balance_object(chunk, ordered, *args, **kwargs)

    # Pickled by reference as this module's `OrderedCrafterEnv`, which the module `__getattr__` below resolves.
    OrderedCrafterEnv.__module__, OrderedCrafterEnv.__qualname__ = __name__, "OrderedCrafterEnv"
    return OrderedCrafterEnv


def __getattr__(name: str) -> Any:
    if name == "OrderedCrafterEnv":
        return _ordered_crafter_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fresh_seed() -> int:
    # OS entropy, not the global numpy state: forked vector-env workers share that state and would all
    # generate the same world.
    return int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))


class CrafterGame:
    """Crafter behind the `Game` interface.

    ``reset(seed)`` with a seed always gives the same world (crafter seeds its world with
    ``hash((seed, episode))``; we restart the episode counter); ``reset(None)`` continues to fresh worlds.
    ``step`` maps crafter's single ``done`` to ``terminated`` (the player died, ``info["discount"] == 0``)
    or ``truncated`` (``length`` steps reached). ``info`` is crafter's: ``achievements`` (22 counters),
    ``inventory``, ``discount``, ``semantic``, ``player_pos``, ``reward``, and ``achievement_counts``: the counters
    as an int32 array in `achievement_names` order (what the collector records).

    ``fps`` defaults to 5, the rate crafter's own human-play GUI uses (``crafter/run_gui.py --fps``).
    """

    def __init__(
        self,
        frame_size: tuple[int, int] = (64, 64),
        *,
        seed: int | None = None,
        length: int | None = 10000,
        reward: bool = True,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        fps: int = 5,
    ) -> None:
        self.name = "crafter"
        self.frame_size = check_frame_size(frame_size)
        self.fps = int(fps)
        self.action_space = gymnasium.spaces.Discrete(len(CRAFTER_ACTIONS))
        self.action_names = CRAFTER_ACTIONS
        self.achievement_names = CRAFTER_ACHIEVEMENTS
        height, width = self.frame_size
        # crafter's `size` is (width, height): it draws a (size[0], size[1]) canvas and transposes it.
        self._env = _ordered_crafter_env()(
            area=area, view=view, size=(width, height), reward=reward, length=length,
            seed=_fresh_seed() if seed is None else int(seed),
        )
        self._episode_over: bool | None = None  # None: never reset

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode; returns the first frame, ``(H, W, 3)`` uint8."""
        if seed is not None:
            self._env._seed = int(seed)
            self._env._episode = 0
        frame = self._env.reset()
        self._episode_over = False
        return frame

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one action in ``0..16``; returns ``(frame, reward, terminated, truncated, info)``.

        Raises ``ValueError`` for an action outside the space and ``RuntimeError`` before ``reset`` or
        after the episode ended.
        """
        if self._episode_over is None:
            raise RuntimeError("CrafterGame.step called before reset()")
        if self._episode_over:
            raise RuntimeError("CrafterGame.step called after the episode ended; call reset() first")
        index = _discrete_index(action, self.action_space.n)
        frame, reward, done, info = self._env.step(index)
        terminated = bool(done and info["discount"] == 0.0)
        truncated = bool(done and not terminated)
        self._episode_over = terminated or truncated
        # crafter hands out the player's live position array; the caller keeps infos, so copy it.
        info = {**info, "player_pos": np.array(info["player_pos"]),
                "achievement_counts": np.array([info["achievements"][n] for n in CRAFTER_ACHIEVEMENTS], np.int32)}
        return frame, float(reward), terminated, truncated, info

    def close(self) -> None:
        self._episode_over = None


def _discrete_index(action: Any, n: int) -> int:
    array = np.asarray(action)
    if array.shape != () or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"crafter action must be one integer in [0, {n}), got {action!r}")
    index = int(array)
    if not 0 <= index < n:
        raise ValueError(f"crafter action must be in [0, {n}), got {index}")
    return index
