"""Agents and dream-versus-real evaluation: the Crafter score, SSIM, the inverse dynamics model, the comparison
report, dream collection, real-Crafter evaluation and a PPO smoke run in a dream. Tiny models, seconds each."""
import json
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch

from agents.evaluation.compare import CompareConfig, compare_checkpoint, compare_dream_real, gaussian_window, ssim
from agents.evaluation.idm import IDMConfig, InverseDynamics, load_idm, train_idm
from agents.score import CRAFTER_ACHIEVEMENTS, crafter_score, score_episodes, success_rates
from generator.data import EpisodeDataset, EpisodeWriter
from tiny_world import make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]


# -- Crafter score ----------------------------------------------------------------------------------------------


def test_achievement_list_is_crafters():
    import crafter.constants

    assert list(CRAFTER_ACHIEVEMENTS) == list(crafter.constants.achievements) and len(CRAFTER_ACHIEVEMENTS) == 22


def test_crafter_score_hand_computed_cases():
    zeros = dict.fromkeys(CRAFTER_ACHIEVEMENTS, 0.0)
    assert crafter_score(zeros) == 0.0
    assert crafter_score(dict.fromkeys(CRAFTER_ACHIEVEMENTS, 100.0)) == pytest.approx(100.0)
    # One achievement always unlocked, the rest never: exp(ln(101) / 22) - 1 = 101^(1/22) - 1.
    assert crafter_score({**zeros, "collect_wood": 100.0}) == pytest.approx(0.233404, abs=1e-6)
    # Every rate at 10 %: the geometric mean of 11s, minus 1.
    assert crafter_score(dict.fromkeys(CRAFTER_ACHIEVEMENTS, 10.0)) == pytest.approx(10.0)


def test_success_rates_count_episodes_with_at_least_one_unlock():
    # Crafter's end-of-episode info["achievements"] counters; an achievement unlocked twice counts once.
    none = dict.fromkeys(CRAFTER_ACHIEVEMENTS, 0)
    episodes = [
        {**none, "collect_wood": 3, "wake_up": 1},
        {**none, "collect_wood": 1},
        {**none, "collect_wood": 1},
        none,
    ]
    rates = success_rates(episodes)
    assert list(rates) == list(CRAFTER_ACHIEVEMENTS)
    assert rates["collect_wood"] == 75.0 and rates["wake_up"] == 25.0 and sum(rates.values()) == 100.0
    # exp((ln 76 + ln 26) / 22) - 1 = 1976^(1/22) - 1
    assert score_episodes(episodes)["score"] == pytest.approx(0.411915, abs=1e-6)
    as_names = [["collect_wood", "wake_up"], ["collect_wood"], ["collect_wood"], []]
    assert score_episodes(as_names) == score_episodes(episodes)


def test_score_refuses_incomplete_or_wrong_input():
    with pytest.raises(ValueError, match="missing"):
        crafter_score({"collect_wood": 50.0})
    with pytest.raises(ValueError, match="percentages"):
        crafter_score(dict.fromkeys(CRAFTER_ACHIEVEMENTS, 0.5) | {"wake_up": 150.0})
    with pytest.raises(ValueError, match="unknown"):
        success_rates([["collect_wood", "fly"]])
    with pytest.raises(ValueError, match="at least one episode"):
        success_rates([])


# -- SSIM --------------------------------------------------------------------------------------------------------


def naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM by explicit loops over every valid 11x11 window (Wang et al. 2004), for checking `ssim`."""
    g = gaussian_window().numpy()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, wd, c = x.shape
    values = []
    for ch in range(c):
        for r in range(h - 10):
            for col in range(wd - 10):
                a = x[r : r + 11, col : col + 11, ch].astype(np.float64)
                b = y[r : r + 11, col : col + 11, ch].astype(np.float64)
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_identity_noise_constants_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 16, 16, 3), generator=g, dtype=torch.uint8)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    scores = []
    for sigma in (5, 20, 60):
        noisy = (x.float() + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        scores.append(float(ssim(x, noisy)[0]))
        assert float(ssim(noisy, x)[0]) == pytest.approx(scores[-1], abs=1e-6)  # symmetric
    assert 1 > scores[0] > scores[1] > scores[2]
    # Two flat frames: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = torch.full((12, 12, 3), 100, dtype=torch.uint8), torch.full((12, 12, 3), 150, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    assert float(ssim(a, b)) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1), rel=1e-6)
    y = torch.randint(0, 256, (13, 14, 3), generator=g, dtype=torch.uint8)
    z = (y.float() * 0.7 + 30).to(torch.uint8)
    assert float(ssim(y, z)) == pytest.approx(naive_ssim(y.numpy(), z.numpy()), abs=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))


# -- Inverse dynamics ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_data(tmp_path_factory) -> Path:
    """The moving-square game of test_train (0 stay, 1 right, 2 down), 16 episodes of 24 steps."""
    return make_dataset(tmp_path_factory.mktemp("square") / "data", episodes=16, length=24)


IDM_SMALL = dict(steps=80, batch_size=32, lr=3e-3, widths=(16, 32), hidden=64, eval_every=40, progress=False)


@pytest.fixture(scope="module")
def square_idm(square_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("idm") / "idm"
    train_idm(IDMConfig(data=str(square_data), out=str(out), **IDM_SMALL))
    return out


def test_idm_learns_the_square_game_well_above_chance_on_held_out_episodes(square_data, square_idm):
    idm = load_idm(square_idm)
    val = idm.training_report["val"]
    assert val["transitions"] >= 20  # the whole val split, not a handful of windows
    assert val["accuracy"] > 0.9 > val["majority_accuracy"] + 0.3  # chance is about 1/3
    # The loaded model predicts the val actions itself, in the space's own values.
    episode = EpisodeDataset(square_data, split="val").episode(0)
    predicted = idm.predict(episode["frames"][:-1], episode["frames"][1:])
    assert predicted.shape == episode["actions"][1:].shape
    assert (predicted == episode["actions"][1:]).float().mean() > 0.9


def test_idm_multidiscrete_components(tmp_path):
    """A square moved by two independent binary components (right?, down?), actions offset by start=1."""
    torch.set_num_threads(1)
    space = gymnasium.spaces.MultiDiscrete([2, 2], start=[1, 1])
    writer = EpisodeWriter(tmp_path / "data", game="synthetic", frame_size=(16, 16), action_space=space, fps=10,
                           policy={"name": "random"})
    rng = np.random.default_rng(0)
    for e in range(12):
        y, x = rng.integers(0, 12, size=2)
        frames, actions = [], [np.zeros(2, np.int64)]
        for i in range(21):
            frame = np.zeros((16, 16, 3), np.uint8)
            frame[y : y + 4, x : x + 4] = 255
            frames.append(frame)
            a = rng.integers(0, 2, size=2)
            if i < 20:
                actions.append(a + 1)
                x, y = (x + a[0]) % 12, (y + a[1]) % 12
        writer.write({"frames": np.stack(frames), "actions": np.stack(actions), "rewards": np.zeros(21, np.float32),
                      "terminated": np.zeros(21, bool), "truncated": np.arange(21) == 20}, seed=e)
    result = train_idm(IDMConfig(data=str(tmp_path / "data"), out=str(tmp_path / "idm"), **IDM_SMALL))
    assert result["val"]["accuracy"] > 0.8 and min(result["val"]["component_accuracy"]) > 0.85
    idm = load_idm(tmp_path / "idm")
    episode = EpisodeDataset(tmp_path / "data", split="val").episode(0)
    predicted = idm.predict(episode["frames"][:-1], episode["frames"][1:])
    assert predicted.shape == (20, 2) and predicted.min() >= 1


def test_idm_refuses_continuous_actions():
    with pytest.raises(ValueError, match="Discrete or MultiDiscrete"):
        InverseDynamics(gymnasium.spaces.Box(-1, 1, (2,)), (16, 16))


# -- Dream versus real ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_world(square_data, tmp_path_factory) -> Path:
    from generator.train import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("world") / "run"
    train(tiny_config(square_data, run, steps=2, eval_windows=0))
    return run / "model"


def test_compare_writes_json_plots_and_videos(square_data, square_world, square_idm, tmp_path):
    config = CompareConfig(checkpoint=str(square_world), data=str(square_data), out=str(tmp_path / "cmp"),
                           context_frames=2, horizon=4, windows=6, batch_size=3, idm=str(square_idm), video_rows=2,
                           progress=False)
    metrics = compare_checkpoint(config)
    out = tmp_path / "cmp"
    for name in ("compare.json", "psnr.png", "ssim.png", "idm_accuracy.png", "compare.mp4", "compare.gif"):
        assert (out / name).stat().st_size > 500, name
    saved = json.loads((out / "compare.json").read_text())
    assert saved["horizons"] == [1, 2, 3, 4] and saved["windows"] == 6 and saved["split"] == "val"
    for key in ("psnr", "copy_last_psnr", "ssim", "copy_last_ssim"):
        assert len(saved[key]) == 4 and all(math.isfinite(v) for v in saved[key]), key
    assert all(-1 <= v <= 1 for v in saved["ssim"])
    idm = saved["idm"]
    assert len(idm["accuracy_dream"]) == len(idm["accuracy_real"]) == 4 and idm["mean_accuracy_real"] > 0.8
    for event in ("reward", "termination"):
        assert {"precision", "recall", "positives", "per_horizon"} <= set(saved[event])
    assert saved["reward"]["threshold"] == 0.5 and saved["termination"]["threshold_logit"] == 0.0
    assert saved["fvd"] is None and "not implemented" in saved["fvd_note"]
    assert metrics["frames_per_horizon"] == [6, 6, 6, 6]
    import imageio.v2 as imageio

    video = imageio.mimread(out / "compare.gif")
    assert len(video) == 6  # context + horizon frames, two rows of real | dream | difference

    without = compare_checkpoint(CompareConfig(**{**config.__dict__, "idm": None, "video_rows": 0,
                                                  "out": str(tmp_path / "plain")}))
    assert without["idm"] is None and "--idm" in without["idm_note"]
    assert not (tmp_path / "plain" / "idm_accuracy.png").exists()
    with pytest.raises(NotImplementedError, match="FVD"):
        compare_checkpoint(CompareConfig(**{**config.__dict__, "i3d": "i3d.pt"}))


def test_a_perfect_dream_scores_perfectly(square_data, square_idm, monkeypatch):
    """A rollout that returns the real future (and its real rewards and ends) scores SSIM 1, IDM accuracy equal on
    dream and real frames, and precision = recall = 1 on reward and termination events."""
    context, horizon = 2, 4
    dataset = EpisodeDataset(square_data, window=context + horizon, split="all")

    def oracle(world, prompt_frames, prompt_actions, actions, seeds, sampler_steps, prompt_has_action, prompt_steps):
        items = [dataset[s] for s in seeds]  # seed 0: the row's seed is its window index
        real = {key: torch.stack([item[key][context:] for item in items]) for key in items[0]}
        logits = torch.where(real["terminated"], 10.0, -10.0)
        return {"frames": real["frames"], "reward": real["rewards"], "termination_logit": logits}

    monkeypatch.setattr("agents.evaluation.compare.open_loop_rollout", oracle)
    world = SimpleNamespace(sampling=SimpleNamespace(sampler_steps=1))
    # Every window of the dataset, so episode ends and rewards are all in.
    metrics, clips = compare_dream_real(world, dataset, context, horizon, windows=len(dataset), batch_size=32,
                                        idm=load_idm(square_idm), video_rows=2)
    assert metrics["ssim"] == pytest.approx([1.0] * horizon)
    assert min(metrics["psnr"]) == 100 > max(metrics["copy_last_psnr"])  # identical frames score the 100 dB cap
    assert metrics["idm"]["accuracy_dream"] == metrics["idm"]["accuracy_real"]
    for event in ("reward", "termination"):
        assert metrics[event]["positives"] > 0
        assert metrics[event]["precision"] == metrics[event]["recall"] == 1.0
    assert clips["real"].shape == clips["dream"].shape == (2, context + horizon, 16, 16, 3)
    assert np.array_equal(clips["real"], clips["dream"])


def test_nearest_real_psnr_matches_brute_force_and_separates_game_frames_from_noise():
    from agents.evaluation.model_table import nearest_real_psnr

    g = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (7, 8, 8, 3), generator=g, dtype=torch.uint8)
    frames = torch.cat([bank[2:3], torch.randint(0, 256, (3, 8, 8, 3), generator=g, dtype=torch.uint8)])
    got = nearest_real_psnr(frames, bank.flatten(1).float(), chunk=2)
    errors = ((frames[:, None].float() - bank[None].float()) ** 2).flatten(2).mean(-1).min(1).values
    expected = (10 * torch.log10(255.0 ** 2 / errors.clamp_min(1e-10))).clamp(max=100.0)  # identical: the cap
    assert torch.allclose(got, expected, atol=1e-3)
    assert got[0] > 99 > 20 > got[1:].max()  # a bank frame is found exactly; noise is far from every frame


def test_edge_energy_is_zero_when_flat_and_highest_for_pixel_noise():
    from agents.evaluation.model_table import edge_energy

    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 16, 16, 3), 90, dtype=torch.uint8)
    tiles = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    tiles[:, :8] = 200  # two flat tiles: one edge row of height 200
    noise = torch.randint(0, 256, (1, 16, 16, 3), generator=g, dtype=torch.uint8)
    got = edge_energy(torch.cat([flat, tiles, noise]))
    assert got[0] == 0
    assert got[1] == pytest.approx(200 / 15 / 2)  # one of 15 row steps jumps by 200; no column step moves
    assert got[2] > 60 > got[1]  # uniform noise: mean |a - b| is ~85


def test_strip_times_span_the_rollout():
    from agents.evaluation.model_table import strip_times

    times = strip_times(500)
    assert times[0] == 0 and times[-1] == 499 and times == sorted(set(times)) and len(times) == 8
    assert strip_times(3) == [0, 1, 2]


def test_model_table_rows_files_and_entry_errors(square_data, square_world, square_idm, tmp_path):
    from agents.evaluation.model_table import ModelTableConfig, model_table, parse_entry

    assert parse_entry("t=runs/a/model@4") == ("t", "runs/a/model", 4)
    assert parse_entry("t=runs/a/model") == ("t", "runs/a/model", None)
    for bad in ("runs/a/model", "t=", "t=a@x"):
        with pytest.raises(ValueError, match="model entry"):
            parse_entry(bad)
    config = ModelTableConfig(models=[f"two={square_world}@2", f"one={square_world}@1"], data=str(square_data),
                              out=str(tmp_path / "table"), split="val", idm=str(square_idm), context_frames=2,
                              horizons=(1, 2, 4), windows=4, drift_frames=30, drift_rows=2, drift_span=5,
                              bank_frames=64, speed_frames=3, progress=False)
    result = model_table(config)
    rows = result["rows"]
    assert list(rows) == ["two", "one"] and rows["two"]["sampler_steps"] == 2 and rows["one"]["sampler_steps"] == 1
    for row in rows.values():
        assert len(row["drift_curve"]) == 30  # longer than any episode of the data (24 steps)
        for key in ("psnr_h1", "psnr_h4", "ssim_h2", "copy_psnr_h4", "idm_accuracy_dream", "fps_single", "fps_batch"):
            assert math.isfinite(row[key]), key
        assert row["drift_db"] == pytest.approx(row["nn_psnr_first"] - row["nn_psnr_last"])
        assert len(row["edge_curve"]) == 30 and row["edge_last"] == pytest.approx(np.mean(row["edge_curve"][-5:]))
        assert row["fps_batch_rows"] == 2
    assert rows["one"]["psnr_h1"] != rows["two"]["psnr_h1"]  # the sampler steps were really used
    assert math.isfinite(result["real_reference_nn_psnr"]) and result["real_reference_edge"] > 0
    for name in ("table.json", "table.md", "drift.png", "drift_strip.png"):
        assert (tmp_path / "table" / name).stat().st_size > 200, name
    table = (tmp_path / "table" / "table.md").read_text()
    assert "copy-last frame" in table and "| two | 2 |" in table and "| one | 1 |" in table
    with pytest.raises(ValueError, match="unique"):
        model_table(ModelTableConfig(**{**config.__dict__, "models": [f"a={square_world}", f"a={square_world}"]}))


# -- Collecting in the dream ---------------------------------------------------------------------------------------


def test_dream_collection_writes_a_dataset_like_real_collection(tmp_path):
    from tiny_world import make_tiny_world
    from world_env.collect_dream import collect_dream

    make_tiny_world().save_pretrained(tmp_path / "world")
    stats = collect_dream(tmp_path / "world", tmp_path / "two", episodes=3, num_envs=2, max_steps=5, seed=7,
                          device="cpu", progress=False)
    assert stats["episodes_written"] == 3 and stats["steps"] == 15
    two = EpisodeDataset(tmp_path / "two", verify="checksum")
    meta = two.meta
    assert meta["game"] == "synthetic" and meta["frame_size"] == [16, 16] and meta["fps"] == 10
    assert meta["action_space"] == {"type": "Discrete", "n": 5, "start": 0} and meta["seeds"] == [7, 8, 9]
    assert meta["extra"]["source"] == "dream" and meta["extra"]["checkpoint"] == str((tmp_path / "world").resolve())
    assert len(meta["extra"]["weights_sha256"]) == 64 and meta["policy"]["name"] == "sticky"
    episode = two.episode(0)
    assert episode["truncated"][-1] and not episode["terminated"].any() and episode["is_first"][0]
    # Episode j depends on (seed, j), not on how many dream envs ran side by side; resuming appends.
    collect_dream(tmp_path / "world", tmp_path / "one", episodes=2, num_envs=1, max_steps=5, seed=7, device="cpu",
                  progress=False)
    collect_dream(tmp_path / "world", tmp_path / "one", episodes=3, num_envs=1, max_steps=5, seed=7, device="cpu",
                  progress=False)
    with pytest.raises(ValueError, match="extra.seed=7, not 8"):
        collect_dream(tmp_path / "world", tmp_path / "one", episodes=4, num_envs=1, max_steps=5, seed=8,
                      device="cpu", progress=False)
    one = EpisodeDataset(tmp_path / "one", verify="checksum")
    for k in range(3):
        a, b = one.episode(k), two.episode(k)
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
        assert torch.allclose(a["rewards"], b["rewards"], atol=1e-4)
    # A model whose termination head always fires: one-step terminated episodes.
    make_tiny_world(termination_bias=20.0).save_pretrained(tmp_path / "ending")
    collect_dream(tmp_path / "ending", tmp_path / "ends", episodes=2, num_envs=2, max_steps=5, device="cpu",
                  progress=False)
    ends = EpisodeDataset(tmp_path / "ends")
    assert ends.episode_lengths == [1, 1] and bool(ends.episode(1)["terminated"][-1])


def test_collect_script_source_dream(tmp_path, monkeypatch, capsys):
    from tiny_world import make_tiny_world

    make_tiny_world().save_pretrained(tmp_path / "world")
    argv = ["collect.py", "--source", "dream", "--checkpoint", str(tmp_path / "world"), "--episodes", "2",
            "--out", str(tmp_path / "data"), "--max-steps", "3", "--workers", "2", "--device", "cpu", "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "collect.py"), run_name="__main__")
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["episodes"] == 2 and summary["game"] == "synthetic" and summary["total_steps"] == 8
    monkeypatch.setattr(sys, "argv", argv[:3] + argv[5:])
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "collect.py"), run_name="__main__")
    assert "needs --checkpoint" in capsys.readouterr().err


# -- Real-game evaluation and PPO ------------------------------------------------------------------------------------


def test_random_baseline_through_the_real_evaluator():
    from agents.ppo import evaluate_policy_real

    result = evaluate_policy_real("random", episodes=2, seed=3, max_episode_steps=12)
    assert [e["seed"] for e in result["episodes"]] == [3, 4]
    assert all(e["length"] == 12 and not e["terminated"] for e in result["episodes"])
    assert result["score"] == pytest.approx(crafter_score(result["success_rates"]))
    assert result["policy"] == {"name": "random"} and result["mean_length"] == 12
    again = evaluate_policy_real("random", episodes=1, seed=4, max_episode_steps=12)  # episode j: seed + j
    assert again["episodes"][0] == {**result["episodes"][1]}


def test_ppo_trains_in_a_dream_and_is_scored_in_real_crafter(tmp_path):
    """Smoke run: a handful of PPO steps in a 64x64 dream over Crafter's 17 actions; checkpoints, TensorBoard and
    the final real-game evaluation are written."""
    from agents.ppo import AgentConfig, load_agent, train_agent
    from test_sb3 import make_world

    torch.set_num_threads(1)
    make_world(n_actions=17).save_pretrained(tmp_path / "world")
    config = AgentConfig(env="dream", checkpoint=str(tmp_path / "world"), out=str(tmp_path / "run"), steps=32,
                         num_envs=2, n_steps=8, batch_size=16, n_epochs=1, checkpoint_every=16, max_episode_steps=10,
                         device="cpu", policy_device="cpu", verbose=0, eval_episodes=1)
    summary = train_agent(config)
    run = tmp_path / "run"
    assert summary["steps"] == 32 and (run / "model.zip").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ppo_16_steps.zip", "ppo_32_steps.zip"]
    assert list((run / "tb").rglob("events.out.tfevents.*")) and (run / "monitor.csv").is_file()
    assert json.loads((run / "train.json").read_text())["eval_real"]["episodes"][0]["length"] == 10
    assert load_agent(run / "model.zip").action_space == gymnasium.spaces.Discrete(17)


def test_view_shift_agreement_is_also_reported_over_the_first_horizons(tmp_path, monkeypatch):
    """A dream that follows the real walk for 4 frames and then freezes agrees on every moved step of horizons 1-4
    (`view_shift_short`) and on none after; in step (`view_shift_in_step`) it is scored up to its first miss."""
    from test_metrics import view_at, world

    grid = world(1)
    writer = EpisodeWriter(tmp_path / "walk", game="crafter", frame_size=(64, 64),
                           action_space=gymnasium.spaces.Discrete(17), fps=10, policy={"name": "walk"})
    frames = torch.stack([view_at(grid, 5, 2 + i) for i in range(12)])  # the player walks right each step
    actions = np.full(12, 2)
    actions[0] = 0
    writer.write({"frames": frames.numpy(), "actions": actions, "rewards": np.zeros(12, np.float32),
                  "terminated": np.zeros(12, bool), "truncated": np.arange(12) == 11}, seed=0)
    context, horizon = 2, 8
    dataset = EpisodeDataset(tmp_path / "walk", window=context + horizon, split="all")

    def follow_then_freeze(world, prompt_frames, prompt_actions, actions, seeds, sampler_steps, prompt_has_action,
                           prompt_steps):
        real = torch.stack([dataset[s]["frames"][context:] for s in seeds])
        real[:, 4:] = real[:, 3:4]
        zeros = torch.zeros(real.shape[:2])
        return {"frames": real, "reward": zeros, "termination_logit": zeros - 10}

    monkeypatch.setattr("agents.evaluation.compare.open_loop_rollout", follow_then_freeze)
    info = SimpleNamespace(game="crafter", frame_size=(64, 64))
    metrics, _ = compare_dream_real(SimpleNamespace(sampling=SimpleNamespace(sampler_steps=1), info=info), dataset,
                                    context, horizon, windows=len(dataset))
    short, full = metrics["view_shift_short"], metrics["view_shift"]
    assert short["moved_steps"] == 4 * len(dataset) and short["moved_agreement"] == 1.0
    assert full["moved_steps"] == 8 * len(dataset) and full["moved_agreement"] == 0.5
    # in step up to the first disagreement (horizon 5, which still counts), not after it
    together = metrics["view_shift_in_step"]
    assert together["moved_steps"] == 5 * len(dataset) and together["moved_agreement"] == 0.8
    # the SSIM gap to copy-last, paired by window: its mean is the gap of the means, with a spread over windows
    gap = metrics["ssim_gap"]
    assert gap["mean"] == pytest.approx([a - b for a, b in zip(metrics["ssim"], metrics["copy_last_ssim"])])
    assert all(g > 0 for g in gap["mean"][:4]) and all(e >= 0 for e in gap["stderr"])
