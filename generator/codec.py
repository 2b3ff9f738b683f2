"""Per-frame codecs: uint8 frames <-> normalised float latents the DiT diffuses over.

Frames are coded one at a time (no temporal compression, as in NFD). Every codec honours one interface::

    codec.latent_shape                         # (C, h, w)
    codec.encode(frames uint8 (..., H, W, 3))  # -> (..., C, h, w) float, normalised by latent_mean/latent_std
    codec.decode(latents (..., C, h, w))       # -> (..., 3, H, W) float in [-1, 1]

`PixelCodec` is the identity on frames scaled to [-1, 1]; `KLAutoencoder` is a small convolutional VAE
(Rombach et al. 2022, "LDM", sec. 3.1: KL-regularised autoencoder with a weak KL term) trained by
`generator.train_codec`; `TileCodec` crops a grid game's tile area and snaps every tile to its nearest entry of a
nearest-neighbour codebook built from real frames (`build_tile_codebook`; TWM's NNT tokenizer, arXiv 2502.01591),
so every coded frame, and every generated frame after `snap`, is made of real tiles. All are saved as checkpoint
folders (`save_codec` / `load_codec`).

`codec.snap(latents)` maps latents to the nearest latents the codec can represent exactly: the identity for the
pixel and KL codecs, nearest-tile replacement for the tile codec. The sampler applies it to every generated frame
before it is shown and cached.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from generator.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from generator.metrics import psnr_from_mse

CODEC_KINDS = ("pixels", "kl", "tiles")


# ----------------------------------------------------------------------------------------------------------
# Frame <-> float conversion


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got dtype {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (..., H, W, 3), got {tuple(frames.shape)}")
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def motion_geometry(config: "CodecConfig") -> dict:
    """`generator.metrics.view_shift`'s geometry keywords (tile, view, player) for a tile codec's frames."""
    player = None if min(config.motion_player) < 0 else tuple(config.motion_player)
    return {"tile": config.tile_size, "view": tuple(config.motion_view), "player": player}


def float_to_frames(images: torch.Tensor) -> torch.Tensor:
    """float ``(..., 3, H, W)`` in [-1, 1] -> uint8 ``(..., H, W, 3)`` (clamped and rounded)."""
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images shaped (..., 3, H, W), got {tuple(images.shape)}")
    pixels = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).movedim(-3, -1)


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class CodecConfig:
    """What a codec is; everything `build_codec` needs. Defaults give the 64x64 KL codec, latents (4, 16, 16).

    For ``kind="pixels"`` only `frame_size` matters: latents are the frames themselves, (3, H, W).
    """

    kind: str = "kl"  # "pixels" | "kl"
    frame_size: tuple[int, int] = (64, 64)  # (H, W)
    latent_channels: int = 4
    downsample: int = 4  # spatial factor H/h; one stride-2 stage per factor of 2
    channels: tuple[int, ...] = (32, 64, 64)  # widths at each resolution, full -> latent; len = log2(downsample)+1
    res_blocks: int = 1  # ResNet blocks per resolution (the decoder gets one more)
    norm_groups: int = 8
    kl_weight: float = 1e-4  # on the per-element mean KL; recon is a per-pixel mean too
    recon_loss: str = "l1"  # "l1" | "l2" | "l1+l2"
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    # kind="tiles": the tile area starts at pixel `tile_offset` (top, left) and holds `tile_grid` (rows, cols) tiles
    # of `tile_size` pixels (Crafter at 64x64: 7-px tiles, 9x9 grid at offset 0; its last row/column are black).
    # `codes` is the codebook's size and `tile_threshold` the squared-L2 distance (pixels in [0, 1], summed over a
    # tile) beyond which a tile became a new code when the codebook was built.
    tile_size: int = 7
    tile_offset: tuple[int, int] = (0, 0)
    tile_grid: tuple[int, int] = (9, 9)
    codes: int = 0
    tile_threshold: float = 0.75
    fill_value: int = 0  # uint8 value of the pixels outside the tile area
    # True: the codec also holds `places` (rows * cols, codes), which codes real frames show at each tile position
    # (Crafter: the player only at the centre, inventory glyphs only in the inventory rows), and snapping and the
    # codebook head keep every tile to the codes of its place (`learn_tile_places`).
    tile_places: bool = False
    # The scrolling world view within the tile grid, for the view-motion labels of motion-conditioned models
    # (`generator.metrics.motion_labels`): its (rows, cols) from the top-left tile and the tile the player stays in,
    # left out of the match ((-1, -1): none). The defaults are Crafter's: a 9x7 view over 2 inventory rows.
    motion_view: tuple[int, int] = (7, 9)
    motion_player: tuple[int, int] = (3, 4)

    def __post_init__(self) -> None:
        self.frame_size = tuple(int(s) for s in self.frame_size)
        self.channels = tuple(int(c) for c in self.channels)
        self.logvar_clamp = tuple(float(v) for v in self.logvar_clamp)
        self.tile_offset = tuple(int(v) for v in self.tile_offset)
        self.tile_grid = tuple(int(v) for v in self.tile_grid)
        self.motion_view = tuple(int(v) for v in self.motion_view)
        self.motion_player = tuple(int(v) for v in self.motion_player)
        if self.kind not in CODEC_KINDS:
            raise ValueError(f"codec kind must be one of {CODEC_KINDS}, got {self.kind!r}")
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ValueError(f"frame_size must be (H, W), got {self.frame_size}")
        if self.kind == "pixels":
            return
        if self.kind == "tiles":
            (top, left), (rows, cols), size = self.tile_offset, self.tile_grid, self.tile_size
            if size < 1 or rows < 1 or cols < 1 or top < 0 or left < 0:
                raise ValueError(f"tile codec needs tile_size, tile_grid >= 1 and tile_offset >= 0, got size {size}, "
                                 f"grid {self.tile_grid}, offset {self.tile_offset}")
            if top + rows * size > self.frame_size[0] or left + cols * size > self.frame_size[1]:
                raise ValueError(f"a {rows}x{cols} grid of {size}-px tiles at offset {self.tile_offset} does not fit "
                                 f"{self.frame_size} frames; use tile_grid <= "
                                 f"{((self.frame_size[0] - top) // size, (self.frame_size[1] - left) // size)}")
            if self.codes < 1:
                raise ValueError(f"tile codec needs codes >= 1 (the codebook size), got {self.codes}; build the "
                                 "codebook with generator.codec.build_tile_codebook / scripts/build_codebook.py")
            return
        stages = int(math.log2(self.downsample)) if self.downsample >= 1 else -1
        if stages < 0 or 2**stages != self.downsample:
            raise ValueError(f"downsample must be a power of 2, got {self.downsample}")
        if any(s % self.downsample for s in self.frame_size):
            raise ValueError(f"frame_size {self.frame_size} is not divisible by downsample {self.downsample}")
        if len(self.channels) != stages + 1:
            raise ValueError(f"channels needs log2(downsample) + 1 = {stages + 1} widths for downsample "
                             f"{self.downsample}, got {self.channels}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"channel widths {bad} are not divisible by norm_groups={self.norm_groups}")
        if self.recon_loss not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"recon_loss must be 'l1', 'l2' or 'l1+l2', got {self.recon_loss!r}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        height, width = self.frame_size
        if self.kind == "pixels":
            return (3, height, width)
        if self.kind == "tiles":
            return (3, self.tile_grid[0] * self.tile_size, self.tile_grid[1] * self.tile_size)
        return (self.latent_channels, height // self.downsample, width // self.downsample)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "CodecConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CodecConfig fields {unknown} (known: {sorted(known)})")
        return cls(**data)


# ----------------------------------------------------------------------------------------------------------
# Shared interface


class Codec(nn.Module):
    """Base of every codec: shape handling and latent normalisation around `_encode` / `_decode`.

    Subclasses implement ``_encode(x (N, 3, H, W) in [-1, 1]) -> raw latents (N, C, h, w)`` and
    ``_decode(raw latents) -> (N, 3, H, W)`` (unclamped). The public `encode` / `decode` accept any leading
    dims, e.g. ``(B, T, ...)``, and apply ``(raw - latent_mean) / latent_std`` per channel.
    """

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        channels = config.latent_shape[0]
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.config.frame_size

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        expected = (*self.frame_size, 3)
        if frames.dtype != torch.uint8 or frames.ndim < 3 or tuple(frames.shape[-3:]) != expected:
            raise ValueError(f"encode expects uint8 frames shaped (..., {expected[0]}, {expected[1]}, 3), "
                             f"got {frames.dtype} {tuple(frames.shape)}")
        return frames

    def snap(self, latents: torch.Tensor) -> torch.Tensor:
        """The nearest latents this codec represents exactly; the identity unless the codec is discrete."""
        return latents

    def normalize(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return (raw_latents - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def encode_raw(self, frames: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents ``(..., C, h, w)`` of uint8 frames ``(..., H, W, 3)``."""
        frames = self._check_frames(frames)
        lead = frames.shape[:-3]
        images = frames_to_float(frames.to(self.device)).reshape(-1, 3, *self.frame_size)  # (N, 3, H, W)
        raw = self._encode(images)  # (N, C, h, w)
        return raw.reshape(*lead, *raw.shape[1:])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(..., H, W, 3)`` -> normalised latents ``(..., C, h, w)`` float32."""
        return self.normalize(self.encode_raw(frames))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(..., C, h, w)`` -> images ``(..., 3, H, W)`` float in [-1, 1]."""
        if tuple(latents.shape[-3:]) != self.latent_shape:
            raise ValueError(f"decode expects latents shaped (..., {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        lead = latents.shape[:-3]
        raw = self.denormalize(latents.reshape(-1, *self.latent_shape))  # (N, C, h, w)
        images = self._decode(raw).clamp(-1.0, 1.0)  # (N, 3, H, W)
        return images.reshape(*lead, *images.shape[1:])

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Codec":
        codec = load_codec(directory, map_location=map_location)
        if not isinstance(codec, cls):
            raise CheckpointError(f"{directory}: holds a {type(codec).__name__}, not a {cls.__name__}")
        return codec


class PixelCodec(Codec):
    """The identity codec: latents are the frames in [-1, 1], shape (3, H, W). Nothing to train."""

    def __init__(self, config: CodecConfig | None = None):
        config = config or CodecConfig(kind="pixels")
        if config.kind != "pixels":
            raise ValueError(f"PixelCodec needs kind='pixels', got {config.kind!r}")
        super().__init__(config)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def _decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return raw_latents


# ----------------------------------------------------------------------------------------------------------
# Tile codec: a grid game's tiles, snapped to a nearest-neighbour codebook


def tiles_of(images: torch.Tensor, tile_size: int) -> torch.Tensor:
    """``(..., C, rows * s, cols * s)`` -> tiles ``(..., rows * cols, s * s * C)`` (row-major, (y, x, c) inside)."""
    return rearrange(images, "... c (gh p) (gw q) -> ... (gh gw) (p q c)", p=tile_size, q=tile_size)


def untile(tiles: torch.Tensor, tile_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `tiles_of`: ``(..., rows * cols, s * s * C)`` -> ``(..., C, rows * s, cols * s)``."""
    return rearrange(tiles, "... (gh gw) (p q c) -> ... c (gh p) (gw q)", gh=grid[0], gw=grid[1], p=tile_size,
                     q=tile_size)


def nearest_codes(tiles: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536, allowed: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code (squared L2) of every tile ``(..., D)`` in ``codebook`` ``(K, D)``, and the squared
    distance to it; ties go to the lowest index. Computed in chunks of tiles to bound memory. `allowed` ``(N, K)``
    bool: tiles come in frames of N (``tiles`` ``(..., N, D)``) and tile n only takes the codes ``allowed[n]``."""
    flat = tiles.reshape(-1, tiles.shape[-1]).float()
    code = codebook.float()
    code_sq = code.square().sum(-1)  # (K,)
    penalty = None
    if allowed is not None:
        n = allowed.shape[0]
        if tiles.dim() < 2 or tiles.shape[-2] != n:
            raise ValueError(f"allowed codes are given for {n} tile places, but tiles {tuple(tiles.shape)} do not come "
                             f"in frames of {n}")
        penalty = torch.zeros(allowed.shape, device=flat.device).masked_fill(~allowed.to(flat.device), float("inf"))
        chunk = max(n, chunk // n * n)  # whole frames per chunk
    indices, distances = [], []
    for part in flat.split(chunk):
        d = part.square().sum(-1, keepdim=True) - 2 * part @ code.T + code_sq  # (n, K)
        if penalty is not None:
            d = (d.view(-1, *penalty.shape) + penalty).view(d.shape)
        best, index = d.min(dim=-1)
        indices.append(index)
        distances.append(best.clamp_min(0))
    lead = tiles.shape[:-1]
    return torch.cat(indices).reshape(lead), torch.cat(distances).reshape(lead)


class TileCodec(Codec):
    """A grid game's tile area as latents ``(3, rows * s, cols * s)`` in [-1, 1], every tile one of ``codes``.

    `encode` crops the tile area and snaps each tile to its nearest code, so a frame made of codebook tiles
    round-trips exactly through `encode` / `decode`; `decode` puts the area back into a frame filled with
    `fill_value`. `snap` does the same for generated latents (the sampler calls it on every new frame), `indices` /
    `from_indices` convert between latents and code indices ``(..., rows * cols)``. Distances are measured on
    pixels in [0, 1] as the codebook was built; the latents keep the [-1, 1] scale of `PixelCodec`.
    """

    def __init__(self, config: CodecConfig):
        if config.kind != "tiles":
            raise ValueError(f"TileCodec needs kind='tiles', got {config.kind!r}")
        super().__init__(config)
        dim = 3 * config.tile_size**2
        self.register_buffer("codebook", torch.zeros(config.codes, dim))  # (K, s*s*3) in [-1, 1], (y, x, c) order
        # (rows * cols, K): the codes each tile position may hold; None (not saved) without `tile_places`
        places = torch.ones(config.tile_grid[0] * config.tile_grid[1], config.codes, dtype=torch.bool)
        self.register_buffer("places", places if config.tile_places else None)

    @property
    def tile_dim(self) -> int:
        return self.codebook.shape[1]

    def _crop(self, images: torch.Tensor) -> torch.Tensor:
        (top, left), (rows, cols), s = self.config.tile_offset, self.config.tile_grid, self.config.tile_size
        return images[..., top : top + rows * s, left : left + cols * s]

    def _nearest(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of every tile of raw latents ``(..., 3, rows * s, cols * s)`` and its squared distance,
        ``(..., rows * cols)`` each (latent units); with `places`, among the codes of the tile's place."""
        return nearest_codes(tiles_of(raw, self.config.tile_size), self.codebook, allowed=self.places)

    def indices(self, latents: torch.Tensor) -> torch.Tensor:
        """Nearest code of every tile: latents ``(..., 3, rows * s, cols * s)`` -> ``(..., rows * cols)`` int64."""
        return self._nearest(self.denormalize(latents))[0]

    def frame_codes(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of every tile of uint8 frames ``(..., H, W, 3)`` whatever its place (what the frame shows,
        not what snapping would make of it) and the squared distance to it in the units of `tile_threshold` (pixels
        in [0, 1], summed over the tile): ``(..., rows * cols)`` each."""
        frames = self._check_frames(frames)
        lead = frames.shape[:-3]
        images = frames_to_float(frames.to(self.device)).reshape(-1, 3, *self.frame_size)  # [-1, 1]
        codes, distances = nearest_codes(tiles_of(self._crop(images), self.config.tile_size), self.codebook)
        # [-1, 1] is twice the [0, 1] scale: squared distances are 4x the threshold's units
        return codes.reshape(*lead, -1), (distances / 4.0).reshape(*lead, -1)

    def from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(..., rows * cols)`` -> latents ``(..., 3, rows * s, cols * s)``."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.codes):
            raise ValueError(f"code indices must be in [0, {self.config.codes}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.normalize(untile(self.codebook[indices], self.config.tile_size, self.config.tile_grid))

    def snap(self, latents: torch.Tensor) -> torch.Tensor:
        """Every tile replaced by its nearest code (per tile, so per row and deterministic)."""
        return self.from_indices(self.indices(latents)).to(latents.dtype)

    def carry_tiles(self, frames: torch.Tensor, codes: torch.Tensor, previous_frames: torch.Tensor,
                    previous_codes: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(R, H, W, 3)`` decoded from ``codes`` ``(R, N)``, with every tile that kept its code shown
        as it was: where a tile's code equals the code ``previous_codes`` ``(R, N)`` gave its source tile (``source``
        ``(R, N)``, indices into the previous frame's tiles: the tile it came from, e.g. under the view's shift), it
        takes that tile's pixels in ``previous_frames`` ``(R, H, W, 3)`` instead of its code's. A tile that did not
        change then stays exactly as it was shown (a real prompt tile under its own light and night noise, where its
        code shows the codebook's copy); every tile shown is still a real tile."""
        frames, previous_frames = self._check_frames(frames), self._check_frames(previous_frames)
        n = self.config.tile_grid[0] * self.config.tile_grid[1]
        if frames.ndim != 4 or previous_frames.shape != frames.shape or tuple(codes.shape) != (len(frames), n) \
                or previous_codes.shape != codes.shape or source.shape != codes.shape:
            raise ValueError(f"carry_tiles needs frames and previous_frames (R, H, W, 3) and codes, previous_codes "
                             f"and source (R, {n}); got {tuple(frames.shape)}, {tuple(previous_frames.shape)}, "
                             f"{tuple(codes.shape)}, {tuple(previous_codes.shape)}, {tuple(source.shape)}")
        (top, left), (rows, cols), s = self.config.tile_offset, self.config.tile_grid, self.config.tile_size
        area = (slice(None), slice(top, top + rows * s), slice(left, left + cols * s))
        pattern = "r (gh p) (gw q) c -> r (gh gw) (p q c)"
        new = rearrange(frames[area], pattern, p=s, q=s)
        old = rearrange(previous_frames.to(frames.device)[area], pattern, p=s, q=s)
        source = source.to(frames.device).long()
        carried = old.gather(1, source[..., None].expand(-1, -1, old.shape[-1]))
        keep = codes.to(frames.device) == previous_codes.to(frames.device).gather(1, source)
        out = frames.clone()
        out[area] = rearrange(torch.where(keep[..., None], carried, new), "r (gh gw) (p q c) -> r (gh p) (gw q) c",
                              gh=rows, gw=cols, p=s, q=s)
        return out

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        index = self._nearest(self._crop(images))[0]
        return untile(self.codebook[index], self.config.tile_size, self.config.tile_grid)

    def _decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        (top, left), (height, width) = self.config.tile_offset, raw_latents.shape[-2:]
        fill = self.config.fill_value / 127.5 - 1.0
        images = raw_latents.new_full((raw_latents.shape[0], 3, *self.frame_size), fill)
        images[..., top : top + height, left : left + width] = raw_latents
        return images


@torch.no_grad()
def learn_tile_places(codec: TileCodec, frames_iter: Iterable[torch.Tensor]) -> TileCodec:
    """A copy of `codec` that also knows which codes real frames show at each tile position (`places`; the same
    codebook): a code seen at a position in any of the uint8 frames ``(..., H, W, 3)`` from `frames_iter` is allowed
    there. Snapping and the codebook head then keep the player where real frames draw it and inventory glyphs out of
    the world, however a rollout drifts. A position no frame reached allows every code."""
    grid = codec.config.tile_grid
    seen = torch.zeros(grid[0] * grid[1], codec.config.codes, dtype=torch.bool, device=codec.device)
    for frames in frames_iter:
        codes = codec.frame_codes(frames)[0].reshape(-1, seen.shape[0])  # (F, N), whatever places codec has
        seen[torch.arange(seen.shape[0], device=seen.device).expand_as(codes), codes] = True
    if not seen.any():
        raise ValueError("learn_tile_places: frames_iter yielded no frames")
    seen[~seen.any(-1)] = True
    placed = TileCodec(replace(codec.config, tile_places=True)).to(codec.device)
    placed.load_state_dict({**{k: v for k, v in codec.state_dict().items() if k != "places"}, "places": seen})
    return placed.eval()


@torch.no_grad()
def build_tile_codebook(
    frames_iter: Iterable[torch.Tensor],
    frame_size: tuple[int, int],
    tile_size: int = 7,
    tile_offset: tuple[int, int] = (0, 0),
    tile_grid: tuple[int, int] | None = None,
    threshold: float = 0.75,
    max_codes: int = 4096,
    fill_value: int = 0,
) -> TileCodec:
    """A `TileCodec` whose codebook is built from real frames by the nearest-neighbour rule (TWM's NNT): tiles are
    visited in order, and a tile whose squared L2 distance (pixels in [0, 1]) to every code so far exceeds
    `threshold` becomes a new code; codes never move. Stops adding codes at `max_codes` (later tiles snap to
    their nearest code). `frames_iter` yields uint8 batches ``(..., H, W, 3)``; `tile_grid` defaults to as many
    whole tiles as fit after the offset.
    """
    top, left = tile_offset
    if tile_grid is None:
        tile_grid = ((frame_size[0] - top) // tile_size, (frame_size[1] - left) // tile_size)
    dim = 3 * tile_size**2
    codes = torch.empty(0, dim)  # in [0, 1] while building
    for frames in frames_iter:
        frames = torch.as_tensor(frames)
        frames = frames.reshape(-1, *frames.shape[-3:]).movedim(-1, -3).float() / 255.0  # (N, 3, H, W)
        area = frames[..., top : top + tile_grid[0] * tile_size, left : left + tile_grid[1] * tile_size]
        tiles = torch.unique(tiles_of(area, tile_size).reshape(-1, dim), dim=0)  # exact repeats add nothing
        if len(codes):
            _, distance = nearest_codes(tiles, codes)
            tiles = tiles[distance > threshold]
        # The rule is sequential: a tile admitted here may cover later candidates of the same batch.
        for tile in tiles:
            if len(codes) >= max_codes:
                break
            if len(codes) and float(((codes - tile) ** 2).sum(-1).min()) <= threshold:
                continue
            codes = torch.cat([codes, tile[None]])
        if len(codes) >= max_codes:
            break
    if not len(codes):
        raise ValueError("build_tile_codebook: frames_iter yielded no frames")
    config = CodecConfig(kind="tiles", frame_size=tuple(frame_size), tile_size=tile_size, tile_offset=tuple(tile_offset),
                         tile_grid=tuple(tile_grid), codes=len(codes), tile_threshold=float(threshold),
                         fill_value=int(fill_value))
    codec = TileCodec(config)
    codec.codebook.copy_(codes * 2.0 - 1.0)
    return codec


def dataset_frames(data: str, split: str = "train", frame_stride: int = 1, max_frames: int | None = None,
                   counter: dict | None = None) -> Iterator[torch.Tensor]:
    """Every `frame_stride`-th frame of each episode of `split` of `data` (a folder or comma-separated folders), in
    order, as one uint8 batch per episode, at most `max_frames` in all; `counter["frames"]` counts them."""
    from generator.data import open_datasets

    dataset = open_datasets(data, split=split)
    used = counter if counter is not None else {}
    used["frames"] = 0
    for datasets in (dataset.datasets if hasattr(dataset, "datasets") else [dataset]):
        for k in range(datasets.num_episodes):
            frames = datasets.episode(k)["frames"][::frame_stride]
            if max_frames is not None:
                frames = frames[: max_frames - used["frames"]]
            used["frames"] += len(frames)
            yield frames
            if max_frames is not None and used["frames"] >= max_frames:
                return


def tile_codec_from_data(
    data: str,
    tile_size: int = 7,
    tile_offset: tuple[int, int] = (0, 0),
    tile_grid: tuple[int, int] | None = None,
    threshold: float = 0.75,
    max_codes: int = 4096,
    frame_stride: int = 2,
    max_frames: int | None = None,
    fill_value: int = 0,
    places: bool = True,
) -> tuple[TileCodec, dict]:
    """`build_tile_codebook` over the train split of `data` (a folder or comma-separated folders), every
    `frame_stride`-th frame of each episode in order, at most `max_frames`; with `places`, then
    `learn_tile_places` over the same frames. Returns the codec and a report: frames used, codes, and the
    reconstruction PSNR (mean over frames of the squared error) on the val split."""
    from generator.data import open_datasets

    train = open_datasets(data, split="train")
    used: dict = {}

    def batches():
        return dataset_frames(data, "train", frame_stride, max_frames, used)

    codec = build_tile_codebook(batches(), train.frame_size, tile_size, tile_offset, tile_grid, threshold, max_codes,
                                fill_value)
    report = {"frames": used["frames"], "codes": codec.config.codes, "threshold": threshold}
    if places:
        codec = learn_tile_places(codec, batches())
        report["allowed_codes_per_place"] = [int(codec.places.sum(-1).min()), int(codec.places.sum(-1).max())]
    val = open_datasets(data, split="val")
    errors = []
    for datasets in (val.datasets if hasattr(val, "datasets") else [val]):
        for k in range(min(datasets.num_episodes, 8)):
            frames = datasets.episode(k)["frames"]
            decoded = float_to_frames(codec.decode(codec.encode(frames)))
            errors.append((frames.double() - decoded.double()).square().mean(dim=(-3, -2, -1)))
    if errors:
        error = torch.cat(errors)
        report["val_frames"] = len(error)
        report["val_psnr"] = float(psnr_from_mse(error.mean()))
        report["val_exact_frames"] = float((error == 0).double().mean())
    return codec, report


# ----------------------------------------------------------------------------------------------------------
# KL autoencoder


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, with a (1x1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (N, C', H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (N, C', 2H, 2W)


class Encoder(nn.Module):
    """(N, 3, H, W) -> (N, 2C, H/f, W/f): posterior mean and log-variance stacked on channels."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        widths, groups = config.channels, config.norm_groups
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, width in enumerate(widths):
            layers += [ResBlock(width, width, groups) for _ in range(config.res_blocks)]
            if level + 1 < len(widths):
                layers.append(Downsample(width, widths[level + 1]))
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))  # (N, widths[-1], h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 2C, h, w)


class Decoder(nn.Module):
    """(N, C, h, w) -> (N, 3, H, W), mirroring the encoder with one extra ResBlock per level."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        widths, groups = tuple(reversed(config.channels)), config.norm_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, width in enumerate(widths):
            layers += [ResBlock(width, width, groups) for _ in range(config.res_blocks + 1)]
            if level + 1 < len(widths):
                layers.append(Upsample(width, widths[level + 1]))
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))  # (N, widths[0] of the encoder, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 3, H, W)


@dataclass
class DiagonalGaussian:
    """Posterior q(z | x) = N(mean, exp(logvar)) over raw (unnormalised) latents ``(N, C, h, w)``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent element, shape like `mean`."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar)


class KLAutoencoder(Codec):
    """Small convolutional VAE with a diagonal Gaussian posterior; `encode` returns its normalised mean.

    ResNet blocks + GroupNorm + SiLU, stride-2 convs down, nearest + conv up. The default config (64x64,
    downsample 4, widths (32, 64, 64)) has ~0.5M parameters and latents (4, 16, 16).
    """

    def __init__(self, config: CodecConfig | None = None):
        config = config or CodecConfig()
        if config.kind != "kl":
            raise ValueError(f"KLAutoencoder needs kind='kl', got {config.kind!r}")
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode_posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """float images ``(N, 3, H, W)`` in [-1, 1] -> posterior over raw latents ``(N, C, h, w)``."""
        moments = self.encoder(images)  # (N, 2C, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(*self.config.logvar_clamp))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_posterior(images).mean

    def _decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(raw_latents)

    def training_losses(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Losses on float images ``(N, 3, H, W)`` in [-1, 1]: ``{"loss", "recon", "kl", "reconstruction"}``.

        recon is the per-pixel mean L1/L2 of a decoded posterior sample; kl the per-element mean KL to N(0, I).
        """
        posterior = self.encode_posterior(images)
        reconstruction = self.decoder(posterior.sample(generator))  # (N, 3, H, W)
        error = reconstruction - images
        if self.config.recon_loss == "l1":
            recon = error.abs().mean()
        elif self.config.recon_loss == "l2":
            recon = error.square().mean()
        else:
            recon = error.abs().mean() + error.square().mean()
        kl = posterior.kl().mean()
        return {"loss": recon + self.config.kl_weight * kl, "recon": recon, "kl": kl,
                "reconstruction": reconstruction}


# ----------------------------------------------------------------------------------------------------------
# Building, statistics, saving, loading


def build_codec(config: CodecConfig) -> Codec:
    """An untrained codec for `config` (PixelCodec needs no training)."""
    if config.kind == "pixels":
        return PixelCodec(config)
    if config.kind == "tiles":
        return TileCodec(config)
    return KLAutoencoder(config)


@torch.no_grad()
def fit_latent_statistics(
    codec: Codec, frames_iter: Iterable[torch.Tensor], max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``codec.latent_mean`` / ``latent_std`` to the per-channel statistics of its raw latents.

    `frames_iter` yields uint8 frame batches with any leading dims, ``(..., H, W, 3)``. Normalising by these
    makes the DiT's latents roughly zero-mean, unit-variance per channel (the LDM "scale factor", per channel).
    Returns ``(mean, std)``.
    """
    channels = codec.latent_shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    frames_seen = 0
    for frames in frames_iter:
        frames = torch.as_tensor(frames)
        frames = frames.reshape(-1, *frames.shape[-3:])  # (N, H, W, 3)
        if max_frames is not None:
            frames = frames[: max_frames - frames_seen]
        if len(frames) == 0:
            break
        raw = codec.encode_raw(frames).double().cpu()  # (N, C, h, w)
        total += raw.sum(dim=(0, 2, 3))
        total_sq += raw.square().sum(dim=(0, 2, 3))
        count += raw.shape[0] * raw.shape[2] * raw.shape[3]
        frames_seen += len(frames)
        if max_frames is not None and frames_seen >= max_frames:
            break
    if count == 0:
        raise ValueError("fit_latent_statistics: frames_iter yielded no frames")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(1e-6)
    codec.latent_mean.copy_(mean.float())
    codec.latent_std.copy_(std.float())
    return codec.latent_mean.clone(), codec.latent_std.clone()


def save_codec(codec: Codec, directory: str | Path, extra_config: dict | None = None) -> Path:
    """Save `codec` as a checkpoint folder: config.json (``{"codec": CodecConfig}``) + codec.safetensors."""
    config = {"codec": codec.config.to_dict(), **(extra_config or {})}
    return save_checkpoint(directory, config=config, tensors={"codec": codec.state_dict()})


def codec_folder(directory: str | Path) -> Path:
    """The checkpoint folder a codec path names: itself, or a codec training run's `model/` (`generator.train_codec`;
    runs written before the shared training harness kept it in `checkpoint/`)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).exists():
        for inner in ("model", "checkpoint"):
            if (directory / inner / CONFIG_NAME).exists():
                return directory / inner
    return directory


def load_codec(directory: str | Path, map_location: str | torch.device = "cpu") -> Codec:
    """Load a codec from any checkpoint folder holding ``config["codec"]`` and ``codec.safetensors``.

    That is a `save_codec` folder, a codec training run folder, or a world-model checkpoint. Returns the codec
    in eval mode; raises CheckpointError if the folder is unusable or does not fit its own config.
    """
    directory = codec_folder(directory)
    config, states = load_checkpoint(directory, names=["codec"])
    if "codec" not in config:
        raise CheckpointError(f"{directory / CONFIG_NAME}: no 'codec' config (not a codec checkpoint)")
    try:
        codec_config = CodecConfig.from_dict(config["codec"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_NAME}: invalid codec config ({error})") from error
    codec = build_codec(codec_config)
    load_state_into(codec, states["codec"], "codec")
    return codec.to(map_location).eval()


@dataclass
class CodebookConfig:
    """`nextframe build-codebook`: a tile codec whose codebook is grown from recorded episodes' tiles.

    Crafter at 64x64 draws 9x9 tiles of 7 px from pixel (0, 0) (the defaults). A tile farther than `threshold`
    (squared L2, pixels in [0, 1]) from every code becomes a new code; codes never move. With `places` the codec
    also records which codes each tile position shows (`learn_tile_places`).
    """

    data: str  # episode dataset folder(s), comma-separated
    out: str  # codec checkpoint folder to write
    tile_size: int = 7  # tile side in pixels (Crafter at 64x64: 7)
    tile_offset: tuple[int, int] = (0, 0)  # top,left pixel of the tile area
    tile_grid: tuple[int, int] | None = None  # rows,cols of tiles (default: all that fit)
    threshold: float = 0.75  # new-code distance (squared L2 in [0, 1])
    max_codes: int = 4096  # codebook capacity
    frame_stride: int = 2  # use every N-th frame of each episode
    max_frames: int | None = None  # stop after this many frames
    places: bool = True  # record the codes each tile position shows, and keep generated tiles to them


def build_codebook(config: CodebookConfig) -> dict:
    """Build and save the tile codec; returns the report (code count, reconstruction PSNR on the val split)."""
    codec, report = tile_codec_from_data(config.data, config.tile_size, config.tile_offset, config.tile_grid,
                                         config.threshold, config.max_codes, config.frame_stride, config.max_frames,
                                         places=config.places)
    save_codec(codec, config.out, extra_config={"report": report})
    return report


codec_from_pretrained = load_codec

__all__ = [
    "CodecConfig", "Codec", "PixelCodec", "TileCodec", "KLAutoencoder", "build_tile_codebook", "tile_codec_from_data", "learn_tile_places",
    "dataset_frames", "nearest_codes", "DiagonalGaussian", "build_codec", "save_codec",
    "load_codec", "codec_from_pretrained", "fit_latent_statistics", "frames_to_float", "float_to_frames",
]
