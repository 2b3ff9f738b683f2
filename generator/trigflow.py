"""TrigFlow view of a flow-matching model: the training-free FM -> TrigFlow conversion used for sCM distillation.

TrigFlow (sCM, Lu & Song 2024, arXiv 2410.11081): `x_t = cos(t) x0 + sin(t) sigma_d z`, `z ~ N(0, I)`,
`t in [0, pi/2]`; the network is `F(x_t / sigma_d, t)`, the PF-ODE is `dx_t/dt = sigma_d F`, and the denoised
estimate (the consistency function) is `f(x_t, t) = cos(t) x_t - sin(t) sigma_d F`.

Our DiT is a flow-matching model on latents `y`: `x_s = (1 - s) y + s z`, velocity `v = z - y`. Following
SANA-Sprint (arXiv 2503.09641, Sec. 3.1) the TrigFlow data is the FM latent scaled by sigma_d, `x0 = sigma_d y`.
Then, with `c = sin(t) + cos(t)`,

    x_t / sigma_d = cos(t) y + sin(t) z = c x_s    where    s = sin(t) / c,
    F = cos(t) z - sin(t) y = ((cos(t) - sin(t)) x_t / sigma_d + v) / c,
    v = c F - (cos(t) - sin(t)) x_t / sigma_d,
    cos(t) x_t - sin(t) sigma_d F = sigma_d (x_s - s v) = sigma_d y_hat,

so a TrigFlow model is the FM model with its input divided by `c` and its velocity mapped to F, exactly (no
training). Every function here broadcasts a per-frame time `(B, T)` over latents `(B, T, C, h, w)`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from generator.model import DiT, DiTOutput

HALF_PI = math.pi / 2


def _frames(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-frame times `(B, T)` (or `(B,)`) as a tensor that broadcasts over `like` `(B, T, C, h, w)`."""
    return t.reshape(*t.shape, *([1] * (like.dim() - t.dim()))).to(like.dtype)


def flow_time(t: torch.Tensor) -> torch.Tensor:
    """FM time `s = sin(t) / (sin(t) + cos(t))` of TrigFlow time `t` (`s = 0` at t = 0, `s = 1` at t = pi/2)."""
    return torch.sin(t) / (torch.sin(t) + torch.cos(t))


def trig_time(s: torch.Tensor) -> torch.Tensor:
    """TrigFlow time `t = arctan(s / (1 - s))` of FM time `s` (inverse of `flow_time`)."""
    return torch.atan2(s, 1 - s)


def flow_input(x_t: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The FM sample `x_s = x_t / (sigma_d (sin t + cos t))` holding the same point as TrigFlow `x_t`."""
    tt = _frames(t, x_t)
    return x_t / (sigma_data * (torch.sin(tt) + torch.cos(tt)))


def trig_from_velocity(velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """TrigFlow output `F = ((cos t - sin t) x_t / sigma_d + v) / (sin t + cos t)` from an FM velocity."""
    tt = _frames(t, x_t)
    cos, sin = torch.cos(tt), torch.sin(tt)
    return ((cos - sin) * x_t / sigma_data + velocity) / (sin + cos)


def velocity_from_trig(trig: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """FM velocity `v = (sin t + cos t) F - (cos t - sin t) x_t / sigma_d` (inverse of `trig_from_velocity`)."""
    tt = _frames(t, x_t)
    cos, sin = torch.cos(tt), torch.sin(tt)
    return (sin + cos) * trig - (cos - sin) * x_t / sigma_data


def trig_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """TrigFlow sample `x_t = cos(t) x0 + sin(t) sigma_d z` (TrigFlow data `x0 = sigma_d y`, unit noise `z`)."""
    tt = _frames(t, x0)
    return torch.cos(tt) * x0 + torch.sin(tt) * sigma_data * noise


def trig_denoise(x_t: torch.Tensor, trig: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Denoised estimate (consistency function) `x0 = cos(t) x_t - sin(t) sigma_d F`, in TrigFlow data units."""
    tt = _frames(t, x_t)
    return torch.cos(tt) * x_t - torch.sin(tt) * sigma_data * trig


def proposal_times(
    shape: tuple[int, ...], p_mean: float, p_std: float, sigma_data: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """sCM's time proposal: `tan(t) = e^tau / sigma_d`, `tau ~ N(p_mean, p_std^2)`, independently per entry.

    In FM time this is logit-normal: `s = sigmoid(tau - log(sigma_d))`.
    """
    tau = p_mean + p_std * torch.randn(shape, generator=generator)
    return torch.atan(torch.exp(tau) / sigma_data)


class TrigFlowModel(nn.Module):
    """`F(x_t / sigma_d, t)` computed by a flow-matching DiT through the exact conversion above.

    `forward(x_t, t, actions, positions, **dit_kwargs)` takes TrigFlow samples `x_t` `(B, T, C, h, w)` in TrigFlow
    data units and per-frame TrigFlow times `t` `(B, T)`; it returns `(F, dit_output)`. The DiT's keyword arguments
    (`has_action`, `valid`, `cache`, `rows`, `write_cache`) pass through unchanged, so the KV cache works as at
    inference.
    """

    def __init__(self, dit: DiT, sigma_data: float = 1.0):
        super().__init__()
        self.dit, self.sigma_data = dit, float(sigma_data)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, actions, positions, **dit_kwargs
    ) -> tuple[torch.Tensor, DiTOutput]:
        out = self.dit(flow_input(x_t, t, self.sigma_data), flow_time(t), actions, positions, **dit_kwargs)
        velocity = out.velocity.to(x_t.dtype)
        return trig_from_velocity(velocity, x_t, t, self.sigma_data), out

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, actions, positions, **dit_kwargs) -> torch.Tensor:
        """`cos(t) x_t - sin(t) sigma_d F`: the clean TrigFlow sample this model maps `x_t` to."""
        trig, _ = self(x_t, t, actions, positions, **dit_kwargs)
        return trig_denoise(x_t, trig, t, self.sigma_data)


def trigflow_from_flow(model: DiT, sigma_data: float = 1.0) -> TrigFlowModel:
    """Wrap a flow-matching DiT (teacher or student) as a TrigFlow model; shares its weights, trains nothing."""
    return TrigFlowModel(model, sigma_data)
