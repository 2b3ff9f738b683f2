"""The training run every trainer shares: resume, save, progress, TensorBoard, limits, schedule and EMA.

A trainer (teacher `generator.train`, codec `generator.train_codec`, distillation `generator.distill`, post-training
`generator.posttrain`, inverse dynamics `agents.evaluation.idm`) is its config, its objective and one step function; the loop
around it is this module's `TrainingRun`, read in one screen:

    run = TrainingRun(out, name="distill", config=asdict(config), steps=config.steps, ...,
                      modules={"model": student, "ema": ema}, optimizers={"optimizer": optimizer},
                      schedulers={"scheduler": scheduler}, generators={"data_generator": data, ...}, export=export)
    with run:                       # resumes out/train_state/ if it is there
        while run.running:
            metrics = step(...)     # the trainer's one step
            run.end_step(metrics)   # count, log, save every `ckpt_every`, stop at `stop_at` / `max_minutes` / a signal
    result = run.finish()           # {"step", "final", "seconds", "stopped"}; metrics.json once `steps` are done

Layout of `out/`: `train_state/` (everything a resume needs: the named modules, optimizers and their LambdaLR
schedulers, the named torch generators, the global RNG states, the step and the config; under DDP one
`train_state/rank<r>/` per process), `tb/` (TensorBoard), what `export` writes (by convention `model/`, the artefact
`from_pretrained` loads) and `metrics.json`. The state is rewritten atomically (`save_checkpoint`), so a kill leaves
the last complete one; re-running the command resumes it exactly (the next loss equals an uninterrupted run's), with
this command's learning rates (`load_optimizer_state`), so `--lr` can change between chunks.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from generator.checkpoint import (
    CONFIG_NAME,
    atomic_write_json,
    capture_rng_state,
    flatten_state,
    load_checkpoint,
    load_optimizer_state,
    load_state_into,
    read_checkpoint_config,
    restore_rng_state,
    save_checkpoint,
    unflatten_state,
)
from generator.run_limits import StopRequest

STATE_DIR = "train_state"


def warmup_cosine(step: int, steps: int, warmup_steps: int, min_lr_ratio: float = 1.0) -> float:
    """Learning-rate factor at `step`: linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` at
    `steps` (`min_lr_ratio=1`: constant after the warm-up)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int,
                min_lr_ratio: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """`optimizer`'s scheduler for `warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, steps, warmup_steps,
                                                                                   min_lr_ratio))


def saved_run(out: str | Path) -> tuple[int, dict]:
    """`(step, trainer config)` of the run whose state is in `out/train_state/` (also of states written before the
    shared harness, which kept the config under `train_config`, `distill_config` or `posttrain_config`)."""
    saved = read_checkpoint_config(Path(out) / STATE_DIR)
    config = saved.get("config") or next(saved[key] for key in ("train_config", "distill_config", "posttrain_config")
                                         if key in saved)
    return int(saved["step"]), config


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """`ema <- decay * ema + (1 - decay) * model`, parameter by parameter."""
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p, 1 - decay)


class TrainingRun:
    """One resumable training run in `out/` (see the module docstring for the loop and the layout).

    Args:
        out: the run folder. name: the progress bar's label and the TensorBoard prefix (`<name>/<metric>`).
        config: the trainer's config as a dict, saved with the state and in `metrics.json`.
        steps: the run's length; `stop_at` (> 0) ends this process at that step, `max_minutes` (> 0) after that much
            wall time, SIGINT/SIGTERM after the current step (all saved and resumable; `generator.run_limits`).
        ckpt_every / log_every: save the state and export every this many steps / log scalars every this many.
        modules, optimizers, schedulers, generators: what the state holds, by name (the names are its file layout).
        export: called with the step after every save on the main process (e.g. writes `out/model/`).
        rank, world_size: under DDP each process keeps its own state folder; only rank 0 logs, exports and writes.
        fixed: config keys a resumed run must share with the saved one (what the saved weights are shaped by).
    """

    def __init__(self, out: str | Path, *, name: str, config: dict, steps: int, ckpt_every: int, log_every: int,
                 stop_at: int = 0, max_minutes: float = 0.0, progress: bool = True,
                 modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer] | None = None,
                 schedulers: dict[str, Any] | None = None, generators: dict[str, torch.Generator] | None = None,
                 export: Callable[[int], None] | None = None, rank: int = 0, world_size: int = 1,
                 fixed: tuple[str, ...] = ()):
        self.out, self.name, self.config = Path(out), name, config
        self.steps, self.ckpt_every, self.log_every, self.progress = steps, ckpt_every, log_every, progress
        self.stop = min(stop_at or steps, steps)
        self.modules, self.optimizers = modules, optimizers or {}
        self.schedulers, self.generators = schedulers or {}, generators or {}
        if len(self.schedulers) > len(self.optimizers):
            raise ValueError("every scheduler belongs to an optimizer: pass its optimizer too")
        self.export, self.main, self.fixed = export, rank == 0, fixed
        self.state_dir = self.out / STATE_DIR / f"rank{rank}" if world_size > 1 else self.out / STATE_DIR
        self.stop_request = StopRequest(max_minutes)
        self.step = 0
        self.history: list[dict] = []
        self.stopping: str | None = None
        self.writer = self.bar = None
        self.started = time.time()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if (self.state_dir / CONFIG_NAME).exists():
            self.resume()

    # -- state ------------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load `train_state/`: weights, optimizer moments and schedule positions (this run's learning rates kept),
        generators, RNGs and the step."""
        saved, tensors = load_checkpoint(self.state_dir)
        now = json.loads(json.dumps({key: self.config.get(key) for key in self.fixed}))  # tuples as JSON has them
        differ = {key: (saved["config"].get(key), now[key]) for key in self.fixed if saved["config"].get(key) != now[key]}
        if differ:
            raise ValueError(f"{self.state_dir} holds a run with different {sorted(differ)} (saved, now: {differ}); "
                             "use another out folder, or the saved settings")
        for key, module in self.modules.items():
            load_state_into(module, tensors[key], what=f"{self.state_dir}/{key}.safetensors")
        rest = unflatten_state(tensors["state"], saved["state"])
        # An optimizer and its scheduler are paired in order (`optimizers` and `schedulers` listed alike).
        scheduler_items = list(self.schedulers.items())
        for index, (key, optimizer) in enumerate(self.optimizers.items()):
            if index < len(scheduler_items):
                scheduler_key, scheduler = scheduler_items[index]
                load_optimizer_state(optimizer, rest[key], scheduler, rest[scheduler_key])
            else:
                load_optimizer_state(optimizer, rest[key])
        for key, generator in self.generators.items():
            generator.set_state(rest[key])
        restore_rng_state(rest["rng"])
        self.step = int(saved["step"])

    def save(self) -> None:
        """Write `train_state/` atomically, then (main process) `export(step)`."""
        rest = {**{key: optimizer.state_dict() for key, optimizer in self.optimizers.items()},
                **{key: scheduler.state_dict() for key, scheduler in self.schedulers.items()},
                **{key: generator.get_state() for key, generator in self.generators.items()},
                "rng": capture_rng_state()}
        flat, skeleton = flatten_state(rest)
        save_checkpoint(self.state_dir, config={"step": self.step, "trainer": self.name, "config": self.config,
                                                "state": skeleton},
                        tensors={**{key: module.state_dict() for key, module in self.modules.items()},
                                 "state": flat})
        if self.main and self.export is not None:
            self.export(self.step)

    # -- the loop -----------------------------------------------------------------------------------------------

    def __enter__(self) -> "TrainingRun":
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        if self.main:
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)
        self.bar = tqdm(total=self.steps, initial=self.step, disable=not (self.main and self.progress), desc=self.name)
        self.started = time.time()
        self.stop_request.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_request.__exit__(*exc)
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    @property
    def running(self) -> bool:
        """Whether to take another step: below `stop_at`/`steps` and not asked to stop."""
        return self.step < self.stop and self.stopping is None

    def end_step(self, metrics: dict[str, float]) -> None:
        """Count the step just taken; log `metrics` every `log_every` steps; save every `ckpt_every` steps, at the
        last step of this process and when a limit or a signal asks the run to stop."""
        self.step += 1
        self.history.append(metrics)
        self.bar.update(1)
        if self.step % self.log_every == 0 or self.step == self.steps:
            self.log(metrics, self.name)
            self.bar.set_postfix({key: f"{metrics[key]:.4f}" for key in ("loss", "gen", "disc") if key in metrics})
        self.stopping = self.stop_request()
        if self.step % self.ckpt_every == 0 or self.step == self.stop or self.stopping:
            self.save()
        if self.stopping and self.main:
            print(f"stopping at step {self.step} ({self.stopping}), saved; rerun the same command to resume",
                  flush=True)

    def log(self, scalars: dict[str, float], prefix: str) -> None:
        """TensorBoard scalars `<prefix>/<key>` at the current step (main process)."""
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, self.step)

    @property
    def done(self) -> bool:
        """Whether the run has reached `steps` (not only this process's `stop_at`)."""
        return self.step >= self.steps

    def finish(self, **extra) -> dict:
        """`{"step", "final" (the last step's metrics), "seconds", "stopped", **extra}`; written to `metrics.json`
        (main process) once the run has reached `steps`."""
        result = {"step": self.step, "final": self.history[-1] if self.history else None,
                  "seconds": time.time() - self.started, "stopped": self.stop_request.reason, **extra}
        if self.main and self.done:
            atomic_write_json(self.out / "metrics.json", result)
        return result
