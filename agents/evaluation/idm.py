"""Inverse dynamics model (IDM): which action led from frame t to frame t+1?

A small CNN reads the two frames and their difference stacked on channels and predicts the action: logits over the
``n`` actions of a ``Discrete`` space, or one set of logits per component of a ``MultiDiscrete`` one. Trained on
real transitions ``(frames[i-1], frames[i]) -> actions[i]`` of an episode dataset (docs/data-format.md), it scores
how well a dream follows its actions: on dream frames driven by real actions, an IDM trained on real play should
recover those actions about as often as on the real frames (an IDM trained on real play, as VPT, Baker et al.
2022, uses one to label videos).

Saved as a checkpoint folder (`generator.checkpoint`): ``config.json`` (kind ``nextframe-idm``, action space, frame
size, widths, training metrics) + ``model.safetensors``; `load_idm(dir)` loads it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium
import torch
from torch import nn
from torch.nn import functional as F

from generator.checkpoint import (CheckpointError, checkpoint_folder, load_checkpoint, load_state_into,
                                  save_checkpoint)
from generator.data import EpisodeDataset
from generator.actions import action_components, space_from_json, space_to_json
from generator.pretrained import resolve_device
from generator.run import TrainingRun, lr_schedule

KIND = "nextframe-idm"


class InverseDynamics(nn.Module):
    """CNN over ``(frame_t, frame_t+1, frame_t+1 - frame_t)``: 4x4-kernel stride-2 conv blocks halve the frame per
    entry of ``widths``, then an MLP and one linear head per action component.

    ``forward(before, after)`` takes uint8 frames ``(B, H, W, 3)`` and returns a list of logits ``(B, n_k)``;
    `predict` returns actions in the space's own values (``start`` added back).
    """

    def __init__(self, action_space: gymnasium.Space, frame_size: tuple[int, int],
                 widths: tuple[int, ...] = (32, 64, 128, 128), hidden: int = 256):
        super().__init__()
        self.action_space = action_space
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.widths, self.hidden = tuple(int(w) for w in widths), int(hidden)
        if not isinstance(action_space, (gymnasium.spaces.Discrete, gymnasium.spaces.MultiDiscrete)):
            raise ValueError(f"the IDM predicts Discrete or MultiDiscrete actions, not {action_space}")
        self.sizes, self.starts = action_components(action_space)
        layers, channels = [], 9
        h, w = self.frame_size
        for width in self.widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.GroupNorm(min(8, width), width),
                       nn.SiLU()]
            channels, h, w = width, max(1, h // 2), max(1, w // 2)
        self.convs = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, self.hidden), nn.SiLU())
        self.heads = nn.ModuleList(nn.Linear(self.hidden, n) for n in self.sizes)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        a = before.permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        b = after.permute(0, 3, 1, 2).float() / 127.5 - 1
        x = self.convs(torch.cat([a, b, b - a], dim=1))  # (B, C, h, w)
        features = self.mlp(x)  # (B, hidden)
        return [head(features) for head in self.heads]

    def labels(self, actions: torch.Tensor) -> torch.Tensor:
        """Dataset actions ``(B,)`` or ``(B, k)`` -> class indices ``(B, k)`` (``start`` removed)."""
        actions = actions.long().reshape(actions.shape[0], -1)  # (B, k)
        return actions - torch.tensor(self.starts, device=actions.device)

    @torch.no_grad()
    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Most likely actions, shaped like the dataset's: ``(B,)`` for Discrete, ``(B, k)`` for MultiDiscrete."""
        classes = torch.stack([logits.argmax(-1) for logits in self(before, after)], dim=-1)  # (B, k)
        actions = classes + torch.tensor(self.starts, device=classes.device)
        return actions[:, 0] if isinstance(self.action_space, gymnasium.spaces.Discrete) else actions

    def config_dict(self) -> dict:
        return {"kind": KIND, "action_space": space_to_json(self.action_space), "frame_size": list(self.frame_size),
                "widths": list(self.widths), "hidden": self.hidden}


def idm_loss(idm: InverseDynamics, before, after, actions, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over components and masked rows, and per-row correctness ``(B, k)`` (bool)."""
    labels = idm.labels(actions)  # (B, k)
    logits = idm(before, after)
    losses = torch.stack([F.cross_entropy(l, labels[:, k], reduction="none") for k, l in enumerate(logits)], -1)
    correct = torch.stack([l.argmax(-1) == labels[:, k] for k, l in enumerate(logits)], -1)  # (B, k)
    weight = mask.float()[:, None]
    return (losses * weight).sum() / weight.sum().clamp_min(1) / len(logits), correct


def transitions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """From windows of 2 steps: ``(frames[0], frames[1], actions[1], mask)``; the mask drops padding and episode
    starts (``actions[0]`` of an episode is padding, not an action)."""
    mask = batch["valid"][:, 1] & ~batch["is_first"][:, 1]
    return batch["frames"][:, 0], batch["frames"][:, 1], batch["actions"][:, 1], mask


@torch.no_grad()
def evaluate_idm(idm: InverseDynamics, dataset: EpisodeDataset, windows: int = 512, batch_size: int = 256) -> dict:
    """Accuracy on ``windows`` evenly spaced 2-step windows of ``dataset``, beside the majority-class baseline.

    ``accuracy``: all components right; ``component_accuracy``: per component; ``majority_accuracy``: predicting
    each component's most frequent label in these same windows (what a frame-blind model could reach).
    """
    idm.eval()
    device = next(idm.parameters()).device
    total = len(dataset)
    count = min(windows, total)
    chosen = [int(i * total / count) for i in range(count)]  # evenly spaced, all of them when windows >= total
    correct, labels = [], []
    for start in range(0, len(chosen), batch_size):
        items = [dataset[i] for i in chosen[start : start + batch_size]]
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        before, after, actions, mask = transitions(batch)
        _, ok = idm_loss(idm, before.to(device), after.to(device), actions.to(device), mask.to(device))
        correct.append(ok[mask.to(device)].cpu())
        labels.append(idm.labels(actions)[mask])
    if not correct or sum(len(c) for c in correct) == 0:
        return {"transitions": 0, "accuracy": None, "component_accuracy": None, "majority_accuracy": None}
    ok, lab = torch.cat(correct), torch.cat(labels)  # (N, k)
    majority = [float((lab[:, k] == lab[:, k].mode().values).float().mean()) for k in range(lab.shape[1])]
    return {
        "transitions": int(len(ok)),
        "accuracy": float(ok.all(-1).float().mean()),
        "component_accuracy": ok.float().mean(0).tolist(),
        "majority_accuracy": majority[0] if len(majority) == 1 else majority,
    }


@dataclass
class IDMConfig:
    """Training an IDM on an episode dataset's train split; held-out accuracy on its val split."""

    data: str = "data/crafter"
    out: str = "runs/idm"  # run folder: train_state/ (resumable), model/ (the IDM; load_idm(out) finds it), tb/
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int | None = None  # linear warm-up, then cosine decay to 0; None: min(100, steps // 20), >= 1
    widths: tuple[int, ...] = (32, 64, 128, 128)  # conv widths, one stride-2 block each
    hidden: int = 256
    val_fraction: float = 0.1  # must match the split the world model was evaluated on (the default everywhere)
    eval_every: int = 500
    eval_windows: int = 512
    load_into_memory: bool = False
    device: str = "cpu"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    progress: bool = True
    stop_at: int = 0  # end this process at this step (resumable chunks); 0: run to `steps`
    max_minutes: float = 0.0  # end this process, saved, after this much wall time; 0: no limit


def train_idm(config: IDMConfig) -> dict:
    """Train (or resume), evaluate on the val split every ``eval_every`` steps and at the end, save `out/model/`.

    Returns `generator.run.TrainingRun.finish()`'s summary plus ``"val": evaluate_idm(...)`` and ``"history"``; the
    same dictionary goes into the model's ``config.json`` under ``training``.
    """
    torch.manual_seed(config.seed)
    train_set = EpisodeDataset(config.data, window=2, split="train", val_fraction=config.val_fraction,
                               load_into_memory=config.load_into_memory)
    val_set = EpisodeDataset(config.data, window=2, split="val", val_fraction=config.val_fraction,
                             load_into_memory=config.load_into_memory)
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    if len(train_set) == 0:
        raise ValueError(f"{config.data}: the train split has no transitions")
    device = resolve_device(config.device)
    idm = InverseDynamics(train_set.action_space, train_set.frame_size, config.widths, config.hidden).to(device)
    optimizer = torch.optim.AdamW(idm.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, min(100, config.steps // 20)) if config.warmup_steps is None else config.warmup_steps
    scheduler = lr_schedule(optimizer, config.steps, warmup, min_lr_ratio=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    settings = asdict(config)
    run = TrainingRun(config.out, name="idm", config=settings, steps=config.steps, stop_at=config.stop_at,
                      max_minutes=config.max_minutes, ckpt_every=config.ckpt_every, log_every=config.log_every,
                      progress=config.progress, modules={"model": idm}, optimizers={"optimizer": optimizer},
                      schedulers={"scheduler": scheduler}, generators={"data_generator": generator},
                      fixed=("widths", "hidden"))
    history = []
    with run:
        while run.running:
            idm.train()
            before, after, actions, mask = transitions(train_set.sample(config.batch_size, generator))
            loss, ok = idm_loss(idm, before.to(device), after.to(device), actions.to(device), mask.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            accuracy = float(ok[mask.to(device)].all(-1).float().mean()) if mask.any() else 0.0
            run.end_step({"loss": float(loss.detach()), "accuracy": accuracy, "lr": scheduler.get_last_lr()[0]})
            if config.eval_every and run.step % config.eval_every == 0 and run.running:
                val = evaluate_idm(idm, val_set, config.eval_windows)
                run.log({"accuracy": val["accuracy"] or 0.0}, "val")
                history.append({"step": run.step, "val_accuracy": val["accuracy"]})
        if not run.done:
            return run.finish(history=history)
        val = evaluate_idm(idm, val_set, config.eval_windows)
        run.log({"accuracy": val["accuracy"] or 0.0}, "val")
    recent = run.history[-config.log_every:]  # the last logging window of this process
    result = run.finish(val=val, history=history,
                        train_loss=sum(m["loss"] for m in recent) / max(1, len(recent)),
                        train_accuracy=sum(m["accuracy"] for m in recent) / max(1, len(recent)))
    save_checkpoint(Path(config.out) / "model", config={**idm.config_dict(), "training": result},
                    tensors={"model": idm.state_dict()})
    return result


def load_idm(directory: str | Path, device: str | torch.device = "cpu") -> InverseDynamics:
    """Load an IDM saved by `train_idm`: its run folder or the `model/` in it (checksums and shapes verified)."""
    directory = checkpoint_folder(directory)
    config, tensors = load_checkpoint(directory)
    if config.get("kind") != KIND:
        raise CheckpointError(f"{directory}: config.json is not a nextframe IDM (kind={config.get('kind')!r})")
    try:
        idm = InverseDynamics(space_from_json(config["action_space"]), tuple(config["frame_size"]),
                              tuple(config["widths"]), int(config["hidden"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}: invalid config.json: {error}") from error
    load_state_into(idm, tensors["model"], what=f"{directory}/model.safetensors")
    idm.training_report = config.get("training", {})
    return idm.to(device).eval()

