"""The dream env's Gymnasium contract: spaces, autoreset modes, seeding, errors, speculation, long rollouts."""
import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import world_env  # noqa: F401  (registers the ids)
from generator.codec import float_to_frames
from tiny_world import make_tiny_world
from world_env.env import WorldModelEnv, WorldModelVecEnv


def sticky_actions(steps, num_envs, n=5, mean_repeat=3, seed=0):
    rng = np.random.default_rng(seed)
    current = rng.integers(0, n, num_envs)
    out = []
    for _ in range(steps):
        change = rng.random(num_envs) < 1 / mean_repeat
        current = np.where(change, rng.integers(0, n, num_envs), current)
        out.append(current.copy())
    return np.stack(out)


def rollout(env, seeds, actions):
    obs, _ = env.reset(seed=seeds)
    frames = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        frames.append(obs)
    return np.stack(frames)


def test_single_env_passes_gymnasium_check_env(tiny_world):
    env = WorldModelEnv(tiny_world, device="cpu")
    check_env(env, skip_render_check=True)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Discrete(5)


def test_make_and_make_vec_from_the_registry(tiny_checkpoint):
    env = gymnasium.make("nextframe/WorldModel-v0", checkpoint=str(tiny_checkpoint), device="cpu")
    obs, _ = env.reset(seed=1)
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8
    env.close()
    vec = gymnasium.make_vec("nextframe/Crafter-v0", num_envs=3, checkpoint=str(tiny_checkpoint), device="cpu",
                             max_episode_steps=2)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 16, 16, 3)
    assert isinstance(vec.metadata["autoreset_mode"], AutoresetMode)
    vec.step(np.zeros(3, dtype=np.int64))
    _, _, _, truncated, _ = vec.step(np.zeros(3, dtype=np.int64))
    assert truncated.all()
    vec.close()


def test_shipped_model_missing_gives_a_clear_error(monkeypatch, tmp_path):
    import world_env.assets as assets

    monkeypatch.setattr(assets, "DEFAULT_MODEL", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        WorldModelVecEnv(None, device="cpu")


def test_next_step_autoreset():
    world = make_tiny_world(termination_bias=20.0)
    env = WorldModelVecEnv(world, num_envs=2, device="cpu")
    first, _ = env.reset(seed=[3, 4])
    obs, rewards, terminated, truncated, _ = env.step(np.array([1, 2]))
    assert terminated.all() and not truncated.any()
    obs2, rewards2, terminated2, truncated2, _ = env.step(np.array([1, 2]))  # reset step: action ignored
    assert not terminated2.any() and (rewards2 == 0).all()
    # The autoreset frame is the next episode's first frame, as a plain reset() would give, not the ending frame.
    reference = WorldModelVecEnv(world, num_envs=2, device="cpu")
    reference.reset(seed=[3, 4])
    next_episode, _ = reference.reset()
    assert np.array_equal(obs2, next_episode) and not np.array_equal(obs2, obs)
    obs3, _, terminated3, _, _ = env.step(np.array([1, 2]))
    assert terminated3.all()
    assert np.array_equal(obs3, reference.step(np.array([1, 2]))[0])


def test_same_step_autoreset_reports_final_obs():
    env = WorldModelVecEnv(make_tiny_world(termination_bias=20.0), num_envs=2, device="cpu",
                           autoreset_mode=AutoresetMode.SAME_STEP)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset(seed=0)
    obs, _, terminated, _, infos = env.step(np.array([0, 1]))
    assert terminated.all()
    assert infos["_final_obs"].all()
    assert infos["final_obs"][0].shape == (16, 16, 3)
    assert not np.array_equal(infos["final_obs"][0], obs[0])  # obs is already the next episode's first frame


def test_disabled_autoreset_needs_a_masked_reset():
    env = WorldModelVecEnv(make_tiny_world(termination_bias=20.0), num_envs=2, device="cpu",
                           autoreset_mode="DISABLED", max_episode_steps=None)
    env.reset(seed=0)
    env.step(np.array([0, 0]))
    with pytest.raises(RuntimeError, match="reset_mask"):
        env.step(np.array([0, 0]))
    obs, _ = env.reset(options={"reset_mask": np.array([True, True])})
    env.step(np.array([1, 1]))


def test_reset_mask_leaves_other_envs_untouched():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=3, device="cpu", autoreset_mode="DISABLED")
    env.reset(seed=10)
    before, *_ = env.step(np.array([1, 2, 3]))
    after, _ = env.reset(options={"reset_mask": np.array([False, True, False])})
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[2], before[2])
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([1, 0, 1])})


def close_frames(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float reassociation: batch composition changes the order of sums, so a pixel may round to the
    next grey level (within one level, on a tiny fraction of pixels; see docs/architecture.md)."""
    difference = np.abs(a.astype(int) - b.astype(int))
    return difference.max() <= 1 and (difference == 0).mean() > 0.999


@pytest.mark.parametrize("previous_frame_input", [False, True])
def test_masked_reset_and_autoreset_leave_the_other_envs_future_frames_alone(previous_frame_input):
    world = make_tiny_world(previous_frame_input=previous_frame_input)
    actions = sticky_actions(9, 3, seed=4)

    def play(reset_row_1_at: int | None):
        env = WorldModelVecEnv(world, num_envs=3, device="cpu", max_episode_steps=3)
        frames = [env.reset(seed=[1, 2, 3])[0]]
        for t, a in enumerate(actions):
            if t == reset_row_1_at:  # row 1 restarts: its episodes then end (and autoreset) out of step with the others
                env.reset(options={"reset_mask": np.array([False, True, False])})
            frames.append(env.step(a)[0])
        return np.stack(frames)

    plain, partly_reset = play(None), play(2)
    assert close_frames(partly_reset[:, [0, 2]], plain[:, [0, 2]])
    assert not close_frames(partly_reset[3:, 1], plain[3:, 1])


def test_two_seeds_with_the_same_prompt_give_different_frames():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu")
    prompt = {"frames": np.full((2, 16, 16, 3), 90, np.uint8), "actions": np.array([0, 1])}
    env.reset(seed=[1, 2], options={"prompt": prompt})
    obs, *_ = env.step(np.array([3, 3]))  # same prompt, same action: only the noise seed differs
    assert np.abs(obs[0].astype(int) - obs[1].astype(int)).mean() > 5
    again = WorldModelVecEnv(make_tiny_world(), num_envs=1, device="cpu")
    again.reset(seed=[2], options={"prompt": prompt})
    assert close_frames(again.step(np.array([3]))[0][0], obs[1])


@pytest.mark.parametrize("previous_frame_input", [False, True])
def test_identical_seeds_give_identical_rollouts_whatever_the_batch(previous_frame_input):
    world = make_tiny_world(previous_frame_input=previous_frame_input)
    actions = sticky_actions(8, 3)
    together = rollout(WorldModelVecEnv(world, num_envs=3, device="cpu"), [7, 8, 9], actions)
    again = rollout(WorldModelVecEnv(world, num_envs=3, device="cpu"), [7, 8, 9], actions)
    assert np.array_equal(together, again)
    alone = rollout(WorldModelVecEnv(world, num_envs=1, device="cpu"), [8], actions[:, 1:2])
    reordered = rollout(WorldModelVecEnv(world, num_envs=2, device="cpu"), [8, 99], np.stack([actions[:, 1], actions[:, 0]], 1))
    assert close_frames(alone[:, 0], together[:, 1]) and close_frames(reordered[:, 0], together[:, 1])


def test_row_workers_give_the_frames_of_one_batch_and_resolve_per_device(monkeypatch):
    """Shards of the batch stepped on worker threads at once (views of one KV cache) give each row the frames the
    whole batch gives (up to float rounding), with resets, autoresets and a second pass over the same cache."""
    from world_env.dream import resolve_workers

    world = make_tiny_world(previous_frame_input=True)
    actions = sticky_actions(10, 5, seed=2)
    plain = rollout(WorldModelVecEnv(world, num_envs=5, device="cpu", workers=1, max_episode_steps=4),
                    [1, 2, 3, 4, 5], actions)
    sharded_env = WorldModelVecEnv(world, num_envs=5, device="cpu", workers=2, max_episode_steps=4)
    assert sharded_env.core.workers == 2
    sharded = rollout(sharded_env, [1, 2, 3, 4, 5], actions)
    assert sharded_env.core._row_pool is not None  # the shards did run on the pool
    assert close_frames(sharded, plain)
    assert np.array_equal(sharded, rollout(WorldModelVecEnv(world, num_envs=5, device="cpu", workers=2,
                                                            max_episode_steps=4), [1, 2, 3, 4, 5], actions))
    sharded_env.close()
    assert sharded_env.core._row_pool is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert resolve_workers(None, 16, torch.device("cpu")) == 2
    assert resolve_workers(None, 1, torch.device("cpu")) == 1  # nothing to split
    assert resolve_workers(None, 16, torch.device("cuda")) == 1
    with pytest.raises(ValueError, match="workers must be an int from 1 to num_envs"):
        WorldModelVecEnv(world, num_envs=2, device="cpu", workers=3)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorldModelVecEnv(world, num_envs=2, device="cpu", workers=0)


def test_a_kv_cache_shard_is_a_view_of_its_rows():
    from generator.kv_cache import KVCache

    cache = KVCache(2, 5, 3, 4, 2, 8)
    shard = cache.shard(1, 3)
    shard.write(0, None, torch.tensor([[4], [4]]), torch.ones(2, 2, 1, 4, 8), torch.full((2, 2, 1, 4, 8), 2.0))
    shard.commit(None, torch.tensor([[4], [4]]))
    assert cache.keys[0][1:3, :, 1].eq(1).all() and cache.values[0][1:3, :, 1].eq(2).all()
    assert cache.keys[0][[0, 3, 4]].eq(0).all()
    assert cache.latest_position().tolist() == [-1, 4, 4, -1, -1]
    with pytest.raises(ValueError, match="not within the cache's 5 rows"):
        cache.shard(3, 6)


def test_bad_actions_raise_clear_errors_and_leave_the_env_usable():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="outside"):
        env.step(np.array([1, 5]))
    obs, *_ = env.step(np.array([1, 4]))
    assert obs.shape == (2, 16, 16, 3)


@pytest.mark.parametrize(
    "space, good, bad",
    [
        ({"type": "MultiDiscrete", "nvec": [2, 3]}, [[1, 2]], [[1, 3]]),
        ({"type": "MultiDiscrete", "nvec": [2, 2], "start": [1, 1]}, [[2, 2]], [[0, 1]]),
        ({"type": "Box", "shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0], "dtype": "float32"},
         [[0.5, -0.5]], [[0.5, 1.5]]),
    ],
)
def test_other_action_spaces(space, good, bad):
    env = WorldModelVecEnv(make_tiny_world(action_space=space), num_envs=1, device="cpu")
    env.reset(seed=0)
    env.step(np.array(good, dtype=np.float32 if space["type"] == "Box" else np.int64))
    with pytest.raises(ValueError, match="outside"):
        env.step(np.array(bad, dtype=np.float32 if space["type"] == "Box" else np.int64))


@pytest.mark.parametrize(
    "speculation, previous_frame_input, solver",
    [("sync", False, "euler"), ("async", False, "euler"), ("sync", True, "euler"), ("sync", True, "consistency")],
)
def test_speculation_matches_plain_stepping_and_rolls_back(speculation, previous_frame_input, solver):
    world = make_tiny_world(previous_frame_input=previous_frame_input, sampler_steps=3)
    world.sampling.solver = solver  # a few-step distilled student samples with re-noising between steps
    actions = sticky_actions(12, 4, mean_repeat=3, seed=1)
    plain = rollout(WorldModelVecEnv(world, num_envs=4, device="cpu"), [1, 2, 3, 4], actions)
    spec_env = WorldModelVecEnv(world, num_envs=4, device="cpu", speculation_depth=2, speculation=speculation)
    speculative = rollout(spec_env, [1, 2, 3, 4], actions)
    stats = spec_env.speculation_stats
    assert stats["accepted"] > 0 and stats["rejected"] > 0 and stats["mode"] == speculation
    assert close_frames(speculative, plain)
    spec_env.core.wait()
    assert all(len(queue) == 2 for queue in spec_env.core.queues)  # speculation never holds more than its depth


def test_auto_speculation_switching_on_and_off_mid_episode_stays_exact(monkeypatch):
    """Whatever the controller decides and whenever, the frames are plain stepping's; the cache carries the
    speculation slots only while speculating."""
    world = make_tiny_world(previous_frame_input=True, sampler_steps=2)
    actions = sticky_actions(16, 3, mean_repeat=3, seed=2)
    plain = rollout(WorldModelVecEnv(world, num_envs=3, device="cpu", speculation_depth=0), [1, 2, 3], actions)
    env = WorldModelVecEnv(world, num_envs=3, device="cpu", speculation_depth=2)  # speculation="auto"
    core = env.core
    window = world.dit.config.window_frames
    assert core.speculation == "auto" and core.cache.slots == window - 1
    schedule = iter([False, True, True, True, True, False, False, True, True, False, True, True, True, True, False,
                     True])
    slots = []

    def decide(now, repeated):
        slots.append(core.cache.slots)
        return next(schedule)

    monkeypatch.setattr(core.controller, "step_started", decide)
    speculative = rollout(env, [1, 2, 3], actions)
    stats = env.speculation_stats
    assert stats["accepted"] > 0 and stats["rejected"] > 0 and stats["speculating_steps"] == 11
    assert close_frames(speculative, plain)
    # slots seen at each step's start: the previous step's decision (extra slots only while speculating)
    assert slots[1] == window - 1 and slots[2] == window + 1 and slots[6] == window - 1 and slots[8] == window + 1


def test_auto_speculation_stays_off_without_think_time():
    """A loop that steps back to back leaves no time to hide speculation in: auto never speculates."""
    world = make_tiny_world(previous_frame_input=True, sampler_steps=1)
    env = WorldModelVecEnv(world, num_envs=2, device="cpu", speculation_depth=2)
    rollout(env, [1, 2], sticky_actions(40, 2, mean_repeat=3))
    stats = env.speculation_stats
    assert stats["speculating_steps"] == 0 and stats["speculated"] == 0 and stats["generated"] == 80
    assert stats["auto"]["bound"] < 1.0  # even its optimistic bound says speculation would lose


def test_observations_are_not_aliased_and_torch_output_stays_on_device():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu")
    first, _ = env.reset(seed=0)
    keep = first.copy()
    env.step(np.array([1, 1]))
    assert np.array_equal(first, keep)
    torch_env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu", output="torch")
    obs, _ = torch_env.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.uint8


def test_user_prompt_starts_the_episode_from_it():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu")
    frames = np.full((2, 16, 16, 3), 77, dtype=np.uint8)
    obs, _ = env.reset(seed=0, options={"prompt": {"frames": frames, "actions": np.array([0, 1])}})
    assert (obs == 77).all()
    with pytest.raises(ValueError, match="prompt frames"):
        env.reset(options={"prompt": {"frames": np.zeros((2, 8, 8, 3), np.uint8)}})


def test_long_rollout_keeps_memory_bounded_and_finite():
    world = make_tiny_world(sampler_steps=1)
    world.dit.blocks = world.dit.blocks[:1]  # one layer: the test is about memory over 10,000 steps, not depth
    world.dit.config.depth = 1
    env = WorldModelVecEnv(world, num_envs=1, device="cpu")
    env.reset(seed=0)
    cache = env.core.cache
    pointers = [k.data_ptr() for k in cache.keys]
    actions = sticky_actions(10_000, 1, seed=3)
    for a in actions:
        obs, rewards, *_ = env.step(a)
    assert [k.data_ptr() for k in cache.keys] == pointers
    assert env.core.positions[0] == 10_000 + 1
    assert np.isfinite(rewards).all() and obs.dtype == np.uint8
    assert all(torch.isfinite(k).all() for k in cache.keys)


def test_record_episode_statistics_and_video(tmp_path):
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    env = RecordEpisodeStatistics(WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu", max_episode_steps=3))
    env.reset(seed=0)
    episodes = []
    for _ in range(4):
        _, _, _, _, infos = env.step(np.array([0, 1]))
        if "episode" in infos:
            episodes.append(infos["episode"]["l"][infos["_episode"]])
    assert episodes and episodes[0].tolist() == [3, 3]

    from world_env.recording import record_video

    single = WorldModelEnv(make_tiny_world(), device="cpu", render_mode="rgb_array")
    path = record_video(single, tmp_path / "dream.gif", steps=5, seed=0)
    import imageio.v3 as iio

    assert iio.imread(path, index=None).shape[0] == 6


def test_bf16_precision_stays_close_to_fp32_is_deterministic_and_keeps_a_bf16_cache():
    world = make_tiny_world(sampler_steps=2)
    runs = {}
    for precision in ("fp32", "bf16", "bf16"):
        env = WorldModelVecEnv(world, num_envs=3, device="cpu", precision=precision)
        obs, _ = env.reset(seed=5)
        frames = [obs]
        for _ in range(5):
            obs, reward, *_ = env.step(np.array([0, 1, 2]))
            frames.append(obs)
        assert env.core.cache.keys[0].dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert reward.dtype == np.float32 or reward.dtype == np.float64
        video = np.stack(frames).astype(np.int16)
        if precision in runs:
            assert np.array_equal(video, runs[precision])  # same seed, same device: same frames
        runs[precision] = video
    difference = np.abs(runs["fp32"] - runs["bf16"])
    assert difference.max() <= 8 and difference.mean() < 1.0  # grey levels of 255
    assert difference[1:].max() > 0  # bf16 really ran
    with pytest.raises(ValueError, match="precision"):
        WorldModelVecEnv(world, num_envs=1, device="cpu", precision="fp16")


@pytest.mark.parametrize("kind", ["pixels", "tiles", "tiles carried"])
def test_env_frames_equal_the_evaluation_rollout(kind):
    """The env and the open-loop evaluation step the model through the same autoregressive step: same seeds, same
    prompt, same actions, same frames (and the same sampled rewards). With carried tiles the prompt is drawn under
    another light (every pixel a little off its code), so what is carried shows."""
    from generator.rollout import open_loop_rollout
    from generator.sampler import mix_seed
    from tiny_world import make_tiny_tile_world

    world = make_tiny_world(previous_frame_input=True) if kind == "pixels" else make_tiny_tile_world()[0]
    prompt = {"frames": world.prompts["frames"][:2].numpy(), "actions": world.prompts["actions"][:2].numpy()}
    if kind == "tiles carried":
        world.sampling.carry_tiles = True
        prompt["frames"] = np.clip(prompt["frames"].astype(np.int16) + 3, 0, 255).astype(np.uint8)
    actions = np.array([[1, 3], [0, 2], [4, 4], [2, 1], [3, 0]])
    env = WorldModelVecEnv(world, num_envs=2, device="cpu")
    env.reset(seed=[5, 9], options={"prompt": prompt})
    frames, rewards = [], []
    for step in actions:
        obs, reward, *_ = env.step(step)
        frames.append(obs)
        rewards.append(reward)
    env.close()
    seeds = [mix_seed(5, 0), mix_seed(9, 0)]
    has_action = torch.tensor([[False, True]] * 2)
    out = open_loop_rollout(world, torch.from_numpy(prompt["frames"]), torch.from_numpy(prompt["actions"]),
                            torch.from_numpy(actions.T.copy()), seeds, prompt_has_action=has_action)
    assert np.array_equal(np.stack(frames, axis=1), out["frames"].numpy())
    if kind == "tiles carried":  # some tiles kept the prompt's own pixels, and only those differ from their codes
        decoded = float_to_frames(world.codec.decode(out["latents"]))
        assert 0 < int((out["frames"] != decoded).any(-1).sum()) < out["frames"][..., 0].numel()


ASYNC_SCRIPT_WITHOUT_CLOSE = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from tiny_world import make_tiny_world
from world_env.env import WorldModelVecEnv
env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu", speculation_depth=16, async_speculation=True)
env.reset(seed=0)
env.step(np.zeros(2, dtype=np.int64))
print("script ends while speculation runs")
"""


def test_async_speculation_ends_cleanly_at_exit_without_close():
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=str(tests.parent), OMP_NUM_THREADS="1")
    script = ASYNC_SCRIPT_WITHOUT_CLOSE.format(tests=str(tests))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a daemon worker aborted here: "terminate called ..." (134)
    assert "script ends" in proc.stdout


def test_async_speculation_worker_stops_on_close_and_on_garbage_collection():
    import gc
    import threading

    def workers():
        return [t for t in threading.enumerate() if t.name.startswith("dream-speculation")]

    assert not workers()
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu", speculation_depth=2, async_speculation=True)
    env.reset(seed=0)
    env.step(np.zeros(2, dtype=np.int64))
    assert len(workers()) == 1
    env.close()
    assert not workers()
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu", speculation_depth=2, async_speculation=True)
    env.reset(seed=0)
    env.step(np.zeros(2, dtype=np.int64))
    thread = workers()[0]
    del env
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_reset_seeds_follow_the_gymnasium_vector_api():
    world = make_tiny_world()
    actions = np.array([1, 2, 3])

    def reset_then_step(env, **kwargs):
        env.reset(**kwargs)
        return env.step(actions)[0]

    partly, plain = (WorldModelVecEnv(world, num_envs=3, device="cpu") for _ in range(2))
    reset_then_step(partly, seed=[5, 6, 7])
    reset_then_step(plain, seed=[5, 6, 7])
    kept = reset_then_step(partly, seed=[None, 1, 2])  # env 0 is not reseeded: it starts its next episode
    next_episode = reset_then_step(plain)
    fresh = reset_then_step(plain, seed=np.array([9, 1, 2]))
    assert np.array_equal(kept[0], next_episode[0])
    assert np.array_equal(kept[1:], fresh[1:])
    assert np.array_equal(reset_then_step(partly, seed=np.int64(4)), reset_then_step(plain, seed=[4, 5, 6]))


@pytest.mark.parametrize(
    "seed, error, match",
    [(1.5, TypeError, "1.5"), ([1.5, 2, 3], TypeError, r"seed\[0\].*1.5"), (True, TypeError, "True"),
     ([1, False, 3], TypeError, r"seed\[1\].*False"), (-1, ValueError, "-1"), ([0, -2, 1], ValueError, "-2"),
     ("abc", TypeError, "abc"), ([1, 2], ValueError, "2 entries for 3 envs")],
)
def test_bad_seeds_raise_errors_naming_the_value(seed, error, match):
    env = WorldModelVecEnv(make_tiny_world(), num_envs=3, device="cpu")
    with pytest.raises(error, match=match):
        env.reset(seed=seed)
    with pytest.raises(gymnasium.error.Error, match="-1"):  # the single env refuses negative seeds too
        WorldModelEnv(make_tiny_world(), device="cpu").reset(seed=-1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [(dict(num_envs=0), ValueError, "num_envs"), (dict(sampler_steps=0), ValueError, "sampler_steps"),
     (dict(sampler_steps=2.0), TypeError, "sampler_steps"), (dict(max_episode_steps=0), ValueError, "max_episode"),
     (dict(max_episode_steps=-5), ValueError, "-5"), (dict(autoreset_mode="bogus"), ValueError, "bogus"),
     (dict(autoreset_mode=1), TypeError, "autoreset_mode"), (dict(speculation_depth=1.5), TypeError, "speculation"),
     (dict(speculation_depth=-1), ValueError, "speculation_depth"), (dict(output="jax"), ValueError, "output"),
     (dict(precision="fp16"), ValueError, "precision")],
)
def test_bad_constructor_arguments_raise_errors_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        WorldModelVecEnv(make_tiny_world(), device="cpu", **kwargs)


def test_autoreset_mode_names_are_accepted_in_any_case():
    env = WorldModelVecEnv(make_tiny_world(), device="cpu", autoreset_mode="same_step")
    assert env.autoreset_mode == AutoresetMode.SAME_STEP


def test_step_and_reset_after_close_raise():
    env = WorldModelVecEnv(make_tiny_world(), num_envs=2, device="cpu")
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match="after close"):
        env.step(np.array([0, 0]))
    with pytest.raises(RuntimeError, match="after close"):
        env.reset(seed=0)
    single = WorldModelEnv(make_tiny_world(), device="cpu")
    single.reset(seed=0)
    single.close()
    with pytest.raises(RuntimeError, match="after close"):
        single.step(0)


def test_world_model_id_requires_a_checkpoint(tiny_checkpoint):
    with pytest.raises(TypeError, match="checkpoint="):
        gymnasium.make("nextframe/WorldModel-v0", device="cpu")
    with pytest.raises(TypeError, match="checkpoint="):
        gymnasium.make_vec("nextframe/WorldModel-v0", num_envs=2, device="cpu")
    env = gymnasium.make_vec("nextframe/WorldModel-v0", num_envs=2, checkpoint=str(tiny_checkpoint), device="cpu")
    assert env.reset(seed=0)[0].shape == (2, 16, 16, 3)


@pytest.mark.parametrize("sampler_steps", [1, 2])
def test_one_pass_env_equals_the_recompute_reference(sampler_steps):
    """`SamplingConfig.commit_pass=False`: the env caches each frame's final sampling pass; its frames and rewards
    are those of recomputing every frame from the whole history without a cache, with speculation too."""
    from generator.codec import float_to_frames
    from test_model import rollout_one_pass_recompute

    world = make_tiny_world(previous_frame_input=True, sampler_steps=sampler_steps)
    world.sampling.commit_pass = False
    world.dit.config.prediction = "x"
    rng = np.random.default_rng(0)
    prompt = {"frames": rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8), "actions": rng.integers(0, 5, (2, 2))}
    actions = sticky_actions(7, 2, seed=3)  # 9 frames > window 4: the ring wraps
    runs = {}
    for speculation in ("off", "sync"):
        env = WorldModelVecEnv(world, num_envs=2, device="cpu", speculation_depth=0 if speculation == "off" else 2,
                               speculation="sync")
        obs, _ = env.reset(seed=[5, 6], options={"prompt": prompt})
        frames, rewards = [], []
        for a in actions:
            obs, reward, *_ = env.step(a)
            frames.append(obs)
            rewards.append(reward)
        runs[speculation] = np.stack(frames, 1), np.stack(rewards, 1)
        seeds = list(env.core.row_seeds)
    latents = world.codec.encode(torch.from_numpy(prompt["frames"]))
    x, rewards = rollout_one_pass_recompute(world.dit, seeds, latents, torch.from_numpy(prompt["actions"]),
                                            torch.from_numpy(actions.T.copy()), sampler_steps)
    with torch.no_grad():
        reference = float_to_frames(world.codec.decode(x)).numpy()
    for frames, env_rewards in runs.values():
        assert np.abs(frames.astype(int) - reference.astype(int)).max() <= 1
        assert np.mean(frames == reference) > 0.999
        np.testing.assert_allclose(env_rewards, rewards.numpy(), atol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "categorical"])
def test_one_pass_tile_model_runs_one_network_pass_per_step_and_repeats_with_the_seed(solver):
    from tiny_world import make_tiny_tile_world

    world, _ = make_tiny_tile_world(solver=solver)
    world.sampling.commit_pass = False
    with torch.no_grad():  # no episode ends: every step steps both envs
        world.dit.outcome_head[-1].weight[-1].zero_()
        world.dit.outcome_head[-1].bias[-1] = -20.0
    calls = []
    # passes over one new frame per row (a reset's prompt pass holds the prompt's frames)
    world.dit.register_forward_hook(lambda module, args, output: calls.append(1) if args[0].shape[1] == 1 else None)
    actions = sticky_actions(6, 2, seed=4)
    runs = []
    for _ in range(2):
        env = WorldModelVecEnv(world, num_envs=2, device="cpu")
        env.reset(seed=[3, 4])
        calls.clear()
        runs.append(np.stack([env.step(a)[0] for a in actions]))
        assert len(calls) == len(actions)  # no commit pass: one pass per step for both envs
    assert np.array_equal(runs[0], runs[1])
