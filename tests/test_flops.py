"""FLOPs per env-step: counted with attention on CPU, equal to the hand formula; the measured matmul ceiling."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from generator.flops import count_flops, dit_pass_flops, dream_step_flops, measure_matmul_peak
from generator.model import DiT, dit_config
from tiny_world import make_tiny_world
from world_env.bench import count_step_flops
from world_env.env import WorldModelVecEnv


def attention_flops(config, rows, key_frames):
    """QK^T and PV of one pass of one frame per row, every layer: 2 matmuls x 2 FLOPs per multiply-add."""
    n = config.tokens_per_frame
    return config.depth * 2 * 2 * rows * config.heads * n * (key_frames * n) * config.head_dim


@pytest.mark.parametrize("num_envs, sampler_steps, workers", [(1, 1, 1), (3, 1, 1), (2, 3, 1), (3, 1, 2)])
def test_counted_flops_per_env_step_match_the_hand_formula_with_attention(num_envs, sampler_steps, workers):
    world = make_tiny_world(previous_frame_input=True)
    env = WorldModelVecEnv(world, num_envs=num_envs, device="cpu", sampler_steps=sampler_steps, workers=workers)
    env.reset(seed=0)
    actions = np.arange(num_envs) % 5
    env.step(actions)
    config, slots = world.dit.config, env.core.cache.slots
    # By hand: (sampler_steps + 1 commit) passes of one frame per row over the cache's slots + the frame itself.
    passes = sampler_steps + 1
    attention = passes * attention_flops(config, num_envs, slots + 1)
    by_hand = dream_step_flops(config, num_envs, sampler_steps, slots)
    assert attention > 0.1 * by_hand  # a fifth of a tiny step (nearly half of a `small` one): it must be counted
    assert count_step_flops(env, actions) == by_hand  # row workers or not
    env.core.workers = 1  # torch's counter sees only its own thread's operations
    # torch's counter alone misses exactly the attention of the CPU kernel
    counter = FlopCounterMode(display=False)
    with counter:
        env.step(actions)
    assert counter.get_total_flops() == by_hand - attention
    # the plain math path (matmuls torch does count) agrees
    world.dit.use_math_attention(True)
    assert count_flops(lambda: env.step(actions))[1] == by_hand


def test_pass_formula_counts_every_layer():
    world = make_tiny_world(action_space={"type": "Box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0],
                                          "dtype": "float32"})
    dit = world.dit
    b, t = 2, 3
    c, (h, w) = dit.config.latent_channels, dit.config.latent_size
    latents = torch.randn(b, t, c, h, w)
    with torch.no_grad():
        _, counted = count_flops(lambda: dit(latents, torch.rand(b, t), torch.rand(b, t, 2),
                                             torch.arange(t)[None].repeat(b, 1)))
    assert counted == dit_pass_flops(dit.config, b, frames=t)


@pytest.mark.parametrize("heads", [dict(), dict(codebook_size=7, reward_values=(-1.0, 0.0, 1.0), action_tokens=True,
                                                 outcome_pool=True)])
def test_pass_formula_covers_the_tile_model_heads(heads):
    torch.manual_seed(0)
    config = dit_config("tiny", previous_frame_input=True, prediction="x", **heads)
    dit = DiT(config).eval()
    b, t = 2, 3
    latents = torch.randn(b, t, config.latent_channels, *config.latent_size)
    with torch.no_grad():
        _, counted = count_flops(lambda: dit(latents, torch.rand(b, t), torch.randint(0, 17, (b, t)),
                                             torch.arange(t)[None].repeat(b, 1), previous=latents))
    assert counted == dit_pass_flops(config, b, frames=t)


def test_matmul_peak_is_measured():
    peak = measure_matmul_peak("cpu", size=128, seconds=0.01)
    assert peak["repeats"] >= 3 and peak["tflops"] >= peak["median_tflops"] > 0


def test_a_keys_values_only_commit_pass_counts_its_last_layer_projection_only():
    """A commit pass whose heads nobody reads (`outputs=False`, an env with an outcome model) does the passes before
    it in full and, in the last layer, only the key/value projection: the hand formula says how much that saves."""
    torch.manual_seed(0)
    config = dit_config("tiny", previous_frame_input=True, prediction="x", codebook_size=7,
                        reward_values=(-1.0, 0.0, 1.0), action_tokens=True, outcome_pool=True)
    dit = DiT(config).eval()
    rows = 3
    cache = dit.new_cache(rows)
    latents = torch.randn(rows, 1, config.latent_channels, *config.latent_size)
    args = (latents, torch.full((rows, 1), 0.1), torch.randint(0, 17, (rows, 1)), torch.zeros(rows, 1, dtype=torch.long))
    with torch.no_grad():
        result, counted = count_flops(lambda: dit(*args, cache=cache, write_cache=True, previous=latents,
                                                  outputs=False))
    assert result is None
    slots = cache.slots + 1
    full = dit_pass_flops(config, rows, 1, slots)
    assert counted == dit_pass_flops(config, rows, 1, slots, outputs=False) < 0.9 * full
    assert dream_step_flops(config, rows, 2, cache.slots, commit_outputs=False) == 2 * full + counted
