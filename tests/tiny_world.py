"""A tiny random-weight WorldModel built in tests, never downloaded."""
import torch


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
