"""The Stable-Baselines3 adapter: SB3's checker, the VecEnv contract (same-step autoreset), and PPO learning in a dream.

The worlds here are random-weight 64x64 models (SB3's image checks and NatureCNN want at least 36x36) with 16-pixel
patches, so a frame is 16 tokens and a step costs milliseconds.
"""
import warnings

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor

from tiny_world import FRAME, make_world
from world_env.env import WorldModelEnv
from world_env.sb3 import SB3DreamVecEnv



def is_prompt_frame(world, frame) -> bool:
    """Every episode starts on the last frame of one of the checkpoint's prompt clips."""
    return any(np.array_equal(frame, last) for last in world.prompts["frames"][:, -1].numpy())


def test_single_env_passes_sb3_check_env():
    env = WorldModelEnv(make_world(), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, warn=True)
    checker_warnings = [str(w.message) for w in caught if "env_checker" in w.filename]
    assert checker_warnings == []


def test_termination_resets_in_the_same_step():
    world = make_world(termination_bias=20.0)  # every step ends the episode
    venv = SB3DreamVecEnv(world, num_envs=3, device="cpu")
    obs = venv.reset()
    assert obs.shape == (3, *FRAME, 3) and obs.dtype == np.uint8
    obs, rewards, dones, infos = venv.step(np.array([0, 1, 2]))
    assert rewards.dtype == np.float32 and rewards.shape == (3,)
    assert dones.dtype == np.bool_ and dones.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is False
        terminal = info["terminal_observation"]
        assert terminal.shape == (*FRAME, 3) and terminal.dtype == np.uint8
        assert not is_prompt_frame(world, terminal)  # a generated frame ...
        assert is_prompt_frame(world, obs[i])  # ... and the next episode's first frame is returned instead


def test_time_limit_is_a_truncation_with_the_last_frame_kept():
    world = make_world()
    venv = SB3DreamVecEnv(world, num_envs=2, device="cpu", max_episode_steps=3)
    venv.reset()
    for _ in range(2):
        obs, _, dones, infos = venv.step(np.array([1, 2]))
        assert not dones.any() and all("terminal_observation" not in info for info in infos)
    obs, _, dones, infos = venv.step(np.array([1, 2]))
    assert dones.all()
    assert all(info["TimeLimit.truncated"] is True for info in infos)
    assert all(is_prompt_frame(world, frame) for frame in obs)
    assert not any(is_prompt_frame(world, info["terminal_observation"]) for info in infos)
    obs, _, dones, _ = venv.step(np.array([[0], [1]]))  # (N, 1) actions, as some SB3 policies give them
    assert not dones.any()


def test_seed_makes_rollouts_repeat_and_options_give_prompts():
    world = make_world()
    venv = SB3DreamVecEnv(world, num_envs=2, device="cpu")

    def rollout(seed):
        venv.seed(seed)
        frames = [venv.reset()]
        for action in ([0, 1], [2, 2], [1, 0]):
            frames.append(venv.step(np.array(action))[0])
        return np.stack(frames)

    first = rollout(7)
    assert np.array_equal(first, rollout(7))
    assert not np.array_equal(first, rollout(8))

    clip = np.full((2, *FRAME, 3), 17, np.uint8)
    venv.set_options({"prompt": {"frames": clip, "actions": np.array([0, 1])}})
    obs = venv.reset()
    assert (obs == 17).all()
    assert not (venv.reset() == 17).all()  # options are used by one reset only
    venv.set_options([{"prompt": {"frames": clip + i}} for i in range(2)])
    assert [int(frame.max()) for frame in venv.reset()] == [17, 18]
    venv.set_options({"reset_mask": np.array([True, False])})
    with pytest.raises(ValueError, match="prompt"):
        venv.reset()


def test_monitor_frame_stack_and_rendering_compose():
    venv = SB3DreamVecEnv(make_world(), num_envs=2, device="cpu", max_episode_steps=2)
    assert venv.render_mode == "rgb_array" and venv.metadata["render_fps"] == 10
    stacked = VecFrameStack(VecMonitor(venv), n_stack=2)
    obs = stacked.reset()
    assert obs.shape == (2, *FRAME, 6)
    stacked.step(np.array([0, 1]))
    obs, _, dones, infos = stacked.step(np.array([0, 1]))
    assert dones.all()
    assert [info["episode"]["l"] for info in infos] == [2, 2]
    assert infos[0]["terminal_observation"].shape == (*FRAME, 6)
    grid = venv.render("rgb_array")
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.size == 2 * 64 * 64 * 3  # both frames, tiled
    assert venv.get_attr("max_episode_steps") == [2, 2]


@pytest.mark.parametrize("algorithm", ["PPO", "DQN"])
def test_sb3_algorithms_train_through_episode_ends(algorithm):
    torch.set_num_threads(1)
    venv = SB3DreamVecEnv(make_world(termination_bias=20.0), num_envs=2, device="cpu", speculation_depth=1)
    if algorithm == "PPO":
        model = PPO("CnnPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    else:
        model = DQN("CnnPolicy", venv, buffer_size=64, learning_starts=8, train_freq=4, batch_size=8, seed=0,
                    device="cpu")
    model.learn(32)
    assert model.num_timesteps >= 32
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (2,)


def test_ppo_cnn_policy_learns_the_rewarded_action():
    # Reward ~1 after action 1 and ~0 after actions 0 and 2, set by hand in the outcome head (see make_world):
    # training a world model first would take longer than the policy learning this test is about.
    torch.set_num_threads(1)
    world = make_world(rewarded_action=1)
    venv = SB3DreamVecEnv(world, num_envs=4, device="cpu", max_episode_steps=16)
    venv.reset()
    _, rewards, _, _ = venv.step(np.array([0, 1, 2, 1]))
    assert rewards[[1, 3]].min() > 0.8 and np.abs(rewards[[0, 2]]).max() < 0.2

    venv.seed(0)
    model = PPO("CnnPolicy", venv, n_steps=32, batch_size=64, n_epochs=4, learning_rate=1e-3, gamma=0.9, seed=0,
                device="cpu")
    obs = model.env.reset()

    def probability_of_rewarded_action() -> float:
        with torch.no_grad():
            tensor, _ = model.policy.obs_to_tensor(obs)
            return model.policy.get_distribution(tensor).distribution.probs[:, 1].mean().item()

    before = probability_of_rewarded_action()
    model.learn(384)
    after = probability_of_rewarded_action()
    assert before == pytest.approx(1 / 3, abs=0.05)
    assert after > 0.6, (before, after)


def test_video_recorder_dependency_is_declared():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    # SB3's VecVideoRecorder imports moviepy at construction; the extra that brings it is named in the README.
    assert any(req.startswith("moviepy") for req in pyproject["project"]["optional-dependencies"]["video"])
