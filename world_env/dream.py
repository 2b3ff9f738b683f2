"""The batched dream: B rows of the learned simulator stepping together, with speculative rollouts.

`DreamCore` owns the model, one KV cache row per environment and each row's state (noise seed, frame position,
speculated frames). It knows nothing of Gymnasium; `world_env.env` wraps it in the Gymnasium contract.

Speculation (NFD's speculative sampling, generalised to a batch): after every step each row generates the next
`speculation_depth` frames assuming its action repeats, one batched pass per depth across all rows that need one.
At the next step a row whose action equals the speculated one takes its stored frame; the others roll their cache
back to the last accepted frame, drop their speculation and are generated fresh, together. Noise depends only on
(row seed, frame position), so an accepted speculated frame is the frame plain stepping would have produced, up to
float rounding (within one grey level on ~3e-5 of the values; not bit-exact: docs/architecture.md, Sampling).
`speculation="sync"` speculates inside `step`, `"async"` in a background thread while the caller chooses its
actions, and `"auto"` (the default) speculates in the background only while `world_env.speculation` measures that
it pays, with the cache's speculation slots allocated only then (they cost attention work on every pass).

`workers` (None: one per intra-op thread on a CPU, see `resolve_workers`) splits a step over all rows into contiguous
shards advanced at the same time on a thread pool, each shard a view of the cache (`KVCache.shard`) on one thread's
share of torch's intra-op threads: the per-frame passes are too small for torch to spread one op over the CPU's
cores, and shards on their own cores are (docs/benchmarks.md, "Row workers").

`precision="bf16"` runs every network pass under bfloat16 autocast and keeps the KV cache in bfloat16 (half the
cache memory and bandwidth; the sampler's own state — noise, the ODE update, the previous-frame latents — stays
float32). It is meant for GPUs; on a CPU it works but is rarely faster.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from generator.sampler import advance_rows, prompt_rows, reads_shown_codes, shown_frames
from world_env.speculation import SpeculationController


PRECISIONS = ("fp32", "bf16")
SPECULATION_MODES = ("auto", "sync", "async")


def resolve_workers(workers: int | None, num_envs: int, device: torch.device) -> int:
    """How many row workers a batch of `num_envs` steps with: `workers` itself (>= 1, at most `num_envs`), or for
    None one per intra-op thread on a CPU (`torch.get_num_threads()`, at most one per row: two pay from two rows up,
    docs/benchmarks.md "Row workers"), and 1 on any other device (one kernel stream already fills it)."""
    if workers is None:
        return min(torch.get_num_threads(), num_envs) if device.type == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or not 1 <= workers <= num_envs:
        raise ValueError(f"workers must be an int from 1 to num_envs ({num_envs}) or None (auto), got {workers!r}")
    return int(workers)


@dataclass
class Speculated:
    action: torch.Tensor  # the repeated action it assumed
    frame: torch.Tensor  # (H, W, 3) uint8
    reward: float  # sampled from the outcome head (`generator.sampler.sample_outcomes`)
    termination_logit: float
    terminated: bool  # sampled
    committed: torch.Tensor  # (C, h, w) the latent as cached: the next frame's previous frame
    codes: torch.Tensor | None  # (N,) its tile codes as shown, where the world reads them (`reads_shown_codes`)
    unlocked: torch.Tensor | None = None  # (E,) achievements unlocked after it (outcome models with an event head)


class DreamCore:
    """Rows of dream environments sharing one model and one batched KV cache."""

    def __init__(
        self,
        world,
        num_envs: int,
        sampler_steps: int | None = None,
        speculation_depth: int = 0,
        async_speculation: bool = False,
        precision: str = "fp32",
        speculation: str = "auto",
        workers: int | None = None,
    ):
        if speculation_depth < 0:
            raise ValueError(f"speculation_depth must be >= 0, got {speculation_depth}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if speculation not in SPECULATION_MODES:
            raise ValueError(f"speculation must be one of {SPECULATION_MODES}, got {speculation!r}")
        if async_speculation:  # the older spelling of speculation="async"
            if speculation == "sync":
                raise ValueError("async_speculation=True contradicts speculation='sync'")
            speculation = "async"
        self.world = world
        self.num_envs = num_envs
        self.sampler_steps = int(world.sampling.sampler_steps if sampler_steps is None else sampler_steps)
        self.speculation_depth = speculation_depth
        self.speculation = speculation if speculation_depth else "off"
        self.async_speculation = self.speculation in ("async", "auto")
        self.controller = SpeculationController(num_envs, speculation_depth) if self.speculation == "auto" else None
        self.speculating = self.speculation in ("sync", "async")
        self.device = world.device
        self.precision = precision
        self.cache = world.dit.new_cache(num_envs, speculation_depth if self.speculating else 0,
                                         dtype=torch.bfloat16 if precision == "bf16" else None)
        self.latent_shape = tuple(world.codec.latent_shape)
        self.row_seeds = [0] * num_envs  # noise seed of each row's current episode
        self.positions = np.full(num_envs, -1, dtype=np.int64)  # position of each row's last accepted frame
        self.queues: list[list[Speculated]] = [[] for _ in range(num_envs)]
        self.last_actions: list[torch.Tensor | None] = [None] * num_envs
        # Each row's last accepted frame as cached, `(B, C, h, w)`: the previous-frame input of its next frame.
        self.previous = torch.zeros(num_envs, *self.latent_shape, device=self.device)
        # A world with an outcome model reads each transition off the tiles shown, and one that carries unchanged
        # tiles over (`SamplingConfig.carry_tiles`) compares with them: each row's last frame's codes.
        self.outcome = getattr(world, "outcome", None)
        self.codes = (torch.zeros(num_envs, world.codec.config.tile_grid[0] * world.codec.config.tile_grid[1],
                                  dtype=torch.long, device=self.device)
                      if reads_shown_codes(world.sampling, self.outcome) else None)
        # Each row's last frame as shown `(B, H, W, 3)` uint8: unchanged tiles keep its pixels (`shown_frames`).
        self.frames = torch.zeros(num_envs, *world.codec.frame_size, 3, dtype=torch.uint8, device=self.device)
        # An outcome model with an event head pays each achievement once per episode: each row's unlocked set.
        events = len(self.outcome.config.events) if self.outcome is not None else 0
        self.unlocked = torch.zeros(num_envs, events, dtype=torch.bool, device=self.device) if events else None
        self.stats = {"accepted": 0, "rejected": 0, "generated": 0, "speculated": 0, "speculating_steps": 0}
        # Background speculation runs on one non-daemon worker thread: the interpreter joins it at exit, where a
        # daemon thread would be killed inside a torch call and abort the process.
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.workers = resolve_workers(workers, num_envs, self.device)
        self._row_pool: ThreadPoolExecutor | None = None

    def _set_speculating(self, on: bool) -> None:
        """Start or stop speculating (auto mode): add the cache's speculation slots, or drop every queue, roll the
        cache back to the accepted frames and free those slots."""
        window = self.world.dit.config.window_frames
        if not on:
            rows = torch.arange(self.num_envs, device=self.device)
            self.cache.truncate(rows, torch.as_tensor(self.positions, device=self.device))
            self.queues = [[] for _ in range(self.num_envs)]
        self.cache = self.cache.resized(window - 1 + (self.speculation_depth if on else 0))
        self.speculating = on

    # -- episodes --------------------------------------------------------------------------------------------

    def reset_rows(self, rows: list[int], seeds: list[int], prompts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Start new episodes in `rows` from real prompt clips; returns each row's last prompt frame (uint8).

        prompts: frames `(R, P, H, W, 3)` uint8, actions `(R, P, ...)`, has_action `(R, P)` bool, and optionally
        first_step `(R,)`: the episode step of each clip's first frame (frame positions, the clock a model with a
        day clock reads; default 0) and unlocked `(R, E)` bool: the achievements its episode had unlocked by the
        last prompt frame (outcome models with an event head pay only the others; default none).
        """
        self.wait()
        with self._autocast():
            return self._reset_rows(rows, seeds, prompts)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reset_rows(self, rows: list[int], seeds: list[int], prompts: dict[str, torch.Tensor]) -> torch.Tensor:
        index = torch.tensor(rows, device=self.device)
        self.cache.reset_rows(index)
        p = prompts["frames"].shape[1]
        first = [int(q) for q in prompts["first_step"]] if "first_step" in prompts else [0] * len(rows)
        for row, seed, start in zip(rows, seeds, first):
            self.row_seeds[row] = int(seed)
            self.queues[row] = []
            self.last_actions[row] = None
            self.positions[row] = start + p - 1
        latents = self.world.codec.encode(prompts["frames"].to(self.device))  # (R, P, C, h, w)
        self.previous[index] = prompt_rows(
            self.world.dit, self.world.codec, self.world.sampling, self.cache, index, latents,
            prompts["actions"].to(self.device), prompts["has_action"].to(self.device), list(seeds),
            self.sampler_steps, first_positions=first,
        )
        if self.codes is not None:
            self.codes[index] = self.world.codec.indices(latents[:, -1].float())
        if self.unlocked is not None:
            given = prompts.get("unlocked")
            if given is not None and tuple(given.shape) != (len(rows), self.unlocked.shape[1]):
                raise ValueError(f"prompt unlocked has shape {tuple(given.shape)}, expected ({len(rows)}, "
                                 f"{self.unlocked.shape[1]}): one flag per achievement of the outcome model")
            self.unlocked[index] = False if given is None else given.bool().to(self.device)
        self.frames[index] = prompts["frames"][:, -1].to(self.device)
        return prompts["frames"][:, -1].to(self.device)

    # -- stepping --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, rows: list[int], actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Advance `rows` by one frame under `actions` `(R, ...)` (already validated, on this device).

        Returns frames `(R, H, W, 3)` uint8, reward `(R,)` (sampled), termination_logit `(R,)`, terminated `(R,)`
        bool (sampled), accepted `(R,)` bool.
        """
        started = time.perf_counter()
        self.wait()
        if self.controller is not None:
            repeated = sum(self.last_actions[row] is not None and torch.equal(self.last_actions[row], actions[i])
                           for i, row in enumerate(rows))
            if self.controller.step_started(started, repeated / len(rows)) != self.speculating:
                self._set_speculating(not self.speculating)
        r = len(rows)
        frames = [None] * r
        rewards = torch.zeros(r)
        logits = torch.zeros(r)
        terminated = torch.zeros(r, dtype=torch.bool)
        accepted = torch.zeros(r, dtype=torch.bool)
        fresh = []
        for i, row in enumerate(rows):
            queue = self.queues[row]
            if queue and torch.equal(queue[0].action, actions[i]):
                spec = queue.pop(0)
                frames[i], rewards[i], logits[i], accepted[i] = spec.frame, spec.reward, spec.termination_logit, True
                terminated[i] = spec.terminated
                self.previous[row] = spec.committed
                self.frames[row] = spec.frame
                if self.codes is not None:
                    self.codes[row] = spec.codes
                if self.unlocked is not None:
                    self.unlocked[row] = spec.unlocked
                self.stats["accepted"] += 1
            else:
                if queue:
                    self.stats["rejected"] += 1
                    last = torch.tensor([self.positions[row]], device=self.device)
                    self.cache.truncate(torch.tensor([row], device=self.device), last)
                    self.queues[row] = []
                fresh.append(i)
        if fresh:
            fresh_rows = [rows[i] for i in fresh]
            t0 = time.perf_counter()
            out = self._advance(
                fresh_rows, actions[fresh], [int(self.positions[row]) + 1 for row in fresh_rows],
                self.previous[fresh_rows], None if self.codes is None else self.codes[fresh_rows],
                None if self.unlocked is None else self.unlocked[fresh_rows], self.frames[fresh_rows],
            )
            if self.controller is not None:
                self.controller.fresh_pass(len(fresh), time.perf_counter() - t0)
            for j, i in enumerate(fresh):
                frames[i], rewards[i], logits[i] = out["frames"][j], out["reward"][j], out["termination_logit"][j]
                terminated[i] = out["terminated"][j]
                self.previous[rows[i]] = out["committed"][j]
                self.frames[rows[i]] = out["frames"][j]
                if self.codes is not None:
                    self.codes[rows[i]] = out["codes"][j]
                if self.unlocked is not None:
                    self.unlocked[rows[i]] = out["unlocked"][j]
            self.stats["generated"] += len(fresh)
        for i, row in enumerate(rows):
            self.positions[row] += 1
            self.last_actions[row] = actions[i]
        if self.speculating:
            self.stats["speculating_steps"] += 1
            if self.async_speculation:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dream-speculation")
                    # wait=False: the last reference may be dropped on the worker itself, which cannot join itself.
                    weakref.finalize(self, self._executor.shutdown, wait=False)
                self._pending = self._executor.submit(self._speculate, list(rows))
            else:
                self._speculate(rows)
        if self.controller is not None:
            self.controller.step_ended(time.perf_counter())
        return {"frames": torch.stack(frames), "reward": rewards, "termination_logit": logits, "terminated": terminated,
                "accepted": accepted}

    def _advance(self, rows: list[int], actions: torch.Tensor, positions: list[int], previous: torch.Tensor,
                 codes: torch.Tensor | None, unlocked: torch.Tensor | None, shown: torch.Tensor) -> dict:
        """Generate and commit one frame for each of `rows` at `positions` after `previous` latents (as cached),
        `codes` (their tiles as shown, for an outcome model or carried tiles), `unlocked` (their achievements, for
        an outcome model with an event head) and `shown` (the frames shown before, `(R, H, W, 3)` uint8), batched."""
        with self._autocast():
            return self._advance_rows(rows, actions, positions, previous, codes, unlocked, shown)

    def _advance_rows(self, rows: list[int], actions: torch.Tensor, positions: list[int], previous: torch.Tensor,
                      codes: torch.Tensor | None, unlocked: torch.Tensor | None, shown: torch.Tensor) -> dict:
        seeds = [self.row_seeds[row] for row in rows]
        if rows != list(range(self.num_envs)):
            return self._advance_block(self.cache, torch.tensor(rows, device=self.device), seeds, actions, positions,
                                       previous, codes, unlocked, shown)
        # All rows in order: attend to the cache in place instead of gathering copies of it, in `workers`
        # contiguous shards at once (views of the cache: each worker writes its own rows).
        if self.workers == 1:
            return self._advance_block(self.cache, None, seeds, actions, positions, previous, codes, unlocked, shown)
        if self._row_pool is None:
            threads = max(1, torch.get_num_threads() // self.workers)
            self._row_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dream-rows",
                                                initializer=torch.set_num_threads, initargs=(threads,))
            weakref.finalize(self, self._row_pool.shutdown, wait=False)
        bounds = np.linspace(0, self.num_envs, self.workers + 1).round().astype(int)

        def shard(a: int, b: int) -> dict:
            with torch.no_grad(), self._autocast():  # both are thread-local: enter them on the worker
                part = slice(a, b)
                return self._advance_block(self.cache.shard(a, b), None, seeds[part], actions[part], positions[part],
                                           previous[part], None if codes is None else codes[part],
                                           None if unlocked is None else unlocked[part], shown[part])

        parts = [f.result() for f in [self._row_pool.submit(shard, int(a), int(b))
                                      for a, b in zip(bounds[:-1], bounds[1:])]]
        return {key: None if parts[0][key] is None else torch.cat([part[key] for part in parts])
                for key in parts[0]}

    def _advance_block(self, cache, index: torch.Tensor | None, seeds: list[int], actions: torch.Tensor,
                       positions: list[int], previous: torch.Tensor, codes: torch.Tensor | None,
                       unlocked: torch.Tensor | None, shown: torch.Tensor) -> dict:
        out = advance_rows(self.world.dit, self.world.codec, self.world.sampling, cache, index, actions, positions,
                           seeds, previous, self.sampler_steps,
                           outcome=self.outcome, shown_codes=codes, unlocked=unlocked)
        return {
            "frames": shown_frames(self.world.codec, self.world.sampling, out, shown, codes),  # (R, H, W, 3) uint8
            "reward": out["sampled_reward"],
            "termination_logit": out["termination_logit"].cpu(),
            "terminated": out["terminated"],
            "committed": out["committed"],
            "codes": out["codes"],
            "unlocked": out.get("unlocked"),
        }

    @torch.no_grad()
    def _speculate(self, rows: list[int]) -> None:
        """Fill each row's queue to `speculation_depth` frames assuming its last action repeats, depth by depth."""
        while True:
            need = [row for row in rows if len(self.queues[row]) < self.speculation_depth]
            if not need:
                return
            actions = torch.stack([self.last_actions[row] for row in need])
            positions = [int(self.positions[row]) + len(self.queues[row]) + 1 for row in need]
            previous = torch.stack([self.queues[row][-1].committed if self.queues[row] else self.previous[row] for row in need])
            codes = None if self.codes is None else torch.stack(
                [self.queues[row][-1].codes if self.queues[row] else self.codes[row] for row in need])
            unlocked = None if self.unlocked is None else torch.stack(
                [self.queues[row][-1].unlocked if self.queues[row] else self.unlocked[row] for row in need])
            shown = torch.stack([self.queues[row][-1].frame if self.queues[row] else self.frames[row] for row in need])
            out = self._advance(need, actions, positions, previous, codes, unlocked, shown)
            for j, row in enumerate(need):
                self.queues[row].append(
                    Speculated(actions[j], out["frames"][j], float(out["reward"][j]), float(out["termination_logit"][j]),
                               bool(out["terminated"][j]), out["committed"][j],
                               None if out["codes"] is None else out["codes"][j],
                               None if out["unlocked"] is None else out["unlocked"][j])
                )
            self.stats["speculated"] += len(need)

    def wait(self) -> None:
        """Block until background speculation is done (re-raising its error, if any)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            try:
                pending.result()
            except BaseException as err:
                raise RuntimeError("background speculation failed") from err

    def close(self) -> None:
        """Finish background speculation and stop its worker thread (stepping after this starts a new one)."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._row_pool is not None:
                self._row_pool.shutdown(wait=True)
                self._row_pool = None
