"""Does the dream do its job? The figures an agent in the dream depends on, for several models, from one command.

For every model ``name=checkpoint[@sampler_steps]`` and every held-out action stream ``stream=dataset`` (new-seed
episodes recorded with that policy, e.g. sticky-random and the movement-heavy explorer):

- **open loop** (`agents.evaluation.compare.compare_dream_real`): PSNR and SSIM per horizon 1..``horizon`` beside copy-last-
  frame, and **action following**: agreement of the dream's view shift with the real game's on steps where the real
  shift is unambiguous, where the real view moved and where it stayed (`generator.metrics.view_shift`), over all
  horizons, over horizons 1-4, where the dream still shows the prompt's world, on the steps the prompt showed the
  terrain of, and in step (`generator.metrics.in_step`: while every earlier shift agreed, so the dream's player
  stands where the real one does); and how many horizons' SSIM lies above or below copy-last's by two standard
  errors of the window-paired gap (``ssim_gap``);
- **outcomes on real transitions**: the reward and termination heads read on real frames (teacher forced), against
  the recorded rewards: precision/recall of positive rewards (any, and achievements: > 0.5) and termination recall;

and once per model:

- **long rollouts**: ``rollout_rows`` rows of ``rollout_frames`` frames from real prompts under sticky-random
  actions, scored per frame by health figures beside the same figures on real held-out frames: the share of the
  frame's tiles within the codebook threshold of a real tile (1 by construction for a model that snaps to the
  codebook; informative for pixel models), the number of distinct tiles in the world view (a world collapsing to a
  static field loses them, a patchwork of unrelated tiles gains them), edge energy (noise raises it, blur lowers
  it), and for tile codecs the share of world-view tiles in their place (codes that real frames show in the world
  view: inventory glyphs leaking into the world are variety that is not a world) and how often the player is
  visible on its tile; the positive rewards, achievements and terminations the rollouts hand out per 100 steps
  (expected, from the outcome head or model) beside the same rates in the held-out real episodes; plus a strip
  image of one row at frames 0, 100, ..., 1000;
- **the move rule in the long rollouts** (tile codecs): whether the dream obeys the game's physics in the world it
  itself shows, which open-loop agreement cannot tell from a world the dream invented differently (once the view
  moves, the tiles it reveals are not in the prompt): what a move into each tile does is learned from half the
  held-out real episodes (`learn_move_rule`), then every rollout step whose shift is unambiguous is scored
  (`move_rule_agreement`): moves into walkable tiles followed, moves into blocking tiles held, other actions held,
  beside the same figures on the other half of the real episodes and the share of steps too uniform to read.

and once per stream (Crafter episodes that record their seeds; ``redrawn_reference``):

- **the real game, with the unseen redrawn** (`agents.evaluation.compare.compare_redrawn_real`): the same open-loop
  figures for real Crafter replayed to each prompt's last frame, with everything outside the view redrawn by the
  game's own generator (the world's noise field kept, and another world's), then played on under the real actions.
  What a model must invent is redrawn here too, so these rows say how much of each figure the prompt decides: the
  part of the gap to 1.0 that the real game itself shows is not the model's to close.

`scripts/evaluate_fidelity.py` writes ``fidelity.json``, ``fidelity.md``, ``open_loop_<stream>.png``,
``health.png`` and ``strip.png``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agents.evaluation.compare import compare_dream_real, compare_redrawn_real, json_safe
from generator.metrics import precision_recall
from generator.metrics import SHIFTS, distinct_tiles, view_shift
from agents.evaluation.plots import save_strip
from agents.evaluation.model_table import drift_picks, drift_rollout, edge_energy, parse_entry
from generator.codec import TileCodec, load_codec
from generator.data import EpisodeDataset, open_datasets
from generator.pretrained import WorldModel
from generator.outcome import event_probabilities, read_outcomes
from generator.sampler import commit_frames, frame_noise


@dataclass
class FidelityConfig:
    """`evaluate_fidelity` settings; `scripts/evaluate_fidelity.py` maps its flags onto these fields."""

    models: list[str] = field(default_factory=list, metadata={"positional": True})  # "name=checkpoint" or "name=checkpoint@sampler_steps"
    streams: list[str] = field(default_factory=list)  # "name=dataset folder" of held-out, new-seed episodes
    out: str = "runs/fidelity"
    codebook: str | None = None  # tile codec for the health figure (default: the first tile model's codec)
    context_frames: int = 4
    horizon: int = 32
    windows: int = 64
    rollout_frames: int = 1000
    rollout_rows: int = 16
    health_span: int = 50  # the last this many rollout frames are compared with real frames
    tile_tolerance: float = 6.0  # grey levels within which two tiles count as one (night noise)
    tile_size: int = 7  # the world view's geometry for the distinct-tiles figure (Crafter at 64x64)
    view_tiles: tuple[int, int] = (7, 9)
    player_tile: tuple[int, int] = (3, 4)  # the player's (row, column) in the world view (Crafter's centre)
    move_actions: tuple[int, ...] = (1, 2, 3, 4)  # the actions that move the player (Crafter's move_left..move_down)
    rule_span: int = 100  # the move rule is also reported over the last this many rollout frames
    redrawn_reference: bool = True  # also score real Crafter with the unseen redrawn (compare_redrawn_real)
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        rows, cols = self.view_tiles
        row, col = self.player_tile
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"player_tile {tuple(self.player_tile)} lies outside the {rows}x{cols} view_tiles; "
                             f"give the player's (row, column) inside the world view (Crafter: 3,4 of 7,9)")


# ---------------------------------------------------------------------------------------------------------------
# Outcomes on real transitions


@torch.no_grad()
def outcomes_on_real(world: WorldModel, dataset: EpisodeDataset, max_windows: int | None = None) -> dict:
    """Reward and termination heads on real transitions: every episode is cut into windows of the model's window
    length overlapping by one frame, each window committed in one pass (real frames as context, as in training),
    and the outcome of every transition after a window's first frame is read; a world with an outcome model
    (`generator.outcome`) reads each transition's two real frames with it instead. Returns precision/recall of positive
    rewards (``reward_positive``: any reward > 0; ``reward_achievement``: > 0.5) and of terminations."""
    dit, codec, sampling = world.dit, world.codec, world.sampling
    outcome = world.outcome
    length = dit.config.window_frames
    predicted = {"positive": [], "achievement": [], "termination": []}
    real = {"positive": [], "achievement": [], "termination": []}
    windows = 0
    for k in range(dataset.num_episodes):
        episode = dataset.episode(k)
        steps = len(episode["frames"])
        for start in range(0, max(steps - 1, 1), length - 1):
            stop = min(start + length, steps)
            if stop - start < 2:
                continue
            frames = episode["frames"][start:stop][None].to(world.device)
            actions = episode["actions"][start:stop][None].to(world.device)
            has_action = ~episode["is_first"][start:stop][None].to(world.device)
            latents = codec.encode(frames)  # (1, T, C, h, w)
            t = latents.shape[1]
            if outcome is not None:  # the outcome model reads each transition's two frames
                out = read_outcomes(outcome, codec, latents[0, :-1], latents[0, 1:], actions[0, 1:], has_action[0, 1:])
                # what it pays given the episode's real unlocked set (event heads; `OutcomeModel.pay_once`)
                unlocked = episode["achievements"][start:stop - 1] > 0 if "achievements" in episode else None
                out = outcome.pay_once(out, None if unlocked is None else unlocked.to(world.device))
                reward_logits, termination_logit = out.reward_logits, out.termination_logit
                values = outcome.reward_values.cpu()
            else:
                cache = dit.new_cache(1)
                noise = torch.stack([frame_noise([k], [start + i], tuple(latents.shape[2:]), world.device)[:, 1]
                                     for i in range(t)], dim=1)
                positions = torch.arange(start, stop, device=world.device)[None]
                out = commit_frames(dit, cache, None, latents, actions, positions, noise, sampling.context_noise,
                                    has_action, full_output=True)
                reward_logits = None if out.reward_logits is None else out.reward_logits[0, 1:]
                termination_logit = out.termination_logit[0, 1:]
                values = None if out.reward_logits is None else dit.reward_values.cpu()
            if reward_logits is not None:
                positive, achievement = (p.cpu() > 0.5 for p in event_probabilities(reward_logits, values))
            else:
                reward = out.reward[0, 1:].cpu()
                positive, achievement = reward > 0.05, reward > 0.5
            predicted["positive"].append(positive)
            predicted["achievement"].append(achievement)
            predicted["termination"].append(termination_logit.cpu() > 0)
            rewards = episode["rewards"][start + 1:stop]
            real["positive"].append(rewards > 0)
            real["achievement"].append(rewards > 0.5)
            real["termination"].append(episode["terminated"][start + 1:stop].bool())
            windows += 1
            if max_windows is not None and windows >= max_windows:
                break
    result = {f"reward_{key}" if key != "termination" else key:
              precision_recall(torch.cat(predicted[key]), torch.cat(real[key])) for key in predicted}
    result["windows"] = windows
    return result


def dream_outcome_rates(out: dict, world: WorldModel) -> dict:
    """Expected positive rewards, achievements (> 0.5) and terminations per 100 steps of rollouts (`open_loop_rollout`
    output): what an agent in these dreams is handed, from the outcome model where the world has one."""
    values = world.outcome.reward_values if world.outcome is not None else getattr(world.dit, "reward_values", None)
    if out["reward_logits"] is not None and values is not None:
        positive, achievement = event_probabilities(out["reward_logits"], values)
    else:
        positive, achievement = (out["reward"] > 0.05).float(), (out["reward"] > 0.5).float()
    termination = torch.sigmoid(out["termination_logit"].float())
    return {"positive": 100 * float(positive.mean()), "achievement": 100 * float(achievement.mean()),
            "termination": 100 * float(termination.mean()), "steps": int(positive.numel())}


def real_outcome_rates(episodes: list[dict]) -> dict:
    """Positive rewards, achievements and terminations per 100 transitions of real episodes (whole episodes as
    `EpisodeDataset.episode` gives them; `dream_outcome_rates`'s reference)."""
    rewards = torch.cat([episode["rewards"][1:].float() for episode in episodes])
    ends = torch.cat([episode["terminated"][1:].float() for episode in episodes])
    steps = max(1, rewards.numel())
    return {"positive": 100 * float((rewards > 0).sum()) / steps, "achievement": 100 * float((rewards > 0.5).sum()) / steps,
            "termination": 100 * float(ends.sum()) / steps, "steps": int(rewards.numel())}


# ---------------------------------------------------------------------------------------------------------------
# Long-rollout health


@dataclass
class TilePlaces:
    """Which codes real frames show where: ``world`` `(K,)` marks the codes seen in the world view, ``player``
    `(K,)` those seen on the player's tile. A dream whose inventory glyphs leak into the world, or whose player
    fades, shows tiles out of place, which the distinct-tiles count alone would score as variety."""

    world: torch.Tensor
    player: torch.Tensor


def _view_grid(codes: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> torch.Tensor:
    """The world view's codes `(N, rows, cols)` of frame codes `(N, gh * gw)`."""
    rows, cols = config.view_tiles
    return codes.view(len(codes), -1, codec.config.tile_grid[1])[:, :rows, :cols]


def _view_codes(codes: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The world view's codes `(N, rows * cols)` and the player's code `(N,)` of frame codes `(N, gh * gw)`."""
    codes = _view_grid(codes, codec, config)
    player_row, player_col = config.player_tile
    return codes.flatten(1), codes[:, player_row, player_col]


def tile_places(frames: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> TilePlaces:
    """The `TilePlaces` of real frames ``(N, H, W, 3)``."""
    world, player = _view_codes(codec.frame_codes(frames)[0], codec, config)
    k = codec.config.codes
    return TilePlaces(torch.bincount(world.flatten(), minlength=k) > 0, torch.bincount(player, minlength=k) > 0)


def health(frames: torch.Tensor, codec: TileCodec | None, config: FidelityConfig,
           places: TilePlaces | None = None) -> dict[str, torch.Tensor]:
    """Health figures of frames ``(N, H, W, 3)``, each ``(N,)``: ``distinct_tiles``, ``edge_energy``, with a codec
    ``within_threshold`` (share of the frame's tiles within the codebook threshold of a code, a real tile) and, with
    `places` too, ``tiles_in_place`` (share of the world view's tiles whose code real frames show in the world view)
    and ``player_visible`` (the player's tile holds a code real frames show there)."""
    tiles = distinct_tiles(frames, config.tile_size, tuple(config.view_tiles), tolerance=config.tile_tolerance)
    out = {"distinct_tiles": tiles, "edge_energy": edge_energy(frames)}
    if codec is not None:
        codes, distances = codec.frame_codes(frames)
        out["within_threshold"] = (distances <= codec.config.tile_threshold).float().mean(-1)
        if places is not None:
            world, player = _view_codes(codes, codec, config)
            out["tiles_in_place"] = places.world[world].float().mean(-1)
            out["player_visible"] = places.player[player].float()
    return out


# ---------------------------------------------------------------------------------------------------------------
# The move rule: does the dream obey the game's own physics in the world it shows?


@dataclass
class MoveRule:
    """What a move does in the real game, learned from real frames. ``shifts`` maps each move action to the view
    shift (`generator.metrics.SHIFTS` index) it makes when the player moves; per code, ``walkable`` `(K,)` says
    that a move into a tile of that code moves the player, and ``known`` `(K,)` that real moves into it were
    frequent and one-sided enough to say (Crafter: grass, sand and path take the player; water, stone, trees,
    tables and creatures stop it, and the player only turns)."""

    shifts: dict[int, int]
    walkable: torch.Tensor
    known: torch.Tensor


def _neighbour_codes(frames: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> torch.Tensor:
    """The codes `(N, len(SHIFTS))` of the tiles a view shift would bring onto the player's tile: for shift
    `(dy, dx)` of the view content, the player moved by `(-dy, -dx)` and steps onto that tile (index 0: its own)."""
    rows, cols = config.view_tiles
    codes = _view_grid(codec.frame_codes(frames)[0], codec, config)
    row, col = config.player_tile
    picked = []
    for dy, dx in SHIFTS:
        y, x = min(max(row - dy, 0), rows - 1), min(max(col - dx, 0), cols - 1)
        picked.append(codes[:, y, x])
    return torch.stack(picked, -1)


def _move_steps(frames: torch.Tensor, actions: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> dict:
    """Per transition of one sequence (frames `(T, H, W, 3)`, `actions` `(T - 1,)` into frames 1..T-1): the action,
    the view shift and whether it is unambiguous, and the codes around the player before the step."""
    shift, clear = view_shift(frames[:-1], frames[1:], tile=config.tile_size, view=tuple(config.view_tiles),
                              player=tuple(config.player_tile))
    return {"action": actions.reshape(len(actions), -1)[:, 0].long(), "shift": shift, "clear": clear,
            "around": _neighbour_codes(frames[:-1], codec, config)}


def _cat_steps(steps: list[dict]) -> dict:
    return {key: torch.cat([s[key] for s in steps]) for key in steps[0]}


def learn_move_rule(episodes, codec: TileCodec, config: FidelityConfig, min_moves: int = 5,
                    purity: float = 0.9) -> MoveRule:
    """The `MoveRule` of real `episodes` (an iterable of ``(frames (T, H, W, 3), actions (T,))`` with ``actions[i]``
    the action into frame ``i``). A code is known after at least `min_moves` unambiguous real moves into it of
    which at least `purity` had one outcome."""
    steps = _cat_steps([_move_steps(f, a[1:], codec, config) for f, a in episodes])
    shifts = {}
    for action in config.move_actions:
        moved = steps["shift"][(steps["action"] == action) & steps["clear"] & (steps["shift"] != 0)]
        if not len(moved):
            raise ValueError(f"no real step of move action {action} moved the view; check move_actions "
                             f"{tuple(config.move_actions)} against the game's action list")
        shifts[action] = int(torch.bincount(moved, minlength=len(SHIFTS)).argmax())
    k = codec.config.codes
    went, held = torch.zeros(k), torch.zeros(k)
    for action, shift in shifts.items():
        chosen = (steps["action"] == action) & steps["clear"]
        target = steps["around"][chosen, shift]
        went += torch.bincount(target[steps["shift"][chosen] == shift], minlength=k).float()
        held += torch.bincount(target[steps["shift"][chosen] == 0], minlength=k).float()
    total = went + held
    known = (total >= min_moves) & (torch.maximum(went, held) >= purity * total.clamp_min(1))
    return MoveRule(shifts, went > held, known)


def move_rule_agreement(frames: torch.Tensor, actions: torch.Tensor, codec: TileCodec, rule: MoveRule,
                        config: FidelityConfig) -> dict:
    """How often sequences `frames` `(R, T, H, W, 3)` under `actions` `(R, T - 1)` (into frames 1..T-1) obey `rule`
    in the world they themselves show: a move into a walkable tile shifts the view the action's way ("free moves
    followed"), a move into a blocking tile leaves it ("blocked moves held"), any other action leaves it ("other
    actions held"). Counts only steps whose own shift is unambiguous and, for moves, whose target code is known;
    ``unclear`` is the share of steps left out for an ambiguous shift (a uniform field fits every shift)."""
    steps = _cat_steps([_move_steps(f, a, codec, config) for f, a in zip(frames, actions)])
    counts = {"free_steps": 0, "free_followed": 0, "blocked_steps": 0, "blocked_held": 0}
    moving = torch.zeros_like(steps["clear"])
    for action, shift in rule.shifts.items():
        chosen = steps["action"] == action
        moving |= chosen
        target = steps["around"][:, shift]
        counted = chosen & steps["clear"] & rule.known[target]
        free, blocked = counted & rule.walkable[target], counted & ~rule.walkable[target]
        counts["free_steps"] += int(free.sum())
        counts["free_followed"] += int((free & (steps["shift"] == shift)).sum())
        counts["blocked_steps"] += int(blocked.sum())
        counts["blocked_held"] += int((blocked & (steps["shift"] == 0)).sum())
    other = ~moving & steps["clear"]
    counts.update(other_steps=int(other.sum()), other_held=int((other & (steps["shift"] == 0)).sum()),
                  steps=len(other), unclear_steps=int((~steps["clear"]).sum()))
    return summarize_rules([counts])


def summarize_rules(counts: list[dict]) -> dict:
    """Sum the counts of several `move_rule_agreement` results and recompute its rates."""
    keys = ("free_steps", "free_followed", "blocked_steps", "blocked_held", "other_steps", "other_held", "steps",
            "unclear_steps")
    total = {key: sum(c[key] for c in counts) for key in keys}
    total["unclear"] = total["unclear_steps"] / total["steps"] if total["steps"] else None
    for name, hit in (("free", "free_followed"), ("blocked", "blocked_held"), ("other", "other_held")):
        total[f"{name}_rate"] = total[hit] / total[f"{name}_steps"] if total[f"{name}_steps"] else None
    return total


def plot_open_loop(results: dict, stream: str, path: Path, redrawn: dict | None = None) -> Path:
    """PSNR and SSIM against horizon for every model on one stream, copy-last dashed, the real game with the unseen
    redrawn (`redrawn_references`) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    first = None
    for name, r in results.items():
        m = r["streams"][stream]["open_loop"]
        first = first or m
        left.plot(m["horizons"], m["psnr"], label=name)
        right.plot(m["horizons"], m["ssim"], label=name)
    for m in (redrawn or {}).get("streams", {}).get(stream, {}).values():
        label = f"real game, unseen redrawn ({m['redrawn']})"
        left.plot(m["horizons"], m["psnr"], ":", label=label)
        right.plot(m["horizons"], m["ssim"], ":", label=label)
    left.plot(first["horizons"], first["copy_last_psnr"], "k--", label="copy last frame")
    right.plot(first["horizons"], first["copy_last_ssim"], "k--", label="copy last frame")
    left.set_ylabel("PSNR (dB)")
    right.set_ylabel("SSIM")
    for ax in (left, right):
        ax.set_xlabel("horizon (frames after the real context)")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(f"open loop on held-out {stream} episodes ({first['windows']} windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_health(results: dict, reference: dict, path: Path) -> Path:
    """Health curves over the long rollouts, the real frames' level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("within_threshold", "distinct_tiles", "edge_energy", "tiles_in_place", "player_visible")
            if k in reference]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for name, r in results.items():
            curve = np.asarray(r["rollout"]["curves"][key])
            ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        ax.axhline(reference[key], color="k", linestyle="--", label="real frames")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("generated frame")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def redrawn_references(streams: dict[str, str], config: FidelityConfig) -> dict:
    """`compare_redrawn_real` on every stream, with the noise field kept and with another world's:
    ``{"streams": {stream: {"field": metrics, "world": metrics}}, "skipped": {stream: why}}``. A stream that is not
    Crafter or whose episodes record no seeds cannot be replayed and is skipped (named, with the reason)."""
    out: dict = {"streams": {}, "skipped": {}}
    for stream, folder in streams.items():
        dataset = EpisodeDataset(folder, window=config.context_frames + config.horizon)
        if dataset.meta.get("game") != "crafter":
            game = dataset.meta.get("game")
            out["skipped"][stream] = f"{folder} holds {game!r} episodes, the reference replays Crafter"
            continue
        if any(seed is None for seed in dataset.episode_seeds):
            out["skipped"][stream] = f"{folder} has episodes without a recorded seed"
            continue
        out["streams"][stream] = {
            name: compare_redrawn_real(dataset, config.context_frames, config.horizon, config.windows,
                                       keep_field=keep, seed=config.seed, progress=config.progress)
            for name, keep in (("field", True), ("world", False))}
    return out


def markdown(results: dict, reference: dict, config: FidelityConfig, rule_reference: dict | None = None,
             outcome_reference: dict | None = None, redrawn: dict | None = None) -> str:
    lines = []
    horizons = [h for h in (1, 2, 4, 8, 16, 32) if h <= config.horizon]
    for stream in config.streams:
        name_s = stream.partition("=")[0]
        lines += [f"### {name_s} actions", "",
                  "| model | steps | moved | stayed | moved h1-4 | stayed h1-4 | moved, shown terrain | "
                  "stayed, shown terrain | moved, in step | stayed, in step | "
                  + " | ".join(f"PSNR h{h}" for h in horizons)
                  + " | " + " | ".join(f"SSIM h{h}" for h in horizons) + " | PSNR > copy at | SSIM > copy at | SSIM above / below copy by 2 s.e. at |",
                  "|" + "---|" * (10 + 2 * len(horizons) + 3)]
        copy = None
        rows = [(name, r["streams"][name_s]["open_loop"]) for name, r in results.items()]
        rows += [(f"real game, unseen redrawn ({m['redrawn']})", m)
                 for m in (redrawn or {}).get("streams", {}).get(name_s, {}).values()]
        for name, m in rows:
            copy = m
            vs, short, shown = m["view_shift"] or {}, m.get("view_shift_short") or {}, m.get("view_shift_shown") or {}
            together = m.get("view_shift_in_step") or {}

            def rate(key, counts=vs):
                value = counts.get(key)
                return f"{value:.3f}" if value is not None else "-"

            above_p = sum(a > b for a, b in zip(m["psnr"], m["copy_last_psnr"]))
            above_s = sum(a > b for a, b in zip(m["ssim"], m["copy_last_ssim"]))
            gap = m.get("ssim_gap")
            surely = "-" if not gap else (
                f"{sum(g - 2 * e > 0 for g, e in zip(gap['mean'], gap['stderr']))} / "
                f"{sum(g + 2 * e < 0 for g, e in zip(gap['mean'], gap['stderr']))}")
            lines.append(
                f"| {name} | {m.get('sampler_steps', '-')} | {rate('moved_agreement')} ({vs.get('moved_steps', 0)}) | "
                f"{rate('stayed_agreement')} ({vs.get('stayed_steps', 0)}) | "
                f"{rate('moved_agreement', short)} ({short.get('moved_steps', 0)}) | "
                f"{rate('stayed_agreement', short)} ({short.get('stayed_steps', 0)}) | "
                f"{rate('moved_agreement', shown)} ({shown.get('moved_steps', 0)}) | "
                f"{rate('stayed_agreement', shown)} ({shown.get('stayed_steps', 0)}) | "
                f"{rate('moved_agreement', together)} ({together.get('moved_steps', 0)}) | "
                f"{rate('stayed_agreement', together)} ({together.get('stayed_steps', 0)}) | "
                + " | ".join(f"{m['psnr'][h - 1]:.2f}" for h in horizons) + " | "
                + " | ".join(f"{m['ssim'][h - 1]:.3f}" for h in horizons)
                + f" | {above_p}/{len(m['psnr'])} | {above_s}/{len(m['ssim'])} | {surely} |")
        lines.append("| copy last frame | - | - | - | - | - | - | - | - | - | " + " | ".join(f"{copy['copy_last_psnr'][h - 1]:.2f}" for h in horizons)
                     + " | " + " | ".join(f"{copy['copy_last_ssim'][h - 1]:.3f}" for h in horizons) + " | - | - | - |")
        if redrawn is not None and name_s in redrawn.get("skipped", {}):
            lines += ["", f"(No redrawn-game reference: {redrawn['skipped'][name_s]}.)"]
        lines.append("")
    stream_names = [stream.partition("=")[0] for stream in config.streams]
    sleep_rows = [(name, stream, r["streams"][stream]["open_loop"].get("asleep"))
                  for name, r in results.items() for stream in stream_names]
    if any(a for *_, a in sleep_rows):
        lines += ["### A sleeping player (Crafter's grey view) in the open-loop windows", "",
                  "| model | stream | real asleep (steps) | dream asleep | dream's precision / recall | "
                  "steps disagreeing | windows disagreeing |", "|---|---|---|---|---|---|---|"]
        for name, stream, a in sleep_rows:
            if a:
                p = "-" if a["precision"] is None else f"{a['precision']:.2f}"
                r = "-" if a["recall"] is None else f"{a['recall']:.2f}"
                lines.append(f"| {name} | {stream} | {a['real']} | {a['dream']} | {p} / {r} | "
                             f"{a['disagreement']:.3f} ({a['disagree']} of {a['steps']}) | "
                             f"{a['windows_disagreeing']} of {a['windows']} |")
        lines.append("")
    lines += ["### Outcomes on real transitions", "",
              "| model | stream | reward > 0: precision / recall (positives) | achievement: P / R (positives) | "
              "termination: P / R (positives) |", "|---|---|---|---|---|"]

    def pr(d):
        p = "-" if d["precision"] is None else f"{d['precision']:.2f}"
        r = "-" if d["recall"] is None else f"{d['recall']:.2f}"
        return f"{p} / {r} ({d['positives']})"

    for name, r in results.items():
        for stream, s in r["streams"].items():
            o = s["outcomes"]
            lines.append(f"| {name} | {stream} | {pr(o['reward_positive'])} | {pr(o['reward_achievement'])} | "
                         f"{pr(o['termination'])} |")
    lines += ["", f"### Long rollouts ({config.rollout_rows} rows x {config.rollout_frames} frames, sticky-random "
              f"actions): last {config.health_span} frames vs real frames", "",
              "| model | " + " | ".join(k.replace("_", " ") for k in reference) + " |", "|---|" + "---|" * len(reference)]
    for name, r in results.items():
        last = r["rollout"]["last"]
        lines.append(f"| {name} | " + " | ".join(f"{last[k]:.3f} ({100 * (last[k] / reference[k] - 1):+.1f} %)"
                                                 for k in reference) + " |")
    lines.append("| real frames | " + " | ".join(f"{reference[k]:.3f}" for k in reference) + " |")
    if outcome_reference is not None:
        lines += ["", "### Outcomes the long rollouts hand out, per 100 steps (expected), beside held-out real play", "",
                  "| model | positive rewards | achievements | terminations |", "|---|---|---|---|"]
        for name, r in results.items():
            o = r["rollout"]["outcomes"]
            lines.append(f"| {name} | {o['positive']:.2f} | {o['achievement']:.2f} | {o['termination']:.2f} |")
        o = outcome_reference
        lines.append(f"| real episodes ({o['steps']} steps) | {o['positive']:.2f} | {o['achievement']:.2f} | "
                     f"{o['termination']:.2f} |")
    if rule_reference is not None:
        def rule(c):
            cells = []
            for name in ("free", "blocked", "other"):
                rate = c[f"{name}_rate"]
                cells.append(f"{'-' if rate is None else f'{rate:.3f}'} ({c[f'{name}_steps']})")
            return " | ".join(cells)

        lines += ["", f"### Move rule in the long rollouts: the game's physics in the world the dream shows", "",
                  "| model | frames | free moves followed | blocked moves held | other actions held | unclear steps |",
                  "|---|---|---|---|---|---|"]
        for name, r in results.items():
            for span, label in (("all", f"1-{config.rollout_frames}"), ("last", f"last {config.rule_span}")):
                c = r["move_rule"][span]
                lines.append(f"| {name} | {label} | {rule(c)} | {c['unclear']:.3f} |")
        lines.append(f"| real frames | held-out | {rule(rule_reference)} | {rule_reference['unclear']:.3f} |")
    return "\n".join(lines) + "\n"


def evaluate_fidelity(config: FidelityConfig) -> dict:
    """Every figure of the module docstring for every model and stream; writes the files into ``config.out``."""
    if not config.models or not config.streams:
        raise ValueError("pass at least one model (name=checkpoint[@steps]) and one stream (--streams name=folder)")
    entries = [parse_entry(spec) for spec in config.models]
    streams = {}
    for spec in config.streams:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"stream {spec!r} must look like name=dataset_folder")
        streams[name] = path
    codec = load_codec(config.codebook) if config.codebook else None
    worlds = {}
    for name, path, steps in entries:
        worlds[name] = (WorldModel.from_pretrained(path, device=config.device), steps, path)
        if codec is None and isinstance(worlds[name][0].codec, TileCodec):
            codec = worlds[name][0].codec
    if codec is not None and not isinstance(codec, TileCodec):
        raise ValueError(f"--codebook {config.codebook} is not a tile codec")

    # Real reference: the held-out episodes of every stream, read once (every 4th frame for the health figures).
    # The first stream's episodes (the long rollouts' prompts) also give the real rates of rewards and deaths.
    episodes, prompt_stream = [], []
    for index, path in enumerate(streams.values()):
        data = open_datasets(path)
        read = [data.episode(k) for k in range(data.num_episodes)]
        episodes += [(e["frames"], e["actions"]) for e in read]
        if index == 0:
            prompt_stream = read
    real_frames = torch.cat([frames[::4] for frames, _ in episodes])
    reference = {key: float(value.mean()) for key, value in health(real_frames, codec, config).items()}
    places = None
    if codec is not None:
        # Where tiles belong, learned from every other real frame; the rest give the real level of those figures.
        places = tile_places(real_frames[0::2], codec, config)
        placed = health(real_frames[1::2], codec, config, places)
        reference.update({key: float(placed[key].mean()) for key in ("tiles_in_place", "player_visible")})
    outcome_reference = real_outcome_rates(prompt_stream)
    rule = rule_reference = None
    if codec is not None:
        # The move rule, learned from every other held-out episode; the rest give the real level of its figures.
        rule = learn_move_rule(episodes[0::2], codec, config)
        rule_reference = summarize_rules([move_rule_agreement(f[None], a[None, 1:], codec, rule, config)
                                          for f, a in episodes[1::2]])

    redrawn = redrawn_references(streams, config) if config.redrawn_reference else None
    results: dict = {}
    strips, times = {}, list(range(0, config.rollout_frames + 1, max(1, config.rollout_frames // 10)))
    for name, (world, steps, path) in worlds.items():
        started = time.time()
        row: dict = {"checkpoint": path, "streams": {}}
        for stream, folder in streams.items():
            dataset = EpisodeDataset(folder, window=config.context_frames + config.horizon)
            metrics, _ = compare_dream_real(world, dataset, config.context_frames, config.horizon, config.windows,
                                            sampler_steps=steps, seed=config.seed, progress=config.progress)
            row["streams"][stream] = {"open_loop": metrics, "outcomes": outcomes_on_real(world, open_datasets(folder))}
        prompts = EpisodeDataset(next(iter(streams.values())), window=config.context_frames)
        out, seconds, actions = drift_rollout(world, prompts, config.context_frames, config.rollout_frames,
                                              config.rollout_rows, config.seed, steps)
        frames = out["frames"]  # (rows, frames, H, W, 3)
        figures = health(frames.flatten(0, 1), codec, config, places)
        curves = {key: value.view(frames.shape[0], frames.shape[1]).mean(0) for key, value in figures.items()}
        span = min(config.health_span, config.rollout_frames)
        row["rollout"] = {
            "curves": {key: curve.tolist() for key, curve in curves.items()},
            "first": {key: float(curve[:span].mean()) for key, curve in curves.items()},
            "last": {key: float(curve[-span:].mean()) for key, curve in curves.items()},
            "frames_per_s": frames.shape[0] * frames.shape[1] / seconds,
            "outcomes": dream_outcome_rates(out, world),
        }
        if rule is not None:
            before = torch.stack([prompts[i]["frames"][config.context_frames - 1]
                                  for i in drift_picks(prompts, config.rollout_rows)])[:, None]
            sequence = torch.cat([before, frames], 1)  # the last prompt frame, then the rollout
            tail = min(config.rule_span, config.rollout_frames)
            row["move_rule"] = {"all": move_rule_agreement(sequence, actions, codec, rule, config),
                                "last": move_rule_agreement(sequence[:, -tail - 1:], actions[:, -tail:], codec, rule,
                                                            config)}
        row["sampler_steps"] = steps or world.sampling.sampler_steps
        row["seconds"] = time.time() - started
        results[name] = row
        strip_source = torch.cat([prompts[0]["frames"][config.context_frames - 1:config.context_frames], frames[0]])
        strips[name] = strip_source[[min(t, len(strip_source) - 1) for t in times]]
    folder = Path(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"models": results, "real_reference": reference, "move_rule_reference": rule_reference,
               "outcome_reference": outcome_reference, "redrawn_reference": redrawn,
               "config": asdict(config),
               "torch_threads": torch.get_num_threads()}
    (folder / "fidelity.json").write_text(json.dumps(json_safe(summary), indent=1))
    (folder / "fidelity.md").write_text(markdown(results, reference, config, rule_reference, outcome_reference,
                                                                  redrawn))
    for stream in streams:
        plot_open_loop(results, stream, folder / f"open_loop_{stream}.png", redrawn)
    plot_health(results, reference, folder / "health.png")
    save_strip(strips, times, folder / "strip.png")
    return summary


def run_fidelity(config: FidelityConfig) -> str:
    """`evaluate_fidelity`, then its Markdown report as text."""
    evaluate_fidelity(config)
    return (Path(config.out) / "fidelity.md").read_text()
