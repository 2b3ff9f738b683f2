"""Action spaces in one place: their JSON form, their storage format, the one range check, and the embeddings.

The Discrete / MultiDiscrete / Box switch lives here and nowhere else: `space_to_json` / `space_from_json` (metadata
and checkpoints), `action_array_spec` (how a dataset stores one step's action), `first_outside` (the range check
the env, the dataset writer and the prompt bank share), `action_components` (per-component sizes, for
classifiers such as the IDM) and `ActionEmbedding` (the DiT's action input).

The DiT conditions each frame on the action taken just before it. Actions arrive as tensors in the dataset's
storage format (`generator.data.action_array_spec`): Discrete -> int64 `()`, MultiDiscrete -> int64 `(k,)`,
Box -> float32 `shape`. MineRL dict actions reach us already flattened to MultiDiscrete by the VPT codec.
A learned "no action" embedding stands in where there is none (the first frame of an episode).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import gymnasium
import numpy as np
import torch
from torch import nn


def space_to_json(space: gymnasium.Space) -> dict:
    """A JSON-ready description of a Discrete, MultiDiscrete or Box action space (`space_from_json` inverts it).

    Box bounds are stored as full nested lists; infinite bounds become ``Infinity`` (Python's json reads it back).
    """
    if isinstance(space, gymnasium.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": np.asarray(space.nvec).tolist(),
            "start": np.asarray(space.start).tolist(),
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, gymnasium.spaces.Box):
        return {
            "type": "Box",
            "shape": [int(s) for s in space.shape],
            "low": np.asarray(space.low, dtype=np.float64).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).tolist(),
            "dtype": np.dtype(space.dtype).name,
        }
    raise ValueError(
        f"unsupported action space {space!r}: only Discrete, MultiDiscrete and Box can be stored "
        "(flatten Dict/Tuple actions first, e.g. with the VPT action codec)"
    )


def space_from_json(description: Mapping[str, Any]) -> gymnasium.Space:
    """Rebuild the space described by `space_to_json`; raises ``ValueError`` for an unknown or malformed entry."""
    try:
        kind = description["type"]
        if kind == "Discrete":
            return gymnasium.spaces.Discrete(int(description["n"]), start=int(description.get("start", 0)))
        if kind == "MultiDiscrete":
            nvec = np.asarray(description["nvec"], dtype=np.int64)
            start = description.get("start")
            return gymnasium.spaces.MultiDiscrete(
                nvec, dtype=description.get("dtype", "int64"), start=None if start is None else np.asarray(start)
            )
        if kind == "Box":
            dtype = np.dtype(description.get("dtype", "float32"))
            shape = tuple(int(s) for s in description["shape"])
            low = np.asarray(description["low"], dtype=np.float64).astype(dtype)
            high = np.asarray(description["high"], dtype=np.float64).astype(dtype)
            return gymnasium.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed action space description {dict(description)!r}: {error}") from None
    raise ValueError(f"unsupported action space type {kind!r}; expected Discrete, MultiDiscrete or Box")


def action_array_spec(space: gymnasium.Space) -> tuple[tuple[int, ...], np.dtype]:
    """Per-step shape and dtype of stored actions: Discrete -> ``((), int64)``, MultiDiscrete -> ``((k,), int64)``,
    Box -> ``(shape, float32)``."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return (), np.dtype(np.int64)
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return tuple(int(s) for s in space.shape), np.dtype(np.int64)
    if isinstance(space, gymnasium.spaces.Box):
        return tuple(int(s) for s in space.shape), np.dtype(np.float32)
    raise ValueError(f"unsupported action space {space!r}: only Discrete, MultiDiscrete and Box can be stored")


def space_range(space: gymnasium.Space) -> str:
    """`" ([low, high])"` for a Discrete space (what error messages print after it), else `""`."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return f" ([{int(space.start)}, {int(space.start) + int(space.n) - 1}])"
    return ""


def first_outside(space: gymnasium.Space, actions: np.ndarray) -> int | None:
    """Index of the first row of `actions` `(N, *space.shape)` outside `space` (non-finite Box values count as
    outside), or None when every row is inside."""
    actions = np.asarray(actions)
    if actions.shape[0] == 0:
        return None
    if isinstance(space, gymnasium.spaces.Discrete):
        outside = (actions < int(space.start)) | (actions > int(space.start) + int(space.n) - 1)
    elif isinstance(space, gymnasium.spaces.MultiDiscrete):
        low = np.asarray(space.start, dtype=np.int64)
        outside = (actions < low) | (actions > low + np.asarray(space.nvec, dtype=np.int64) - 1)
    elif isinstance(space, gymnasium.spaces.Box):
        values = actions.astype(np.float64)
        outside = ~np.isfinite(values) | (values < np.asarray(space.low, dtype=np.float64)) | (
            values > np.asarray(space.high, dtype=np.float64))
    else:
        raise ValueError(f"unsupported action space {space!r}: only Discrete, MultiDiscrete and Box")
    bad = np.flatnonzero(outside.reshape(len(actions), -1).any(axis=1))
    return int(bad[0]) if bad.size else None


def action_components(space: gymnasium.Space) -> tuple[list[int], list[int]]:
    """``(sizes, starts)`` per action component: Discrete -> one, 1-D MultiDiscrete -> one per entry."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return [int(space.n)], [int(space.start)]
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise ValueError(f"expected a 1-D MultiDiscrete space, got shape {space.nvec.shape}")
        return [int(n) for n in space.nvec], [int(s) for s in np.broadcast_to(space.start, space.nvec.shape)]
    raise ValueError(f"expected Discrete or MultiDiscrete actions, not {space}")




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
