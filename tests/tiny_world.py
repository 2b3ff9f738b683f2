"""Shared test helpers: tiny random-weight world models and a synthetic dataset, built in the test, never downloaded.

`make_tiny_world` / `make_tiny_tile_world` (16x16 models), `make_world` (a 64x64 model for the SB3 and replay tests),
`make_dataset` (a moving-square game), `tiny_config` (a tiny teacher run on it), `make_teacher` (a random-weight
teacher checkpoint for it).
"""
from pathlib import Path

import gymnasium
import numpy as np
import torch

FRAME = (64, 64)  # make_world's frame size
TINY = dict(latent_size=[16, 16], patch_size=4, dim=32, depth=2, heads=2, window_frames=4)


def make_tiny_world(action_space=None, frame_size=(16, 16), prompts=4, seed=0, termination_bias=-20.0,
                    window_frames=4, sampler_steps=2, previous_frame_input=False):
    """A random-weight WorldModel over 16x16 pixel frames, with `prompts` real-looking prompt clips
    (`generator.random_world`, the benchmark's factory).

    `termination_bias` sets the outcome head's termination logit (-20: never ends, +20: every step ends).
    """
    from generator.codec import CodecConfig
    from generator.pretrained import SamplingConfig
    from generator.random_world import random_world

    return random_world("tiny", action_space or {"type": "Discrete", "n": 5, "start": 0}, seed,
                        codec_config=CodecConfig(kind="pixels", frame_size=frame_size), weight_std=0.05,
                        termination_bias=termination_bias, prompts=prompts, prompt_frames=2,
                        sampling=SamplingConfig(sampler_steps=sampler_steps, context_noise=0.1), game="synthetic",
                        latent_size=frame_size, window_frames=window_frames, previous_frame_input=previous_frame_input)


def tile_textures(codes: int = 6, tile: int = 5, seed: int = 0) -> torch.Tensor:
    """`codes` distinct random uint8 tiles `(codes, tile, tile, 3)`, far apart from each other."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (codes, tile, tile, 3), generator=g, dtype=torch.uint8)


def tile_frames(ids: torch.Tensor, textures: torch.Tensor, frame_size=(16, 16)) -> torch.Tensor:
    """Frames `(..., H, W, 3)` uint8 drawn from tile ids `(..., rows, cols)`; pixels outside the grid are black."""
    tile = textures.shape[1]
    rows, cols = ids.shape[-2:]
    lead = ids.shape[:-2]
    frames = torch.zeros(*lead, *frame_size, 3, dtype=torch.uint8)
    drawn = textures[ids]  # (..., rows, cols, tile, tile, 3)
    grid = drawn.movedim(-3, -4).reshape(*lead, rows * tile, cols * tile, 3)
    frames[..., : rows * tile, : cols * tile, :] = grid
    return frames


def make_tiny_tile_world(codes: int = 6, seed: int = 0, reward_values=(-1.0, 0.0, 1.0), prompts: int = 4,
                         sampler_steps: int = 1, solver: str = "euler", n_actions: int = 5):
    """A random-weight tile WorldModel over 16x16 frames of 5-px tiles (3x3 grid, last pixel row/column black) with
    a codebook of `codes` random tiles, a codebook head and reward classes; prompt clips drawn from the codebook.
    Returns the model and the tile textures `(codes, 5, 5, 3)` uint8."""
    from generator.codec import CodecConfig, TileCodec, frames_to_float, tiles_of
    from generator.model import DiT, dit_config
    from generator.pretrained import SamplingConfig, WorldModel, WorldModelInfo

    textures = tile_textures(codes, seed=seed)
    tiles = TileCodec(CodecConfig(kind="tiles", frame_size=(16, 16), tile_size=5, tile_grid=(3, 3), codes=codes,
                                  tile_threshold=0.1))
    tiles.codebook.copy_(tiles_of(frames_to_float(textures), 5)[:, 0])  # (codes, 75)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, codes, (prompts, 2, 3, 3), generator=g)
    action_space = {"type": "Discrete", "n": n_actions, "start": 0}
    torch.manual_seed(seed)
    dit = DiT(dit_config("tiles", latent_size=(15, 15), patch_size=5, dim=32, depth=2, heads=2, window_frames=4,
                         action_space=action_space, codebook_size=codes, reward_values=reward_values))
    dit.bind_codebook(tiles.codebook)
    with torch.no_grad():
        dit.code_head.weight.normal_(0, 0.05)
        dit.outcome_head[-1].weight.normal_(0, 0.05)  # reward classes vary with the frame
        dit.outcome_head[-1].bias[-1] = -20.0  # termination: never
    bank = {"frames": tile_frames(ids, textures), "actions": torch.randint(0, n_actions, (prompts, 2), generator=g),
            "has_action": torch.tensor([[False, True]] * prompts)}
    info = WorldModelInfo(game="synthetic-tiles", frame_size=(16, 16), fps=10, action_space=action_space)
    sampling = SamplingConfig(sampler_steps=sampler_steps, context_noise=0.1, solver=solver)
    return WorldModel(dit, tiles, sampling, info, bank).eval(), textures


def make_dataset(root: Path, episodes: int = 4, length: int = 12, seed: int = 0) -> Path:
    """A synthetic 16x16 game: a bright square moves by the action (0 stay, 1 right, 2 down)."""
    rng = np.random.default_rng(seed)
    from generator.data import EpisodeWriter

    writer = EpisodeWriter(root, game="synthetic", frame_size=(16, 16), action_space=gymnasium.spaces.Discrete(3),
                           fps=10, policy={"name": "random"})
    for e in range(episodes):
        y, x = rng.integers(0, 12, size=2)
        frames, actions = [], [0]
        for i in range(length + 1):
            frame = np.zeros((16, 16, 3), np.uint8)
            frame[y : y + 4, x : x + 4] = 255
            frames.append(frame)
            if i < length:
                a = int(rng.integers(0, 3))
                actions.append(a)
                x = (x + (a == 1)) % 12
                y = (y + (a == 2)) % 12
        n = length + 1
        terminated = np.zeros(n, bool)
        terminated[-1] = e % 2 == 0
        writer.write(
            {
                "frames": np.stack(frames),
                "actions": np.array(actions, np.int64),
                "rewards": (np.arange(n) % 5 == 4).astype(np.float32),
                "terminated": terminated,
                "truncated": ~terminated & (np.arange(n) == n - 1),
            },
            seed=e,
        )
    return root


def tiny_config(data: Path, out: Path, **kw):
    """A `TrainConfig` for a tiny teacher run on `make_dataset`'s data (`kw` overrides)."""
    from generator.train import TrainConfig

    base = dict(
        data=str(data), out=str(out), model="tiny", steps=30, batch_size=4, clip_frames=4, lr=3e-3, warmup_steps=5,
        ckpt_every=1000, log_every=5, eval_windows=2, progress=False, model_overrides=dict(TINY),
    )
    base.update(kw)
    return TrainConfig(**base)


def make_teacher(data, path, seed=0, **config):
    """A random-weight teacher WorldModel for the synthetic dataset (training it is not the point here)."""
    from generator.data import EpisodeDataset
    from generator.train import build_world_model

    torch.manual_seed(seed)
    world = build_world_model(tiny_config(data, path, **config), EpisodeDataset(data, window=4))
    with torch.no_grad():
        for p in world.dit.parameters():
            p.normal_(0, 0.05)
    world.save_pretrained(path)
    return path


def make_world(n_actions=3, rewarded_action=None, termination_bias=-20.0, prompts=4, seed=0):
    """A random-weight 64x64 WorldModel over `Discrete(n_actions)` with `prompts` random prompt clips.

    `termination_bias` is the termination logit of every step (-20: never ends, +20: every step ends).
    `rewarded_action`: set by hand so the predicted reward is ~1 after that action and ~0 after any other. The
    action embedding puts 10 (else 0) in feature 0 of the frame's conditioning, the final adaLN shift copies
    SiLU(feature 0) into every token, and the reward is 0.1 * SiLU(its token mean); the token features themselves
    are layer-normed, so they move it by a few hundredths.
    """
    from generator.codec import CodecConfig, build_codec
    from generator.model import DiT, dit_config
    from generator.pretrained import SamplingConfig, WorldModel, WorldModelInfo

    space = {"type": "Discrete", "n": n_actions, "start": 0}
    torch.manual_seed(seed)
    dit = DiT(dit_config("tiny", latent_size=FRAME, patch_size=16, action_space=space, window_frames=4))
    dim = dit.config.dim
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.05)
        head = dit.outcome_head  # Linear(D, D), SiLU, Linear(D, 2) -> (reward, termination logit)
        head[-1].weight.zero_()
        head[-1].bias.copy_(torch.tensor([0.0, termination_bias]))
        if rewarded_action is not None:
            dit.action_embed.table.weight[:, 0] = 0.0
            dit.action_embed.table.weight[rewarded_action, 0] = 10.0
            dit.action_embed.null[0] = 0.0
            dit.time_embed[-1].weight[0].zero_()
            dit.time_embed[-1].bias[0] = 0.0
            modulation = dit.final_modulation[-1]  # Linear(D, 2D) -> (shift, scale)
            modulation.weight.zero_()
            modulation.bias.zero_()
            modulation.weight[0, 0] = 1.0
            head[0].weight[0].zero_()
            head[0].weight[0, 0] = 1.0
            head[0].bias[0] = 0.0
            head[-1].weight[0, 0] = 0.1
    codec = build_codec(CodecConfig(kind="pixels", frame_size=FRAME))
    g = torch.Generator().manual_seed(seed)
    bank = {
        "frames": torch.randint(0, 256, (prompts, 2, *FRAME, 3), generator=g, dtype=torch.uint8),
        "actions": torch.randint(0, n_actions, (prompts, 2), generator=g),
        "has_action": torch.tensor([[False, True]] * prompts),
    }
    info = WorldModelInfo(game="synthetic", frame_size=FRAME, fps=10, action_space=space)
    return WorldModel(dit, codec, SamplingConfig(sampler_steps=1, context_noise=0.1), info, bank).eval()


@torch.no_grad()
def rollout_rows(model, seeds, prompt, prompt_actions, actions, steps, context_noise, solver="euler",
                 commit_pass=True):
    """The autoregressive step the env and the evaluation run (`generator.sampler.prompt_rows` / `advance_rows`) on
    a bare DiT over latents (codec: the identity): prompt `(B, P, C, h, w)`, then one frame per entry of `actions`
    `(B, K, ...)`. Returns frames `(B, K, C, h, w)`, expected rewards `(B, K)` and the cache."""
    from types import SimpleNamespace

    from generator.pretrained import SamplingConfig
    from generator.sampler import advance_rows, prompt_rows

    b, p = prompt.shape[:2]
    sampling = SamplingConfig(sampler_steps=steps, context_noise=context_noise, solver=solver, commit_pass=commit_pass)
    identity = SimpleNamespace(snap=lambda latents: latents)
    cache = model.new_cache(b)
    has_action = torch.ones(b, p, dtype=torch.bool)
    has_action[:, 0] = False
    previous = prompt_rows(model, identity, sampling, cache, None, prompt, prompt_actions, has_action, seeds, steps)
    frames, rewards = [], []
    for i in range(actions.shape[1]):
        out = advance_rows(model, identity, sampling, cache, None, actions[:, i], [p + i] * b, seeds, previous, steps)
        previous = out["committed"]
        frames.append(out["latents"])
        rewards.append(out["reward"])
    return torch.stack(frames, dim=1), torch.stack(rewards, dim=1), cache
