"""A KV cache that stays in the autograd graph, for training through cached rollouts (sCM targets, AAPT).

`KVCache` writes keys/values in place into preallocated tensors, which is right for inference but hides the
writes from autograd bookkeeping. `GradKVCache` keeps the same slots, ring indexing, masks and bookkeeping
(it is a `KVCache`), but every write builds new tensors out of place, so gradients flow from a later frame's
output into the parameters that produced the cached keys/values (AAPT Sec. 2.2: "gradients flow through the
KV cache"). The numbers are those of `KVCache`: only where the tensors live differs.
"""
from __future__ import annotations

import torch

from generator.kv_cache import KVCache
from generator.model import DiT


class GradKVCache(KVCache):
    """`KVCache` with out-of-place writes (differentiable), `detach_()` to cut the graph, and padding-aware commit."""

    @classmethod
    def for_model(cls, dit: DiT, batch_size: int, slots: int | None = None) -> "GradKVCache":
        """A cache for `dit` with `slots` frame slots (default `window_frames - 1`, as `DiT.new_cache`)."""
        param = dit.patch_embed.weight
        cfg = dit.config
        return cls(
            num_layers=cfg.depth,
            batch_size=batch_size,
            slots=slots or cfg.window_frames - 1,
            tokens_per_frame=cfg.tokens_per_frame,
            heads=cfg.heads,
            head_dim=cfg.head_dim,
            device=param.device,
            dtype=param.dtype,
        )

    def write(self, index: int, rows: torch.Tensor | None, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        rows = self._rows(rows)
        slots = positions % self.slots  # (R, T)
        keys, values = self.keys[index], self.values[index]
        for t in range(positions.shape[1]):
            hit = torch.nn.functional.one_hot(slots[:, t], self.slots).bool()[:, None, :, None, None]  # (R, 1, S, 1, 1)
            keys = keys.index_copy(0, rows, torch.where(hit, k[:, :, t, None], keys[rows]))  # (B, H, S, N, hd)
            values = values.index_copy(0, rows, torch.where(hit, v[:, :, t, None], values[rows]))
        self.keys[index], self.values[index] = keys, values

    def commit(self, rows: torch.Tensor | None, positions: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Mark frames at `positions` `(R, T)` as held; frames with `valid` False (padding) stay invisible."""
        super().commit(rows, positions)
        if valid is not None:
            rows = self._rows(rows)
            slots = positions % self.slots
            for t in range(positions.shape[1]):
                self.valid[rows, slots[:, t]] &= valid[:, t].to(self.device)

    def detach_(self) -> "GradKVCache":
        """Cut the graph behind the cached keys/values (segment boundaries of long rollouts)."""
        self.keys = [k.detach() for k in self.keys]
        self.values = [v.detach() for v in self.values]
        return self

    def detached(self) -> "GradKVCache":
        """A copy sharing the cached values but not their graph (constants for a JVP or a stop-grad target)."""
        copy = object.__new__(GradKVCache)
        copy.__dict__.update(self.__dict__)
        copy.keys = [k.detach() for k in self.keys]
        copy.values = [v.detach() for v in self.values]
        copy.positions, copy.valid = self.positions.clone(), self.valid.clone()
        return copy
