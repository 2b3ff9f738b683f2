"""Action embeddings for every action space the game layer provides.

The DiT conditions each frame on the action taken just before it. Actions arrive as tensors in the dataset's
storage format (`generator.data.action_array_spec`): Discrete -> int64 `()`, MultiDiscrete -> int64 `(k,)`,
Box -> float32 `shape`. MineRL dict actions reach us already flattened to MultiDiscrete by the VPT codec.
A learned "no action" embedding stands in where there is none (the first frame of an episode).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class ActionEmbedding(nn.Module):
    """Maps a batch of actions `(B, T, ...)` to `(B, T, dim)`; rows with `has_action=False` get a learned null."""

    def __init__(self, space: dict, dim: int):
        super().__init__()
        self.space = dict(space)
        kind = space["type"]
        self.kind = kind
        if kind == "Discrete":
            self.start = int(space.get("start", 0))
            self.table = nn.Embedding(int(space["n"]), dim)
        elif kind == "MultiDiscrete":
            nvec = [int(n) for n in space["nvec"]]
            starts = [int(s) for s in space.get("start") or [0] * len(nvec)]
            # One table over all components; offsets select each component's rows (sum of embeddings).
            self.register_buffer("offsets", torch.tensor([0] + nvec[:-1]).cumsum(0), persistent=False)
            self.register_buffer("starts", torch.tensor(starts), persistent=False)
            self.table = nn.Embedding(sum(nvec), dim)
        elif kind == "Box":
            size = math.prod(space["shape"])
            low = torch.tensor(space["low"], dtype=torch.float32).reshape(-1)
            high = torch.tensor(space["high"], dtype=torch.float32).reshape(-1)
            bounded = torch.isfinite(low) & torch.isfinite(high)
            center = torch.where(bounded, (low + high) / 2, torch.zeros_like(low))
            scale = torch.where(bounded, ((high - low) / 2).clamp_min(1e-6), torch.ones_like(low))
            self.register_buffer("center", center, persistent=False)
            self.register_buffer("scale", scale, persistent=False)
            self.proj = nn.Sequential(nn.Linear(size, dim), nn.SiLU(), nn.Linear(dim, dim))
        else:
            raise ValueError(f"no action embedding for action space type {kind!r}")
        self.null = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.null, std=0.02)

    def forward(self, actions: torch.Tensor, has_action: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "Discrete":
            emb = self.table((actions.long() - self.start).clamp_min(0))  # (B, T, D)
        elif self.kind == "MultiDiscrete":
            # Padding actions (zeros, masked by `has_action`) may lie below `start`: clamped to a valid row.
            rows = (actions.long() - self.starts).clamp_min(0) + self.offsets
            emb = self.table(rows).sum(-2)  # (B, T, k, D) -> (B, T, D)
        else:
            flat = actions.float().flatten(start_dim=2)  # (B, T, size)
            emb = self.proj((flat - self.center) / self.scale)
        if has_action is not None:
            emb = torch.where(has_action[..., None], emb, self.null.to(emb.dtype))
        return emb
