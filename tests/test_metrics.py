"""The frame metrics that read what an agent sees (generator/metrics.py)."""
import pytest
import torch

from generator.metrics import PSNR_CAP_DB, SHIFTS, distinct_tiles, psnr, shift_agreement, view_shift


def tiled_frame(tiles: torch.Tensor, tile: int = 7) -> torch.Tensor:
    """A 64x64 frame from a (9, 9) grid of tile ids: each id a fixed random 7x7 texture, the rest black."""
    textures = torch.randint(0, 256, (int(tiles.max()) + 1, tile, tile, 3), generator=torch.Generator().manual_seed(0),
                             dtype=torch.uint8)
    frame = torch.zeros(64, 64, 3, dtype=torch.uint8)
    for y in range(tiles.shape[0]):
        for x in range(tiles.shape[1]):
            frame[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = textures[tiles[y, x]]
    return frame


def world(seed: int) -> torch.Tensor:
    """A large random tile map to cut 9x9 views from."""
    return torch.randint(0, 12, (30, 30), generator=torch.Generator().manual_seed(seed))


def view_at(grid: torch.Tensor, top: int, left: int, player: int = 99) -> torch.Tensor:
    view = grid[top:top + 9, left:left + 9].clone()
    view[3, 4] = player  # the player sprite always sits in the middle of the 9x7 world view
    view[7:] = 50  # inventory rows, never part of the world view
    return tiled_frame(view)


def test_view_shift_reads_a_one_tile_move_in_each_direction():
    grid = world(0)
    before = view_at(grid, 10, 10)
    moves = {(10, 9): (0, 1), (10, 11): (0, -1), (9, 10): (1, 0), (11, 10): (-1, 0), (10, 10): (0, 0)}
    for (top, left), expected in moves.items():
        after = view_at(grid, top, left, player=98)  # the sprite turns: it must not decide the shift
        shift, clear = view_shift(before, after)
        assert SHIFTS[int(shift)] == expected
        assert bool(clear)


def test_view_shift_is_ambiguous_on_a_uniform_field():
    field = torch.zeros(30, 30, dtype=torch.long)
    shift, clear = view_shift(view_at(field, 5, 5), view_at(field, 5, 6))
    assert not bool(clear)


def test_shift_agreement_counts_moved_and_stayed_separately():
    grid = world(1)
    real = torch.stack([view_at(grid, 10, 10), view_at(grid, 10, 11), view_at(grid, 10, 11), view_at(grid, 11, 11)])
    stuck = torch.stack([view_at(grid, 10, 10)] * 4)  # a dream that never moves the view
    result = shift_agreement(real[None], stuck[None])
    assert result["moved_steps"] == 2 and result["stayed_steps"] == 1
    assert result["moved_agreement"] == 0.0 and result["stayed_agreement"] == 1.0
    assert shift_agreement(real[None], real[None])["moved_agreement"] == 1.0


def test_distinct_tiles_counts_world_view_tiles_only():
    grid = torch.zeros(30, 30, dtype=torch.long)
    grid[10, 12] = 3
    frame = view_at(grid, 10, 10)  # grass, one other tile, the player; inventory rows ignored
    assert int(distinct_tiles(frame)) == 3
    assert distinct_tiles(torch.stack([frame, frame])).tolist() == [3.0, 3.0]


def test_psnr_per_frame_with_identical_frames_at_the_cap():
    frames = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert (psnr(frames, frames) == PSNR_CAP_DB).all()  # identical frames: 100 dB, not +inf
    noisy = frames.clone()
    noisy[0, 0, 0, 0] ^= 1
    value = psnr(frames, noisy)
    assert value.shape == (2,) and value[0].item() == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 * 768)).item())
    assert psnr(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)).item() == 0


def test_shown_targets_follow_the_player_out_of_the_prompt_view():
    """A move counts as shown while the tile it steps towards lay in the prompt's last view (9 wide, the player in
    column 4; 7 high, row 3); other actions are shown; an ambiguous move loses the player's place for good."""
    from generator.metrics import shown_targets

    left, up, noop = 1, 3, 0  # Crafter's move_left (view content shifts right, SHIFTS[1]) and move_up (SHIFTS[3])
    actions = torch.tensor([[left] * 5 + [noop] + [up] * 4])
    shift = torch.tensor([[1] * 5 + [0] + [3] * 4])
    clear = torch.ones(1, 10, dtype=torch.bool)
    shown = shown_targets(shift, clear, actions)
    # left moves target columns -1..-5 (the view reaches -4); the noop is shown; up moves target rows -1..-4
    # (the view reaches -3) from column -5, outside the view whatever the row
    assert shown[0].tolist() == [True, True, True, True, False, True, False, False, False, False]
    # a blocked move (the view stayed) keeps the player where it is
    blocked = shown_targets(torch.tensor([[0, 0, 0, 0, 0]]), torch.ones(1, 5, dtype=torch.bool),
                            torch.tensor([[left] * 5]))
    assert blocked.all()
    # a move whose shift cannot be read: that step and all later ones are unshown
    unclear = clear.clone()
    unclear[0, 1] = False
    assert shown_targets(shift, unclear, actions)[0].tolist() == [True, True] + [False] * 8


def test_in_step_holds_until_the_dream_and_the_real_view_first_part():
    """Steps count as in step until the first one whose shifts disagree (that step itself still counts) or whose
    real move cannot be read; an unreadable step of another action does not part the players."""
    from generator.metrics import in_step, shift_agreement, view_shift

    left, noop = 1, 0
    actions = torch.tensor([[left, noop, left, left, noop], [noop, left, noop, left, left]])
    real = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 1, 1]])
    dream = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 2, 1, 1]])  # row 0 walks where the game stopped at step 3
    clear = torch.ones(2, 5, dtype=torch.bool)
    assert in_step(real, clear, dream, actions).tolist() == [[True] * 4 + [False], [True] * 3 + [False] * 2]
    unclear = clear.clone()
    unclear[0, 1] = unclear[1, 1] = False  # row 0: a noop nobody can read; row 1: a move nobody can read
    assert in_step(real, unclear, dream, actions).tolist() == [[True] * 4 + [False], [True] * 2 + [False] * 3]
    # wired to the frames: a textured view that a dream shifts once where the game held it, then both move
    generator = torch.Generator().manual_seed(0)
    world = torch.randint(0, 255, (20, 20, 3), generator=generator, dtype=torch.uint8)

    def view(x):  # a 9 x 7 tile view of the world, its left edge at tile column x, on a 64 x 64 frame
        frame = torch.zeros(64, 64, 3, dtype=torch.uint8)
        frame[:49, :63] = world.repeat_interleave(7, 0).repeat_interleave(7, 1)[:49, x * 7:x * 7 + 63]
        return frame

    real_frames = torch.stack([view(x) for x in (5, 5, 4, 3)])[None]  # stayed, then moved left twice
    dream_frames = torch.stack([view(x) for x in (5, 4, 3, 2)])[None]  # moved at once, then kept moving
    moves = torch.tensor([[left, left, left]])
    rs, rc = view_shift(real_frames[:, :-1], real_frames[:, 1:])
    ds, _ = view_shift(dream_frames[:, :-1], dream_frames[:, 1:])
    together = in_step(rs, rc, ds, moves)
    assert together.tolist() == [[True, False, False]]
    counts = shift_agreement(real_frames, dream_frames, together)
    assert (counts["stayed_steps"], counts["stayed_agreed"], counts["moved_steps"]) == (1, 0, 0)


def test_a_grey_view_reads_as_asleep_and_disagreements_are_counted():
    from generator.metrics import grey_view, state_agreement, summarize_states

    g = torch.Generator().manual_seed(0)
    awake = torch.randint(0, 256, (2, 64, 64, 3), generator=g, dtype=torch.uint8)
    luma = (awake.float() @ torch.tensor([0.299, 0.587, 0.114]))[..., None]
    asleep = (0.5 * luma + 0.5 * torch.tensor([0.0, 0.0, 16.0])).round().to(torch.uint8)  # Crafter's sleep filter
    asleep[:, 49:] = awake[:, 49:]  # the inventory keeps its colours
    assert grey_view(asleep).tolist() == [True, True] and grey_view(awake).tolist() == [False, False]
    real = torch.tensor([[False, True, True, False]])
    dream = torch.tensor([[False, False, True, True]])
    total = summarize_states(state_agreement(real, dream), state_agreement(real, real))
    assert (total["real"], total["dream"], total["both"], total["disagree"]) == (4, 4, 3, 2)
    assert total["precision"] == total["recall"] == 0.75 and total["windows_disagreeing"] == 1
    masked = state_agreement(real, dream, torch.tensor([[True, True, True, False]]))
    assert (masked["steps"], masked["disagree"]) == (3, 1)
