"""Benchmark of the dream env: `WorldModelVecEnv.step` throughput and latency, against the real game's speed.

`run_benchmark(BenchSettings(...))` times, for every combination of `num_envs` x `sampler_steps` x agent think
time, plain stepping and then speculative stepping (auto, sync and async) on each action stream:

- ``sticky``: sticky-random actions (`world_env.policies.StickyPolicy`, mean repeat 4), the collector's own policy;
- ``recorded``: the actions of real recorded episodes, in order (`--dataset`); env i starts at episode i;
- ``random``: uniformly random actions (a repeat only by chance: the worst case for speculation).

Each case builds a fresh env, resets it, runs `warmup` steps, waits for pending background speculation, then
times `steps` loop iterations of ``agent think; env.step(actions)`` (the last iteration also waits for the
speculation it started, so the window holds exactly `steps` steps of work). Actions are drawn before timing.
env-steps/s is ``num_envs * steps / loop time`` (agent think time included: with async speculation the env works
while the agent thinks, so only the whole loop is a fair measure); latency is the time of the `env.step` call alone.
Plain stepping costs the same whatever the actions, so it is measured once per (num_envs, sampler_steps, agent
time), and every speculative case's gain is its env-steps/s over that baseline's.

Plain-stepping cases also count the floating-point operations of one `env.step` (`generator.flops.count_flops`:
matmuls, convolutions and attention, i.e. what the hardware's peak refers to; torch's counter misses the CPU
attention kernel, which `count_flops` adds by torch's own formula) and report the achieved TFLOP/s
(``flops_per_env_step * env-steps/s``), its fraction of the dense matmul rate measured on this device in the same
run (`generator.flops.measure_matmul_peak`, at the start and the end; the better one is the ceiling), and, when the
device's data-sheet peak is known (`PEAK_TFLOPS` or ``peak_tflops``), the model FLOPs utilisation (MFU).
``precision="bf16"`` steps under bfloat16 autocast with a bfloat16 KV cache (`world_env.dream`).

The real game (`make_game`) is stepped in the same run with the same sticky stream, timed without and with its
resets. Results come back as one dict (`to_markdown` renders it); `write_results` writes JSON + Markdown.

Random-weight models (`model_config="tiny"|"small"|"base"|"paper"`) time exactly like trained ones of the same
config: the work per step does not depend on the weights. Their termination head is biased off so no episode
ends inside a timed window (a trained checkpoint's resets are counted instead).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from generator.actions import space_from_json, space_to_json
from generator.checkpoint import atomic_write_text
from generator.data import EpisodeDataset
from generator.flops import count_flops, measure_matmul_peak
from generator.pretrained import WorldModel
from generator.random_world import MODEL_FRAMES, random_prompts, random_world
from world_env.policies import random_actions, recorded_actions, sticky_actions
from world_env.dream import PRECISIONS
from world_env.env import WorldModelVecEnv

# Dense (no sparsity) peak TFLOP/s by GPU name and precision, from the vendors' data sheets (SXM parts; fp32 is
# the non-tensor-core rate). Used for MFU when `peak_tflops` is not given; unknown devices report no MFU.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}
SPECULATION_COUNTS = ("accepted", "rejected", "generated", "speculated", "speculating_steps")  # of speculation_stats
SPECULATION_MODES = ("off", "auto", "sync", "async")
STREAMS = ("sticky", "recorded", "random")
AGENT_KINDS = ("sleep", "cnn")


@dataclass
class BenchSettings:
    """What to measure. Tuple fields are the grid; every combination is one case (see the module docstring)."""

    model_config: str = "small"  # random-weight size preset, used when `checkpoint` is None
    checkpoint: str | None = None  # a WorldModel folder; its prompt clips start the episodes
    device: str = "cpu"
    num_envs: tuple[int, ...] = (1, 16, 64)
    sampler_steps: tuple[int | None, ...] = (None, 1, 4)  # None: the model's default
    speculation: tuple[str, ...] = SPECULATION_MODES
    speculation_depth: int = 2
    streams: tuple[str, ...] = STREAMS
    dataset: str | None = None  # episode dataset for the "recorded" stream (skipped when None)
    agent_ms: tuple[float, ...] = (0.0, 20.0)  # agent think time between steps
    agent_kind: str = "sleep"  # "sleep" (agent on another device) or "cnn" (Nature-CNN forwards on this CPU)
    mean_repeat: float = 4.0
    warmup: int = 3
    steps: int = 20
    max_case_s: float | None = None  # stop a case's timed loop early after this long (>= 2 timed steps)
    budget_s: float | None = None  # skip the remaining dream cases once this much time went by
    game: str | None = "crafter"  # real game timed in the same run (None: skip)
    game_steps: int = 1000
    threads: int | None = 2  # torch.set_num_threads; None leaves torch's default
    precision: str = "fp32"  # "fp32" or "bf16" (autocast + bf16 KV cache)
    peak_tflops: float | None = None  # the device's dense peak for MFU (None: `PEAK_TFLOPS` by GPU name, or no MFU)
    matmul_peak_s: float = 1.0  # time spent measuring the dense matmul rate at the start and at the end (0: skip)
    # One pass per frame (`SamplingConfig.commit_pass=False`) or two; None: the model's own setting. Overriding a
    # checkpoint's setting times its shapes correctly but its frames are not what it was trained to produce.
    commit_pass: bool | None = None
    # Row workers of the env (`WorldModelVecEnv(workers=)`, capped at each case's env count); None: the env's auto.
    workers: int | None = None
    # Run each group of cases (envs x sampler steps x think time) this many times in a row, every second time in
    # reverse order (A B C, C B A, ...), each speculative case's gain taken against its own round's plain stepping:
    # on a machine whose speed drifts by more than the effect, the rounds' spread is the measurement's noise.
    rounds: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("num_envs", "sampler_steps", "speculation", "streams", "agent_ms"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.checkpoint is None and self.model_config not in MODEL_FRAMES:
            raise ValueError(f"model_config must be one of {sorted(MODEL_FRAMES)}, got {self.model_config!r}")
        if bad := [m for m in self.speculation if m not in SPECULATION_MODES]:
            raise ValueError(f"speculation modes must be among {SPECULATION_MODES}, got {bad}")
        if bad := [s for s in self.streams if s not in STREAMS]:
            raise ValueError(f"streams must be among {STREAMS}, got {bad}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.agent_kind not in AGENT_KINDS:
            raise ValueError(f"agent_kind must be one of {AGENT_KINDS}, got {self.agent_kind!r}")
        if not self.num_envs or min(self.num_envs) < 1:
            raise ValueError(f"num_envs must be positive, got {self.num_envs}")
        if any(s is not None and s < 1 for s in self.sampler_steps):
            raise ValueError(f"sampler_steps must be >= 1 (or None for the default), got {self.sampler_steps}")
        if any(a < 0 for a in self.agent_ms):
            raise ValueError(f"agent_ms must be >= 0, got {self.agent_ms}")
        if self.steps < 2 or self.warmup < 0:
            raise ValueError(f"need steps >= 2 and warmup >= 0, got steps={self.steps}, warmup={self.warmup}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None (auto), got {self.workers}")
        if self.speculation_depth < 1 and set(self.speculation) - {"off"}:
            raise ValueError("speculation_depth must be >= 1 to measure speculation")


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """A smoke run of the same grid shape: 1-2 envs, default and 1 sampler step, a handful of steps."""
    return replace(settings, num_envs=(1, 2), sampler_steps=(None, 1), warmup=2, steps=4,
                   game_steps=min(settings.game_steps, 100))


# ----------------------------------------------------------------------------------------------------------------
# Model


def load_bench_world(settings: BenchSettings) -> tuple[WorldModel, dict]:
    """The model to time and a description of it for the report."""
    device = torch.device(settings.device)
    if settings.checkpoint is not None:
        world = WorldModel.from_pretrained(settings.checkpoint, device=device)
        weights = f"checkpoint {settings.checkpoint}"
        if world.prompts is None:
            world.prompts = random_prompts(world.info.frame_size, world.info.action_space, seed=settings.seed)
            weights += " (it holds no prompt clips: random prompt frames)"
    else:
        world = random_world(settings.model_config, seed=settings.seed).to(device)
        weights = "random (step time does not depend on the weights; termination head biased off)"
    if settings.commit_pass is not None and settings.commit_pass != world.sampling.commit_pass:
        if settings.checkpoint is not None:
            weights += (f" (trained with commit_pass={world.sampling.commit_pass}, timed with {settings.commit_pass}:"
                        " the timing holds, its frames are not the model's)")
        world.sampling.commit_pass = settings.commit_pass
    cfg = world.dit.config
    description = {
        "config": settings.model_config if settings.checkpoint is None else "checkpoint",
        "weights": weights,
        "parameters": world.dit.num_parameters(),
        "codec": world.codec.config.to_dict(),
        "codec_parameters": sum(p.numel() for p in world.codec.parameters()),
        "frame_size": list(world.info.frame_size),
        "latent_shape": list(world.codec.latent_shape),
        "tokens_per_frame": cfg.tokens_per_frame,
        "window_frames": cfg.window_frames,
        "dim": cfg.dim,
        "depth": cfg.depth,
        "heads": cfg.heads,
        "default_sampler_steps": world.sampling.sampler_steps,
        "commit_pass": world.sampling.commit_pass,
        "action_space": world.info.action_space,
        "prompt_frames": int(world.prompts["frames"].shape[1]),
    }
    return world, description


def kv_cache_bytes(world: WorldModel, num_envs: int, speculation_depth: int) -> int:
    cfg = world.dit.config
    slots = cfg.window_frames - 1 + speculation_depth
    itemsize = world.dit.patch_embed.weight.element_size()
    return 2 * cfg.depth * num_envs * cfg.heads * slots * cfg.tokens_per_frame * cfg.head_dim * itemsize


# ----------------------------------------------------------------------------------------------------------------
# Action streams


def _changes(actions: np.ndarray) -> np.ndarray:
    return (actions[1:] != actions[:-1]).reshape(len(actions) - 1, actions.shape[1], -1).any(axis=2)  # (T-1, N)


def mean_run_length(actions: np.ndarray) -> float:
    """Mean number of consecutive equal actions per env, `actions` `(T, N, ...)`."""
    runs = _changes(actions).sum() + actions.shape[1]
    return float(actions.shape[0] * actions.shape[1] / runs)


def repeat_fraction(actions: np.ndarray) -> float:
    """Fraction of steps whose action equals the env's previous one, `actions` `(T, N, ...)`.

    This is the long-run speculation acceptance rate of the stream: once queues are full, a row's speculation
    is accepted exactly when its action repeats (the timed windows are too short to pin it down).
    """
    return float(1.0 - _changes(actions).mean())


def stream_summary(actions: np.ndarray) -> dict:
    return {"steps": int(actions.shape[0] * actions.shape[1]), "repeat_fraction": repeat_fraction(actions),
            "mean_action_run": mean_run_length(actions)}


# ----------------------------------------------------------------------------------------------------------------
# Agent think time


class NatureCNN(nn.Module):
    """The Atari/SB3 `CnnPolicy` trunk with policy and value heads: a typical RL agent's forward pass."""

    def __init__(self, actions: int = 17):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(512), nn.ReLU(),
        )
        self.policy, self.value = nn.Linear(512, actions), nn.Linear(512, 1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(frames.permute(0, 3, 1, 2).float() / 255.0)  # (N, 512)
        return self.policy(x), self.value(x)


def make_agent(kind: str, think_ms: float) -> Callable[[np.ndarray], None]:
    """An agent's think step between env steps: sleep `think_ms`, or run CNN forwards on the frames for as long."""
    if think_ms <= 0:
        return lambda obs: None
    if kind == "sleep":
        return lambda obs: time.sleep(think_ms / 1000.0)
    network = NatureCNN()

    @torch.no_grad()
    def think(obs: np.ndarray) -> None:
        frames = torch.from_numpy(obs)
        deadline = time.perf_counter() + think_ms / 1000.0
        network(frames)
        while time.perf_counter() < deadline:
            network(frames)

    return think


# ----------------------------------------------------------------------------------------------------------------
# Timing


def latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "min": float(ms.min()), "max": float(ms.max())}


def count_step_flops(env: WorldModelVecEnv, actions: np.ndarray) -> float:
    """Floating-point operations of one `env.step(actions)` (matmuls, convolutions, attention on every device),
    counted by `generator.flops.count_flops` on this thread (so: plain stepping, no background speculation, and the
    env's row workers off for the step: a counter sees only its own thread's operations)."""
    env.wait()
    workers, env.core.workers = env.core.workers, 1
    try:
        return float(count_flops(lambda: env.step(actions))[1])
    finally:
        env.core.workers = workers


def matmul_peak(settings: BenchSettings) -> dict | None:
    """The dense matmul rate of this device now, in the precision the dream runs in (None when skipped)."""
    if settings.matmul_peak_s <= 0:
        return None
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    return measure_matmul_peak(settings.device, dtype, seconds=settings.matmul_peak_s)


def device_peak_tflops(settings: BenchSettings, device_name: str) -> float | None:
    """The dense peak MFU is measured against: `settings.peak_tflops`, else `PEAK_TFLOPS` by GPU name."""
    if settings.peak_tflops is not None:
        return float(settings.peak_tflops)
    if settings.device.startswith("cuda"):
        for name, peaks in PEAK_TFLOPS.items():
            if name in device_name:
                return peaks[settings.precision]
    return None


def time_dream_case(world: WorldModel, settings: BenchSettings, num_envs: int, sampler_steps: int, mode: str,
                    stream: str, actions: np.ndarray, agent_ms: float, peak_tflops: float | None = None) -> dict:
    """Time one case: fresh env, reset, warm-up, then `settings.steps` timed loop iterations (plain stepping then
    counts the FLOPs of one more step)."""
    env = WorldModelVecEnv(
        world, num_envs=num_envs, device=settings.device, sampler_steps=sampler_steps,
        speculation_depth=0 if mode == "off" else settings.speculation_depth,
        speculation="auto" if mode == "off" else mode, precision=settings.precision,
        workers=None if settings.workers is None else min(settings.workers, num_envs),
    )
    agent = make_agent(settings.agent_kind, agent_ms)
    workers = env.core.workers
    try:
        obs, _ = env.reset(seed=settings.seed)
        for t in range(settings.warmup):
            agent(obs)
            obs, *_ = env.step(actions[t])
        env.wait()
        before = dict(env.speculation_stats)
        step_s, agent_s, resets = [], [], 0
        started = time.perf_counter()
        for t in range(settings.warmup, settings.warmup + settings.steps):
            t0 = time.perf_counter()
            agent(obs)
            t1 = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(actions[t])
            step_s.append(time.perf_counter() - t1)
            agent_s.append(t1 - t0)
            resets += int(np.sum(terminated | truncated))
            out_of_time = settings.max_case_s is not None and time.perf_counter() - started > settings.max_case_s
            if out_of_time and len(step_s) >= 2:
                break
        env.wait()  # the speculation the last step started belongs to this window
        loop_s = time.perf_counter() - started
        after = dict(env.speculation_stats)
        flops = count_step_flops(env, actions[settings.warmup]) / num_envs if mode == "off" else None
    finally:
        env.close()
    counts = {key: after[key] - before[key] for key in SPECULATION_COUNTS}
    tried = counts["accepted"] + counts["rejected"]
    timed = len(step_s)
    achieved = flops * num_envs * timed / loop_s / 1e12 if flops is not None else None
    return {
        "stream": stream,
        "num_envs": num_envs,
        "sampler_steps": sampler_steps,
        "speculation": mode,
        "speculation_depth": 0 if mode == "off" else settings.speculation_depth,
        "workers": workers,
        "agent_ms": agent_ms,
        "agent_kind": settings.agent_kind if agent_ms > 0 else "none",
        "warmup": settings.warmup,
        "steps": timed,
        "seconds": loop_s,
        "env_steps_per_s": num_envs * timed / loop_s,
        "step_ms": latency_stats(step_s),
        "agent_ms_measured": float(np.mean(agent_s) * 1000.0),
        "acceptance_rate": counts["accepted"] / tried if tried else None,
        "speculated_fraction": counts["accepted"] / (num_envs * timed),
        "frames_per_env_step": (counts["generated"] + counts["speculated"]) / (num_envs * timed),
        "speculation_counts": counts,
        "resets": resets,
        "precision": settings.precision,
        "flops_per_env_step": flops,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "mfu": achieved / peak_tflops if achieved is not None and peak_tflops else None,
        "matmul_peak_fraction": None,  # set by the run from the matmul rate it measured
        "mean_action_run": mean_run_length(actions[settings.warmup: settings.warmup + timed]),
        "load_avg_after": list(os.getloadavg()),
    }


def time_real_game(name: str, steps: int, mean_repeat: float, seed: int) -> dict:
    """Step the real game `steps` times with one sticky stream; step time with and without its resets.

    The first reset is not counted; every reset after an episode ends inside the window is.
    """
    from world_env.games import make_game

    game = make_game(name)
    actions = sticky_actions(game.action_space, 1, steps, mean_repeat, seed)[:, 0]
    try:
        t0 = time.perf_counter()
        game.reset(seed=seed)
        first_reset_s = time.perf_counter() - t0
        step_s, reset_s = [], []
        for action in actions:
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = game.step(action)
            step_s.append(time.perf_counter() - t0)
            if terminated or truncated:
                t0 = time.perf_counter()
                game.reset()
                reset_s.append(time.perf_counter() - t0)
    finally:
        game.close()
    stepping, resetting = float(np.sum(step_s)), float(np.sum(reset_s))
    return {
        "game": name,
        "steps": steps,
        "resets": len(reset_s),
        "steps_per_s_excluding_resets": steps / stepping,
        "steps_per_s_including_resets": steps / (stepping + resetting),
        "step_ms": latency_stats(step_s),
        "reset_ms_mean": float(np.mean(reset_s) * 1000.0) if reset_s else None,
        "first_reset_ms": first_reset_s * 1000.0,
        "load_avg_after": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------------------------------------------
# The run


def machine_info(settings: BenchSettings) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.device(settings.device)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_avg_start": list(os.getloadavg()),
    }


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print) -> dict:
    """Run every case of `settings` and return all figures as one JSON-ready dict (torch's thread count is restored)."""
    threads_before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings, log)
    finally:
        torch.set_num_threads(threads_before)


def _run(settings: BenchSettings, log: Callable[[str], None]) -> dict:
    meta = machine_info(settings)
    peaks = [matmul_peak(settings)]
    world, model = load_bench_world(settings)
    space = space_from_json(world.info.action_space)
    notes = [
        "env-steps/s = num_envs * timed steps / loop time; the loop includes the agent's think time.",
        "step latency = time of the WorldModelVecEnv.step call alone.",
        "plain stepping (speculation off) costs the same for any actions: measured once on the sticky stream, "
        "it is the baseline of both streams' gains.",
    ]
    if settings.checkpoint is None:
        notes.append("random weights: step time does not depend on the weights, only on the config.")
    dataset = None
    streams = list(settings.streams)
    if "recorded" in streams:
        if settings.dataset is None:
            streams.remove("recorded")
            notes.append("recorded stream skipped: no --dataset given.")
        else:
            dataset = EpisodeDataset(settings.dataset, window=None, split="all")
            if space_to_json(dataset.action_space) != space_to_json(space):
                raise ValueError(f"dataset {settings.dataset} acts in {dataset.action_space}, the model in {space}")
            notes.append(f"recorded stream: {dataset.num_episodes} episodes of {settings.dataset} "
                         f"(policy {dataset.meta.get('policy')}), env i plays episodes i, i+1, ... in order.")
    # Long streams, no model: their repeat fraction is the acceptance rate the short timed windows estimate.
    summaries = {"sticky": stream_summary(sticky_actions(space, 8, 1000, settings.mean_repeat, settings.seed + 1))}
    if "random" in streams:
        summaries["random"] = stream_summary(random_actions(space, 8, 1000, settings.seed + 1))
    if dataset is not None:
        length = min(sum(dataset.episode_lengths), 4000)
        summaries["recorded"] = stream_summary(recorded_actions(dataset, 1, length))
    sampler_steps = list(dict.fromkeys(s or world.sampling.sampler_steps for s in settings.sampler_steps))
    modes = [m for m in settings.speculation if m != "off"]

    results, skipped, started = [], [], time.perf_counter()
    length = settings.warmup + settings.steps
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    for num_envs in settings.num_envs:
        stream_actions = {"sticky": sticky_actions(space, num_envs, length, settings.mean_repeat, settings.seed),
                          "random": random_actions(space, num_envs, length, settings.seed)}
        if dataset is not None:
            stream_actions["recorded"] = recorded_actions(dataset, num_envs, length)
        for steps in sampler_steps:
            for agent_ms in settings.agent_ms:
                cases = [("off", "sticky")] if "off" in settings.speculation or modes else []
                cases += [(mode, stream) for stream in streams for mode in modes]
                rounds = [(r, cases if r % 2 == 0 else cases[::-1]) for r in range(settings.rounds)]
                for round_index, mode, stream in [(r, m, st) for r, order in rounds for m, st in order]:
                    case = {"stream": stream, "num_envs": num_envs, "sampler_steps": steps, "speculation": mode,
                            "agent_ms": agent_ms}
                    need = kv_cache_bytes(world, num_envs, 0 if mode == "off" else settings.speculation_depth)
                    if memory is not None and settings.device == "cpu" and need > memory // 2:
                        skipped.append({**case, "reason": f"KV cache {need / 2**30:.1f} GiB > half the RAM"})
                        continue
                    if settings.budget_s is not None and time.perf_counter() - started > settings.budget_s:
                        skipped.append({**case, "reason": f"time budget of {settings.budget_s:.0f} s spent"})
                        continue
                    row = time_dream_case(world, settings, num_envs, steps, mode, stream, stream_actions[stream],
                                          agent_ms, device_peak_tflops(settings, meta["device_name"]))
                    if mode == "off" and "off" not in settings.speculation:
                        row["baseline_only"] = True
                    row["round"] = round_index
                    results.append(row)
                    log(format_row(row))
    add_gains(results)
    results = [r for r in results if not r.pop("baseline_only", False)]
    over_rounds = gains_over_rounds(results) if settings.rounds > 1 else []

    real_game = None
    if settings.game:
        real_game = time_real_game(settings.game, settings.game_steps, settings.mean_repeat, settings.seed)
        log(f"real {settings.game}: {real_game['steps_per_s_excluding_resets']:.1f} steps/s excluding resets, "
            f"{real_game['steps_per_s_including_resets']:.1f} including ({real_game['resets']} resets)")
    peaks.append(matmul_peak(settings))
    meta["matmul_peak"] = None if peaks[0] is None else {"start": peaks[0], "end": peaks[1],
                                                          "tflops": max(p["tflops"] for p in peaks)}
    for row in results:
        if meta["matmul_peak"] is not None and row.get("achieved_tflops") is not None:
            row["matmul_peak_fraction"] = row["achieved_tflops"] / meta["matmul_peak"]["tflops"]
    meta["load_avg_end"] = list(os.getloadavg())
    meta["seconds"] = time.perf_counter() - started
    settings_dict = asdict(settings)
    settings_dict["sampler_steps_resolved"] = sampler_steps
    return {"meta": meta, "model": model, "settings": settings_dict, "dream": results, "skipped": skipped,
            "gains_over_rounds": over_rounds, "streams": summaries, "real_game": real_game, "notes": notes}


def add_gains(rows: list[dict]) -> None:
    """Set each speculative row's `gain`: its env-steps/s over the plain row of the same envs, steps, agent and
    round."""
    def key(r: dict) -> tuple:
        return r["num_envs"], r["sampler_steps"], r["agent_ms"], r.get("round", 0)

    plain = {key(r): r for r in rows if r["speculation"] == "off"}
    for row in rows:
        base = plain.get(key(row))
        if row["speculation"] == "off":
            row["gain"] = 1.0
        else:
            row["gain"] = row["env_steps_per_s"] / base["env_steps_per_s"] if base else None


def gains_over_rounds(rows: list[dict]) -> list[dict]:
    """Per case (stream, envs, sampler steps, mode, think time) over the rounds: its env-steps/s and gain in each
    round, the gains' median, min and max, and the share of steps it speculated in each round. The plain case's own
    row ("any" stream) gives plain stepping's env-steps/s per round: its spread is what the machine's drift does to
    identical work."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        case = (row["stream"] if row["speculation"] != "off" else "any", row["num_envs"], row["sampler_steps"],
                row["speculation"], row["agent_ms"])
        groups.setdefault(case, []).append(row)
    out = []
    for (stream, envs, steps, mode, agent), members in groups.items():
        members.sort(key=lambda r: r["round"])
        gains = [r["gain"] for r in members if r["gain"] is not None]
        out.append({"stream": stream, "num_envs": envs, "sampler_steps": steps, "speculation": mode,
                    "agent_ms": agent, "env_steps_per_s": [r["env_steps_per_s"] for r in members], "gains": gains,
                    "median_gain": float(np.median(gains)) if gains else None,
                    "min_gain": min(gains) if gains else None, "max_gain": max(gains) if gains else None,
                    "speculated_fraction": [r.get("speculated_fraction") for r in members]})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Output


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_row(row: dict) -> str:
    acceptance = "" if row["acceptance_rate"] is None else f" accept {row['acceptance_rate']:.2f}"
    flops = "" if row.get("achieved_tflops") is None else f", {row['achieved_tflops'] * 1000:.1f} GFLOP/s"
    return (f"envs {row['num_envs']:>3} steps {row['sampler_steps']} {row['speculation']:>5} {row['stream']:>8} "
            f"agent {row['agent_ms']:g} ms: {row['env_steps_per_s']:.2f} env-steps/s, step p50 "
            f"{row['step_ms']['p50']:.1f} ms{acceptance}{flops} ({row['steps']} steps, load {row['load_avg_after'][0]:.2f})")


DREAM_COLUMNS = ("stream", "envs", "workers", "sampler steps", "speculation", "agent ms", "timed steps", "env-steps/s",
                 "step ms mean", "p50", "p95", "acceptance", "frames/env-step", "gain", "GFLOP/env-step", "TFLOP/s",
                 "of matmul peak", "MFU", "load 1 min")


def to_markdown(results: dict) -> str:
    """The report as Markdown: set-up lines, the dream table, the real game's figures and the notes."""
    meta, model = results["meta"], results["model"]
    lines = [
        f"- date: {meta['date']}; command: `{meta['command']}`",
        f"- device: {meta['device']} ({meta['device_name']}, {meta['cpu_count']} cores); torch {meta['torch']}, "
        f"{meta['torch_threads']} threads, OMP_WAIT_POLICY {meta['omp_wait_policy']}",
        f"- load average (1, 5, 15 min): start {', '.join(f'{x:.2f}' for x in meta['load_avg_start'])}; "
        f"end {', '.join(f'{x:.2f}' for x in meta['load_avg_end'])}",
        f"- model: {model['config']}, {model['parameters'] / 1e6:.1f}M parameters, {model['weights']}; frames "
        f"{model['frame_size'][0]}x{model['frame_size'][1]}, latent {tuple(model['latent_shape'])}, "
        f"{model['tokens_per_frame']} tokens/frame, window {model['window_frames']} frames, codec "
        f"{model['codec']['kind']}; precision {results['settings'].get('precision', 'fp32')}; "
        + ("a commit pass after each frame's sampling passes" if model.get("commit_pass", True)
           else "one pass per frame and sampler step (no commit pass)"),
    ]
    peak = meta.get("matmul_peak")
    if peak is not None:
        lines.append(
            f"- dense matmul rate measured in this run ({peak['start']['size']}^2 {peak['start']['dtype']}, best of "
            f"repeats): start {peak['start']['tflops'] * 1000:.1f}, end {peak['end']['tflops'] * 1000:.1f} GFLOP/s; "
            f"'of matmul peak' = achieved / {peak['tflops'] * 1000:.1f}"
        )
    lines += [
        "",
        "| " + " | ".join(DREAM_COLUMNS) + " |",
        "|" + "---|" * len(DREAM_COLUMNS),
    ]
    for r in results["dream"]:
        stream = "any (sticky)" if r["speculation"] == "off" else r["stream"]
        mode = r["speculation"] if r["speculation"] == "off" else f"{r['speculation']} d{r['speculation_depth']}"
        agent = "0" if r["agent_ms"] == 0 else f"{r['agent_ms']:g} {r['agent_kind']}"
        cells = (stream, r["num_envs"], r.get("workers", 1), r["sampler_steps"], mode, agent, r["steps"], _fmt(r["env_steps_per_s"]),
                 _fmt(r["step_ms"]["mean"], 1), _fmt(r["step_ms"]["p50"], 1), _fmt(r["step_ms"]["p95"], 1),
                 _fmt(r["acceptance_rate"]), _fmt(r["frames_per_env_step"]), _fmt(r["gain"]),
                 _fmt(r["flops_per_env_step"] / 1e9 if r.get("flops_per_env_step") is not None else None, 3),
                 _fmt(r.get("achieved_tflops"), 4), _fmt(r.get("matmul_peak_fraction"), 3), _fmt(r.get("mfu"), 4),
                 _fmt(r["load_avg_after"][0]))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for s in results["skipped"]:
        lines.append(f"| {s['stream']} | {s['num_envs']} | - | {s['sampler_steps']} | {s['speculation']} | "
                     f"{s['agent_ms']:g} | skipped: {s['reason']} |" + " |" * (len(DREAM_COLUMNS) - 7))
    if results.get("gains_over_rounds"):
        lines += ["", f"Over {results['settings']['rounds']} rounds (each gain against its own round's plain stepping):",
                  "", "| stream | envs | sampler steps | speculation | agent ms | env-steps/s per round | gain per round "
                  "| median gain | min | max |", "|---|---|---|---|---|---|---|---|---|---|"]
        for g in results["gains_over_rounds"]:
            lines.append(f"| {g['stream']} | {g['num_envs']} | {g['sampler_steps']} | {g['speculation']} | "
                         f"{g['agent_ms']:g} | {', '.join(_fmt(v) for v in g['env_steps_per_s'])} | "
                         f"{', '.join(_fmt(v) for v in g['gains'])} | {_fmt(g['median_gain'])} | "
                         f"{_fmt(g['min_gain'])} | {_fmt(g['max_gain'])} |")
    streams = [f"{name}: repeat fraction {summary['repeat_fraction']:.3f} (= steady-state acceptance), mean run "
               f"{summary['mean_action_run']:.2f} over {summary['steps']} steps"
               for name, summary in results["streams"].items()]
    lines += ["", "Action streams (long-run, no model): " + "; ".join(streams)]
    game = results["real_game"]
    if game:
        lines += [
            "",
            f"Real game `{game['game']}` ({game['steps']} sticky-random steps, {game['resets']} resets): "
            f"**{game['steps_per_s_excluding_resets']:.1f} steps/s excluding resets**, "
            f"**{game['steps_per_s_including_resets']:.1f} including resets**; step p50 "
            f"{game['step_ms']['p50']:.2f} ms, p95 {game['step_ms']['p95']:.2f} ms; reset mean "
            f"{_fmt(game['reset_ms_mean'], 1)} ms.",
        ]
    lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def write_results(results: dict, json_path: str | Path, markdown_path: str | Path | None = None) -> None:
    """Write the figures as JSON and, when `markdown_path` is given, the Markdown report (each atomically)."""
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    if markdown_path is not None:
        atomic_write_text(markdown_path, to_markdown(results))


@dataclass
class BenchConfig:
    """`nextframe bench`: the dream env against the real game, in one run; writes OUT.json and OUT.md.

    Comma lists are the grid (`BenchSettings`); `sampler_steps` spells the model's own count "default".
    """

    checkpoint: str | None = None  # WorldModel folder (default: a random-weight model of `config`)
    config: str = BenchSettings.model_config  # random model size: tiny, small, base, paper
    device: str = BenchSettings.device
    num_envs: tuple[int, ...] = BenchSettings.num_envs
    sampler_steps: tuple[int | None, ...] = BenchSettings.sampler_steps  # "default": the model's
    speculation: tuple[str, ...] = BenchSettings.speculation  # subset of off,auto,sync,async
    speculation_depth: int = BenchSettings.speculation_depth
    streams: tuple[str, ...] = BenchSettings.streams  # subset of sticky,recorded,random
    dataset: str | None = None  # episode dataset whose recorded actions form the "recorded" stream
    agent_ms: tuple[float, ...] = BenchSettings.agent_ms  # agent think times between steps
    agent_kind: Literal["sleep", "cnn"] = BenchSettings.agent_kind
    mean_repeat: float = BenchSettings.mean_repeat
    warmup: int = BenchSettings.warmup
    steps: int = BenchSettings.steps  # timed steps per case
    max_case_s: float | None = None  # stop a case's timed loop after this many seconds
    budget_s: float | None = None  # skip remaining dream cases after this many seconds
    game: str = "crafter"  # real game to time in the same run ("none" to skip)
    game_steps: int = BenchSettings.game_steps
    threads: int = 2  # torch threads (0: torch's default)
    # OMP_WAIT_POLICY set before torch loads: on a CPU shared with other busy processes libgomp's default
    # spin-waiting makes every multi-threaded op wait for descheduled threads
    omp_wait_policy: Literal["default", "passive", "active"] = "default"
    precision: Literal["fp32", "bf16"] = BenchSettings.precision  # bf16: autocast + bf16 KV cache
    peak_tflops: float | None = None  # device dense peak for MFU (default: known GPUs only)
    matmul_peak_s: float = BenchSettings.matmul_peak_s  # seconds measuring the dense matmul rate at start and end
    # off: one network pass per frame (SamplingConfig.commit_pass=False); on: two; model: the model's own
    commit_pass: Literal["model", "on", "off"] = "model"
    workers: int = 0  # row workers of the env (0: its auto, one per torch thread on a CPU; 1: off)
    rounds: int = BenchSettings.rounds  # run each group of cases this many times, alternating their order
    seed: int = 0
    quick: bool = False  # smoke run: 1-2 envs, default and 1 sampler steps, 4 steps
    out: str = "runs/bench/bench"  # output path without extension (.json and .md)


def run_bench(config: BenchConfig) -> str:
    """Run the benchmark `config` describes, write OUT.json and OUT.md; returns the Markdown table."""
    if config.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = config.omp_wait_policy.upper()  # only effective before torch loads libgomp
    settings = BenchSettings(
        model_config=config.config, checkpoint=config.checkpoint, device=config.device, num_envs=config.num_envs,
        sampler_steps=config.sampler_steps, speculation=config.speculation, speculation_depth=config.speculation_depth,
        streams=config.streams, dataset=config.dataset, agent_ms=config.agent_ms, agent_kind=config.agent_kind,
        mean_repeat=config.mean_repeat, warmup=config.warmup, steps=config.steps, max_case_s=config.max_case_s,
        budget_s=config.budget_s, game=None if config.game == "none" else config.game, game_steps=config.game_steps,
        threads=config.threads or None, precision=config.precision, peak_tflops=config.peak_tflops, seed=config.seed,
        matmul_peak_s=config.matmul_peak_s, commit_pass={"model": None, "on": True, "off": False}[config.commit_pass],
        workers=config.workers or None, rounds=config.rounds,
    )
    if config.quick:
        settings = quick_settings(settings)
    results = run_benchmark(settings)
    write_results(results, config.out + ".json", config.out + ".md")
    return to_markdown(results) + f"\nwrote {config.out}.json and {config.out}.md"
