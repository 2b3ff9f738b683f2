"""KV cache of past frames with per-row frame positions and a bounded sliding window.

Every batch row ("environment") owns `slots` frame slots per layer, used as a ring indexed by frame position
(`slot = position % slots`). Each slot records the frame position it holds and whether it is valid, so rows can
sit at different time steps, restart independently (`reset_rows`) and drop speculative frames (`truncate`).
Memory is fixed at construction: a rollout of any length never allocates more.

Slots = window_frames - 1 (the past frames a query may see) + speculation_depth (speculated frames kept so a
rejected speculation can roll back without losing the frames the window still needs). `scratch` extra frame slots
after the ring hold the keys/values of the frames being computed, so attention over "cache + new frames" reads one
preallocated buffer in place instead of concatenating a copy of the whole cache in every layer of every pass.
"""
from __future__ import annotations

import torch


class KVCache:
    """Preallocated keys/values `(B, heads, slots, tokens, head_dim)` per layer, plus slot bookkeeping."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        slots: int,
        tokens_per_frame: int,
        heads: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        scratch: int = 0,
    ):
        if slots < 1:
            raise ValueError(f"a KV cache needs at least one slot, got {slots}")
        shape = (batch_size, heads, slots + scratch, tokens_per_frame, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.positions = torch.full((batch_size, slots), -1, dtype=torch.long, device=device)  # (B, S)
        self.valid = torch.zeros((batch_size, slots), dtype=torch.bool, device=device)  # (B, S)
        self.batch_size, self.slots, self.tokens_per_frame = batch_size, slots, tokens_per_frame
        self.scratch = scratch

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values, self.positions, self.valid]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return torch.arange(self.batch_size, device=self.device)
        return rows.to(self.device)

    def layer(self, index: int, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer as `(R, heads, slots * tokens, head_dim)`."""
        k, v = self.keys[index][:, :, : self.slots], self.values[index][:, :, : self.slots]
        if rows is not None:
            k, v = k[rows], v[rows]
        return k.flatten(2, 3), v.flatten(2, 3)

    def with_new_frames(self, index: int, rows: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor):
        """Keys and values of the cache followed by `k`, `v` `(R, heads, T * tokens, head_dim)` of T new frames.

        With all rows (`rows` None) and T <= `scratch`, the new frames are copied into the scratch slots and the
        result is a view of the buffer; otherwise the cached keys are concatenated with the new ones (a copy).
        """
        t = k.shape[2] // self.tokens_per_frame
        if rows is None and t <= self.scratch:
            end = self.slots + t
            buffer_k, buffer_v = self.keys[index], self.values[index]
            buffer_k[:, :, self.slots : end] = k.unflatten(2, (t, self.tokens_per_frame)).to(buffer_k.dtype)
            buffer_v[:, :, self.slots : end] = v.unflatten(2, (t, self.tokens_per_frame)).to(buffer_v.dtype)
            return buffer_k[:, :, :end].flatten(2, 3).to(k.dtype), buffer_v[:, :, :end].flatten(2, 3).to(v.dtype)
        cached_k, cached_v = self.layer(index, rows)
        return torch.cat([cached_k.to(k.dtype), k], dim=2), torch.cat([cached_v.to(v.dtype), v], dim=2)

    def _rows_only(self, rows: torch.Tensor | slice, count: int) -> "KVCache":
        """A cache object over ``count`` of this one's rows: a copy for an index tensor, views for a slice."""
        view = object.__new__(KVCache)
        view.keys = [k[rows] for k in self.keys]
        view.values = [v[rows] for v in self.values]
        view.positions, view.valid = self.positions[rows], self.valid[rows]
        view.batch_size, view.slots, view.tokens_per_frame = count, self.slots, self.tokens_per_frame
        view.scratch = self.scratch
        return view

    def shard(self, start: int, stop: int) -> "KVCache":
        """Rows ``start .. stop - 1`` as a cache of their own whose tensors are views of this one's (no copy):
        reading and writing the shard reads and writes these rows here, so disjoint shards can be advanced at the
        same time (`world_env.dream`'s row workers)."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"shard rows {start}..{stop - 1} are not within the cache's {self.batch_size} rows")
        return self._rows_only(slice(start, stop), stop - start)

    def gather(self, rows: torch.Tensor) -> "KVCache":
        """A read-only copy holding only `rows` (in that order): gather once, attend to it many times."""
        return self._rows_only(rows, len(rows))

    def resized(self, slots: int) -> "KVCache":
        """A new cache of `slots` ring slots holding each row's latest frames (those within `slots` positions of the
        row's latest valid frame; older ones are dropped), at the same positions. Used to add or remove the
        speculation slots; copies the cache once."""
        first = self.keys[0]
        new = KVCache(len(self.keys), self.batch_size, slots, self.tokens_per_frame, first.shape[1], first.shape[-1],
                      device=first.device, dtype=first.dtype, scratch=self.scratch)
        keep = self.valid & (self.positions > self.latest_position()[:, None] - slots)  # (B, S_old)
        rows, old_slots = keep.nonzero(as_tuple=True)
        new_slots = self.positions[rows, old_slots] % slots  # distinct per row: the kept positions span < slots
        for index in range(len(self.keys)):
            new.keys[index][rows, :, new_slots] = self.keys[index][rows, :, old_slots]
            new.values[index][rows, :, new_slots] = self.values[index][rows, :, old_slots]
        new.positions[rows, new_slots] = self.positions[rows, old_slots]
        new.valid[rows, new_slots] = True
        return new

    def slot_state(self, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame position and validity of every slot, `(R, slots)` each."""
        if rows is None:
            return self.positions, self.valid
        return self.positions[rows], self.valid[rows]

    def write(self, index: int, rows: torch.Tensor | None, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store one layer's keys/values `(R, heads, T, tokens, head_dim)` of frames at `positions` `(R, T)`."""
        rows = self._rows(rows)
        slots = positions % self.slots  # (R, T)
        for t in range(positions.shape[1]):
            self.keys[index][rows, :, slots[:, t]] = k[:, :, t]
            self.values[index][rows, :, slots[:, t]] = v[:, :, t]

    def commit(self, rows: torch.Tensor | None, positions: torch.Tensor) -> None:
        """Mark frames at `positions` `(R, T)` as held, after every layer was written."""
        rows = self._rows(rows)
        slots = positions % self.slots
        for t in range(positions.shape[1]):
            self.positions[rows, slots[:, t]] = positions[:, t]
            self.valid[rows, slots[:, t]] = True

    def reset_rows(self, rows: torch.Tensor | None = None) -> None:
        """Forget everything held by `rows` (all rows when None)."""
        rows = self._rows(rows)
        self.valid[rows] = False
        self.positions[rows] = -1

    def truncate(self, rows: torch.Tensor, last_position: torch.Tensor) -> None:
        """Drop frames after `last_position` `(R,)` in `rows` (rolls back rejected speculation)."""
        rows = self._rows(rows)
        stale = self.positions[rows] > last_position.to(self.device)[:, None]  # (R, S)
        self.valid[rows] = self.valid[rows] & ~stale

    def latest_position(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Largest valid frame position per row, -1 where the row holds nothing, `(R,)`."""
        positions, valid = self.slot_state(rows)
        return torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=1)
