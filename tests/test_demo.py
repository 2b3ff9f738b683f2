"""The main job (scripts/demo.py) end to end on a tiny world model over a real Gymnasium game."""
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from tiny_world import make_tiny_world
from world_env.demo import DemoConfig, run_demo


@pytest.fixture
def cartpole_world_dir(tmp_path):
    world = make_tiny_world(action_space={"type": "Discrete", "n": 2, "start": 0}, window_frames=8,
                            previous_frame_input=True)
    world.info.game = "gym:CartPole-v1"
    path = tmp_path / "world"
    world.save_pretrained(path)
    return path


def test_demo_writes_video_plot_and_figures(cartpole_world_dir, tmp_path):
    config = DemoConfig(checkpoint=str(cartpole_world_dir), num_envs=3, steps=6, prompt_frames=3,
                        out=str(tmp_path / "demo"), device="cpu", video_format="gif")
    lines = []
    result = run_demo(config, log=lines.append)
    out = tmp_path / "demo"
    assert {p.name for p in out.iterdir()} == {"demo.gif", "demo.json", "demo.png"}
    video = imageio.mimread(out / "demo.gif")
    # real | dream | difference, side by side, 4x upscaled 16x16 frames with 2-pixel gaps
    assert video[0].shape[:2] == (16 * 4, (3 * 16 + 2 * 2) * 4)
    assert len(video) == result["compared_steps"] + 1 and 1 <= result["compared_steps"] <= 6
    assert len(result["psnr_dream_vs_real"]) == result["compared_steps"]
    assert result["dream_env_steps_per_s"] > 0 and result["real_steps_per_s"] > 0
    assert json.loads((out / "demo.json").read_text())["sampler_steps"] == 2
    assert any("env-steps/s" in line for line in lines) and any("steps/s" in line for line in lines)
    # CartPole pays +1 a step; the tiny random model's head pays something: both counted over the compared steps
    assert result["rewards"]["real"] == result["compared_steps"] and any("rewards over" in line for line in lines)
    assert 0.0 <= result["rewards"]["dream_positive_per_100_steps"] <= 100.0


def test_demo_dream_env_zero_starts_from_the_real_prompt(cartpole_world_dir, tmp_path):
    # Same seed, same outputs: the real game, the prompt and every dream frame are deterministic per seed.
    kwargs = dict(checkpoint=str(cartpole_world_dir), num_envs=2, steps=4, prompt_frames=2, device="cpu",
                  video_format="gif")
    a = run_demo(DemoConfig(out=str(tmp_path / "a"), **kwargs), log=lambda _: None)
    b = run_demo(DemoConfig(out=str(tmp_path / "b"), **kwargs), log=lambda _: None)
    assert a["psnr_dream_vs_real"] == b["psnr_dream_vs_real"]
    first = imageio.mimread(tmp_path / "a" / "demo.gif")[0][:, :, :3]
    real, dream = first[:, :64], first[:, 72:136]
    assert np.array_equal(real, dream)  # frame 0 of both is the last real prompt frame


def test_bad_config():
    with pytest.raises(ValueError, match="num_envs"):
        run_demo(DemoConfig(num_envs=0))
