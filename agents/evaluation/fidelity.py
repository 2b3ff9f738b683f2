"""Does the dream do its job? The figures an agent in the dream depends on, for several models, from one command.

For every model ``name=checkpoint[@sampler_steps]`` and every held-out action stream ``stream=dataset`` (new-seed
episodes recorded with that policy, e.g. sticky-random and the movement-heavy explorer):

- **open loop** (`agents.evaluation.compare.compare_dream_real`): PSNR and SSIM per horizon 1..``horizon`` beside copy-last-
  frame, and **action following**: agreement of the dream's view shift with the real game's on steps where the real
  shift is unambiguous, where the real view moved and where it stayed (`generator.metrics.view_shift`);
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
  visible on its tile; plus a strip image of one row at frames 0, 100, ..., 1000.

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

from agents.evaluation.compare import compare_dream_real, json_safe, precision_recall
from generator.metrics import distinct_tiles
from agents.evaluation.plots import save_strip
from agents.evaluation.model_table import drift_rollout, edge_energy, parse_entry
from generator.codec import TileCodec, load_codec
from generator.data import EpisodeDataset, open_datasets
from generator.pretrained import WorldModel
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
    and the outcome of every transition after a window's first frame is read. Returns precision/recall of positive
    rewards (``reward_positive``: any reward > 0; ``reward_achievement``: > 0.5) and of terminations."""
    dit, codec, sampling = world.dit, world.codec, world.sampling
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
            cache = dit.new_cache(1)
            noise = torch.stack([frame_noise([k], [start + i], tuple(latents.shape[2:]), world.device)[:, 1]
                                 for i in range(t)], dim=1)
            positions = torch.arange(start, stop, device=world.device)[None]
            out = commit_frames(dit, cache, None, latents, actions, positions, noise, sampling.context_noise,
                                has_action, full_output=True)
            if out.reward_logits is not None:
                probs = out.reward_logits[0, 1:].softmax(-1).cpu()  # (T-1, K)
                values = dit.reward_values.cpu()
                positive = probs[:, values > 0].sum(-1) > 0.5
                achievement = probs[:, values > 0.5].sum(-1) > 0.5
            else:
                reward = out.reward[0, 1:].cpu()
                positive, achievement = reward > 0.05, reward > 0.5
            predicted["positive"].append(positive)
            predicted["achievement"].append(achievement)
            predicted["termination"].append(out.termination_logit[0, 1:].cpu() > 0)
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


# ---------------------------------------------------------------------------------------------------------------
# Long-rollout health


@dataclass
class TilePlaces:
    """Which codes real frames show where: ``world`` `(K,)` marks the codes seen in the world view, ``player``
    `(K,)` those seen on the player's tile. A dream whose inventory glyphs leak into the world, or whose player
    fades, shows tiles out of place, which the distinct-tiles count alone would score as variety."""

    world: torch.Tensor
    player: torch.Tensor


def _view_codes(codes: torch.Tensor, codec: TileCodec, config: FidelityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The world view's codes `(N, rows * cols)` and the player's code `(N,)` of frame codes `(N, gh * gw)`."""
    rows, cols = config.view_tiles
    codes = codes.view(len(codes), -1, codec.config.tile_grid[1])[:, :rows, :cols]
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


def plot_open_loop(results: dict, stream: str, path: Path) -> Path:
    """PSNR and SSIM against horizon for every model on one stream, copy-last dashed."""
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


def markdown(results: dict, reference: dict, config: FidelityConfig) -> str:
    lines = []
    horizons = [h for h in (1, 2, 4, 8, 16, 32) if h <= config.horizon]
    for stream in config.streams:
        name_s = stream.partition("=")[0]
        lines += [f"### {name_s} actions", "",
                  "| model | steps | moved | stayed | " + " | ".join(f"PSNR h{h}" for h in horizons) + " | "
                  + " | ".join(f"SSIM h{h}" for h in horizons) + " | PSNR > copy at | SSIM > copy at |",
                  "|" + "---|" * (4 + 2 * len(horizons) + 2)]
        copy = None
        for name, r in results.items():
            m = r["streams"][name_s]["open_loop"]
            copy = m
            vs = m["view_shift"] or {}

            def rate(key):
                value = vs.get(key)
                return f"{value:.3f}" if value is not None else "-"

            above_p = sum(a > b for a, b in zip(m["psnr"], m["copy_last_psnr"]))
            above_s = sum(a > b for a, b in zip(m["ssim"], m["copy_last_ssim"]))
            lines.append(
                f"| {name} | {m['sampler_steps']} | {rate('moved_agreement')} ({vs.get('moved_steps', 0)}) | "
                f"{rate('stayed_agreement')} ({vs.get('stayed_steps', 0)}) | "
                + " | ".join(f"{m['psnr'][h - 1]:.2f}" for h in horizons) + " | "
                + " | ".join(f"{m['ssim'][h - 1]:.3f}" for h in horizons)
                + f" | {above_p}/{len(m['psnr'])} | {above_s}/{len(m['ssim'])} |")
        lines.append("| copy last frame | - | - | - | " + " | ".join(f"{copy['copy_last_psnr'][h - 1]:.2f}" for h in horizons)
                     + " | " + " | ".join(f"{copy['copy_last_ssim'][h - 1]:.3f}" for h in horizons) + " | - | - |")
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

    # Real reference for the health figures: the held-out frames of every stream.
    real_frames = []
    for path in streams.values():
        data = open_datasets(path)
        for k in range(data.num_episodes):
            real_frames.append(data.episode(k)["frames"][::4])
    real_frames = torch.cat(real_frames)
    reference = {key: float(value.mean()) for key, value in health(real_frames, codec, config).items()}
    places = None
    if codec is not None:
        # Where tiles belong, learned from every other real frame; the rest give the real level of those figures.
        places = tile_places(real_frames[0::2], codec, config)
        placed = health(real_frames[1::2], codec, config, places)
        reference.update({key: float(placed[key].mean()) for key in ("tiles_in_place", "player_visible")})

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
        frames, seconds = drift_rollout(world, prompts, config.context_frames, config.rollout_frames,
                                        config.rollout_rows, config.seed, steps)  # (rows, frames, H, W, 3)
        figures = health(frames.flatten(0, 1), codec, config, places)
        curves = {key: value.view(frames.shape[0], frames.shape[1]).mean(0) for key, value in figures.items()}
        span = min(config.health_span, config.rollout_frames)
        row["rollout"] = {
            "curves": {key: curve.tolist() for key, curve in curves.items()},
            "first": {key: float(curve[:span].mean()) for key, curve in curves.items()},
            "last": {key: float(curve[-span:].mean()) for key, curve in curves.items()},
            "frames_per_s": frames.shape[0] * frames.shape[1] / seconds,
        }
        row["sampler_steps"] = steps or world.sampling.sampler_steps
        row["seconds"] = time.time() - started
        results[name] = row
        strip_source = torch.cat([prompts[0]["frames"][config.context_frames - 1:config.context_frames], frames[0]])
        strips[name] = strip_source[[min(t, len(strip_source) - 1) for t in times]]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"models": results, "real_reference": reference, "config": asdict(config),
               "torch_threads": torch.get_num_threads()}
    (out / "fidelity.json").write_text(json.dumps(json_safe(summary), indent=1))
    (out / "fidelity.md").write_text(markdown(results, reference, config))
    for stream in streams:
        plot_open_loop(results, stream, out / f"open_loop_{stream}.png")
    plot_health(results, reference, out / "health.png")
    save_strip(strips, times, out / "strip.png")
    return summary


def run_fidelity(config: FidelityConfig) -> str:
    """`evaluate_fidelity`, then its Markdown report as text."""
    evaluate_fidelity(config)
    return (Path(config.out) / "fidelity.md").read_text()
