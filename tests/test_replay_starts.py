"""Dream episodes started from recorded steps of real episodes (`world_env.prompts`), and short horizons that end
episodes by truncation: the first observation is the recorded frame, starts repeat per seed and ignore the batch,
SB3 bootstraps from the terminal observation."""
import gymnasium
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from generator.data import EpisodeWriter, open_datasets
from generator.sampler import mix_seed
from tiny_world import make_world
from tiny_world import make_tiny_world
from world_env.env import WorldModelVecEnv
from world_env.prompts import EpisodeList, ReplayStarts
from world_env.sb3 import SB3DreamVecEnv


def write_episodes(root, lengths, frame_size=(16, 16), n_actions=5, seed=0):
    """Episodes of random frames (each frame distinct) and random actions, episode j recorded with seed 100 + j."""
    rng = np.random.default_rng(seed)
    writer = EpisodeWriter(root, game="synthetic", frame_size=frame_size, action_space=gymnasium.spaces.Discrete(n_actions),
                           fps=10, policy={"name": "random"})
    for j, length in enumerate(lengths):
        actions = rng.integers(0, n_actions, length + 1)
        actions[0] = 0
        ended = np.arange(length + 1) == length
        writer.write({"frames": rng.integers(0, 256, (length + 1, *frame_size, 3), dtype=np.uint8), "actions": actions,
                      "rewards": np.zeros(length + 1, np.float32), "terminated": np.zeros(length + 1, bool),
                      "truncated": ended}, seed=100 + j)
    return root


def recorded_frame(data, episode, step):
    return data.read_steps(int(episode), int(step), int(step) + 1)["frames"][0].numpy()


def test_a_replay_start_shows_the_recorded_frame_and_repeats_per_seed(tmp_path):
    root = write_episodes(tmp_path / "data", [9, 4, 12, 1])
    data = open_datasets(root)
    world = make_tiny_world()  # window 4: at most 3 prompt frames
    env = WorldModelVecEnv(world, num_envs=5, device="cpu", prompt_source=str(root))
    obs, _ = env.reset(seed=7)
    starts = env.starts.copy()
    for i in range(5):
        episode, step = starts[i]
        assert 0 <= step < data.episode_lengths[episode]  # a state the real game goes on from
        assert np.array_equal(obs[i], recorded_frame(data, episode, step))
        assert env.core.positions[i] == step  # burn-in: the recorded frames up to the start, at their own steps
    actions = np.array([1, 2, 3, 4, 0])
    rollout = [env.step(actions)[0] for _ in range(3)]

    again = WorldModelVecEnv(world, num_envs=5, device="cpu", prompt_source=data)
    obs_again, _ = again.reset(seed=7)
    assert np.array_equal(obs_again, obs) and np.array_equal(again.starts, starts)
    assert all(np.array_equal(again.step(actions)[0], frames) for frames in rollout)

    alone = WorldModelVecEnv(world, num_envs=1, device="cpu", prompt_source=data)  # row 3 without the others
    obs_alone, _ = alone.reset(seed=[7 + 3])
    assert np.array_equal(alone.starts[0], starts[3]) and np.array_equal(obs_alone[0], obs[3])
    for frames in rollout:
        assert np.array_equal(alone.step(actions[3:4])[0][0], frames[3])

    other, _ = env.reset(seed=8)
    assert not np.array_equal(env.starts, starts)


def test_the_burn_in_commits_the_recorded_steps_and_actions_before_the_start(tmp_path):
    root = write_episodes(tmp_path / "data", [12])
    data = open_datasets(root)
    world = make_tiny_world()
    env = WorldModelVecEnv(world, num_envs=1, device="cpu", prompt_source=data, burn_in=2)
    seed = next(s for s in range(100) if ReplayStarts(data).start(mix_seed(s, 0))[1] >= 2)  # a start mid-episode
    env.reset(seed=[seed])
    episode, step = env.starts[0]
    rows = data.read_steps(int(episode), int(step) - 1, int(step) + 1)  # burn_in 2: the step before and the start
    manual = WorldModelVecEnv(world, num_envs=1, device="cpu")
    manual.reset(seed=[seed])
    manual.core.reset_rows([0], [mix_seed(seed, 0)], {"frames": rows["frames"][None], "actions": rows["actions"][None],
                                                       "has_action": torch.ones(1, 2, dtype=torch.bool),
                                                       "first_step": torch.tensor([int(step) - 1])})
    for action in (1, 4, 2):
        assert np.array_equal(env.step(np.array([action]))[0], manual.step(np.array([action]))[0])


def test_recent_episodes_are_drawn_with_their_weight_and_bad_settings_are_refused(tmp_path):
    buffer = EpisodeList([{"frames": np.zeros((6, 16, 16, 3), np.uint8), "actions": np.zeros(6, np.int64)}] * 8)
    newest = ReplayStarts(buffer, recent_weight=1.0, recent_fraction=0.25)
    assert {newest.start(seed)[0] for seed in range(200)} == {6, 7}
    weighted = ReplayStarts(buffer, recent_weight=0.7, recent_fraction=0.25)
    episodes = np.array([weighted.start(seed)[0] for seed in range(3000)])
    assert abs(np.mean(episodes >= 6) - 0.7) < 0.03 and set(episodes[episodes < 6]) == set(range(6))
    uniform = np.array([ReplayStarts(buffer).start(seed)[0] for seed in range(3000)])
    assert abs(np.mean(uniform >= 6) - 0.25) < 0.03

    world = make_tiny_world()
    with pytest.raises(ValueError, match="exceeds the model's window"):
        WorldModelVecEnv(world, device="cpu", prompt_source=buffer, burn_in=4)
    with pytest.raises(ValueError, match="recorded frames are"):
        WorldModelVecEnv(world, device="cpu", prompt_source=EpisodeList(
            [{"frames": np.zeros((3, 8, 8, 3), np.uint8), "actions": np.zeros(3, np.int64)}]))
    with pytest.raises(ValueError, match="at least one recorded episode"):
        ReplayStarts(EpisodeList())
    with pytest.raises(ValueError, match="burn_in applies"):
        WorldModelVecEnv(world, device="cpu", burn_in=2)


def test_a_replay_buffer_in_memory_starts_episodes_too():
    rng = np.random.default_rng(0)
    buffer = EpisodeList([{"frames": rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8),
                           "actions": rng.integers(0, 5, 7)} for _ in range(3)])
    env = WorldModelVecEnv(make_tiny_world(), num_envs=3, device="cpu", prompt_source=buffer, burn_in=3)
    obs, _ = env.reset(seed=1)
    for i, (episode, step) in enumerate(env.starts):
        assert np.array_equal(obs[i], buffer.read_steps(int(episode), int(step), int(step) + 1)["frames"][0].numpy())


def test_horizon_truncates_never_terminates_and_sb3_gets_the_terminal_observation(tmp_path):
    root = write_episodes(tmp_path / "data", [6, 8], frame_size=(64, 64), n_actions=3)
    data = open_datasets(root)
    world = make_world()
    venv = SB3DreamVecEnv(world, num_envs=2, device="cpu", max_episode_steps=3, prompt_source=data)
    plain = WorldModelVecEnv(world, num_envs=2, device="cpu", max_episode_steps=3, prompt_source=data,
                             autoreset_mode="disabled")
    venv.seed(3)
    plain.reset(seed=3)
    venv.reset()
    for t in range(3):
        obs, _, dones, infos = venv.step(np.array([1, 2]))
        frames, _, terminated, truncated, _ = plain.step(np.array([1, 2]))
        assert not terminated.any() and truncated.all() == (t == 2) and dones.all() == (t == 2)
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        assert np.array_equal(info["terminal_observation"], frames[i])  # the horizon's last imagined frame
        episode, step = venv.dream.starts[i]
        assert np.array_equal(obs[i], recorded_frame(data, episode, step))  # the next start, from the data

    ending = WorldModelVecEnv(make_world(termination_bias=20.0), num_envs=2, device="cpu", max_episode_steps=1,
                              prompt_source=data)
    ending.reset(seed=0)
    _, _, terminated, truncated, _ = ending.step(np.array([0, 1]))
    assert terminated.all() and not truncated.any()  # the model's termination, not the horizon's


def test_ppo_bootstraps_from_the_value_of_the_truncated_state(tmp_path):
    root = write_episodes(tmp_path / "data", [6, 8], frame_size=(64, 64), n_actions=3)
    torch.set_num_threads(1)
    venv = SB3DreamVecEnv(make_world(rewarded_action=1), num_envs=2, device="cpu", max_episode_steps=3,
                          prompt_source=str(root))
    model = PPO("CnnPolicy", venv, n_steps=4, batch_size=8, n_epochs=1, gamma=0.9, seed=0, device="cpu")

    class Check(BaseCallback):
        def _on_training_start(self):
            self.steps = []

        def _on_step(self):
            self.steps.append((self.locals["rewards"].copy(), self.locals["dones"].copy(), list(self.locals["infos"])))
            return True

        def _on_rollout_end(self):
            buffer = self.model.rollout_buffer
            truncated = 0
            for t, (rewards, dones, infos) in enumerate(self.steps):
                for i in range(2):
                    expected = rewards[i]
                    if dones[i]:
                        assert infos[i]["TimeLimit.truncated"]
                        terminal = self.model.policy.obs_to_tensor(infos[i]["terminal_observation"])[0]
                        with torch.no_grad():
                            expected += 0.9 * self.model.policy.predict_values(terminal)[0, 0].item()
                        truncated += 1
                    assert buffer.rewards[t, i] == pytest.approx(expected, abs=1e-5)
            assert truncated == 2  # each env's horizon ended once in 4 steps
            self.steps = []

    model.learn(8, callback=Check())


def test_the_dream_clock_is_the_episode_step_of_the_start(tmp_path):
    """Frame positions are episode steps (what a model with a day clock reads): a bank built from data records each
    clip's step, the env starts its rows there, and a user prompt may say its step."""
    from generator.pretrained import WorldModel, build_prompts

    root = write_episodes(tmp_path / "data", [20, 30])
    bank = build_prompts(str(root), context_frames=3, count=6)
    data = open_datasets(root, window=3)
    for k in range(6):  # each clip is the recorded window whose last step the bank names
        steps = bank["steps"][k].item()
        assert any(torch.equal(bank["frames"][k], data.read_steps(e, steps - 2, steps + 1)["frames"])
                   for e in range(2) if steps < data.episode_lengths[e] + 1)
    assert len(set(bank["steps"].tolist())) > 1
    world = make_tiny_world()
    world.prompts = {**{key: bank[key] for key in ("frames", "actions", "has_action")}, "steps": bank["steps"]}
    world.save_pretrained(tmp_path / "model")
    assert torch.equal(WorldModel.from_pretrained(tmp_path / "model").prompts["steps"], bank["steps"])
    env = WorldModelVecEnv(world, num_envs=4, device="cpu")
    env.reset(seed=3)
    assert np.array_equal(env.core.positions, env.starts[:, 1])
    assert set(env.starts[:, 1].tolist()) <= set(bank["steps"].tolist())
    env.step(np.zeros(4, dtype=np.int64))
    assert np.array_equal(env.core.positions, env.starts[:, 1] + 1)
    frames = bank["frames"][0].numpy()
    env.reset(seed=3, options={"prompt": {"frames": frames, "step": 250}})
    assert (env.core.positions == 250).all()
    with pytest.raises(ValueError, match="step"):
        env.reset(seed=3, options={"prompt": {"frames": frames, "step": 1}})
