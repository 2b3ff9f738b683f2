"""Frame metrics that read what an agent sees: did the view move as the game moves it, is the frame still made
of the game's tiles.

Pure functions on uint8 frames ``(..., H, W, 3)``; defaults follow Crafter at 64x64 (a 9x7 world view of 7-px
tiles over 2 inventory rows, the player in the middle tile, `docs/results.md`).

- `view_shift`: which one-tile displacement of the world view best explains the next frame (none, or one tile
  in one of four directions), and whether that is unambiguous (the best fit clearly beats every other one). A move
  in Crafter shifts the whole world view by exactly one tile; a blocked move, or any other action, shifts nothing.
- `motion_labels`: `view_shift` along clips (with the sleeping view, `grey_view`, where asked), as the labels a
  motion-conditioned model trains on.
- `shift_agreement`: on steps where the real game's shift is unambiguous, how often the dream's shift equals it,
  separately where the real view moved and where it stayed.
- `distinct_tiles`: the number of different tiles in a frame's world view: a world collapsing to a static field
  loses them, one dissolving into a patchwork of unrelated tiles gains them.

And the pixel metrics every evaluation uses: `mse`, `psnr_from_mse` and `psnr` (identical frames score
`PSNR_CAP_DB` = 100 dB, not +inf, so means over frames stay finite).
"""
from __future__ import annotations

import torch

PSNR_CAP_DB = 100.0  # the PSNR of identical frames (MSE 0), instead of +inf


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error between uint8 frames `(..., H, W, 3)` in 8-bit units, one value per frame `(...)`."""
    return ((a.float() - b.float()) ** 2).mean(dim=(-3, -2, -1))


def psnr_from_mse(value: torch.Tensor | float) -> torch.Tensor:
    """PSNR in dB of a mean squared error in 8-bit units, `10 log10(255^2 / mse)`, at most `PSNR_CAP_DB`."""
    return (10 * torch.log10(255.0**2 / torch.as_tensor(value).clamp_min(1e-10))).clamp(max=PSNR_CAP_DB)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB between uint8 frames `(..., H, W, 3)`, one value per frame `(...)`; identical frames give
    `PSNR_CAP_DB` (100 dB)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return psnr_from_mse(mse(a, b))


# Displacements of the view content (rows, cols) in tiles: index 0 is "stayed".
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))


def _world_tiles(frames: torch.Tensor, tile: int, view: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> the world view's tiles ``(N, rows, cols, tile * tile * 3)`` float."""
    rows, cols = view
    if rows * tile > frames.shape[-3] or cols * tile > frames.shape[-2]:
        raise ValueError(f"a view of {rows}x{cols} tiles of {tile} px does not fit frames of "
                         f"{tuple(frames.shape[-3:-1])}; pass the game's view (a tile codec's motion_view)")
    area = frames[:, : rows * tile, : cols * tile].float()
    return area.reshape(-1, rows, tile, cols, tile, 3).permute(0, 1, 3, 2, 4, 5).flatten(3)


def view_shift(
    before: torch.Tensor,
    after: torch.Tensor,
    tile: int = 7,
    view: tuple[int, int] = (7, 9),
    player: tuple[int, int] | None = (3, 4),
    ratio: float = 0.5,
    min_error: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The view shift from ``before`` to ``after`` (uint8 ``(..., H, W, 3)`` each), as an index into `SHIFTS`, and
    whether it is unambiguous, both ``(...)``.

    For every candidate displacement the error is the mean absolute pixel difference between each tile of ``after``
    and the tile of ``before`` it would have come from, over the tiles both frames show (the ``player`` tile,
    whose sprite turns with the player, left out). The shift is the candidate with the least error; it is
    unambiguous when that error is at most ``ratio`` times the second least and the second least is at least
    ``min_error`` grey levels (a uniform field fits every shift equally and is ambiguous).
    """
    if before.shape != after.shape:
        raise ValueError(f"view_shift needs frames of one shape, got {tuple(before.shape)} and {tuple(after.shape)}")
    lead = before.shape[:-3]
    a = _world_tiles(before.reshape(-1, *before.shape[-3:]), tile, view)  # (N, r, c, D)
    b = _world_tiles(after.reshape(-1, *after.shape[-3:]), tile, view)
    rows, cols = view
    errors = []
    for dy, dx in SHIFTS:
        # after[y, x] should equal before[y - dy, x - dx]
        ys = slice(max(dy, 0), rows + min(dy, 0))
        xs = slice(max(dx, 0), cols + min(dx, 0))
        ys_src = slice(max(-dy, 0), rows + min(-dy, 0))
        xs_src = slice(max(-dx, 0), cols + min(-dx, 0))
        diff = (b[:, ys, xs] - a[:, ys_src, xs_src]).abs().mean(-1)  # (N, r', c')
        keep = torch.ones(diff.shape[1:], dtype=torch.bool)
        if player is not None:
            # The player stays in the middle while the view moves: its tile in `after`, and the tile its sprite in
            # `before` would have been carried to, show no view content.
            for y, x in ((player[0], player[1]), (player[0] + dy, player[1] + dx)):
                y, x = y - ys.start, x - xs.start
                if 0 <= y < keep.shape[0] and 0 <= x < keep.shape[1]:
                    keep[y, x] = False
        errors.append(diff[:, keep].mean(-1))
    errors = torch.stack(errors, dim=-1)  # (N, 5)
    best2 = errors.topk(2, dim=-1, largest=False)
    shift = best2.indices[:, 0]
    clear = (best2.values[:, 0] <= ratio * best2.values[:, 1]) & (best2.values[:, 1] >= min_error)
    return shift.reshape(lead), clear.reshape(lead)


NOT_GIVEN_MOTION = len(SHIFTS)  # `motion_labels`' index of a step whose view shift is not known
# Motion classes that also say whether the new frame shows the sleeping view (`grey_view`): class c is the shift
# `SHIFTS[c % len(SHIFTS)]` into a frame awake (c < len(SHIFTS)) or asleep; "not given" is SLEEP_MOTION_CLASSES.
SLEEP_MOTION_CLASSES = 2 * len(SHIFTS)


def motion_shift(motion: torch.Tensor, classes: int) -> torch.Tensor:
    """The `SHIFTS` index of motion classes `(...)` of a `classes`-class condition (`len(SHIFTS)`, or
    `SLEEP_MOTION_CLASSES` with the sleep state), `NOT_GIVEN_MOTION` where the class is "not given" (`classes`):
    the row of `generator.model.shift_maps` that applies it."""
    motion = motion.long()
    return torch.where(motion >= classes, NOT_GIVEN_MOTION, motion.clamp_min(0) % len(SHIFTS))


def sleep_look(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(..., H, W, 3)`` drawn as Crafter draws a sleeping player's view: colour removed (ITU-R 601
    luma, as PIL's) and tinted half way to (0, 0, 16). What the awake frame after a sleeping one is compared in, so
    the view's shift across waking up can be read."""
    luma = (frames.float() * torch.tensor([0.299, 0.587, 0.114], device=frames.device)).sum(-1, keepdim=True)
    return (0.5 * luma + 0.5 * torch.tensor([0.0, 0.0, 16.0], device=frames.device)).round().clamp(0, 255).to(
        torch.uint8)


def motion_labels(frames: torch.Tensor, has_action: torch.Tensor | None = None, classes: int = len(SHIFTS),
                  **kwargs) -> torch.Tensor:
    """How the view moved into each frame of clips ``(B, T, H, W, 3)`` uint8: ``(B, T)`` long, an index into
    `SHIFTS` where `view_shift` reads it unambiguously, else `NOT_GIVEN_MOTION` (the first frame, a frame with no
    previous action in ``has_action`` ``(B, T)``, a uniform field that fits every shift). The labels the motion
    condition (`generator.model.DiTConfig.motion_classes`) and the outcome model's motion head train on.

    With `SLEEP_MOTION_CLASSES` ``classes``: the shift plus ``len(SHIFTS)`` where the frame shows the sleeping view
    (`grey_view`), "not given" `SLEEP_MOTION_CLASSES`. A sleeping view is labelled "stayed" (Crafter's sleeping
    player cannot move); across waking the sleeping frame is compared with the awake one's `sleep_look`."""
    if classes not in (len(SHIFTS), SLEEP_MOTION_CLASSES):
        raise ValueError(f"motion label classes must be {len(SHIFTS)} (the view shifts) or {SLEEP_MOTION_CLASSES} "
                         f"(each shift into an awake or a sleeping view), got {classes}")
    b, t = frames.shape[:2]
    sleep, not_given = classes == SLEEP_MOTION_CLASSES, classes
    labels = torch.full((b, t), not_given, dtype=torch.long)
    if t > 1:
        frames = frames.cpu()
        before, after = frames[:, :-1], frames[:, 1:]
        if sleep:
            asleep = grey_view(frames, **{k: kwargs[k] for k in ("tile", "view") if k in kwargs})  # (B, T)
            waking = (asleep[:, :-1] & ~asleep[:, 1:])[..., None, None, None]
            if waking.any():
                after = torch.where(waking, sleep_look(after), after)
        shift, clear = view_shift(before, after, **kwargs)
        if sleep:
            # A sleeping player does not move, and the step it falls asleep is its sleep action: a sleeping view
            # came without a shift, however dark and uniform the night makes it.
            shift = torch.where(asleep[:, 1:], len(SHIFTS), shift)
            clear = clear | asleep[:, 1:]
        labels[:, 1:] = torch.where(clear, shift, torch.full_like(shift, not_given))
    if has_action is not None:
        labels[~has_action.bool().cpu()] = not_given
    return labels


def shift_agreement(real: torch.Tensor, dream: torch.Tensor, mask: torch.Tensor | None = None, **kwargs) -> dict:
    """Agreement of the dream's view shifts with the real game's over consecutive frames.

    ``real`` and ``dream`` are ``(B, T, H, W, 3)`` uint8 with the same first frame(s) semantics: the shift at step
    t is from frame t-1 to frame t of each. ``mask`` ``(B, T - 1)`` marks the steps to count. Counts only steps
    where the real shift is unambiguous; returns the counts and the agreement where the real view ``moved`` and
    where it ``stayed`` (``None`` when no such step), plus the confusion counts by shift index (`shift_counts`).
    """
    real_shift, real_clear = view_shift(real[:, :-1], real[:, 1:], **kwargs)  # (B, T-1)
    dream_shift, _ = view_shift(dream[:, :-1], dream[:, 1:], **kwargs)
    return shift_counts(real_shift, real_clear, dream_shift, mask)


def shift_counts(real_shift: torch.Tensor, real_clear: torch.Tensor, dream_shift: torch.Tensor,
                 mask: torch.Tensor | None = None) -> dict:
    """`shift_agreement` of shifts already read (`view_shift` of the real and the dream frames, ``(B, K)`` each),
    for callers that score the same steps under several masks."""
    counted = real_clear if mask is None else real_clear & mask.bool()
    moved = counted & (real_shift != 0)
    stayed = counted & (real_shift == 0)
    agree = dream_shift == real_shift
    confusion = torch.zeros(len(SHIFTS), len(SHIFTS), dtype=torch.long)
    for r, d in zip(real_shift[counted].tolist(), dream_shift[counted].tolist()):
        confusion[r, d] += 1
    return summarize_shifts({
        "moved_steps": int(moved.sum()), "moved_agreed": int(agree[moved].sum()),
        "stayed_steps": int(stayed.sum()), "stayed_agreed": int(agree[stayed].sum()),
        "ambiguous_steps": int(((~real_clear) & (mask.bool() if mask is not None else True)).sum()),
        "confusion_real_by_dream": confusion.tolist(),
    })


# Crafter's move actions (move_left, move_right, move_up, move_down) and the `SHIFTS` index of the view content when
# the player moves: moving left carries the world one tile to the right on screen.
CRAFTER_MOVE_SHIFTS: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4}


def shown_targets(
    real_shift: torch.Tensor,
    real_clear: torch.Tensor,
    actions: torch.Tensor,
    move_shifts: dict[int, int] | None = None,
    view: tuple[int, int] = (7, 9),
    player: tuple[int, int] = (3, 4),
) -> torch.Tensor:
    """Which open-loop steps a world model could get right from its prompt alone, ``(B, K)`` bool.

    ``real_shift`` / ``real_clear`` ``(B, K)``: the real game's view shift at each step after the prompt's last frame
    and whether it was unambiguous (`view_shift`); ``actions`` ``(B, K)`` the action of each step. The player's place
    is followed through the real shifts of the moves (lost at the first move whose shift is ambiguous). A move counts as shown when the tile it
    steps towards lay inside the world view of the prompt's last frame: whether the real player walked or was
    stopped there is in the prompt. A move towards a tile the prompt never showed is decided by terrain no model
    conditioned on the prompt can know (the dream must invent it). Every other action counts as shown (it moves
    nothing, whatever the terrain), as long as the player's place is known.
    """
    move_shifts = CRAFTER_MOVE_SHIFTS if move_shifts is None else move_shifts
    rows, cols = view
    up, left = player  # tiles of the view above and to the left of the player
    down, right = rows - 1 - up, cols - 1 - left
    batch, steps = real_shift.shape
    shown = torch.zeros(batch, steps, dtype=torch.bool)
    actions = actions.reshape(batch, steps, -1)[..., 0].long()
    for b in range(batch):
        y = x = 0  # the player's tile relative to its tile in the prompt's last frame
        for t in range(steps):
            action = int(actions[b, t])
            if action in move_shifts:
                dy, dx = SHIFTS[move_shifts[action]]
                ty, tx = y - dy, x - dx  # the view content moves by (dy, dx) when the player moves by (-dy, -dx)
                shown[b, t] = -up <= ty <= down and -left <= tx <= right
            else:
                shown[b, t] = True
            if action not in move_shifts:
                continue  # nothing else moves the player
            if not bool(real_clear[b, t]):
                break  # a move whose outcome cannot be read: the place is lost, every later step stays unshown
            dy, dx = SHIFTS[int(real_shift[b, t])]
            y, x = y - dy, x - dx
    return shown


def in_step(
    real_shift: torch.Tensor,
    real_clear: torch.Tensor,
    dream_shift: torch.Tensor,
    actions: torch.Tensor,
    move_shifts: dict[int, int] | None = None,
) -> torch.Tensor:
    """Which open-loop steps find the dream's player where the real one is, ``(B, K)`` bool: every earlier step's view
    shift agreed with the real game's (`view_shift` of each, ``real_shift`` / ``real_clear`` / ``dream_shift``
    ``(B, K)``), and no earlier move's real shift was ambiguous (the places could part unseen). ``actions``
    ``(B, K)``: each step's action; ``move_shifts`` the move actions (Crafter's by default).

    After the first disagreement the two players stand on different tiles, and whether the real one walks or is
    stopped no longer says what the dream's should do at its own place: agreement on the steps still in step is
    action following, the rest mixes in how far the two worlds have parted.
    """
    move_shifts = CRAFTER_MOVE_SHIFTS if move_shifts is None else move_shifts
    actions = actions.reshape(*real_shift.shape, -1)[..., 0].long()
    moves = torch.isin(actions, torch.tensor(list(move_shifts), dtype=torch.long))
    parted = (real_clear & (dream_shift != real_shift)) | (~real_clear & moves)
    return (parted.long().cumsum(1) - parted.long()) == 0


def summarize_shifts(counts: dict, *more: dict) -> dict:
    """Sum the counts of several `shift_agreement` results and recompute the agreement rates."""
    keys = ("moved_steps", "moved_agreed", "stayed_steps", "stayed_agreed", "ambiguous_steps")
    total = {key: sum(int(c[key]) for c in (counts, *more)) for key in keys}
    total["confusion_real_by_dream"] = torch.stack(
        [torch.as_tensor(c["confusion_real_by_dream"]) for c in (counts, *more)]).sum(0).tolist()
    total["moved_agreement"] = total["moved_agreed"] / total["moved_steps"] if total["moved_steps"] else None
    total["stayed_agreement"] = total["stayed_agreed"] / total["stayed_steps"] if total["stayed_steps"] else None
    return total


def grey_view(frames: torch.Tensor, tile: int = 7, view: tuple[int, int] = (7, 9), max_spread: float = 15.0
              ) -> torch.Tensor:
    """Whether each uint8 frame ``(..., H, W, 3)`` shows its world view grey ``(...)`` bool: the mean over the view
    of each pixel's channel spread (max minus min) is at most ``max_spread`` grey levels. Crafter draws the view
    of a sleeping player so (colour removed, a faint blue tint: spread about 8-10), and no waking view, day or night,
    comes close (20 and more on held-out frames), so for Crafter this reads "asleep" off the frame."""
    lead = frames.shape[:-3]
    tiles = _world_tiles(frames.reshape(-1, *frames.shape[-3:]), tile, view)  # (N, rows, cols, tile * tile * 3)
    pixels = tiles.reshape(len(tiles), -1, 3)  # every pixel of the view, channels last
    spread = (pixels.max(-1).values - pixels.min(-1).values).mean(-1)
    return (spread <= max_spread).reshape(lead)



def state_agreement(real: torch.Tensor, dream: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """How a boolean per-step state of the dream ``(B, T)`` (e.g. `grey_view`) agrees with the real one: counts
    of the real state, the dream's, both, and of the steps where it starts in either (``mask``: the steps to
    count), so `summarize_states` can pool batches."""
    keep = torch.ones_like(real, dtype=torch.bool) if mask is None else mask.bool()
    real, dream = real.bool() & keep, dream.bool() & keep
    return {"steps": int(keep.sum()), "real": int(real.sum()), "dream": int(dream.sum()),
            "both": int((real & dream).sum()), "disagree": int((real != dream).sum()),
            "windows": int(real.shape[0]), "windows_disagreeing": int((real != dream).any(-1).sum())}


def summarize_states(*counts: dict) -> dict:
    """`state_agreement` counts summed, with the dream's precision and recall of the real state and the share
    of counted steps on which they disagree (``None`` where a denominator is 0)."""
    total = {key: sum(c[key] for c in counts) for key in counts[0]}
    total["precision"] = total["both"] / total["dream"] if total["dream"] else None
    total["recall"] = total["both"] / total["real"] if total["real"] else None
    total["disagreement"] = total["disagree"] / total["steps"] if total["steps"] else None
    return total


def distinct_tiles(frames: torch.Tensor, tile: int = 7, view: tuple[int, int] = (7, 9), tolerance: float = 0.0
                   ) -> torch.Tensor:
    """Number of different tiles in each frame's world view ``(...)`` for uint8 frames ``(..., H, W, 3)``.

    Tiles count as one when their mean absolute pixel difference is at most ``tolerance`` grey levels (0: exactly
    equal). Crafter's night noise makes every dark tile differ a little, so compare dreams and real frames with
    the same tolerance."""
    lead = frames.shape[:-3]
    tiles = _world_tiles(frames.reshape(-1, *frames.shape[-3:]), tile, view).flatten(1, 2)  # (N, r*c, D)
    counts = []
    for frame_tiles in tiles:
        if tolerance <= 0:
            counts.append(len(torch.unique(frame_tiles, dim=0)))
            continue
        distance = torch.cdist(frame_tiles, frame_tiles, p=1) / frame_tiles.shape[-1]  # (n, n)
        close = distance <= tolerance
        seen = torch.zeros(len(frame_tiles), dtype=torch.bool)
        count = 0
        for i in range(len(frame_tiles)):
            if not seen[i]:
                count += 1
                seen |= close[i]
        counts.append(count)
    return torch.tensor(counts, dtype=torch.float32).reshape(lead)


def precision_recall(predicted: torch.Tensor, real: torch.Tensor) -> dict:
    """Counts and rates for boolean events; a rate is ``None`` when its denominator is 0."""
    predicted, real = predicted.bool(), real.bool()
    tp = int((predicted & real).sum())
    fp = int((predicted & ~real).sum())
    fn = int((~predicted & real).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "true_positives": tp, "false_positives": fp, "false_negatives": fn,
        "positives": tp + fn, "predicted_positives": tp + fp, "count": int(real.numel()),
    }
