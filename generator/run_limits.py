"""When a training run should end early, saved: a wall-clock budget, or SIGINT / SIGTERM (Ctrl-C, a scheduler's kill).

A short GPU lease or a shared machine ends runs from outside; a run that only checkpoints every `ckpt_every` steps
would then keep nothing since its last checkpoint. The loop asks `StopRequest` after every step and, when it answers,
saves and returns; rerunning the same command resumes.
"""
from __future__ import annotations

import signal
import threading
import time

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager around a training loop; calling it returns why the loop should stop now, or None.

    `max_minutes > 0` ends the run after that much wall time from entering. SIGINT and SIGTERM are caught while
    inside (main thread only; the previous handlers come back on exit): the first asks the loop to stop after the
    current step, a second SIGINT raises `KeyboardInterrupt` at once. Under `torch.distributed` every rank gets
    the same answer (the stop flags are max-reduced), so ranks never disagree on the last step.
    """

    def __init__(self, max_minutes: float = 0.0):
        if max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {max_minutes}")
        self.max_minutes = max_minutes
        self.reason: str | None = None
        self._started = time.monotonic()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        self._started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, unsaved
        self.reason = f"signal {signal.Signals(signum).name}"

    def __call__(self) -> str | None:
        """The reason to stop after the current step ("signal SIGTERM", "time limit of 30 min"), or None."""
        if self.reason is None and self.max_minutes > 0 and time.monotonic() - self._started >= 60 * self.max_minutes:
            self.reason = f"time limit of {self.max_minutes:g} min"
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(self.reason is not None)])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.reason is None:
                self.reason = "another rank stopped"
        return self.reason
