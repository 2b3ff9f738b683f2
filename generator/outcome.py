"""Reward and termination read off the frames: a small network over the tile codes of one transition.

In a grid game what an agent is paid for is drawn on the screen. In Crafter every +-0.1 reward is the health tile
changing, an achievement (+1) is a new item in the inventory or a new tile in front of the player, and a death is
the health tile going blank. The DiT's own outcome head reads features trained to predict the *next* frame; taught
alone on a finished model it finds deaths but not which way health moved (docs/results.md, "Rewards and deaths"),
and teaching it with the network costs the frames. `OutcomeModel` instead reads the transition the agent is shown:
the codes of the previous frame and of the new one (as the dream shows them: snapped, `codec.indices`) and the
action between them, and gives reward-class logits and a termination logit.

- Each tile position is one token: embeddings of its code before and after, whether it changed, and its place.
  An action token and a summary token join them; a small pre-norm transformer (`torch.nn.TransformerEncoder`)
  mixes them and the summary token gives `1 + R` logits: R reward classes over `reward_values`, then termination.
- In the dream (`generator.sampler.advance_rows` with `outcome=`) it replaces the DiT's outcome head, so the reward an
  agent is handed is the one the frames it sees show, and rewards cost the frames nothing.
- Trained on real transitions of episode datasets with `train_outcome` (the shared `generator.run.TrainingRun`).
  Transitions with a nonzero reward or a termination are drawn with share `event_fraction` and weighted back by
  their natural frequency, so the rare classes are seen often and the probabilities stay calibrated (the dream
  samples from them).
- Achievements pay once per episode (Crafter: +1 the first time each of its 22 counters rises, whatever the frames
  show later). That is not a function of two frames, so a model trained on recorded achievement counters
  (`OutcomeConfig.events`: their names; the dataset's ``achievements`` array) also reads *which* counter the
  transition raised (an event class: none, or one of them), and its reward classes learn the rest of the reward (the
  health change). The dream keeps each row's unlocked set (`pay_once`): an event pays `unlock_reward` only where its
  achievement is not unlocked yet in that row's episode, as the game does, so an agent cannot farm one achievement.
- A model is tied to its codec: it holds the codebook it was trained on, and `WorldModel.from_pretrained` refuses
  an outcome model whose codebook differs from the world model's. Attached to a world model with
  `nextframe export-model --outcome <run>/model` (saved as ``outcome.safetensors`` beside the DiT).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from generator.actions import ActionEmbedding
from generator.checkpoint import (CheckpointError, checkpoint_folder, load_checkpoint, load_state_into,
                                  read_checkpoint_config, save_checkpoint)
from generator.metrics import SHIFTS, SLEEP_MOTION_CLASSES, motion_shift, precision_recall

KIND = "nextframe-outcome"


@dataclass
class OutcomeConfig:
    """The outcome network's shape; `codes` and `grid` come from the tile codec, `action_space` from the data."""

    codes: int  # codebook size of the tile codec
    grid: tuple[int, int]  # tile rows and columns of a frame
    action_space: dict = field(default_factory=lambda: {"type": "Discrete", "n": 17, "start": 0})
    reward_values: tuple[float, ...] = (-0.1, 0.0, 0.1, 1.0)  # reward classes (a reward's class: the nearest value)
    dim: int = 64
    depth: int = 2
    heads: int = 4
    # achievement counters whose rises the model reads (names, the dataset's order); () : no event head, every
    # reward is read off the frames alone
    events: tuple[str, ...] = ()
    unlock_reward: float = 1.0  # what the game pays the first time an achievement is unlocked in an episode
    # what the event class reads: "transition" (the frame before, the action and the frame after) or "action" (the
    # frame before and the action only: what the game would do in the state the agent acted in, so a dream frame
    # that draws an item from nowhere pays nothing; docs/results.md, "Achievements that pay once")
    event_input: str = "transition"
    # view-motion classes (`generator.metrics.SHIFTS`: 5 in Crafter; 0: no motion head): how the view will move
    # under the action, read off the frame before and the action alone, as the game decides it (a move into grass
    # walks, into a tree or water or while asleep it does not). A motion-conditioned DiT (`DiTConfig.motion_classes`)
    # is told a motion drawn from it before each frame is generated (`generator.sampler.draw_motion`).
    # `generator.metrics.SLEEP_MOTION_CLASSES` (10): each shift into an awake or a sleeping view (falling asleep
    # needs the sleep action and energy below its maximum, waking a full energy count or damage: all on the frame).
    motion_classes: int = 0

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        self.reward_values = tuple(float(v) for v in self.reward_values)
        self.events = tuple(str(e) for e in self.events)
        self.unlock_reward = float(self.unlock_reward)
        if len(set(self.events)) != len(self.events):
            raise ValueError(f"events must be distinct achievement names, got {self.events}")
        if self.event_input not in ("transition", "action"):
            raise ValueError(f"event_input must be 'transition' or 'action', got {self.event_input!r}")
        if self.motion_classes not in (0, len(SHIFTS), SLEEP_MOTION_CLASSES):
            raise ValueError(f"motion_classes must be 0 (no motion head), {len(SHIFTS)} (the view shifts) or "
                             f"{SLEEP_MOTION_CLASSES} (shifts into an awake or a sleeping view), got "
                             f"{self.motion_classes}")
        if self.codes < 1 or min(self.grid) < 1:
            raise ValueError(f"an outcome model needs codes >= 1 and a grid of at least 1x1, got codes={self.codes}, "
                             f"grid={self.grid}")
        if len(self.reward_values) < 2 or list(self.reward_values) != sorted(set(self.reward_values)):
            raise ValueError(f"reward_values must be at least two increasing values, got {self.reward_values}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["grid"], data["reward_values"] = list(self.grid), list(self.reward_values)
        data["events"] = list(self.events)
        return data


class OutcomeLogits(NamedTuple):
    reward_logits: torch.Tensor  # (B, R); with an event head: the reward besides achievements (health)
    termination_logit: torch.Tensor  # (B,)
    event_logits: torch.Tensor | None = None  # (B, 1 + E): no counter rose, or counter e - 1 rose
    motion_logits: torch.Tensor | None = None  # (B, M): how the view moves under the action (a motion head)


class OutcomeModel(nn.Module):
    """`forward(before, after, actions, has_action)`: codes `(B, N)` of two consecutive frames, the action `(B, ...)`
    that led from one to the other -> `OutcomeLogits`. `reward(logits)` is the expected reward."""

    def __init__(self, config: OutcomeConfig, codebook: torch.Tensor):
        super().__init__()
        if codebook.shape[0] != config.codes:
            raise ValueError(f"codebook has {codebook.shape[0]} codes, the config says {config.codes}")
        self.config = config
        d = config.dim
        self.register_buffer("codebook", codebook.detach().clone().float())  # ties the model to its codec
        self.register_buffer("reward_values", torch.tensor(config.reward_values, dtype=torch.float32))
        self.code_embed = nn.Embedding(config.codes, d)
        self.changed_embed = nn.Embedding(2, d)
        self.pair = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.place = nn.Parameter(torch.randn(config.tokens, d) * 0.02)
        self.action_embed = ActionEmbedding(config.action_space, d)
        self.summary = nn.Parameter(torch.randn(d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.motion_offset + config.motion_classes)

    @property
    def motion_offset(self) -> int:
        """Where the motion logits start in the head's output: after the rewards, termination and events."""
        return len(self.config.reward_values) + 1 + (len(self.config.events) + 1 if self.config.events else 0)

    def forward(self, before: torch.Tensor, after: torch.Tensor, actions: torch.Tensor,
                has_action: torch.Tensor | None = None, action_reading: torch.Tensor | None = None) -> OutcomeLogits:
        """`action_reading`: `read_action(before, actions, has_action)` where the caller already has it (the dream
        reads it before the frame is generated, to draw the motion), so it is not computed twice."""
        n = self.config.tokens
        if before.shape != after.shape or before.shape[-1] != n:
            raise ValueError(f"codes before {tuple(before.shape)} and after {tuple(after.shape)} must both be "
                             f"(B, {n}): one code per tile of the {self.config.grid} grid")
        before, after = before.long(), after.long()
        r, b = len(self.config.reward_values), before.shape[0]
        m = self.motion_offset
        reads_action = self.config.events and self.config.event_input == "action"
        if not (reads_action or self.config.motion_classes):
            logits = action_reading = self._logits(before, after, actions, has_action)  # (B, R + 1 [+ 1 + E])
        elif action_reading is not None:
            logits = self._logits(before, after, actions, has_action)
        else:
            # the same network shown no change reads what the action would do; both readings in one batched pass
            twice = None if has_action is None else torch.cat([has_action, has_action])
            both = self._logits(torch.cat([before, before]), torch.cat([after, before]), torch.cat([actions, actions]),
                                twice)
            logits, action_reading = both[:b], both[b:]
        events = None
        if self.config.events:
            events = (action_reading if reads_action else logits)[:, r + 1:m]
        motion = action_reading[:, m:] if self.config.motion_classes else None
        return OutcomeLogits(logits[:, :r], logits[:, r], events, motion)

    def read_action(self, before: torch.Tensor, actions: torch.Tensor,
                    has_action: torch.Tensor | None = None) -> torch.Tensor:
        """The network's whole output `(B, K)` shown the frames `before` `(B, N)` with no change: what the action
        would do there (the event class of `event_input="action"`, the motion head)."""
        before = before.long()
        return self._logits(before, before, actions, has_action)

    def motion_logits(self, before: torch.Tensor, actions: torch.Tensor,
                      has_action: torch.Tensor | None = None, action_reading: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """How the view will move `(B, M)` (logits over `generator.metrics.SHIFTS`) under `actions` from the frames
        whose codes are `before` `(B, N)`: the frame shown before the next one is generated (from `action_reading`,
        `read_action`'s output, where the caller has it)."""
        if not self.config.motion_classes:
            raise ValueError("this outcome model has no motion head (OutcomeConfig.motion_classes 0); train one with "
                             "`nextframe train-outcome --motion`")
        if action_reading is None:
            action_reading = self.read_action(before, actions, has_action)
        return action_reading[:, self.motion_offset:]

    def _logits(self, before, after, actions, has_action):
        tiles = self.pair(torch.cat([self.code_embed(before), self.code_embed(after)], dim=-1))
        tiles = tiles + self.changed_embed((before != after).long()) + self.place  # (B, N, D)
        b = tiles.shape[0]
        if has_action is None:
            has_action = torch.ones(b, dtype=torch.bool, device=tiles.device)
        action = self.action_embed(actions[:, None], has_action[:, None])  # (B, 1, D)
        x = torch.cat([self.summary.expand(b, 1, -1), action.to(tiles.dtype), tiles], dim=1)
        return self.head(self.norm(self.encoder(x)[:, 0])).float()

    def reward(self, logits: OutcomeLogits) -> torch.Tensor:
        """Expected reward `(B,)` of the class probabilities (with an event head: of `pay_once`'s paid classes)."""
        return logits.reward_logits.softmax(-1) @ self.reward_values

    def pay_once(self, logits: OutcomeLogits, unlocked: torch.Tensor | None) -> OutcomeLogits:
        """What the game pays for this transition given each row's unlocked achievements `(B, E)` bool (None: none
        unlocked yet): the reward classes with P(a new unlock) moved to the class of `unlock_reward`, so the expected
        reward and the event figures of reward-class logits hold. Models without an event head pass through."""
        if logits.event_logits is None:
            return logits
        new = unlock_probability(logits.event_logits, unlocked)  # (B,)
        probs = logits.reward_logits.float().softmax(-1) * (1 - new)[:, None]
        index = int((self.reward_values - self.config.unlock_reward).abs().argmin())
        probs[:, index] += new
        return logits._replace(reward_logits=probs.clamp_min(1e-12).log())

    def classes(self, rewards: torch.Tensor) -> torch.Tensor:
        """Class of each reward (`generator.train.reward_classes`: the nearest of `reward_values`)."""
        from generator.train import reward_classes

        return reward_classes(rewards.float(), self.reward_values)

    def config_dict(self) -> dict:
        return {"kind": KIND, "outcome": self.config.to_dict()}


def unlock_probability(event_logits: torch.Tensor, unlocked: torch.Tensor | None) -> torch.Tensor:
    """P(the transition unlocks an achievement not yet unlocked) `(B,)` of event logits `(B, 1 + E)` and the
    unlocked set `(B, E)` bool (None: nothing unlocked)."""
    probs = event_logits.float().softmax(-1)[:, 1:]
    if unlocked is not None:
        probs = probs * (~unlocked.bool()).float()
    return probs.sum(-1)


def draw_classes(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Each row's class `(B,)` of logits `(B, K)` by the inverse CDF of one uniform per row `(B,)` (an event class:
    0 none, e counter e - 1 rose; a motion class: an index into `generator.metrics.SHIFTS`)."""
    cumulative = logits.double().softmax(-1).cpu().cumsum(-1)
    return torch.searchsorted(cumulative, uniforms.double().cpu()[:, None]).squeeze(-1).clamp_max(
        cumulative.shape[-1] - 1)


def event_labels(counts: torch.Tensor, rewards: torch.Tensor, unlock_reward: float) -> dict[str, torch.Tensor]:
    """Labels of the `L` transitions of an episode from its cumulative achievement counters `(L + 1, E)` and rewards
    `(L + 1,)`: ``event`` `(L,)` (0: no counter rose, else 1 + the first that did), ``unlocked`` `(L, E)` (unlocked
    before the transition), ``new`` `(L,)` (it unlocked one) and ``rest`` `(L,)` (its reward less `unlock_reward`
    for a new unlock: the health change, in Crafter)."""
    counts = counts.long()
    rose = counts[1:] > counts[:-1]  # (L, E)
    event = torch.where(rose.any(-1), rose.float().argmax(-1) + 1, torch.zeros_like(rose[:, 0], dtype=torch.long))
    unlocked = counts[:-1] > 0
    new = ((counts[1:] > 0) & ~unlocked).any(-1)
    return {"event": event, "unlocked": unlocked, "new": new,
            "rest": rewards[1:].float() - unlock_reward * new.float()}


def event_probabilities(reward_logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P(reward > 0) and P(reward > 0.5) (an achievement) `(...)` of reward-class logits `(..., K)` over `values`
    `(K,)`: the events the evaluations count."""
    probs = reward_logits.float().softmax(-1)
    values = values.to(probs.device)
    return probs[..., values > 0].sum(-1), probs[..., values > 0.5].sum(-1)


def read_outcomes(outcome: OutcomeModel, codec, before: torch.Tensor, after: torch.Tensor, actions: torch.Tensor,
                  has_action: torch.Tensor | None = None) -> OutcomeLogits:
    """`outcome` on latents `(B, C, h, w)` of two consecutive frames as the dream shows them (`codec.indices`)."""
    return outcome(codec.indices(before.float()), codec.indices(after.float()), actions, has_action)


def save_outcome(model: OutcomeModel, directory: str | Path, training: dict | None = None) -> Path:
    return save_checkpoint(directory, config={**model.config_dict(), "training": training or {}},
                           tensors={"outcome": {k: v.detach().cpu() for k, v in model.state_dict().items()}})


def outcome_from_state(config: dict, state: dict[str, torch.Tensor], where: str) -> OutcomeModel:
    """An `OutcomeModel` from its config dict and state (what `save_outcome` and `WorldModel` store)."""
    try:
        model = OutcomeModel(OutcomeConfig(**config), state["codebook"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: invalid outcome model config or state: {error}") from error
    load_state_into(model, state, what=where)
    return model.eval()


def load_outcome(directory: str | Path, device: str | torch.device = "cpu") -> OutcomeModel:
    """Load an outcome model saved by `train_outcome`: its run folder or the `model/` in it (checksums verified)."""
    directory = checkpoint_folder(directory)
    config, tensors = load_checkpoint(directory)
    if config.get("kind") != KIND or "outcome" not in tensors:
        raise CheckpointError(f"{directory}: not a nextframe outcome model (kind={config.get('kind')!r}); train one "
                              "with `nextframe train-outcome`")
    model = outcome_from_state(config["outcome"], tensors["outcome"], f"{directory}/outcome.safetensors")
    model.training_report = config.get("training", {})
    return model.to(device)


# ----------------------------------------------------------------------------------------------------------------
# Data: every transition of an episode dataset as codes


@dataclass
class Transitions:
    """Real transitions as codes: `before`/`after` `(M, N)` int16, `actions` `(M, ...)`, `rewards` `(M,)`,
    `terminated` `(M,)` bool; from datasets that record achievement counters (`achievements`: their names) also
    `event_labels`' ``event`` `(M,)`, ``unlocked`` `(M, E)` and ``rest`` `(M,)`."""

    before: torch.Tensor
    after: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    event: torch.Tensor | None = None
    unlocked: torch.Tensor | None = None
    rest: torch.Tensor | None = None
    achievements: tuple[str, ...] = ()
    motion: torch.Tensor | None = None  # (M,) long: the real motion class (`motion_labels`), -1 unclear

    def __len__(self) -> int:
        return len(self.rewards)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"before": self.before[index].long(), "after": self.after[index].long(), "actions": self.actions[index],
               "rewards": self.rewards[index], "terminated": self.terminated[index]}
        if self.event is not None:
            out.update(event=self.event[index], unlocked=self.unlocked[index], rest=self.rest[index])
        if self.motion is not None:
            out["motion"] = self.motion[index]
        return out

    def events(self) -> torch.Tensor:
        """`(M,)` bool: transitions with a nonzero reward, a termination or (where recorded) an achievement event."""
        flags = (self.rewards != 0) | self.terminated
        return flags if self.event is None else flags | (self.event > 0)


@torch.no_grad()
def dataset_transitions(codec, data: str | Path | list, split: str, val_fraction: float = 0.1,
                        chunk: int = 512, progress: bool = False, events: bool = True,
                        unlock_reward: float = 1.0, motion: bool = False, sleep: bool = False) -> Transitions:
    """Every transition (not an episode's first step) of `data`'s `split`, its frames encoded as the dream would
    show them (`codec.encode`, then `codec.indices`). With `events` and datasets that all record the same
    achievement counters, also their event labels (`event_labels`). With `motion`, also the view shift of each
    transition (`generator.metrics.motion_labels` in the codec's view geometry, with `sleep` also whether the frame
    after shows the sleeping view; -1 where it cannot be read)."""
    from tqdm.auto import tqdm

    from generator.data import open_datasets

    dataset = open_datasets(data, split=split, val_fraction=val_fraction)
    names = tuple(getattr(dataset, "achievements", [])) if events else ()
    from generator.codec import motion_geometry
    from generator.metrics import motion_labels

    classes = SLEEP_MOTION_CLASSES if sleep else len(SHIFTS)

    keys = ("before", "after", "actions", "rewards", "terminated") + (("motion",) if motion else ()) + (
        ("event", "unlocked", "rest") if names else ())
    parts = {key: [] for key in keys}
    lengths = dataset.episode_lengths
    for k in tqdm(range(dataset.num_episodes), disable=not progress, desc=f"encoding {split} transitions"):
        episode = dataset.read_steps(k, 0, lengths[k] + 1)
        codes = torch.cat([codec.indices(codec.encode(episode["frames"][i:i + chunk].to(codec.device))).cpu()
                           for i in range(0, len(episode["frames"]), chunk)])  # (L + 1, N)
        keep = ~episode["is_first"][1:]
        if motion:
            shifts = motion_labels(episode["frames"][None], classes=classes, **motion_geometry(codec.config))[0, 1:]
            parts["motion"].append(torch.where(shifts == classes, -1, shifts)[keep])
        parts["before"].append(codes[:-1][keep].to(torch.int16))
        parts["after"].append(codes[1:][keep].to(torch.int16))
        parts["actions"].append(episode["actions"][1:][keep])
        parts["rewards"].append(episode["rewards"][1:][keep].float())
        parts["terminated"].append(episode["terminated"][1:][keep].bool())
        if names:
            labels = event_labels(episode["achievements"], episode["rewards"], unlock_reward)
            for key in ("event", "unlocked", "rest"):
                parts[key].append(labels[key][keep])
    if not parts["rewards"]:
        raise ValueError(f"{data}: the {split} split has no episodes")
    return Transitions(**{key: torch.cat(value) for key, value in parts.items()}, achievements=names)


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class OutcomeTrainConfig:
    """`nextframe train-outcome`: an outcome model for a tile world model, trained on real transitions."""

    world: str  # world-model folder whose tile codec the outcome model reads (e.g. world_env/assets/crafter)
    data: str  # episode dataset folder(s), comma-separated; the train split teaches, the val split is reported
    out: str = "runs/outcome"  # run folder: train_state/ (resumable), model/ (load_outcome / export-model --outcome)
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    event_fraction: float = 0.25  # share of each batch drawn from transitions with a reward or a termination
    dim: int = 64
    depth: int = 2
    heads: int = 4
    # read which achievement counter each transition raised, where the data records them (docs/data-format.md):
    # the dream then pays each achievement once per episode, as the game does (`OutcomeModel.pay_once`)
    events: bool = True
    event_input: str = "transition"  # OutcomeConfig.event_input: "transition" or "action"
    # a motion head (`OutcomeConfig.motion_classes`), trained on the view shifts of the real frames: what a
    # motion-conditioned world model draws each frame's motion from
    motion: bool = False
    # the motion head's classes also say whether the frame after shows the sleeping view (needs `motion`; for a DiT
    # with `generator.metrics.SLEEP_MOTION_CLASSES` motion classes)
    sleep: bool = False
    # start from a trained outcome model (its run folder, or a world-model folder that holds one) of the same shape
    # instead of random weights; a shift-only motion head is widened to `sleep`'s classes (`widen_outcome_state`)
    init: str | None = None
    val_fraction: float = 0.1
    eval_every: int = 1000
    device: str = "cpu"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    progress: bool = True
    stop_at: int = 0  # end this process at this step (resumable chunks); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time; 0: no limit

    def __post_init__(self):
        if not 0.0 <= self.event_fraction < 1.0:
            raise ValueError(f"event_fraction must be in [0, 1), got {self.event_fraction}")
        if self.sleep and not self.motion:
            raise ValueError("sleep adds the sleeping view to the motion head's classes: give motion too (--motion)")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")


def draw_transitions(events: torch.Tensor, batch_size: int, event_fraction: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `(B,)` with a share `event_fraction` of event transitions (all alike when there are none), and the
    importance weights `(B,)` that give every transition its natural weight (mean 1 over the data)."""
    m = len(events)
    share = float(events.float().mean())
    if share == 0 or event_fraction == 0:
        return torch.randint(m, (batch_size,), generator=generator), torch.ones(batch_size)
    probability = torch.where(events, event_fraction / share, (1 - event_fraction) / (1 - share)) / m
    index = torch.multinomial(probability, batch_size, replacement=True, generator=generator)
    return index, (1.0 / (m * probability[index])).float()


def outcome_loss(model: OutcomeModel, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Weighted cross-entropies of the reward classes (with an event head: of the reward besides a new unlock),
    the termination and the event class."""
    logits = model(batch["before"], batch["after"], batch["actions"])
    if logits.event_logits is not None and "event" not in batch:
        raise ValueError("an outcome model with an event head trains on data with achievement counters")
    target = batch["rewards"] if logits.event_logits is None else batch["rest"]
    terms = {"reward": F.cross_entropy(logits.reward_logits, model.classes(target), reduction="none"),
             "termination": F.binary_cross_entropy_with_logits(logits.termination_logit, batch["terminated"].float(),
                                                               reduction="none")}
    if logits.event_logits is not None:
        terms["event"] = F.cross_entropy(logits.event_logits, batch["event"].long(), reduction="none")
    if logits.motion_logits is not None:
        # unclear shifts (a uniform field) teach nothing: ignore_index gives them a zero term
        terms["motion"] = F.cross_entropy(logits.motion_logits, batch["motion"].long(), ignore_index=-1,
                                          reduction="none")
    loss = (sum(terms.values()) * weights).sum() / weights.sum()
    with torch.no_grad():
        parts = {key: float((term * weights).sum() / weights.sum()) for key, term in terms.items()}
    return loss, parts


@torch.no_grad()
def evaluate_outcome(model: OutcomeModel, data: Transitions, batch_size: int = 2048) -> dict:
    """Precision/recall on `data`: positive rewards (P(reward > 0) > 0.5), achievements (P(reward > 0.5) > 0.5) and
    terminations (logit > 0); the same events `agents.evaluation.fidelity.outcomes_on_real` reports. A model with
    an event head is scored on what it pays given the episode's real unlocked set (`OutcomeModel.pay_once`), and
    also on the events themselves (``event``: a counter rose; ``event_class``: the share of real events whose
    counter it names)."""
    model.eval()
    device = model.codebook.device
    with_events = model.config.events and data.event is not None
    predicted = {"positive": [], "achievement": [], "termination": [], **({"event": []} if with_events else {})}
    named, motion = [], []
    for start in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in data.batch(torch.arange(start, min(start + batch_size, len(data)))).items()}
        logits = model(batch["before"], batch["after"], batch["actions"])
        if logits.motion_logits is not None and "motion" in batch:
            motion.append(torch.stack([batch["motion"], logits.motion_logits.argmax(-1)], -1).cpu())
        if with_events:
            event = logits.event_logits.argmax(-1)
            predicted["event"].append((event > 0).cpu())
            named.append((event == batch["event"])[batch["event"] > 0].cpu())
        logits = model.pay_once(logits, batch.get("unlocked"))
        positive, achievement = event_probabilities(logits.reward_logits, model.reward_values)
        predicted["positive"].append((positive > 0.5).cpu())
        predicted["achievement"].append((achievement > 0.5).cpu())
        predicted["termination"].append((logits.termination_logit > 0).cpu())
    real = {"positive": data.rewards > 0, "achievement": data.rewards > 0.5, "termination": data.terminated,
            **({"event": data.event > 0} if with_events else {})}
    report = {(key if key in ("termination", "event") else f"reward_{key}"):
              precision_recall(torch.cat(predicted[key]), real[key]) for key in predicted}
    if with_events:
        hits = torch.cat(named)
        report["event_class"] = float(hits.float().mean()) if len(hits) else None
    if motion:
        report["motion"] = motion_report(torch.cat(motion), model.config.motion_classes)
    return report


def motion_report(pairs: torch.Tensor, classes: int = len(SHIFTS)) -> dict:
    """How often the motion head's most likely class is the real one `(M, 2)` (real, predicted; real -1 unclear,
    not counted): its view shift, where the real view moved and where it stayed, as
    `generator.metrics.shift_agreement` counts; for `SLEEP_MOTION_CLASSES` heads also the sleeping view's
    precision / recall (``asleep``)."""
    counted = pairs[pairs[:, 0] >= 0]
    real, predicted = motion_shift(counted[:, 0], classes), motion_shift(counted[:, 1], classes)
    moved, stayed = real > 0, real == 0
    report = {"moved_steps": int(moved.sum()), "stayed_steps": int(stayed.sum()),
              "moved_agreement": float((predicted[moved] == real[moved]).float().mean()) if moved.any() else None,
              "stayed_agreement": float((predicted[stayed] == 0).float().mean()) if stayed.any() else None}
    if classes == SLEEP_MOTION_CLASSES:
        report["asleep"] = precision_recall(counted[:, 1] >= len(SHIFTS), counted[:, 0] >= len(SHIFTS))
    return report


def widen_outcome_state(state: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
    """An outcome model's state with a `len(SHIFTS)`-class motion head (its logits from `offset` in the head) made one
    of `SLEEP_MOTION_CLASSES`: each shift's row copied to the shift into an awake and into a sleeping view, so the
    widened head starts as the source's (a fine-tune then tells sleep apart)."""
    index = torch.cat([torch.arange(offset), offset + motion_shift(torch.arange(SLEEP_MOTION_CLASSES),
                                                                  SLEEP_MOTION_CLASSES)])
    return {**state, "head.weight": state["head.weight"][index].clone(), "head.bias": state["head.bias"][index].clone()}


def initial_outcome_state(path: str | Path, model: OutcomeModel) -> dict[str, torch.Tensor]:
    """The state a fine-tune of `model` starts from: the outcome model at `path` (an outcome run or model folder, or
    a world-model folder that holds one), which must have `model`'s shape except for a shift-only motion head where
    `model`'s also says sleep (widened, `widen_outcome_state`)."""
    from generator.pretrained import KIND as WORLD_KIND, WorldModel

    if read_checkpoint_config(checkpoint_folder(path)).get("kind") == WORLD_KIND:
        source = WorldModel.from_pretrained(path).outcome
        if source is None:
            raise ValueError(f"--init {path}: this world model holds no outcome model; pass an outcome run folder")
    else:
        source = load_outcome(path)
    theirs, ours = source.config.to_dict(), model.config.to_dict()
    differ = {key: (theirs.get(key), ours[key]) for key in ours if theirs.get(key) != ours[key]}
    state = {k: v.cpu() for k, v in source.state_dict().items()}
    if differ.get("motion_classes") == (len(SHIFTS), SLEEP_MOTION_CLASSES):
        del differ["motion_classes"]
        state = widen_outcome_state(state, model.motion_offset)
    if differ:
        raise ValueError(f"--init {path}: its outcome model differs from the one this run builds (init, run): "
                         f"{differ}; give the same --dim, --depth, --heads, --event-input and --world")
    return state


def train_outcome(config: OutcomeTrainConfig) -> dict:
    """Train (or resume) an outcome model for `config.world`'s tile codec; save `out/model/` (at the end of every
    process, also one stopped early by `stop_at` or `max_minutes`). Returns the run's summary with ``val``
    (`evaluate_outcome` on the val split), also stored in the model's config.json."""
    from generator.codec import TileCodec
    from generator.pretrained import WorldModel, resolve_device
    from generator.run import TrainingRun, lr_schedule

    device = resolve_device(config.device)
    world = WorldModel.from_pretrained(config.world, device=device)
    if not isinstance(world.codec, TileCodec):
        raise ValueError(f"{config.world} uses a {world.codec.config.kind!r} codec; the outcome model reads tile "
                         "codes (a world model trained with the tiles codec)")
    codec = world.codec
    torch.manual_seed(config.seed)
    train_set = dataset_transitions(codec, config.data, "train", config.val_fraction, progress=config.progress,
                                    events=config.events, motion=config.motion, sleep=config.sleep)
    val_set = dataset_transitions(codec, config.data, "val", config.val_fraction, progress=config.progress,
                                  events=config.events, motion=config.motion, sleep=config.sleep)
    if train_set.achievements != val_set.achievements:
        raise ValueError(f"{config.data}: the train and val splits record different achievement counters")
    outcome_config = OutcomeConfig(
        codes=codec.config.codes, grid=tuple(codec.config.tile_grid), action_space=world.dit.config.action_space,
        reward_values=tuple(world.dit.config.reward_values) or OutcomeConfig.reward_values, dim=config.dim,
        depth=config.depth, heads=config.heads, events=train_set.achievements, event_input=config.event_input,
        motion_classes=(SLEEP_MOTION_CLASSES if config.sleep else len(SHIFTS)) if config.motion else 0,
    )
    model = OutcomeModel(outcome_config, codec.codebook.cpu())
    if config.init:
        model.load_state_dict(initial_outcome_state(config.init, model))
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = lr_schedule(optimizer, config.steps, max(1, min(100, config.steps // 20)), min_lr_ratio=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    events = train_set.events()
    run = TrainingRun(config.out, name="outcome", config=asdict(config), steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules={"model": model}, optimizers={"optimizer": optimizer},
                      schedulers={"scheduler": scheduler}, generators={"data_generator": generator},
                      fixed=("dim", "depth", "heads", "world", "events", "event_input", "motion", "sleep", "init"))
    history = []
    with run:
        while run.running:
            model.train()
            index, weights = draw_transitions(events, config.batch_size, config.event_fraction, generator)
            batch = {k: v.to(device) for k, v in train_set.batch(index).items()}
            loss, parts = outcome_loss(model, batch, weights.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            run.end_step({"loss": float(loss.detach()), **parts, "lr": scheduler.get_last_lr()[0]})
            if config.eval_every and run.step % config.eval_every == 0 and run.running:
                val = evaluate_outcome(model, val_set)
                scalars = {f"{key}_{rate}": val[key][rate] or 0.0 for key in val
                           if isinstance(val[key], dict) and "precision" in val[key] for rate in ("precision", "recall")}
                if "motion" in val:
                    scalars.update({f"motion_{kind}": val["motion"][f"{kind}_agreement"] or 0.0
                                    for kind in ("moved", "stayed")})
                    scalars.update({f"motion_asleep_{rate}": val["motion"]["asleep"][rate] or 0.0
                                    for rate in ("precision", "recall") if "asleep" in val["motion"]})
                run.log(scalars, "val")
                history.append({"step": run.step, **scalars})
    # Every process ends with the model as it stands (a chunk of a longer run, `stop_at`, saves one too: the RL loop
    # uses it between chunks), evaluated on the val split.
    val = evaluate_outcome(model, val_set)
    summary = {"transitions": {"train": len(train_set), "val": len(val_set)},
               "train_events": int(events.sum())}
    result = run.finish(val=val, history=history, **summary)
    save_outcome(model, Path(config.out) / "model", training={**result, "config": asdict(config)})
    return result


def attach_outcome(world, outcome: OutcomeModel, where: str = "outcome model") -> None:
    """Give `world` (a `WorldModel`) this outcome model, after checking it reads the world's codec and actions."""
    codebook = getattr(world.codec, "codebook", None)
    if codebook is None:
        raise CheckpointError(f"{where} reads tile codes; this world model has a {world.codec.config.kind!r} codec")
    if tuple(outcome.codebook.shape) != tuple(codebook.shape) or not torch.equal(outcome.codebook.cpu(),
                                                                                  codebook.float().cpu()):
        raise CheckpointError(f"{where} was trained on another codebook ({tuple(outcome.codebook.shape)}) than this "
                              f"world model's codec ({tuple(codebook.shape)}); train it with --world set to this model")
    if outcome.config.action_space != world.dit.config.action_space:
        raise CheckpointError(f"{where} takes actions in {outcome.config.action_space}, the world model in "
                              f"{world.dit.config.action_space}")
    wants = world.dit.config.motion_classes
    if wants and outcome.config.motion_classes != wants:
        raise CheckpointError(f"{where} has {outcome.config.motion_classes} motion classes, and this world model is "
                              f"conditioned on {wants}: the dream draws each frame's view motion from the outcome "
                              "model; train one with `nextframe train-outcome --motion`"
                              + (" --sleep" if wants == SLEEP_MOTION_CLASSES else ""))
    world.outcome = outcome.to(world.device).eval()

