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

    def redraw_unseen(self, seed: int, keep_field: bool = True) -> None:
        """Redraw, in place, everything of the world the player cannot see, and reseed its creatures' moves.

        The tiles in the player's view (and the player) stay as they are, so the next frame is unchanged; every
        tile and creature outside it is drawn anew by crafter's own world generator: with ``keep_field`` from this
        world's noise field (where mountains, lakes, caves and forests lie stays; which tile of a forest holds a
        tree, the ores and the creatures are drawn from ``seed``), otherwise from the noise field of another world
        (``seed``). The generator's draws for creature moves and spawns are reseeded from ``seed`` too.

        What it is for: a reference for world models. A model conditioned on a few frames cannot know what lies
        beyond them; this game, redrawn, is the real game's rules with the unseen drawn from the real game's own
        distribution, so its agreement with the original continuation bounds what such knowledge is worth
        (`agents.evaluation.compare.compare_redrawn_real`). The noise field kept is more than any such model
        knows, another world's field less.
        """
        if self._episode_over is None:
            raise RuntimeError("CrafterGame.redraw_unseen called before reset()")
        import opensimplex
        from crafter import constants, engine, objects, worldgen

        env = self._env
        world, player = env._world, env._player
        other_field, draws, moves = (int(x) for x in np.random.SeedSequence(int(seed)).generate_state(3) % (2**31 - 1))
        if keep_field:  # crafter draws its noise field's seed first thing after seeding the world (`Env.reset`)
            field_seed = np.random.RandomState(hash((env._seed, env._episode)) % (2**31 - 1)).randint(0, 2**31 - 1)
        else:
            field_seed = other_field
        fresh = engine.World(world.area, constants.materials, world._chunk_size)
        fresh.reset(seed=draws)
        spawn = _Spot(np.array([world.area[0] // 2, world.area[1] // 2]))  # where every crafter world is grass
        simplex = opensimplex.OpenSimplex(seed=int(field_seed))
        tunnels = np.zeros(world.area, bool)
        for x in range(world.area[0]):
            for y in range(world.area[1]):
                worldgen._set_material(fresh, (x, y), spawn, tunnels, simplex)
        for x in range(world.area[0]):
            for y in range(world.area[1]):
                worldgen._set_object(fresh, (x, y), spawn, tunnels)
        grid, offset = env._local_view._grid, env._local_view._offset
        low = player.pos - offset
        seen = np.zeros(world.area, bool)
        seen[max(low[0], 0):max(low[0] + grid[0], 0), max(low[1], 0):max(low[1] + grid[1], 0)] = True
        world._mat_map[~seen] = fresh._mat_map[~seen]
        for obj in list(world.objects):
            if obj is not player and not seen[tuple(obj.pos)]:
                world.remove(obj)
        for obj in fresh.objects:
            pos = obj.pos.copy()
            if seen[tuple(pos)] or world._obj_map[tuple(pos)]:
                continue
            if isinstance(obj, objects.Cow):
                world.add(objects.Cow(world, pos))
            elif isinstance(obj, (objects.Zombie, objects.Skeleton)):
                world.add(type(obj)(world, pos, player))
        world.random = np.random.RandomState(moves)

    def close(self) -> None:
        self._episode_over = None


class _Spot:
    """Crafter's world generator reads only the player's ``pos`` (grass around the spawn)."""

    def __init__(self, pos: np.ndarray) -> None:
        self.pos = pos


def _discrete_index(action: Any, n: int) -> int:
    array = np.asarray(action)
    if array.shape != () or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"crafter action must be one integer in [0, {n}), got {action!r}")
    index = int(array)
    if not 0 <= index < n:
        raise ValueError(f"crafter action must be in [0, {n}), got {index}")
    return index
