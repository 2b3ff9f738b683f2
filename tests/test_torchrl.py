"""The TorchRL adapter: TorchRL's spec check, rollouts across episode ends, partial resets, seeding, a collector.

TorchRL is an optional extra (`nextframe[torchrl]`); without it these tests are skipped.
"""
import numpy as np
import pytest
import torch

torchrl = pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from tiny_world import make_tiny_world  # noqa: E402
from world_env.torchrl import make_torchrl_env  # noqa: E402


def is_prompt_frame(world, frame) -> bool:
    """Every episode starts on the last frame of one of the checkpoint's prompt clips."""
    return any(np.array_equal(frame, last) for last in world.prompts["frames"][:, -1].numpy())


def test_specs_pass_torchrl_check():
    env = make_torchrl_env(make_tiny_world(), num_envs=3, device="cpu", max_episode_steps=2)
    check_env_specs(env)
    assert env.batch_size == torch.Size([3])
    pixels = env.observation_spec["pixels"]
    assert pixels.shape == (3, 16, 16, 3) and pixels.dtype == torch.uint8
    assert env.action_spec.shape == (3,) and env.action_spec.space.n == 5
    assert env.reward_spec.shape == (3, 1) and env.reward_spec.dtype == torch.float32
    assert set(env.done_keys) == {"done", "terminated", "truncated"}
    env.close()


def test_rollout_keeps_the_last_frame_and_resets_after_a_time_limit():
    world = make_tiny_world()
    env = make_torchrl_env(world, num_envs=2, device="cpu", max_episode_steps=3)
    rollout = env.rollout(7, break_when_any_done=False)
    assert rollout.batch_size == (2, 7)
    truncated = rollout["next", "truncated"][..., 0]
    assert truncated[:, 2].all() and truncated[:, 5].all() and truncated.sum() == 4
    assert not rollout["next", "terminated"].any()
    for row in range(2):
        assert not is_prompt_frame(world, rollout["next", "pixels"][row, 2].numpy())  # the ending frame ...
        assert is_prompt_frame(world, rollout["pixels"][row, 3].numpy())  # ... then the next episode's start


def test_model_termination_ends_episodes():
    env = make_torchrl_env(make_tiny_world(termination_bias=20.0), num_envs=2, device="cpu")
    rollout = env.rollout(3, break_when_any_done=False)
    assert rollout["next", "terminated"].all() and rollout["next", "done"].all()
    assert not rollout["next", "truncated"].any()


def test_partial_reset_leaves_other_envs_alone():
    world = make_tiny_world()
    actions = torch.tensor([[1, 2, 3], [4, 0, 1]])

    def play(reset_between: bool):
        env = make_torchrl_env(world, num_envs=3, device="cpu")
        env.set_seed(11)
        state = env.reset()
        state = env.step(state.set("action", actions[0]))["next"]
        if reset_between:
            state = env.reset(state.set("_reset", torch.tensor([[False], [True], [False]])))
            assert is_prompt_frame(world, state["pixels"][1].numpy())
        return env.step(state.set("action", actions[1]))["next", "pixels"]

    plain, partly_reset = play(False), play(True)
    assert torch.equal(partly_reset[[0, 2]], plain[[0, 2]])
    assert not torch.equal(partly_reset[1], plain[1])


def test_set_seed_makes_rollouts_repeat():
    env = make_torchrl_env(make_tiny_world(), num_envs=2, device="cpu")
    actions = torch.tensor([[0, 1], [2, 2], [4, 3]])

    def play(seed):
        env.set_seed(seed)
        state = env.reset()
        frames = [state["pixels"]]
        for action in actions:
            state = env.step(state.set("action", action))["next"]
            frames.append(state["pixels"])
        return torch.stack(frames)

    assert torch.equal(play(5), play(5))
    assert not torch.equal(play(5), play(6))


def test_collector_gathers_batches_across_episode_ends():
    env = make_torchrl_env(make_tiny_world(), num_envs=2, device="cpu", max_episode_steps=3)
    collector = Collector(env, policy=None, frames_per_batch=8, total_frames=16)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    assert batches[0].batch_size == (2, 4) and batches[0]["next", "pixels"].dtype == torch.uint8
    assert torch.cat([b["next", "truncated"] for b in batches], 1).sum() == 4  # steps 3 and 6 of each env


def test_replay_starts_and_a_short_horizon_mark_truncated():
    from world_env.prompts import EpisodeList

    rng = np.random.default_rng(0)
    buffer = EpisodeList([{"frames": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
                           "actions": rng.integers(0, 5, 6)} for _ in range(2)])
    env = make_torchrl_env(make_tiny_world(), num_envs=2, device="cpu", max_episode_steps=2, prompt_source=buffer)
    rollout = env.rollout(4, break_when_any_done=False)
    assert rollout["next", "truncated"][..., 0].tolist() == [[False, True, False, True]] * 2
    assert not rollout["next", "terminated"].any()
    recorded = {frame.tobytes() for e in range(2) for frame in buffer.read_steps(e, 0, 6)["frames"].numpy()}
    assert all(rollout["pixels"][row, t].numpy().tobytes() in recorded for row in range(2) for t in (0, 2))
