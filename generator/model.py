"""The Next-Frame Diffusion transformer: a DiT over the tokens of each frame with block-wise causal attention.

Read top to bottom: the pure pieces (block-causal mask, 3D RoPE, embeddings), the adaLN-Zero block, the DiT,
and the named size presets at the bottom. Follows NFD (arXiv 2506.01380): per-frame continuous latents are
patchified into tokens; every token attends to all tokens of its own frame and of earlier frames inside a sliding
window of `window_frames`; each frame is conditioned by adaLN-Zero on the sum of its noise-level embedding and
the embedding of the action taken just before it. A pooled head predicts each transition's reward and termination.

Flow-matching convention (rectified flow): `x_s = (1 - s) * x_0 + s * noise`, `s = 1` is pure noise, and the
network predicts the velocity `noise - x_0`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from generator.actions import ActionEmbedding
from generator.metrics import SHIFTS, SLEEP_MOTION_CLASSES, motion_shift

if TYPE_CHECKING:
    from generator.kv_cache import KVCache


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class DiTConfig:
    """Sizes of the DiT. `latent_*` must match the codec; `action_space` is `generator.data.space_to_json(...)`."""

    latent_channels: int = 3
    latent_size: tuple[int, int] = (64, 64)  # (h, w) of one frame's latent
    patch_size: int = 8
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    window_frames: int = 16  # frames visible to a query frame, itself included
    action_space: dict = field(default_factory=lambda: {"type": "Discrete", "n": 17, "start": 0})
    rope_theta: float = 10000.0
    qk_norm: bool = True
    # Input recycling (AAPT, arXiv 2506.09350): each frame's tokens also carry the previous frame's latent (as it
    # was cached: re-noised to the context level) by channel concatenation, so copying what does not change is
    # easy; the attention still gives the window of earlier frames.
    previous_frame_input: bool = False
    # What the output layer predicts. "velocity": the flow velocity `noise - x_0` (NFD). "x": the clean frame
    # (JiT, Li & He 2025: in pixel space a patch has as many values as a token has channels, and predicting the
    # clean frame keeps the network on the data manifold instead of passing noise through); with
    # `previous_frame_input` the prediction is a residual over the previous frame, so an untrained model already
    # copies the last frame. Either way `forward` returns the velocity `(x_s - x_0_hat) / max(s, x_min_level)`, so
    # samplers, losses and distillation are unchanged.
    prediction: str = "velocity"
    x_min_level: float = 0.05
    # Tile models (the "tiles" codec, one token per tile): with `codebook_size` K > 0 the output layer gives each
    # token logits over the K codebook tiles, and the clean-frame prediction is their expectation, softmax(logits) @
    # codebook; the flow interface is unchanged (flow matching over the token values), and the logits also get a
    # cross-entropy loss and can be sampled directly (`SamplingConfig.solver = "categorical"`). The logits start as
    # the previous frame's nearest-code match, so an untrained model copies the last frame, as with "x" prediction.
    codebook_size: int = 0
    # Initial strength (nats) of the copy term: the previous tile's own code leads a far code by this much before
    # training. 8 makes an untrained model copy the last frame; 0 leaves the term out (the head learns copying like
    # everything else, with no prior to unlearn where the frame changes).
    copy_prior: float = 8.0
    # Add the action embedding to every token's input as well as to the per-frame adaLN condition.
    action_tokens: bool = False
    # Reward as classes (DIAMOND, TWM): with values v_1 < ... < v_K the outcome head gives K logits, a reward's class
    # is the nearest value, and a sampled class's reward is its value (Crafter: -0.1 lost health, 0, +0.1 regained
    # health, +1 an achievement). Empty: one regressed reward (MSE), the older head.
    reward_values: tuple[float, ...] = ()
    # The game's day-night period in steps (Crafter: 300), 0 for none. The clock is the frame position, its step in
    # the episode: the phase (sin, cos) of position / day_period joins every frame's adaLN condition, so the model
    # knows the time of day instead of guessing it from a window of frames (a dream that cannot tell dusk from dawn
    # falls into a night it never leaves). The embedding starts at zero: a fine-tune adds it to a trained model.
    day_period: int = 0
    # Pool the tokens for the reward/termination head by learned attention weights (softmax over the frame's tokens)
    # instead of their mean: a reward shows as a change in one tile of 81 (a health digit, a new inventory item),
    # which a mean dilutes. The weights start uniform, so a fine-tune adds it to a trained model unchanged.
    outcome_pool: bool = False
    # View motion as a condition (Crafter: the 5 view shifts of `generator.metrics.SHIFTS`, none or one tile in one
    # of four directions): each frame's adaLN condition (and its tokens, with `action_tokens`) also gets an
    # embedding of how the view moved into it, index `motion_classes` meaning "not given". Training reads it off the
    # real frames; the dream draws it per row from the outcome model's motion head before the frame is generated, so
    # one discrete decision (walked or stopped) is taken first and the tiles follow it instead of blending both.
    # The embeddings start at zero. The motion is also applied: a frame's previous-frame input (input recycling) is
    # the previous frame with its view region (`motion_view`) shifted by the motion, so the copy the network already
    # makes of it follows the motion, and only the tiles entering the view and the player are new.
    # `SLEEP_MOTION_CLASSES` (10) also tells whether the frame shows the sleeping view (`generator.metrics.grey_view`):
    # falling asleep and waking are then decided before the frame as well, instead of being blended into it.
    motion_classes: int = 0
    motion_view: tuple[int, int] = (7, 9)  # (rows, cols) of the scrolling view from the top-left token (Crafter's)
    # the view's token the player stays in ((-1, -1): none): its sprite is not carried along by a shift
    motion_player: tuple[int, int] = (3, 4)

    def __post_init__(self):
        if self.prediction not in ("velocity", "x"):
            raise ValueError(f"prediction must be 'velocity' or 'x', got {self.prediction!r}")
        if self.motion_classes < 0:
            raise ValueError(f"motion_classes must be >= 0 (0: no motion condition), got {self.motion_classes}")
        self.motion_view = tuple(int(v) for v in self.motion_view)
        self.motion_player = tuple(int(v) for v in self.motion_player)
        if self.motion_classes not in (0, len(SHIFTS), SLEEP_MOTION_CLASSES):
            raise ValueError(f"motion_classes {self.motion_classes}: the motions are the {len(SHIFTS)} view shifts of "
                             f"generator.metrics.SHIFTS; use {len(SHIFTS)}, {SLEEP_MOTION_CLASSES} (each shift into an "
                             "awake or a sleeping view) or 0 for no motion condition")
        if self.day_period < 0:
            raise ValueError(f"day_period must be >= 0 steps (0: no day clock), got {self.day_period}")
        self.reward_values = tuple(float(v) for v in self.reward_values)
        if list(self.reward_values) != sorted(set(self.reward_values)) or len(self.reward_values) == 1:
            raise ValueError(f"reward_values must be empty or >= 2 distinct increasing values, got {self.reward_values}")
        if self.codebook_size and (self.prediction != "x" or not self.previous_frame_input):
            raise ValueError("a codebook head (codebook_size > 0) needs prediction='x' and previous_frame_input=True")
        self.latent_size = tuple(self.latent_size)
        h, w = self.latent_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"latent size {self.latent_size} is not divisible by patch size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_size[0] // self.patch_size, self.latent_size[1] // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_size"] = list(self.latent_size)
        d["reward_values"] = list(self.reward_values)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiT config fields: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Pure pieces

# Codebook models: the previous tile's squared distance to a code (latents in [-1, 1], summed over the tile) counts
# up to this cap in the copy term of the logits; farther codes are all equally unlike the previous tile. 12 is four
# times a 0.75 codebook threshold (pixels in [0, 1]) in latent units. Without the cap a confident wrong copy costs
# hundreds of nats, and those few tokens swamp the cross-entropy.
COPY_CAP = 12.0


def block_causal_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    window_frames: int | None = None,
    include_same_position: bool = True,
) -> torch.Tensor:
    """Frame-level block-causal attention mask, `True` where a query frame may attend to a key frame.

    A query frame at position p sees key frames at positions q with `q <= p` (`q < p` when
    `include_same_position` is False) and `p - q < window_frames`; invalid keys are never seen. Tokens of one
    frame share their frame's row/column of this mask (expand with `expand_to_tokens`).

    Args:
        query_positions: `(B, Tq)` frame positions of the query frames.
        key_positions: `(B, Tk)` frame positions of the key frames.
        key_valid: `(B, Tk)` bool, keys that hold a frame.
    Returns:
        `(B, Tq, Tk)` bool.
    """
    offset = query_positions[:, :, None] - key_positions[:, None, :]  # (B, Tq, Tk)
    allowed = offset >= 0 if include_same_position else offset > 0
    if window_frames is not None:
        allowed = allowed & (offset < window_frames)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    return allowed


def expand_to_tokens(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """`(B, Tq, Tk)` frame mask -> `(B, 1, Tq * N, Tk * N)` token mask for attention."""
    n = tokens_per_frame
    return frame_mask.repeat_interleave(n, dim=1).repeat_interleave(n, dim=2)[:, None]


def attention_bias(frame_mask: torch.Tensor, tokens_per_frame: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The `(B, Tq, Tk)` frame mask as an additive token bias `(B, 1, Tq * N, Tk * N)` (0 allowed, -inf not), built
    once per pass (a boolean mask is converted by every layer's attention call); None when every key is allowed
    (a full window: attention then skips reading a bias as large as the score matrix) on a CPU, where testing for
    it costs nothing (on a GPU it would wait for every queued kernel)."""
    if frame_mask.device.type == "cpu" and bool(frame_mask.all()):
        return None
    mask = expand_to_tokens(frame_mask, tokens_per_frame)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Split the head's `head_dim / 2` rotary pairs over (time, row, column), as in HunyuanVideo's 3D RoPE."""
    pairs = head_dim // 2
    spatial = (pairs - pairs // 4) // 2
    return pairs - 2 * spatial, spatial, spatial


def rope_angles(positions: torch.Tensor, grid: tuple[int, int], head_dim: int, theta: float) -> torch.Tensor:
    """Rotary angles `(B, T, N, head_dim / 2)` for frames at `positions` `(B, T)` over a `grid` of tokens.

    Computed in float64: frame positions grow with the episode, and float32 angles would lose the relative
    offsets the attention depends on after a few thousand frames.
    """
    n_t, n_y, n_x = rope_axis_pairs(head_dim)

    def inv_freq(n: int) -> torch.Tensor:
        return 1.0 / theta ** (torch.arange(n, dtype=torch.float64, device=positions.device) / max(n, 1))

    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float64, device=positions.device)
    cols = torch.arange(gw, dtype=torch.float64, device=positions.device)
    ang_y = (rows[:, None] * inv_freq(n_y))[:, None, :].expand(gh, gw, n_y)  # (gh, gw, n_y)
    ang_x = (cols[:, None] * inv_freq(n_x))[None, :, :].expand(gh, gw, n_x)  # (gh, gw, n_x)
    spatial = torch.cat([ang_y, ang_x], dim=-1).reshape(gh * gw, n_y + n_x)  # (N, n_y + n_x)
    ang_t = positions.to(torch.float64)[..., None] * inv_freq(n_t)  # (B, T, n_t)
    b, t = positions.shape
    return torch.cat(
        [ang_t[:, :, None, :].expand(b, t, gh * gw, n_t), spatial.expand(b, t, *spatial.shape)], dim=-1
    )  # (B, T, N, head_dim / 2)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a lower precision (bf16/fp16 under autocast); float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `(B, H, L, D)` by angles given as cos/sin `(B, 1, L, D / 2)` (rotate-half layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of noise levels `t` in [0, 1] (scaled by 1000 as in DiT), `(...,) -> (..., dim)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention; supports forward-mode AD (`torch.func.jvp`) where fused kernels may not.

    `mask` is an additive bias (0 where attending is allowed, -inf elsewhere) or None, as `DiT.forward` builds it."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1) @ v


# ----------------------------------------------------------------------------------------------------------------
# Layers


class Attention(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        hd = config.head_dim
        self.q_norm = nn.RMSNorm(hd, eps=1e-6) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd, eps=1e-6) if config.qk_norm else nn.Identity()
        self.use_math = False  # set by DiT.math_attention(); fused SDPA otherwise

    def write_keys_values(self, x, cos, sin, cache, layer_index=0, rows=None, positions=None):
        """Only this layer's keys and values of `x` into the cache (no attention): what `forward` with
        `write_cache=True` writes, for a pass whose output nobody reads (the last layer of a commit pass)."""
        t = x.shape[1]
        _, k, v = rearrange(self.qkv(x), "b t n (three h d) -> three b h (t n) d", three=3, h=self.heads)
        k = apply_rope(self.k_norm(at_least_float32(k)), cos, sin)
        cache.write(layer_index, rows, positions,
                    rearrange(k, "b h (t n) d -> b h t n d", t=t).to(cache.keys[0].dtype),
                    rearrange(v, "b h (t n) d -> b h t n d", t=t).to(cache.values[0].dtype))

    def forward(self, x, cos, sin, mask, cache=None, layer_index=0, rows=None, positions=None, write_cache=False):
        b, t, n, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b t n (three h d) -> three b h (t n) d", three=3, h=self.heads)
        # Norm and rotation in float32 (a no-op in fp32; under bf16 autocast it keeps RoPE exact and the norm fused).
        q = apply_rope(self.q_norm(at_least_float32(q)), cos, sin)
        k = apply_rope(self.k_norm(at_least_float32(k)), cos, sin)  # (B, H, T*N, hd)
        keys, values = k, v
        if cache is not None:
            keys, values = cache.with_new_frames(layer_index, rows, k, v)  # (B, H, (S + T) * N, hd)
        if self.use_math:
            out = math_attention(q, keys, values, mask)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, T*N, hd)
        if cache is not None and write_cache:
            # After attending: `keys` may be a view of the cache buffer, and the ring slot written here can hold a
            # frame this query still sees (the window's oldest).
            cache.write(
                layer_index,
                rows,
                positions,
                rearrange(k, "b h (t n) d -> b h t n d", t=t).to(cache.keys[0].dtype),
                rearrange(v, "b h (t n) d -> b h t n d", t=t).to(cache.values[0].dtype),
            )
        return self.proj(rearrange(out, "b h (t n) d -> b t n (h d)", t=t))


def day_phase(positions: torch.Tensor, period: int) -> torch.Tensor:
    """`(..., 2)` float32 (sin, cos) of the time of day of frame positions `(...)` (steps since the episode
    started) in a day of `period` steps."""
    angle = (positions.double() % period) * (2 * math.pi / period)
    return torch.stack([angle.sin(), angle.cos()], -1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TanhGELU(nn.GELU):
    """`nn.GELU(approximate="tanh")`, computed without autograd as `x * sigmoid(2 * sqrt(2 / pi) * (x + 0.044715 x^3))`
    in place: the same function (to float rounding), several times faster than torch's tanh-GELU kernel on CPU
    (docs/benchmarks.md). With gradients it is torch's kernel."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        y = x * x
        y.mul_(0.044715).add_(1.0).mul_(x).mul_(2.0 * math.sqrt(2.0 / math.pi))
        return y.sigmoid_().mul_(x)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with per-frame adaLN-Zero modulation (DiT, Peebles & Xie 2023)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        d = config.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), TanhGELU(), nn.Linear(hidden, d))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, cond, cos, sin, mask, keys_values_only=False, **cache_args):
        # x: (B, T, N, D); cond: (B, T, D) -> six (B, T, 1, D) modulations, one set per frame
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(cond)[:, :, None].chunk(6, dim=-1)
        if keys_values_only:  # write this layer's keys/values, compute nothing else (`DiT.forward(outputs=False)`)
            args = {k: cache_args[k] for k in ("cache", "layer_index", "rows", "positions")}
            self.attn.write_keys_values(modulate(self.norm1(x), shift1, scale1), cos, sin, **args)
            return None
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, mask, **cache_args)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiTOutput(NamedTuple):
    velocity: torch.Tensor  # (B, T, C, h, w)
    reward: torch.Tensor  # (B, T) reward of the transition into each frame
    termination_logit: torch.Tensor  # (B, T) logit that the transition into each frame ended the episode
    code_logits: torch.Tensor | None = None  # (B, T, N, K) per-token logits over the codebook (codebook models)
    reward_logits: torch.Tensor | None = None  # (B, T, R) logits of the reward classes (models with reward_values)


# ----------------------------------------------------------------------------------------------------------------
# The model


def shift_maps(grid: tuple[int, int], view: tuple[int, int], player: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """`(len(SHIFTS) + 1, N)` source token of every token of a `grid` frame under each view shift, then the identity
    ("not given"): inside the top-left `view` region, token (y, x) takes token (y - dy, x - dx) where that lies in
    the region and is not the `player` token (the player stays in its tile, so its sprite is not carried); the
    tokens entering the view, the one the player left and everything outside the view keep their own."""
    rows, cols = grid
    view_rows, view_cols = view
    if not (1 <= view_rows <= rows and 1 <= view_cols <= cols):
        raise ValueError(f"motion_view {view} must fit the {grid} token grid")
    own = torch.arange(rows * cols).reshape(rows, cols)
    maps = []
    for dy, dx in SHIFTS:
        source = own.clone()
        for y in range(view_rows):
            for x in range(view_cols):
                if 0 <= y - dy < view_rows and 0 <= x - dx < view_cols and (y - dy, x - dx) != tuple(player):
                    source[y, x] = own[y - dy, x - dx]
        maps.append(source.flatten())
    return torch.stack(maps + [own.flatten()])


def widen_motion_state(state: dict[str, torch.Tensor], module: str = "motion") -> dict[str, torch.Tensor]:
    """A DiT state dict with `len(SHIFTS)` motion classes made one of `SLEEP_MOTION_CLASSES`: every shift's
    embedding is copied to the shift into an awake and into a sleeping view, and "not given" kept, so the widened
    model starts with the source's outputs (a fine-tune then teaches it the sleep half)."""
    out = dict(state)
    index = motion_shift(torch.arange(SLEEP_MOTION_CLASSES + 1), SLEEP_MOTION_CLASSES)  # each class's shift row
    for key, value in state.items():
        if key.startswith(module + ".") and key.endswith(".weight") and value.shape[0] == len(SHIFTS) + 1:
            out[key] = value[index].clone()
    return out


class MotionEmbedding(nn.Module):
    """The view-motion condition (`DiTConfig.motion_classes`): an embedding per class plus "not given" (the last
    index), added to the per-frame condition and, with `tokens`, to every token (zero at initialisation), and the
    shift it names applied to each frame's previous-frame tokens (`shift_previous`)."""

    def __init__(self, classes: int, dim: int, tokens: bool, grid: tuple[int, int] = (9, 9),
                 view: tuple[int, int] = (7, 9), player: tuple[int, int] = (-1, -1)):
        super().__init__()
        self.classes = classes
        self.cond = nn.Embedding(classes + 1, dim)
        self.tokens = nn.Embedding(classes + 1, dim) if tokens else None
        self.register_buffer("maps", shift_maps(grid, view, player), persistent=False)
        self.reset_parameters()

    def shift_previous(self, previous_tokens: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
        """Previous-frame tokens `(B, T, N, D)` with each frame's view shifted by its motion `(B, T)`."""
        if motion is None:
            return previous_tokens
        source = self.maps.to(previous_tokens.device)[motion_shift(motion, self.classes)]  # (B, T, N)
        return previous_tokens.gather(2, source[..., None].expand_as(previous_tokens))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.cond.weight)
        if self.tokens is not None:
            nn.init.zeros_(self.tokens.weight)

    def forward(self, motion: torch.Tensor | None, cond: torch.Tensor, x: torch.Tensor):
        b, t = cond.shape[:2]
        if motion is None:
            motion = torch.full((b, t), self.classes, dtype=torch.long, device=cond.device)
        motion = motion.long()
        if tuple(motion.shape) != (b, t) or bool(((motion < 0) | (motion > self.classes)).any()):
            raise ValueError(f"motion must be (B, T) = {(b, t)} indices in [0, {self.classes}] ({self.classes}: not "
                             f"given), got shape {tuple(motion.shape)}")
        cond = cond + self.cond(motion).to(cond.dtype)
        if self.tokens is not None:
            x = x + self.tokens(motion).to(x.dtype)[:, :, None]
        return cond, x


class DiT(nn.Module):
    """Action-conditioned block-causal diffusion transformer over per-frame latents."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p, c = config.dim, config.patch_size, config.latent_channels
        inputs = 2 if config.previous_frame_input else 1
        self.patch_embed = nn.Linear(inputs * c * p * p, d)
        self.time_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.action_embed = ActionEmbedding(config.action_space, d)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_proj = nn.Linear(d, c * p * p)
        outcomes = 1 + (len(config.reward_values) or 1)  # termination + reward classes (or one regressed reward)
        self.outcome_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, outcomes))
        if config.outcome_pool:
            self.outcome_pool = nn.Linear(d, 1)
        if config.reward_values:
            self.register_buffer("reward_values", torch.tensor(config.reward_values), persistent=False)
        if config.action_tokens:
            self.action_token_embed = ActionEmbedding(config.action_space, d)
        if config.day_period:
            self.day_embed = nn.Linear(2, d)
        if config.motion_classes:
            self.motion = MotionEmbedding(config.motion_classes, d, config.action_tokens, config.grid,
                                          config.motion_view, config.motion_player)
        if config.codebook_size:
            # The codebook's tiles as tokens `(K, p * p * c)`, copied from the codec by `bind_codebook`.
            self.register_buffer("codebook", torch.zeros(config.codebook_size, c * p * p))
            self.code_head = nn.Linear(d, config.codebook_size)
            # `(N, K)` codes each token may hold (`bind_places`, from the codec; not saved with the DiT)
            self.register_buffer("code_places", None, persistent=False)
            if config.copy_prior > 0:
                # Scale of the previous tile's distance to each code, subtracted from the logits (log-parametrised).
                self.copy_log_scale = nn.Parameter(torch.tensor(math.log(config.copy_prior / COPY_CAP)))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_modulation[-1].weight)
        nn.init.zeros_(self.final_modulation[-1].bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)
        nn.init.zeros_(self.outcome_head[-1].weight)
        nn.init.zeros_(self.outcome_head[-1].bias)
        if self.config.day_period:
            nn.init.zeros_(self.day_embed.weight)
        if self.config.outcome_pool:
            nn.init.zeros_(self.outcome_pool.weight)
        if self.config.motion_classes:
            self.motion.reset_parameters()
        if self.config.codebook_size:
            nn.init.zeros_(self.code_head.weight)
            nn.init.zeros_(self.code_head.bias)

    def bind_places(self, places: torch.Tensor | None) -> None:
        """Keep every token's code logits to the codes its tile position may hold: `places` `(N, K)` bool
        (`generator.codec.TileCodec.places`); None lifts the restriction."""
        if places is not None and tuple(places.shape) != (self.config.grid[0] * self.config.grid[1],
                                                          self.config.codebook_size):
            raise ValueError(f"tile places of shape {tuple(places.shape)} do not fit this model's "
                             f"{self.config.grid[0] * self.config.grid[1]} tokens x {self.config.codebook_size} codes")
        self.code_places = None if places is None else places.to(self.codebook.device, torch.bool).clone()

    def bind_codebook(self, codebook_tokens: torch.Tensor) -> None:
        """Set the codebook `(K, p * p * c)` the code head predicts over (tokens in the DiT's patch layout)."""
        if tuple(codebook_tokens.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codebook of shape {tuple(codebook_tokens.shape)} does not fit this model's "
                             f"{tuple(self.codebook.shape)} (codebook_size, patch values)")
        self.codebook.copy_(codebook_tokens)

    def use_math_attention(self, enabled: bool = True) -> None:
        """Switch attention to the plain math path (needed under forward-mode AD)."""
        for block in self.blocks:
            block.attn.use_math = enabled

    def condition(self, noise_levels: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor | None):
        """Per-frame conditioning vector `(B, T, D)`: noise-level embedding + action embedding."""
        t_emb = self.time_embed(timestep_embedding(noise_levels, 256).to(self.patch_embed.weight.dtype))
        return t_emb + self.action_embed(actions, has_action).to(t_emb.dtype)

    def forward(
        self,
        latents: torch.Tensor,
        noise_levels: torch.Tensor,
        actions: torch.Tensor,
        positions: torch.Tensor,
        has_action: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rows: torch.Tensor | None = None,
        write_cache: bool = False,
        previous: torch.Tensor | None = None,
        outputs: bool = True,
        motion: torch.Tensor | None = None,
    ) -> DiTOutput | None:
        """Predict the flow velocity of every frame, and each transition's reward and termination.

        Args:
            latents: `(B, T, C, h, w)` noisy latents of T frames.
            noise_levels: `(B, T)` flow time of each frame in [0, 1] (0 = clean).
            actions: `(B, T, ...)` action that led to each frame, in the dataset's storage format.
            positions: `(B, T)` int frame positions (time since episode start) used by RoPE and the mask.
            has_action: `(B, T)` bool, False where there is no previous action (episode start).
            valid: `(B, T)` bool, False on padding frames (never attended to).
            cache: past frames' keys/values; the T frames attend to it and to each other block-causally.
            rows: which cache rows these B rows are (None: all rows, in order).
            write_cache: store these frames' keys/values into the cache (call `cache.commit` afterwards).
            previous: `(B, T, C, h, w)` the previous frame of each frame (required with `previous_frame_input`).
            outputs: False (with `write_cache`) only writes the frames' keys/values and returns None: the last
                layer stops after its key/value projection and no head runs (a commit pass whose predictions
                nobody reads; the cache is written exactly as with `outputs=True`).
            motion: `(B, T)` long, how the view moved into each frame (models with `motion_classes`: an index below
                it, or `motion_classes` for "not given"; None: not given for every frame).
        """
        if not outputs and (cache is None or not write_cache):
            raise ValueError("outputs=False only writes keys/values: it needs a cache and write_cache=True")
        cfg = self.config
        b, t = latents.shape[:2]
        gh, gw = cfg.grid
        p = cfg.patch_size
        tokens = rearrange(latents, "b t c (gh p) (gw q) -> b t (gh gw) (p q c)", p=p, q=p)
        if cfg.previous_frame_input:
            if previous is None or previous.shape != latents.shape:
                raise ValueError(
                    "this model reads each frame's previous frame (previous_frame_input): pass previous= with the "
                    f"shape of latents {tuple(latents.shape)}, got {None if previous is None else tuple(previous.shape)}"
                )
            previous_tokens = rearrange(previous, "b t c (gh p) (gw q) -> b t (gh gw) (p q c)", p=p, q=p)
            if cfg.motion_classes:
                previous_tokens = self.motion.shift_previous(previous_tokens, motion)
            tokens = torch.cat([tokens, previous_tokens], dim=-1)
        x = self.patch_embed(tokens.to(self.patch_embed.weight.dtype))  # (B, T, N, D)
        cond = self.condition(noise_levels, actions, has_action)  # (B, T, D)
        if cfg.day_period:
            cond = cond + self.day_embed(day_phase(positions, cfg.day_period).to(cond.dtype))
        if cfg.action_tokens:
            x = x + self.action_token_embed(actions, has_action).to(x.dtype)[:, :, None]
        if cfg.motion_classes:
            cond, x = self.motion(motion, cond, x)
        elif motion is not None:
            raise ValueError("motion= was given to a model without a motion condition (DiTConfig.motion_classes 0)")

        angles = rope_angles(positions, cfg.grid, cfg.head_dim, cfg.rope_theta)  # (B, T, N, hd/2) float64
        angles = rearrange(angles, "b t n d -> b 1 (t n) d")
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)

        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=latents.device)
        own = torch.eye(t, dtype=torch.bool, device=latents.device)[None]  # a frame always sees itself
        frame_mask = block_causal_mask(positions, positions, valid, cfg.window_frames) | own  # (B, T, T)
        if cache is not None:
            cache_positions, cache_valid = cache.slot_state(rows)
            past = block_causal_mask(
                positions, cache_positions, cache_valid, cfg.window_frames, include_same_position=False
            )  # (B, T, S)
            frame_mask = torch.cat([past, frame_mask], dim=2)
        mask = attention_bias(frame_mask, cfg.tokens_per_frame, x.dtype)  # (B, 1, T*N, K*N) or None

        cache_args = dict(cache=cache, rows=rows, positions=positions, write_cache=write_cache)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x = block(x, cond, cos, sin, mask, keys_values_only=not outputs and index == last, layer_index=index,
                      **cache_args)
        if not outputs:
            return None

        shift, scale = self.final_modulation(cond)[:, :, None].chunk(2, dim=-1)
        h = modulate(self.final_norm(x), shift, scale)  # (B, T, N, D)
        if cfg.outcome_pool:
            weights = self.outcome_pool(h).softmax(dim=2)  # (B, T, N, 1)
            pooled = (weights * h).sum(dim=2)
        else:
            pooled = h.mean(dim=2)
        outcome = self.outcome_head(pooled).float()  # (B, T, 1 + reward classes)
        termination_logit, reward_logits = outcome[..., -1], None
        if cfg.reward_values:
            reward_logits = outcome[..., :-1]
            reward = reward_logits.softmax(-1) @ self.reward_values  # (B, T) expected reward
        else:
            reward = outcome[..., 0]
        if cfg.codebook_size:
            code = self.codebook.float()  # (K, P)
            prev = previous_tokens.float()  # (B, T, N, P)
            logits = self.code_head(h).float()  # (B, T, N, K)
            if self.code_places is not None:
                logits = logits.masked_fill(~self.code_places, float("-inf"))
            if cfg.copy_prior > 0:
                distance = prev.square().sum(-1, keepdim=True) - 2 * prev @ code.T + code.square().sum(-1)
                logits = logits - self.copy_log_scale.exp() * distance.clamp(0, COPY_CAP)
            clean = rearrange(logits.softmax(-1) @ code, "b t (gh gw) (p q c) -> b t c (gh p) (gw q)", gh=gh, gw=gw,
                              p=p, q=p)
            level = noise_levels.float().clamp_min(cfg.x_min_level)[:, :, None, None, None]
            velocity = (latents.float() - clean) / level
            return DiTOutput(velocity, reward, termination_logit, logits, reward_logits)
        velocity = rearrange(
            self.final_proj(h), "b t (gh gw) (p q c) -> b t c (gh p) (gw q)", gh=gh, gw=gw, p=p, q=p
        )
        if cfg.prediction == "x":
            clean = velocity.float() + (previous.float() if cfg.previous_frame_input else 0.0)
            level = noise_levels.float().clamp_min(cfg.x_min_level)[:, :, None, None, None]
            velocity = (latents.float() - clean) / level
        return DiTOutput(velocity.float(), reward, termination_logit, None, reward_logits)

    def new_cache(self, batch_size: int, speculation_depth: int = 0, device=None, dtype=None) -> "KVCache":
        """A KV cache sized for this model's window plus `speculation_depth` speculated frames."""
        from generator.kv_cache import KVCache

        param = self.patch_embed.weight
        return KVCache(
            num_layers=self.config.depth,
            batch_size=batch_size,
            slots=self.config.window_frames - 1 + speculation_depth,
            tokens_per_frame=self.config.tokens_per_frame,
            heads=self.config.heads,
            head_dim=self.config.head_dim,
            device=device or param.device,
            dtype=dtype or param.dtype,
            scratch=1,  # the frame being stepped attends to the cache in place
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Named sizes. `latent_*` follow the codec: `pixels` at 64x64 gives (3, 64, 64) with patch 8 -> 64 tokens per frame;
# the KL codec at 64x64 gives (4, 16, 16) with patch 2 -> 64 tokens. `paper` is NFD-310M's scale: 384x224 frames
# through an 8x VAE (16, 28, 48), patch 2 -> 14 x 24 = 336 tokens per frame, a 32-frame window.

PRESETS: dict[str, dict] = {
    "tiny": dict(latent_channels=3, latent_size=(16, 16), patch_size=4, dim=32, depth=2, heads=2, window_frames=4),
    "small": dict(
        latent_channels=3, latent_size=(64, 64), patch_size=8, dim=192, depth=6, heads=3, window_frames=16,
        previous_frame_input=True, prediction="x",
    ),
    "base": dict(
        latent_channels=3, latent_size=(64, 64), patch_size=8, dim=512, depth=12, heads=8, window_frames=16,
        previous_frame_input=True, prediction="x",
    ),
    # Tile-token model for grid games (the "tiles" codec: Crafter at 64x64 -> 9x9 tiles of 7 px, 81 tokens per frame),
    # sized for CPU training (cf. TWM, arXiv 2502.01591: 3 layers, width 128). `codebook_size` is set from the codec.
    "tiles": dict(
        latent_channels=3, latent_size=(63, 63), patch_size=7, dim=128, depth=6, heads=4, window_frames=8,
        previous_frame_input=True, prediction="x", action_tokens=True,
    ),
    "paper": dict(
        latent_channels=16, latent_size=(28, 48), patch_size=2, dim=1024, depth=16, heads=16, window_frames=32
    ),
}


def dit_config(name: str, **overrides) -> DiTConfig:
    """The named size preset (`tiny`, `small`, `base`, `paper`) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(PRESETS)}")
    return replace(DiTConfig(**PRESETS[name]), **overrides)
