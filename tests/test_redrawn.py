"""The redrawn-game reference: real Crafter with what the player cannot see redrawn, replayed on recorded episodes."""
import copy

import numpy as np
import pytest
from crafter import constants

from agents.evaluation.compare import compare_redrawn_real
from generator.data import EpisodeDataset
from generator.metrics import PSNR_CAP_DB
from world_env.collect import collect
from world_env.games import make_game

WATER = 1 + constants.materials.index("water")  # crafter's material ids count from 1


def _seen(game) -> np.ndarray:
    env = game._env
    low = env._player.pos - env._local_view._offset
    grid = env._local_view._grid
    seen = np.zeros(env._world.area, bool)
    seen[max(low[0], 0):low[0] + grid[0], max(low[1], 0):low[1] + grid[1]] = True
    return seen


def test_redraw_unseen_keeps_the_view_redraws_the_rest_and_is_seeded():
    game = make_game("crafter", (64, 64))
    game.reset(11)
    for action in (1, 1, 3, 0):
        game.step(action)
    before = game._env.render()
    original = game._env._world._mat_map.copy()
    seen = _seen(game)
    assert (original == WATER).sum() > 20  # a world with lakes, so keeping the noise field is testable
    a, b, c, other = (copy.deepcopy(game) for _ in range(4))
    a.redraw_unseen(7)
    b.redraw_unseen(7)
    c.redraw_unseen(8)
    other.redraw_unseen(7, keep_field=False)
    assert np.array_equal(a._env.render(), before)  # the player sees the same frame
    for redrawn in (a, c, other):
        assert np.array_equal(redrawn._env._world._mat_map[seen], original[seen])
    mats = {name: g._env._world._mat_map for name, g in (("a", a), ("b", b), ("c", c), ("other", other))}
    assert np.array_equal(mats["a"], mats["b"])  # same seed, same world
    assert not np.array_equal(mats["a"], mats["c"])  # another seed redraws trees and ores elsewhere
    water = (original == WATER) & ~seen
    assert (mats["a"][water] == WATER).all() and (mats["c"][water] == WATER).all()  # the lakes stay where they were
    assert (mats["other"][water] == WATER).mean() < 0.9  # another world's field puts them elsewhere
    creatures = [(type(o).__name__, tuple(o.pos)) for o in a._env._world.objects]
    assert creatures == [(type(o).__name__, tuple(o.pos)) for o in b._env._world.objects]
    a.step(0)
    b.step(0)
    assert np.array_equal(a._env.render(), b._env.render())
    with pytest.raises(RuntimeError, match="before reset"):
        make_game("crafter", (64, 64)).redraw_unseen(0)


def test_the_replayed_game_matches_the_recording_and_the_redrawn_one_is_deterministic(tmp_path):
    collect("crafter", tmp_path / "d", 2, seed=5, max_steps=24, progress=False, game_kwargs={"area": (24, 24)})
    dataset = EpisodeDataset(tmp_path / "d", window=8)
    replay = compare_redrawn_real(dataset, context_frames=2, horizon=6, windows=4, keep_field=None)
    assert replay["redrawn"] == "replay only"
    assert replay["psnr"] == [PSNR_CAP_DB] * 6 and replay["ssim"] == pytest.approx([1.0] * 6)
    shifts = replay["view_shift"]
    assert shifts["moved_agreed"] == shifts["moved_steps"] and shifts["stayed_agreed"] == shifts["stayed_steps"]
    assert shifts["moved_steps"] + shifts["stayed_steps"] > 0
    first = compare_redrawn_real(dataset, context_frames=2, horizon=6, windows=4, keep_field=True, seed=3)
    again = compare_redrawn_real(dataset, context_frames=2, horizon=6, windows=4, keep_field=True, seed=3)
    assert first == again and first["redrawn"] == "noise field kept"
    assert len(first["psnr"]) == 6 and first["psnr"][0] <= PSNR_CAP_DB


def test_the_redrawn_reference_refuses_episodes_it_cannot_replay(tmp_path):
    collect("gym:CartPole-v1", tmp_path / "cart", 1, seed=0, max_steps=12, progress=False)
    with pytest.raises(ValueError, match="replays Crafter only"):
        compare_redrawn_real(EpisodeDataset(tmp_path / "cart", window=6), context_frames=2, horizon=4, windows=2)
    collect("crafter", tmp_path / "other", 1, seed=5, max_steps=12, progress=False, game_kwargs={"area": (24, 24)})
    dataset = EpisodeDataset(tmp_path / "other", window=6)
    dataset.meta["extra"]["game_kwargs"] = {"area": [32, 32]}  # recorded in another world size: no longer replays
    with pytest.raises(ValueError, match="does not give its recorded frame"):
        compare_redrawn_real(dataset, context_frames=2, horizon=4, windows=2)
