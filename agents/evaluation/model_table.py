"""One table for several world models (teacher, distilled students, post-trained generators) on the same held-out
episodes: quality against speed, the comparison the few-step issue asks for.

For every entry ``name=checkpoint[@sampler_steps]``:

- open-loop quality from `agents.evaluation.compare.compare_dream_real` (real context, real actions): PSNR and SSIM at the
  chosen horizons (default 1, 8, 32) beside copy-last-frame, and the inverse-dynamics action accuracy on the dream's
  transitions (mean over all horizons; with an IDM);
- drift over a long rollout (default 500 frames, longer than any held-out episode, so there is no real frame to
  compare with): ``rows`` rollouts start from real context and follow sticky-random actions; each generated frame is
  scored by its **nearest-real-frame PSNR**, the PSNR to the closest of a bank of real held-out frames. A frame that
  still looks like the game stays near the level real frames reach against the same bank (``real_reference``); one
  that dissolves into noise or smears falls away. ``drift_db`` = mean over the first ``drift_span`` frames minus
  mean over the last ``drift_span``. Nearest-real PSNR alone can be fooled: PSNR favours frames near an average, so a
  grey frame of fine speckle can score almost as well as a real one. So every generated frame also gets its **edge
  energy** (mean absolute difference of neighbouring pixels, `edge_energy`), against the same statistic of real
  held-out frames: real frames sit near the reference, noise and speckle far above it, smeared frames below it;
- speed: generated frames per second of that long rollout (``rows`` rows in one batch) and of a single row
  (``speed_frames`` frames), on the device it ran on.

`scripts/model_table.py` writes ``table.json``, ``table.md``, ``drift.png`` and ``drift_strip.png``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agents.evaluation import plots
from agents.evaluation.compare import compare_dream_real
from generator.data import EpisodeDataset
from generator.pretrained import WorldModel
from generator.metrics import psnr_from_mse
from generator.rollout import open_loop_rollout
from world_env.policies import StickyPolicy


@dataclass
class ModelTableConfig:
    """`model_table` settings; `scripts/model_table.py` maps its flags onto these fields."""

    models: list[str] = field(default_factory=list, metadata={"positional": True})  # "name=checkpoint" or "name=checkpoint@sampler_steps"
    data: str = ""
    out: str = "runs/model_table"
    split: str = "all"
    idm: str | None = None
    context_frames: int = 4
    horizons: tuple[int, ...] = (1, 8, 32)
    windows: int = 32
    drift_frames: int = 500
    drift_rows: int = 8
    drift_span: int = 50
    bank_frames: int = 2000
    bank_data: str | None = None  # real frames the drift metric compares with (None: `data`); e.g. the training set
    bank_split: str = "train"  # split of `bank_data`
    speed_frames: int = 32
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def parse_entry(spec: str) -> tuple[str, str, int | None]:
    """``"name=path@steps"`` -> ``(name, path, steps)``; ``@steps`` is optional (the model's own default)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"model entry {spec!r} must look like name=checkpoint or name=checkpoint@sampler_steps")
    path, at, steps = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at and not steps.isdigit():
        raise ValueError(f"model entry {spec!r}: sampler steps after '@' must be a positive integer")
    return name, path, int(steps) if at else None


def valid_frames(dataset: EpisodeDataset, indices) -> torch.Tensor:
    """The valid (not padding) frames of the dataset's windows ``indices``, concatenated, ``(N, H, W, 3)`` uint8."""
    items = (dataset[int(i)] for i in indices)
    return torch.cat([item["frames"][item["valid"]] for item in items])


def real_frame_bank(dataset: EpisodeDataset, count: int) -> torch.Tensor:
    """Up to ``count`` valid real frames evenly spread over the dataset's windows, ``(N, H*W*3)`` float32."""
    picks = np.linspace(0, len(dataset) - 1, num=min(len(dataset), max(1, count // max(1, dataset.window or 1) + 1)))
    bank = valid_frames(dataset, sorted(set(int(p) for p in picks)))
    stride = max(1, len(bank) // count)
    return bank[::stride][:count].flatten(1).float()


def nearest_real_psnr(frames: torch.Tensor, bank: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """PSNR of each frame ``(N, H, W, 3)`` uint8 to its nearest bank frame (``(M, D)`` float), ``(N,)``."""
    bank_sq = (bank ** 2).sum(1)
    out = []
    for part in frames.flatten(1).float().split(chunk):
        d2 = (part ** 2).sum(1, keepdim=True) - 2 * part @ bank.T + bank_sq[None]
        out.append(d2.min(1).values.clamp_min(0) / part.shape[1])
    return psnr_from_mse(torch.cat(out))


def edge_energy(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixel values (0-255) of each frame
    ``(N, H, W, 3)`` uint8, ``(N,)``: 0 for a flat frame, highest for pixel noise."""
    x = frames.float()
    return ((x[:, 1:] - x[:, :-1]).abs().flatten(1).mean(1) + (x[:, :, 1:] - x[:, :, :-1]).abs().flatten(1).mean(1)) / 2


def drift_picks(dataset: EpisodeDataset, rows: int) -> list[int]:
    """The windows of `dataset` that `drift_rollout` prompts its ``rows`` rollouts from, evenly spaced."""
    return [int(i) for i in np.linspace(0, len(dataset) - 1, num=min(rows, len(dataset))).astype(int)]


@torch.no_grad()
def drift_rollout(world: WorldModel, dataset: EpisodeDataset, context_frames: int, frames: int, rows: int,
                  seed: int, sampler_steps: int | None) -> tuple[dict, float, torch.Tensor]:
    """``rows`` rollouts of ``frames`` generated frames from real context under sticky-random actions.
    Returns `open_loop_rollout`'s output (``frames`` ``(rows, frames, H, W, 3)`` uint8 and the outcomes), the wall
    seconds the generation took and the actions ``(rows, frames, ...)`` into those frames."""
    items = [dataset[i] for i in drift_picks(dataset, rows)]
    prompt = torch.stack([item["frames"][:context_frames] for item in items])
    prompt_actions = torch.stack([item["actions"][:context_frames] for item in items])
    has_action = ~torch.stack([item["is_first"][:context_frames] for item in items])
    policy = StickyPolicy(dataset.action_space, len(items))
    for i in range(len(items)):
        policy.reset(i, seed=seed * 1_000_003 + i)
    actions = torch.as_tensor(np.stack([policy.act(np.zeros(len(items))) for _ in range(frames)], axis=1))
    started = time.perf_counter()
    out = open_loop_rollout(world, prompt, prompt_actions, actions, [seed * 7919 + i for i in range(len(items))],
                            sampler_steps, prompt_has_action=has_action,
                            prompt_steps=torch.stack([item["step"][0] for item in items]))
    return out, time.perf_counter() - started, actions


def strip_times(frames: int, count: int = 8) -> list[int]:
    """``count`` frame indices from the first to the last of a ``frames``-long rollout, denser early."""
    return sorted({int(round((frames - 1) * (i / (count - 1)) ** 1.5)) for i in range(count)})


def evaluate_entry(world: WorldModel, dataset: EpisodeDataset, bank: torch.Tensor, config: ModelTableConfig,
                   sampler_steps: int | None, idm=None) -> tuple[dict, torch.Tensor]:
    """Every column of the table for one model (see the module docstring), and the first drift row's frames at
    `strip_times` ``(n, H, W, 3)`` uint8."""
    horizon = max(config.horizons)
    metrics, _ = compare_dream_real(world, dataset, config.context_frames, horizon, config.windows,
                                    sampler_steps=sampler_steps, idm=idm, seed=config.seed, progress=config.progress)
    row: dict = {"sampler_steps": metrics["sampler_steps"], "windows": metrics["windows"]}
    for h in config.horizons:
        row[f"psnr_h{h}"] = metrics["psnr"][h - 1]
        row[f"copy_psnr_h{h}"] = metrics["copy_last_psnr"][h - 1]
        row[f"ssim_h{h}"] = metrics["ssim"][h - 1]
        row[f"copy_ssim_h{h}"] = metrics["copy_last_ssim"][h - 1]
    row["psnr_advantage_h1"] = row["psnr_h1"] - row["copy_psnr_h1"] if 1 in config.horizons else None
    if metrics["idm"] is not None:
        row["idm_accuracy_dream"] = metrics["idm"]["mean_accuracy_dream"]
        row["idm_accuracy_real"] = metrics["idm"]["mean_accuracy_real"]
    out, seconds, _ = drift_rollout(world, dataset, config.context_frames, config.drift_frames, config.drift_rows,
                                    config.seed, sampler_steps)
    frames = out["frames"]
    curve = nearest_real_psnr(frames.flatten(0, 1), bank).view(frames.shape[0], frames.shape[1]).mean(0)
    span = min(config.drift_span, config.drift_frames)
    row["drift_curve"] = curve.tolist()
    row["nn_psnr_first"] = float(curve[:span].mean())
    row["nn_psnr_last"] = float(curve[-span:].mean())
    row["drift_db"] = row["nn_psnr_first"] - row["nn_psnr_last"]
    edges = edge_energy(frames.flatten(0, 1)).view(frames.shape[0], frames.shape[1]).mean(0)
    row["edge_curve"] = edges.tolist()
    row["edge_first"], row["edge_last"] = float(edges[:span].mean()), float(edges[-span:].mean())
    row["fps_batch"] = frames.shape[0] * frames.shape[1] / seconds
    row["fps_batch_rows"] = int(frames.shape[0])
    _, single, _ = drift_rollout(world, dataset, config.context_frames, config.speed_frames, 1, config.seed, sampler_steps)
    row["fps_single"] = config.speed_frames / single
    return row, frames[0, strip_times(frames.shape[1])]


def save_strip(strips: dict[str, torch.Tensor], frames: int, path: Path) -> Path:
    """One row per model: its first drift rollout at `strip_times`, labelled with the names and frame numbers."""
    return plots.save_strip(strips, [t + 1 for t in strip_times(frames)], path, cell=(1.1, 1.15))


def markdown_table(rows: dict[str, dict], horizons: tuple[int, ...], reference: float, edge_reference: float) -> str:
    head = ["model", "steps"]
    for h in horizons:
        head += [f"PSNR h{h}", f"SSIM h{h}"]
    head += ["IDM acc", "NN-PSNR first/last", "drift dB", "edges first/last", "fps (1 row)", "fps (batch)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = next(iter(rows.values()))
    copy = ["copy-last frame", "-"]
    for h in horizons:
        copy += [f"{first[f'copy_psnr_h{h}']:.2f}", f"{first[f'copy_ssim_h{h}']:.3f}"]
    lines.append("| " + " | ".join(copy + ["-", f"{reference:.2f} (real frames)", "-",
                                           f"{edge_reference:.1f} (real frames)", "-", "-"]) + " |")
    for name, r in rows.items():
        cells = [name, str(r["sampler_steps"])]
        for h in horizons:
            cells += [f"{r[f'psnr_h{h}']:.2f}", f"{r[f'ssim_h{h}']:.3f}"]
        idm = r.get("idm_accuracy_dream")
        cells += [f"{idm:.3f}" if idm is not None else "missing", f"{r['nn_psnr_first']:.2f} / {r['nn_psnr_last']:.2f}",
                  f"{r['drift_db']:+.2f}", f"{r['edge_first']:.1f} / {r['edge_last']:.1f}", f"{r['fps_single']:.1f}",
                  f"{r['fps_batch']:.1f} ({r['fps_batch_rows']} rows)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_drift(rows: dict[str, dict], reference: float, edge_reference: float, path: Path) -> Path:
    """Two panels over the generated frames: nearest-real-frame PSNR and edge energy, real frames dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for name, r in rows.items():
        t = np.arange(1, len(r["drift_curve"]) + 1)
        top.plot(t, r["drift_curve"], label=name)
        bottom.plot(t, r["edge_curve"], label=name)
    top.axhline(reference, color="k", linestyle="--", label="real frames")
    bottom.axhline(edge_reference, color="k", linestyle="--", label="real frames")
    top.set_ylabel("nearest-real-frame PSNR (dB)")
    bottom.set_ylabel("edge energy (mean |pixel step|)")
    bottom.set_xlabel("generated frame")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def model_table(config: ModelTableConfig) -> dict:
    """Evaluate every model of ``config.models``; write ``table.json``, ``table.md``, ``drift.png`` (NN-PSNR and
    edge-energy curves) and ``drift_strip.png`` (each model's first drift rollout at a few frames)."""
    from agents.evaluation.idm import load_idm

    if not config.models:
        raise ValueError("no models given: pass one or more name=checkpoint[@sampler_steps]")
    entries = [parse_entry(spec) for spec in config.models]
    names = [name for name, _, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    dataset = EpisodeDataset(config.data, window=config.context_frames + max(config.horizons), split=config.split)
    bank_source = (EpisodeDataset(config.bank_data, window=16, split=config.bank_split) if config.bank_data
                   else dataset)
    bank = real_frame_bank(bank_source, config.bank_frames)
    # Reference: held-out real frames against the same bank; exact matches (a frame that is itself in the bank,
    # when the bank comes from `data`) are left out.
    picks = np.linspace(0, len(dataset) - 1, num=min(len(dataset), 4 * config.drift_rows)).astype(int)
    real = valid_frames(dataset, picks)
    d = nearest_real_psnr(real, bank)
    reference = float(d[d < 99].mean()) if (d < 99).any() else float("nan")
    edge_reference = float(edge_energy(real).mean())
    idm = load_idm(config.idm, device=config.device) if config.idm else None
    rows, strips = {}, {}
    for name, path, steps in entries:
        world = WorldModel.from_pretrained(path, device=config.device)
        started = time.time()
        row, strips[name] = evaluate_entry(world, dataset, bank, config, steps, idm)
        rows[name] = {"checkpoint": path, **row, "seconds": time.time() - started}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "real_reference_nn_psnr": reference, "real_reference_edge": edge_reference,
              "config": asdict(config), "device": str(config.device), "torch_threads": torch.get_num_threads()}
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(markdown_table(rows, tuple(config.horizons), reference, edge_reference))
    plot_drift(rows, reference, edge_reference, out / "drift.png")
    save_strip(strips, config.drift_frames, out / "drift_strip.png")
    return result


def run_model_table(config: ModelTableConfig) -> str:
    """`model_table`, then its Markdown table and the real frames' own nearest-real PSNR, as text."""
    result = model_table(config)
    return ((Path(config.out) / "table.md").read_text()
            + f"\nreal frames' nearest-real PSNR: {result['real_reference_nn_psnr']:.2f} dB")
