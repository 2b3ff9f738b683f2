"""Pieces the few-step trainers share (`generator.distill`, `generator.posttrain`): the per-frame discriminator over a
DiT backbone, the outcome loss of the context pass, and the input-recycling and one-frame-row helpers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from generator.model import DiT, DiTOutput
from generator.pretrained import WorldModel


class FrameDiscriminator(nn.Module):
    """A DiT backbone scored per frame: heads on the mean-pooled tokens of chosen blocks, logits summed.

    `features(...)` runs the backbone (same arguments as `DiT.forward`, KV cache included) and returns one `(B, T, D)`
    pooled feature per chosen block, captured by forward hooks; `logits(features)` gives `(B, T)`. Whether the
    backbone trains is the caller's choice (frozen teacher in distillation, trained copy in AAPT post-training).
    """

    def __init__(self, backbone: DiT, blocks: Sequence[int] | None = None):
        super().__init__()
        depth, dim = backbone.config.depth, backbone.config.dim
        self.block_indices = sorted(set(range(depth) if blocks is None else blocks))
        if not self.block_indices or not all(0 <= i < depth for i in self.block_indices):
            raise ValueError(f"discriminator blocks {blocks} must be indices in [0, {depth})")
        self.backbone = backbone
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
            for _ in self.block_indices
        )

    def features(self, latents, levels, actions, positions, **dit_kwargs) -> list[torch.Tensor]:
        captured: list[torch.Tensor] = []

        def keep(module, args, output):
            captured.append(output.mean(dim=2))  # (B, T, N, D) -> (B, T, D)

        handles = [self.backbone.blocks[i].register_forward_hook(keep) for i in self.block_indices]
        try:
            self.backbone(latents, levels, actions, positions, **dit_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(head(f).squeeze(-1).float() for head, f in zip(self.heads, features))  # (B, T)

    def forward(self, latents, levels, actions, positions, **dit_kwargs) -> torch.Tensor:
        return self.logits(self.features(latents, levels, actions, positions, **dit_kwargs))


def parse_blocks(spec: str, depth: int) -> list[int] | None:
    """`"all"` -> None (every block); `"1,3"` -> [1, 3]; negative indices count from the end."""
    if spec.strip().lower() in ("", "all"):
        return None
    return sorted({int(i) % depth for i in spec.split(",")})


def outcome_loss(out: DiTOutput, batch: dict[str, torch.Tensor], valid: torch.Tensor, has_action: torch.Tensor):
    """Reward MSE + termination BCE on the transitions into valid frames (as the teacher's training)."""
    device = out.reward.device
    transition = (valid & has_action).float()
    count = transition.sum().clamp_min(1)
    reward = (((out.reward - batch["rewards"].to(device).float()) ** 2) * transition).sum() / count
    termination = F.binary_cross_entropy_with_logits(
        out.termination_logit, batch["terminated"].to(device).float(), reduction="none"
    )
    return reward + (termination * transition).sum() / count


def recycles(dit: DiT) -> bool:
    """Whether the DiT reads each frame's previous frame (input recycling, `DiTConfig.previous_frame_input`)."""
    return dit.config.previous_frame_input


def recycled_input(dit: DiT, previous: torch.Tensor) -> dict:
    """`{"previous": previous}` for DiTs with input recycling, `{}` otherwise (keyword arguments of `DiT.forward`)."""
    return {"previous": previous} if recycles(dit) else {}


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`(B, T, ...)` -> `(B*T, 1, ...)`: every frame becomes its own one-frame row."""
    return rearrange(x, "b t ... -> (b t) 1 ...")


def load_two_pass_model(path, device) -> WorldModel:
    """The `WorldModel` a few-step trainer starts from; refuses one-pass models (`sampling.commit_pass=False`): these
    trainers present context as the commit pass caches it, so they would train the student on other inputs."""
    world = WorldModel.from_pretrained(path, device=device)
    if not world.sampling.commit_pass:
        raise ValueError(f"{path} is a one-pass model (sampling.commit_pass=False); this trainer presents context as "
                         "the commit pass caches it, so it would train the student on other inputs")
    return world

