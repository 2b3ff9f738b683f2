"""When speculating pays: the online decision behind `speculation="auto"`.

Speculation (see `world_env.dream`) generates each row's next frames before its action is known, assuming the
action repeats. Synchronous speculation can never save time: every step still runs a pass (the fresh rows', or the
queue top-up), and each rejection adds the frames it threw away. What can pay is *asynchronous* speculation, which
moves that work into the time the caller spends between steps (choosing actions) so that a step only waits for the
rows whose guess was wrong. Whether it pays depends on things only the running loop shows: how long the caller
thinks, whether that thinking competes for the same processors, how often actions repeat, and how the cost of a
pass grows with its rows (nearly linearly on a CPU, nearly flat on a GPU at small batches).

`SpeculationController` measures those online and decides step by step:

- **off** (the start): it records, per step, the loop period (step start to the next step start, the caller's
  time included), the caller's time between steps, the cost per row of the fresh pass and the fraction of rows
  whose action repeated (once queues are full this is exactly the acceptance rate, so it is known without
  speculating). From them it computes an optimistic bound on the async gain (pass cost linear in rows through
  the origin, background work fully hidden in the caller's time). Below `try_gain` it never tries: in a loop with
  no think time, or with rarely repeated actions, speculation stays out of the way at no cost.
- **probe**: where the bound says it might pay, it speculates for `probe_steps` steps and measures the loop
  period; it keeps speculating only if that beats the plain period by `keep_margin`. Otherwise it goes back off
  and waits twice as long as last time before trying again (so a regime where the bound is loose costs a
  vanishing fraction of the steps).
- **on**: it re-checks the plain period after `recheck_steps` steps (also doubling while speculation keeps
  winning), and switches off at once when the bound, updated every step, drops below 1.

The controller only reads a clock and the numbers the dream hands it; it never touches the model, so it is tested
alone with a fake clock.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass


@dataclass
class ControllerSettings:
    samples: int = 8  # steps measured in a state before it is judged
    probe_steps: int = 12  # steps a probe speculates (after `depth` steps that fill the queues)
    try_gain: float = 1.10  # optimistic gain needed to try speculating
    keep_margin: float = 0.05  # speculation stays on only if its period is this much below plain stepping's
    first_wait: int = 32  # steps before the first retry after a failed probe; doubles on every failure
    max_wait: int = 4096
    recheck_steps: int = 256  # steps of winning speculation before plain stepping is measured again; doubles


class SpeculationController:
    """Online decision whether `num_envs` rows speculating `depth` frames ahead in the background pay off."""

    def __init__(self, num_envs: int, depth: int, settings: ControllerSettings | None = None):
        self.num_envs, self.depth = num_envs, depth
        self.settings = settings or ControllerSettings()
        n = self.settings.samples * 4
        self.state = "off"
        self.step_index = 0
        self.periods = {"off": deque(maxlen=n), "on": deque(maxlen=n)}
        self.idle = deque(maxlen=n)  # caller's time between steps
        self.row_cost = deque(maxlen=n)  # seconds per row of plain fresh passes
        self.repeats = deque(maxlen=n)  # fraction of rows whose action repeated
        self.state_steps = 0  # steps taken in the current state
        self.next_try = 0  # first step at which off may try speculating again
        self.wait = self.settings.first_wait
        self.recheck = self.settings.recheck_steps
        self.on_period: float | None = None  # speculation's period in its last on-phase
        self.off_period: float | None = None  # plain stepping's period when last judged
        self.switches = 0
        self._last_start: float | None = None
        self._last_end: float | None = None
        self._last_state = "off"

    @property
    def speculating(self) -> bool:
        return self.state in ("probe", "on")

    # -- measurements --------------------------------------------------------------------------------------

    def step_started(self, now: float, repeat_fraction: float) -> bool:
        """Record a step's start (and the period and think time before it); returns whether this step speculates."""
        if self._last_start is not None:
            period = now - self._last_start
            # A probe's first `depth` steps fill the queues and do not show its steady state.
            warm = self._last_state == "off" or self.state_steps > self.depth
            if warm:
                self.periods["off" if self._last_state == "off" else "on"].append(period)
            if self._last_end is not None:
                self.idle.append(max(0.0, now - self._last_end))
        self.repeats.append(repeat_fraction)
        self._last_start = now
        self._decide()
        self._last_state = "off" if self.state == "off" else "on"
        self.state_steps += 1
        self.step_index += 1
        return self.speculating

    def fresh_pass(self, rows: int, seconds: float) -> None:
        """Record the generation of `rows` fresh frames that took `seconds` (plain stepping's cost)."""
        if rows and self.state == "off":
            self.row_cost.append(seconds / rows)

    def step_ended(self, now: float) -> None:
        self._last_end = now

    # -- the decision --------------------------------------------------------------------------------------

    def bound(self) -> float | None:
        """Optimistic gain of async speculation over plain stepping from the current measurements (None: too few).

        With per-row cost `c`, B rows, acceptance `a` and think time `I`: plain stepping's period is `I + c B`;
        speculating, a step waits for the `(1 - a) B` rejected rows, and the background refills every queue
        (`B` frames, plus `depth - 1` more for each rejected row) hidden in `I` at best.
        """
        if len(self.row_cost) < self.settings.samples or len(self.idle) < self.settings.samples:
            return None
        cost = statistics.median(self.row_cost) * self.num_envs
        think = statistics.median(self.idle)
        accept = statistics.fmean(self.repeats)
        rejected = (1 - accept) * cost
        background = cost + (self.depth - 1) * rejected
        return (think + cost) / max(max(think, background) + rejected, 1e-12)

    def _switch(self, state: str) -> None:
        if self.speculating != (state in ("probe", "on")):
            self.switches += 1
        self.state, self.state_steps = state, 0
        if state != "off":
            self.periods["on"].clear()
        else:
            self.periods["off"].clear()

    def _decide(self) -> None:
        s = self.settings
        bound = self.bound()
        if self.state == "off":
            if len(self.periods["off"]) < s.samples or self.step_index < self.next_try or bound is None:
                return
            self.off_period = statistics.median(self.periods["off"])
            if self.on_period is not None and self.on_period < (1 - s.keep_margin) * self.off_period and bound >= 1:
                self.recheck = min(2 * self.recheck, s.max_wait)  # still winning: check less often
                self._switch("on")
            elif self.on_period is None and bound >= s.try_gain:
                self._switch("probe")
            else:
                self.on_period = None
                self.next_try = self.step_index + self.wait
                self.wait = min(2 * self.wait, s.max_wait)
        elif self.state == "probe":
            if len(self.periods["on"]) < s.probe_steps:
                return
            period = statistics.median(self.periods["on"])
            if period < (1 - s.keep_margin) * self.off_period:
                self.on_period = period
                self.wait = s.first_wait
                self._switch("on")
            else:
                self.next_try = self.step_index + self.wait
                self.wait = min(2 * self.wait, s.max_wait)
                self._switch("off")
        else:  # on
            if bound is not None and bound < 1.0:
                self.on_period = None
                self.next_try = self.step_index + self.wait
                self._switch("off")
            elif self.state_steps >= self.recheck and len(self.periods["on"]) >= s.samples:
                self.on_period = statistics.median(self.periods["on"])
                self.next_try = self.step_index  # judge as soon as plain stepping is measured again
                self._switch("off")

    def summary(self) -> dict:
        return {"state": self.state, "switches": self.switches, "bound": self.bound(),
                "off_period_s": self.off_period, "on_period_s": self.on_period}
