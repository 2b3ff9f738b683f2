"""Random-weight world models built in code, never trained or downloaded: for timing (`world_env.bench`, where step
time does not depend on the weights) and for tests (`tests/tiny_world.py`).

Weights are drawn small and dense (no zero adaLN-Zero layers, so every layer does its full work) and the
termination logit is fixed (`termination_bias`: -20 never ends an episode, +20 ends every step).
"""
from __future__ import annotations

import torch

from generator.codec import CodecConfig, build_codec
from generator.model import DiT, dit_config
from generator.pretrained import SamplingConfig, WorldModel, WorldModelInfo

CRAFTER_ACTIONS = {"type": "Discrete", "n": 17, "start": 0}
# Frame size and codec of each random-weight size preset. `tiny` keeps its preset's 16x16 latent (pixels, so 16x16
# frames); `paper` is NFD-310M's 384x224 through an untrained 8x KL autoencoder to its (16, 28, 48) latent.
MODEL_FRAMES: dict[str, CodecConfig] = {
    "tiny": CodecConfig(kind="pixels", frame_size=(16, 16)),
    "small": CodecConfig(kind="pixels", frame_size=(64, 64)),
    "base": CodecConfig(kind="pixels", frame_size=(64, 64)),
    "paper": CodecConfig(kind="kl", frame_size=(224, 384), latent_channels=16, downsample=8,
                         channels=(64, 128, 128, 256)),
}


def random_prompts(frame_size: tuple[int, int], action_space: dict, count: int = 8, frames: int = 2,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """`count` prompt clips of `frames` random frames and random actions, in the checkpoint prompt-bank format."""
    g = torch.Generator().manual_seed(seed)
    kind = action_space["type"]
    if kind == "Discrete":
        start = int(action_space.get("start", 0))
        actions = torch.randint(start, start + int(action_space["n"]), (count, frames), generator=g)
    elif kind == "MultiDiscrete":
        starts = action_space.get("start") or [0] * len(action_space["nvec"])
        actions = torch.stack([torch.randint(s, s + n, (count, frames), generator=g)
                               for n, s in zip(action_space["nvec"], starts)], -1)
    else:
        actions = torch.rand(count, frames, *action_space["shape"], generator=g) * 2 - 1
    return {
        "frames": torch.randint(0, 256, (count, frames, *frame_size, 3), generator=g, dtype=torch.uint8),
        "actions": actions,  # (count, frames, ...)
        "has_action": torch.arange(frames)[None].repeat(count, 1) > 0,  # no action led to a clip's first frame
    }


def random_world(model_config: str = "tiny", action_space: dict | None = None, seed: int = 0,
                 codec_config: CodecConfig | None = None, weight_std: float = 0.02, termination_bias: float = -20.0,
                 prompts: int = 8, prompt_frames: int = 2, sampling: SamplingConfig | None = None,
                 game: str = "crafter", **dit_overrides) -> WorldModel:
    """A random-weight `WorldModel` of the size preset `model_config` (`generator.model`), with random prompt clips.

    `codec_config` defaults to the preset's `MODEL_FRAMES` entry; `dit_overrides` are `DiTConfig` fields over the
    preset (the latent shape and action space are the codec's and `action_space`'s unless overridden).
    """
    action_space = action_space or CRAFTER_ACTIONS
    codec = build_codec(codec_config or MODEL_FRAMES[model_config])
    c, h, w = codec.latent_shape
    torch.manual_seed(seed)
    dit = DiT(dit_config(model_config, **{"latent_channels": c, "latent_size": (h, w), "action_space": action_space,
                                          **dit_overrides}))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, weight_std)
        dit.outcome_head[-1].bias[1] = termination_bias
        dit.outcome_head[-1].weight[1].zero_()
    frame_size = tuple(codec.config.frame_size)
    info = WorldModelInfo(game=game, frame_size=frame_size, fps=10 if game != "crafter" else 15,
                          action_space=action_space)
    bank = random_prompts(frame_size, action_space, prompts, prompt_frames, seed) if prompts else None
    return WorldModel(dit, codec, sampling or SamplingConfig(), info, bank).eval()
