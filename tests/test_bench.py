"""The benchmark library on the tiny config: a handful of steps, valid JSON and Markdown, honest bookkeeping."""
import json

import gymnasium
import numpy as np
import pytest
import torch

from generator.data import EpisodeDataset, EpisodeWriter
from world_env.bench import (
    BenchSettings,
    add_gains,
    mean_run_length,
    run_benchmark,
    to_markdown,
    write_results,
)
from world_env.policies import recorded_actions, sticky_actions

CRAFTER_SPACE = gymnasium.spaces.Discrete(17)


def write_dataset(root, lengths=(5, 7)):
    writer = EpisodeWriter(root, game="synthetic", frame_size=(8, 8), action_space=CRAFTER_SPACE, fps=15,
                           policy={"name": "test"})
    for k, length in enumerate(lengths):
        actions = (np.arange(length + 1) + 100 * k) % 17
        actions[0] = 0
        writer.write({
            "frames": np.zeros((length + 1, 8, 8, 3), np.uint8), "actions": actions.astype(np.int64),
            "rewards": np.zeros(length + 1, np.float32), "terminated": np.eye(1, length + 1, length, dtype=bool)[0],
            "truncated": np.zeros(length + 1, bool),
        })
    return root


def test_recorded_actions_play_real_episodes_in_order(tmp_path):
    dataset = EpisodeDataset(write_dataset(tmp_path / "data"), window=None)
    first = [dataset.episode(k)["actions"][1:].numpy() for k in range(2)]
    actions = recorded_actions(dataset, num_envs=3, length=9)  # (9, 3)
    assert actions.shape == (9, 3)
    np.testing.assert_array_equal(actions[:, 0], np.concatenate([first[0], first[1]])[:9])
    np.testing.assert_array_equal(actions[:, 1], np.concatenate([first[1], first[0]])[:9])
    np.testing.assert_array_equal(actions[:, 2], actions[:, 0])  # env 2 starts again at episode 0


def test_sticky_actions_repeat_and_differ_from_the_collector_stream():
    actions = sticky_actions(CRAFTER_SPACE, num_envs=4, length=2000, mean_repeat=4.0, seed=0)
    assert actions.shape == (2000, 4) and actions.dtype == np.int64
    # a new draw can repeat the old action (1/17), so runs are a little longer than the mean repeat
    assert 3.6 < mean_run_length(actions) < 4.9
    np.testing.assert_array_equal(actions, sticky_actions(CRAFTER_SPACE, 4, 2000, 4.0, seed=0))
    from world_env.policies import StickyPolicy

    collector = StickyPolicy(CRAFTER_SPACE, 1)
    collector.reset(0, 0)  # the collector's episode 0 with --seed 0
    assert not np.array_equal(np.stack([collector.act(np.zeros((1, 1)))[0] for _ in range(50)]), actions[:50, 0])


def test_gain_is_over_the_plain_row_of_the_same_case():
    rows = [
        {"num_envs": 2, "sampler_steps": 1, "agent_ms": 0.0, "speculation": "off", "env_steps_per_s": 10.0},
        {"num_envs": 2, "sampler_steps": 1, "agent_ms": 0.0, "speculation": "async", "env_steps_per_s": 15.0},
        {"num_envs": 2, "sampler_steps": 1, "agent_ms": 5.0, "speculation": "sync", "env_steps_per_s": 15.0},
    ]
    add_gains(rows)
    assert [r["gain"] for r in rows] == [1.0, 1.5, None]


def test_rounds_alternate_the_case_order_and_take_each_gain_against_their_own_plain_row(tmp_path):
    settings = BenchSettings(model_config="tiny", num_envs=(1,), sampler_steps=(None,), speculation=("off", "sync"),
                             streams=("sticky", "random"), agent_ms=(0.0,), warmup=1, steps=2, game=None,
                             threads=1, matmul_peak_s=0, rounds=3)
    results = run_benchmark(settings, log=lambda line: None)
    order = [(r["round"], r["speculation"], r["stream"]) for r in results["dream"]]
    forward = [("off", "sticky"), ("sync", "sticky"), ("sync", "random")]
    assert order == [(0, *c) for c in forward] + [(1, *c) for c in forward[::-1]] + [(2, *c) for c in forward]
    plain = {r["round"]: r["env_steps_per_s"] for r in results["dream"] if r["speculation"] == "off"}
    for row in results["dream"]:
        assert row["gain"] == pytest.approx(row["env_steps_per_s"] / plain[row["round"]])
    summary = {(g["speculation"], g["stream"]): g for g in results["gains_over_rounds"]}
    sticky = summary[("sync", "sticky")]
    assert len(sticky["gains"]) == 3 and sticky["min_gain"] <= sticky["median_gain"] <= sticky["max_gain"]
    assert summary[("off", "any")]["gains"] == [1.0, 1.0, 1.0]
    assert "Over 3 rounds" in to_markdown(results)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        BenchSettings(rounds=0)


def test_tiny_benchmark_writes_json_and_markdown(tmp_path):
    data = write_dataset(tmp_path / "data")
    settings = BenchSettings(
        model_config="tiny", num_envs=(1, 2), sampler_steps=(1, 1), dataset=str(data), agent_ms=(0.0, 2.0),
        warmup=2, steps=2, game="gym:CartPole-v1", game_steps=5, threads=1, matmul_peak_s=0.01,
    )
    threads = torch.get_num_threads()
    results = run_benchmark(settings, log=lambda line: None)
    assert torch.get_num_threads() == threads
    write_results(results, tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md")

    loaded = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(loaded) == {"meta", "model", "settings", "dream", "skipped", "gains_over_rounds", "streams", "real_game",
                           "notes"}
    assert loaded["gains_over_rounds"] == []  # one round: no summary over rounds
    assert set(loaded["streams"]) == {"sticky", "recorded", "random"}
    assert loaded["streams"]["random"]["repeat_fraction"] < 0.15  # 1/17 expected
    assert 0.6 < loaded["streams"]["sticky"]["repeat_fraction"] < 0.85  # 3/4 + 1/4 * 1/17 expected
    for key in ("date", "command", "device", "cpu", "torch", "torch_threads", "load_avg_start", "load_avg_end"):
        assert key in loaded["meta"]
    assert loaded["model"]["config"] == "tiny" and loaded["settings"]["sampler_steps_resolved"] == [1]
    # 2 envs x 1 sampler steps x 2 agent times x (plain + 3 streams x {auto, sync, async})
    assert len(loaded["dream"]) == 2 * 1 * 2 * 10 and not loaded["skipped"]
    plain = {(r["num_envs"], r["agent_ms"]): r["env_steps_per_s"] for r in loaded["dream"] if r["speculation"] == "off"}
    for row in loaded["dream"]:
        assert row["steps"] == 2 and row["env_steps_per_s"] > 0
        assert row["gain"] == pytest.approx(row["env_steps_per_s"] / plain[row["num_envs"], row["agent_ms"]])
        assert row["step_ms"]["p50"] <= row["step_ms"]["p95"] + 1e-9
        assert row["resets"] == 0
        if row["speculation"] == "off":
            assert row["acceptance_rate"] is None and row["frames_per_env_step"] == 1.0
        elif row["speculation"] == "auto":  # too few steps to judge: it stays plain
            assert row["frames_per_env_step"] == 1.0 and row["speculation_counts"]["speculating_steps"] == 0
        else:
            assert 0.0 <= row["acceptance_rate"] <= 1.0
            assert row["frames_per_env_step"] >= 1.0  # every row tops its speculation queue back up
    assert {r["stream"] for r in loaded["dream"] if r["speculation"] != "off"} == {"sticky", "recorded", "random"}
    game = loaded["real_game"]
    assert game["steps"] == 5 and game["steps_per_s_including_resets"] <= game["steps_per_s_excluding_resets"]

    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert markdown == to_markdown(loaded)
    assert "| stream | envs | workers | sampler steps |" in markdown and "env-steps/s" in markdown
    assert markdown.count("\n| ") == 1 + len(loaded["dream"])  # header + one line per case
    assert "repeat fraction" in markdown
    assert "gym:CartPole-v1" in markdown


def test_recorded_stream_is_skipped_with_a_note_without_a_dataset(tmp_path):
    settings = BenchSettings(model_config="tiny", num_envs=(1,), sampler_steps=(None,), speculation=("async",),
                             streams=("sticky", "recorded"), agent_ms=(0.0,), warmup=1, steps=2, game=None,
                             threads=1, matmul_peak_s=0)
    results = run_benchmark(settings, log=lambda line: None)
    assert results["meta"]["matmul_peak"] is None
    assert [r["speculation"] for r in results["dream"]] == ["async"]  # plain ran as the baseline only
    assert results["dream"][0]["sampler_steps"] == results["model"]["default_sampler_steps"] == 8
    assert isinstance(results["dream"][0]["gain"], float) and results["real_game"] is None  # over the baseline
    assert any("recorded stream skipped" in note for note in results["notes"])


def test_flops_per_env_step_scale_with_passes_not_batch_and_give_mfu():
    """One env step at s sampler steps is s denoising passes plus one commit pass over the frame's tokens: the
    counted FLOPs per env step do not depend on the batch, and 2 steps cost 3/2 of 1 step. MFU = achieved/peak."""
    settings = BenchSettings(model_config="tiny", num_envs=(1, 3), sampler_steps=(1, 2), speculation=("off",),
                             agent_ms=(0.0,), warmup=1, steps=2, game=None, threads=1, peak_tflops=2.0,
                             matmul_peak_s=0.01)
    results = run_benchmark(settings, log=lambda line: None)
    rows = results["dream"]
    ceiling = results["meta"]["matmul_peak"]["tflops"]
    assert ceiling == max(results["meta"]["matmul_peak"][when]["tflops"] for when in ("start", "end")) > 0
    flops = {(r["num_envs"], r["sampler_steps"]): r["flops_per_env_step"] for r in rows}
    assert len(flops) == 4 and all(f > 1e5 for f in flops.values())
    for steps in (1, 2):
        assert flops[(3, steps)] == flops[(1, steps)]  # per env: the batch only multiplies the work
    assert abs(flops[(1, 2)] / flops[(1, 1)] - 1.5) < 0.05
    for r in rows:
        assert r["achieved_tflops"] * 1e12 == pytest.approx(
            r["flops_per_env_step"] * r["env_steps_per_s"], rel=1e-6)
        assert r["mfu"] == r["achieved_tflops"] / 2.0 and r["precision"] == "fp32"
        assert r["matmul_peak_fraction"] == r["achieved_tflops"] / ceiling  # of the rate measured in the same run
    # One pass per frame: a one-step env step costs half the FLOPs (no commit pass).
    one_pass = run_benchmark(BenchSettings(**{**settings.__dict__, "commit_pass": False, "num_envs": (1,)}),
                             log=lambda line: None)
    halves = {r["sampler_steps"]: r["flops_per_env_step"] for r in one_pass["dream"]}
    assert halves[1] == flops[(1, 1)] / 2 and halves[2] == flops[(1, 2)] * 2 / 3
    assert "one pass per frame" in to_markdown(one_pass)
    # No known peak on a CPU: no MFU, but the achieved rate is still reported.
    plain = run_benchmark(BenchSettings(**{**settings.__dict__, "peak_tflops": None, "num_envs": (1,),
                                           "sampler_steps": (1,)}), log=lambda line: None)["dream"][0]
    assert plain["mfu"] is None and plain["achieved_tflops"] > 0


def test_bf16_benchmark_runs_and_is_reported():
    settings = BenchSettings(model_config="tiny", num_envs=(2,), sampler_steps=(1,), speculation=("off", "sync"),
                             agent_ms=(0.0,), streams=("sticky",), warmup=1, steps=2, game=None, threads=1,
                             precision="bf16", matmul_peak_s=0.01)
    results = run_benchmark(settings, log=lambda line: None)
    assert all(r["precision"] == "bf16" for r in results["dream"])
    assert "precision bf16" in to_markdown(results)
    with pytest.raises(ValueError, match="precision"):
        BenchSettings(precision="fp8")
