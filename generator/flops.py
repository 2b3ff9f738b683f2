"""Floating-point operations of DiT passes: counted by torch, and by hand.

`count_flops(fn)` runs `fn` under `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention:
what a device's peak refers to). Torch's counter knows the CUDA attention kernels but not the one the CPU
dispatches `scaled_dot_product_attention` to (`aten._scaled_dot_product_flash_attention_for_cpu`), which it
silently counts as zero; `CPU_ATTENTION_FLOPS` maps that kernel to torch's own attention formula, so the count
includes attention on every device. `dit_pass_flops` is the same count from the configuration alone (the hand
formula the tests hold the counter to), and `measure_matmul_peak` times dense matmuls on this device: the ceiling
an achieved FLOP rate is compared against.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils import flop_counter

from generator.model import DiTConfig


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode applies its own shape wrapper to custom entries: they take shapes.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """`(fn(), FLOPs it ran)`, attention included on CPU and CUDA alike."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


def dit_pass_flops(config: DiTConfig, rows: int, frames: int = 1, key_frames: int | None = None,
                   outputs: bool = True) -> int:
    """FLOPs of one `DiT.forward` over `rows` x `frames` query frames attending to `key_frames` frames each.

    Counts multiply-adds as 2 FLOPs, in every linear layer and both attention matmuls (`QK^T` and `PV` over all
    `key_frames * tokens` keys: the kernels are dense, masked keys cost as much as visible ones). With a KV cache
    `key_frames` is the cache's slots plus `frames` (the cache is attended to in place, masked slots included);
    without one it is `frames`. Embedding lookups, norms, RoPE and elementwise ops are not counted (nor by torch).
    Covers every head of `DiTConfig` (codebook logits, reward classes, action tokens). `outputs=False` is a pass
    that only writes keys/values (`DiT.forward(outputs=False)`): its last layer stops after the key/value projection
    and no head runs.
    """
    key_frames = frames if key_frames is None else key_frames
    d, n, p, c = config.dim, config.tokens_per_frame, config.patch_size, config.latent_channels
    hidden = int(d * config.mlp_ratio)
    inputs = (2 if config.previous_frame_input else 1) * c * p * p
    tokens, frame_count = rows * frames * n, rows * frames
    per_token = 2 * d * (3 * d) + 2 * d * d + 2 * d * hidden + 2 * hidden * d  # qkv, proj, MLP
    attention = 4 * rows * config.heads * (frames * n) * (key_frames * n) * config.head_dim  # QK^T and PV
    per_block = tokens * per_token + attention + frame_count * 2 * d * (6 * d)  # + adaLN modulation
    action = 0
    if config.action_space["type"] == "Box":  # an MLP; discrete actions are table lookups
        size = 1
        for extent in config.action_space["shape"]:
            size *= int(extent)
        action = frame_count * (2 * size * d + 2 * d * d) * (2 if config.action_tokens else 1)
    patch = c * p * p
    if config.codebook_size:  # code logits, the previous tile's distance to every code, the expected tile
        output = tokens * (2 * d * config.codebook_size + 2 * 2 * patch * config.codebook_size)
    else:
        output = tokens * 2 * d * patch  # output projection
    outcomes = 1 + (len(config.reward_values) or 1)
    pool = tokens * 2 * d if config.outcome_pool else 0  # the outcome head's attention-pool logits
    inputs_and_conditioning = (
        tokens * 2 * inputs * d  # patch embedding
        + frame_count * (2 * 256 * d + 2 * d * d)  # noise-level embedding MLP
        + action
    )
    if not outputs:  # the last block: its modulation and key/value projection only (qkv, q included, then dropped)
        return (inputs_and_conditioning + (config.depth - 1) * per_block
                + tokens * 2 * d * (3 * d) + frame_count * 2 * d * (6 * d))
    return (
        inputs_and_conditioning
        + config.depth * per_block
        + frame_count * 2 * d * (2 * d)  # final modulation
        + output
        + pool
        + frame_count * (2 * d * d + 2 * d * outcomes)  # outcome head
    )  # (reward classes' expected reward is a matrix-vector product: torch's counter leaves it out, and so do we)


def dream_step_flops(config: DiTConfig, rows: int, sampler_steps: int, cache_slots: int,
                     commit_pass: bool = True, commit_outputs: bool = True) -> int:
    """FLOPs of one plain dream step of `rows` rows: `sampler_steps` generation passes and, with `commit_pass`, the
    pass that commits the frame to a cache of `cache_slots` slots (one scratch slot: each pass sees slots + 1).
    `commit_outputs=False`: the commit pass only writes keys/values (a world model whose outcome model reads the
    rewards, `generator.sampler.advance_rows`)."""
    generate = sampler_steps * dit_pass_flops(config, rows, 1, cache_slots + 1)
    commit = dit_pass_flops(config, rows, 1, cache_slots + 1, outputs=commit_outputs) if commit_pass else 0
    return generate + commit


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024,
                        seconds: float = 1.0) -> dict:
    """Dense `size x size` matmul rate on this device with torch's current threads: the best of repeated timings.

    Returns `{"tflops": best, "median_tflops": ..., "size": size, "dtype": ..., "repeats": ...}`. On a shared
    machine this is the peak available at the moment of measurement, which is the fair ceiling for numbers
    measured in the same run.
    """
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: library initialisation, thread pool start
    sync()
    rates, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(rates) < 3:
        t0 = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * size**3 / (time.perf_counter() - t0) / 1e12)
    rates.sort()
    return {"tflops": rates[-1], "median_tflops": rates[len(rates) // 2], "size": size,
            "dtype": str(dtype).replace("torch.", ""), "repeats": len(rates)}
