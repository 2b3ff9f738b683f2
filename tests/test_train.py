"""Teacher training: loss falls, exact resume, checkpoints refuse corruption, 2-process DDP trains."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.checkpoint import CheckpointError
from generator.pretrained import WorldModel
from generator.train import TrainConfig, train
from tiny_world import TINY, make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.mark.parametrize("previous_frame_input, prediction, commit_pass",
                         [(False, "velocity", True), (True, "velocity", True), (True, "x", True), (True, "x", False)])
def test_training_loss_falls(dataset, tmp_path, previous_frame_input, prediction, commit_pass):
    torch.set_num_threads(1)
    overrides = dict(TINY, previous_frame_input=previous_frame_input, prediction=prediction)
    result = train(tiny_config(dataset, tmp_path / "run", steps=150, log_every=1, model_overrides=overrides,
                               commit_pass=commit_pass, sampler_steps=1))
    assert WorldModel.from_pretrained(tmp_path / "run" / "model").sampling.commit_pass == commit_pass
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/flow")]
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:5])
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert list((tmp_path / "run" / "samples").glob("*.gif"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["eval"]["psnr"]) == 2 and result["step"] == 150


def test_resume_gives_the_same_next_loss_as_an_uninterrupted_run(dataset, tmp_path):
    torch.set_num_threads(1)
    straight = train(tiny_config(dataset, tmp_path / "a", steps=12, ckpt_every=6, eval_windows=0))
    train(tiny_config(dataset, tmp_path / "b", steps=12, stop_at=6, ckpt_every=4, eval_windows=0))  # "killed"
    resumed = train(tiny_config(dataset, tmp_path / "b", steps=12, ckpt_every=6, eval_windows=0))
    assert resumed["final"]["loss"] == pytest.approx(straight["final"]["loss"], rel=1e-6, abs=1e-7)
    a = WorldModel.from_pretrained(tmp_path / "a" / "model")
    b = WorldModel.from_pretrained(tmp_path / "b" / "model")
    for (name, pa), pb in zip(a.dit.state_dict().items(), b.dit.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_world_model_refuses_corrupt_or_mismatched_checkpoints(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "run", steps=2, eval_windows=0))
    model_dir = tmp_path / "run" / "model"
    WorldModel.from_pretrained(model_dir)  # loads fine

    config = json.loads((model_dir / "config.json").read_text())
    config["dit"]["dim"] = 64
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        WorldModel.from_pretrained(model_dir)

    train(tiny_config(dataset, tmp_path / "run2", steps=2, eval_windows=0))
    weights = tmp_path / "run2" / "model" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        WorldModel.from_pretrained(tmp_path / "run2" / "model")


def test_two_process_gloo_torchrun_trains(dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
        str(REPO / "scripts" / "train.py"), "--data", str(dataset), "--out", str(out), "--model", "tiny",
        "--steps", "4", "--batch-size", "2", "--clip-frames", "4", "--eval-windows", "0", "--no-progress",
        "--model-overrides", json.dumps(TINY), "--device", "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # this tree, not another install
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    world = WorldModel.from_pretrained(out / "model")
    assert world.info.training["step"] == 4
    # DDP keeps the ranks' weights identical.
    from generator.checkpoint import load_checkpoint

    _, r0 = load_checkpoint(out / "train_state" / "rank0")
    _, r1 = load_checkpoint(out / "train_state" / "rank1")
    for name, tensor in r0["model"].items():
        assert torch.equal(tensor, r1["model"][name]), name


def test_open_loop_evaluation_writes_json_and_plot(dataset, tmp_path):
    from agents.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint

    train(tiny_config(dataset, tmp_path / "run", steps=2, eval_windows=0))
    metrics = evaluate_checkpoint(EvaluateConfig(str(tmp_path / "run" / "model"), str(dataset), str(tmp_path / "eval"),
                                                 context_frames=2, horizon=4, windows=4, split="all"))
    assert metrics["horizons"] == [1, 2, 3, 4] and len(metrics["psnr"]) == 4
    assert all(0 < p <= 100 for p in metrics["psnr"] + metrics["copy_last_psnr"])
    assert (tmp_path / "eval" / "open_loop.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "open_loop.json").read_text())["windows"] == 4


def test_noise_levels_mix_logit_normal_pure_noise_and_context():
    from generator.train import sample_noise_levels

    g = torch.Generator().manual_seed(0)
    config = tiny_config(Path("d"), Path("o"), full_noise_prob=0.25, context_frame_prob=0.3, context_noise_max=0.2)
    levels = sample_noise_levels((200, 50), config, g)
    assert ((levels >= 0) & (levels <= 1)).all()
    pure = (levels == 1.0).float().mean().item()
    assert pure == pytest.approx(0.25 * 0.7, abs=0.02)  # context frames override
    assert ((levels <= 0.2).float().mean().item()) == pytest.approx(0.3 + 0.7 * 0.75 * 0.083, abs=0.02)  # P(logit-normal <= 0.2) = 0.083
    none = sample_noise_levels((200, 50), tiny_config(Path("d"), Path("o"), full_noise_prob=0.0), g)
    assert (none == 1.0).sum() == 0


def test_training_can_verify_checksums_and_names_a_shard_with_a_bad_action(tmp_path):
    from generator.data import DatasetError

    data = make_dataset(tmp_path / "data", episodes=2)
    for shard in sorted(data.glob("episode_*")):
        with open(shard / "frames.memmap", "r+b") as handle:  # one flipped byte per episode: sizes stay right
            handle.seek(100)
            byte = handle.read(1)
            handle.seek(100)
            handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DatasetError, match="episode_00000.*checksum mismatch"):
        train(tiny_config(data, tmp_path / "a", steps=1, eval_windows=0, verify_data="checksum"))
    for shard in sorted(data.glob("episode_*")):
        with open(shard / "actions.memmap", "r+b") as handle:
            handle.seek(8 * 3)
            handle.write(np.int64(99).tobytes())
    with pytest.raises(DatasetError, match=r"episode_00000.*actions\[3\] = 99 is outside Discrete\(3\)"):
        train(tiny_config(data, tmp_path / "b", steps=2, eval_windows=0))


def test_prompts_are_every_whole_window_without_a_terminal_step(dataset):
    from generator.data import EpisodeDataset
    from generator.train import build_prompts

    val = EpisodeDataset(dataset, window=4, split="val")
    clean = [i for i in range(len(val)) if val[i]["valid"].all() and not val[i]["terminated"].any()]
    assert 0 < len(clean) < len(val) < 32  # the val split holds a terminated episode, and fewer windows than 32
    prompts = build_prompts(str(dataset), context_frames=4, count=32)
    assert torch.equal(prompts["frames"], torch.stack([val[i]["frames"] for i in clean]))  # all pickable, no death
    assert torch.equal(prompts["actions"], torch.stack([val[i]["actions"] for i in clean]))
    few = build_prompts(str(dataset), context_frames=4, count=3)
    assert len({bytes(clip.numpy()) for clip in few["frames"]}) == 3  # spread over distinct windows


def test_a_model_prompt_bank_can_be_rebuilt_from_its_dataset(dataset, tmp_path):
    from generator.pretrained import export_model
    from generator.train import build_prompts
    from tiny_world import make_tiny_world

    bare = make_tiny_world(action_space={"type": "Discrete", "n": 3, "start": 0})
    bare.prompts = None  # a model without a bank
    bare.save_pretrained(tmp_path / "a")
    world = export_model(tmp_path / "a", tmp_path / "b", prompts_from=dataset, prompt_count=5)
    loaded = WorldModel.from_pretrained(tmp_path / "b")
    expected = build_prompts(str(dataset), context_frames=4, count=5)
    assert all(torch.equal(loaded.prompts[key], expected[key]) for key in expected)
    assert loaded.info.training["export"]["prompts_from"] == str(dataset.resolve()) and world.prompts is not None
    make_tiny_world().save_pretrained(tmp_path / "other")  # Discrete(5): not this dataset's game
    with pytest.raises(ValueError, match="action"):
        export_model(tmp_path / "other", tmp_path / "c", prompts_from=dataset)


def test_presets_bring_a_clip_length_that_fits_and_a_bad_one_leaves_no_folder(dataset, tmp_path):
    from generator.train import resolve_clip_frames

    config = tiny_config(dataset, tmp_path / "run", steps=1, eval_windows=0, clip_frames=0)
    assert resolve_clip_frames(config).clip_frames == 4  # the tiny window
    assert resolve_clip_frames(tiny_config(dataset, tmp_path, clip_frames=0, model="small",
                                           model_overrides={})).clip_frames == 16
    assert train(config)["step"] == 1
    with pytest.raises(ValueError, match=r"clip_frames 16 must be in \[1, 4\] for --model tiny"):
        train(tiny_config(dataset, tmp_path / "bad", clip_frames=16))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("how", ["max_minutes", "SIGTERM", "SIGINT"])
def test_a_run_stopped_early_is_saved_and_resumes(dataset, tmp_path, monkeypatch, how):
    import signal

    import generator.train as train_module

    previous_handler = signal.getsignal(signal.SIGINT)
    if how != "max_minutes":
        real_loss, calls = train_module.flow_matching_loss, []

        def loss_then_signal(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                signal.raise_signal(getattr(signal, how))  # e.g. a scheduler's kill during the second step
            return real_loss(*args, **kwargs)

        monkeypatch.setattr(train_module, "flow_matching_loss", loss_then_signal)
    limit = dict(max_minutes=1e-9) if how == "max_minutes" else {}
    result = train(tiny_config(dataset, tmp_path / "run", steps=6, ckpt_every=1000, eval_windows=0, **limit))
    expected_step = 1 if how == "max_minutes" else 2
    assert result["step"] == expected_step and result["stopped"].endswith("min" if how == "max_minutes" else how)
    assert WorldModel.from_pretrained(tmp_path / "run" / "model").info.training["step"] == expected_step
    assert signal.getsignal(signal.SIGINT) is previous_handler  # handlers restored after the run
    monkeypatch.undo()
    resumed = train(tiny_config(dataset, tmp_path / "run", steps=6, ckpt_every=1000, eval_windows=0))
    assert resumed["step"] == 6 and resumed["stopped"] is None


def test_train_help_describes_every_flag_and_lists_the_presets():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    import re

    from generator.model import PRESETS

    assert f"--model {{{','.join(sorted(PRESETS))}}}" in proc.stdout and "--max-minutes" in proc.stdout
    entries = re.split(r"\n  (?=--)", proc.stdout.split("options:")[1])[1:]
    assert len(entries) == len(dataclasses.fields(TrainConfig))
    for entry in entries:  # the flag, its metavar or choices, then a description besides the default
        description = re.sub(r"^--\S+( [A-Z_]+| \{[^}]*\})?( \| --\S+)?", "", entry)
        assert re.sub(r"\(default: [^)]*\)", "", description).strip(), entry
    assert "frames per training clip" in proc.stdout


def test_patch_size_for_other_frame_sizes_divides_both_sides():
    from generator.train import patch_size_for

    assert patch_size_for(32, 32) == 4 and patch_size_for(64, 48) == 8 and patch_size_for(64, 32) == 8
    for height, width in [(48, 64), (40, 60), (84, 84), (96, 128)]:
        p = patch_size_for(height, width)
        assert height % p == 0 and width % p == 0 and 20 <= (height // p) * (width // p) <= 200


def test_the_model_records_the_game_arguments_of_its_dataset(tmp_path):
    from generator.data import EpisodeDataset
    from generator.train import build_world_model, resolve_clip_frames

    root = make_dataset(tmp_path / "data", episodes=1)
    meta = json.loads((root / "meta.json").read_text())
    meta["extra"] = {"game_kwargs": {"resize": "letterbox"}}  # as `collect.py --resize letterbox` writes it
    (root / "meta.json").write_text(json.dumps(meta))
    config = resolve_clip_frames(tiny_config(root, tmp_path / "run"))
    world = build_world_model(config, EpisodeDataset(root, window=4))
    world.save_pretrained(tmp_path / "model")
    assert WorldModel.from_pretrained(tmp_path / "model").info.game_kwargs == {"resize": "letterbox"}


def test_one_pass_training_sees_context_as_one_pass_inference_caches_it():
    """`commit_pass=False`, one sampler step: the training pass over a clip predicts every frame exactly as one-pass
    inference (`generate_and_cache_frames`, each frame's pass written to the cache) does, teacher-forced with the
    same noise and previous frames. With `commit_pass=True` the context is presented otherwise."""
    from generator.model import DiT, dit_config
    from generator.sampler import generate_and_cache_frames
    from generator.train import flow_matching_loss

    torch.manual_seed(0)
    dit = DiT(dit_config("tiny", previous_frame_input=True, prediction="x",
                         action_space={"type": "Discrete", "n": 3, "start": 0})).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    b, t = 2, 4
    latents = torch.randn(b, t, 3, 16, 16)
    batch = {"actions": torch.randint(0, 3, (b, t)), "rewards": torch.zeros(b, t),
             "valid": torch.ones(b, t, dtype=bool),
             "terminated": torch.zeros(b, t, dtype=bool), "is_first": torch.zeros(b, t, dtype=bool)}  # mid-episode
    seen = {}

    def capture(noisy, levels, actions, positions, has_action=None, valid=None, previous=None):
        seen.update(noisy=noisy, levels=levels, previous=previous)
        seen["out"] = dit(noisy, levels, actions, positions, has_action=has_action, valid=valid, previous=previous)
        return seen["out"]

    capture.config = dit.config
    for commit_pass in (False, True):
        # one pass: the last frame (free level) at 1 too, so inference's one-step function can be compared on it
        levels_of_last = dict(full_noise_prob=1.0, context_frame_prob=0.0) if not commit_pass else {}
        config = TrainConfig(data="-", out="-", sampler_steps=1, commit_pass=commit_pass, **levels_of_last)
        with torch.no_grad():
            flow_matching_loss(capture, latents, batch, config, torch.Generator().manual_seed(1))
        levels = seen["levels"]
        trained_x0 = seen["noisy"] - levels[:, :, None, None, None] * seen["out"].velocity
        cache = dit.new_cache(b)
        inferred = []
        for j in range(t):
            x, _ = generate_and_cache_frames(dit, cache, None, batch["actions"][:, j], torch.full((b,), j),
                                             seen["noisy"][:, j], 1, previous=seen["previous"][:, j])
            inferred.append(x)
        matches = torch.allclose(torch.stack(inferred, 1), trained_x0, atol=1e-4)
        if not commit_pass:
            assert (levels == 1.0).all() and matches
        else:
            assert not matches  # two-pass training presents context at its own levels, not as this cache holds it


def test_init_starts_from_a_checkpoint_and_refuses_another_architecture(dataset, tmp_path):
    torch.set_num_threads(1)
    train(tiny_config(dataset, tmp_path / "a", steps=3, eval_windows=0))
    source = WorldModel.from_pretrained(tmp_path / "a" / "model")
    # lr 0: the run's weights stay the ones it started from
    train(tiny_config(dataset, tmp_path / "b", steps=1, lr=0.0, eval_windows=0, init=str(tmp_path / "a" / "model"),
                      commit_pass=False))
    tuned = WorldModel.from_pretrained(tmp_path / "b" / "model")
    assert tuned.sampling.commit_pass is False
    for (name, a), b in zip(source.dit.state_dict().items(), tuned.dit.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="dim"):
        train(tiny_config(dataset, tmp_path / "c", steps=1, eval_windows=0, init=str(tmp_path / "a" / "model"),
                          model_overrides=dict(TINY, dim=48)))
    # a day clock and attention-pooled outcomes may be added: they start as no-ops, so the outputs are the source's
    train(tiny_config(dataset, tmp_path / "d", steps=1, lr=0.0, eval_windows=0, init=str(tmp_path / "a" / "model"),
                      model_overrides=dict(TINY, day_period=7, outcome_pool=True), outcome_clip_prob=0.5))
    clocked = WorldModel.from_pretrained(tmp_path / "d" / "model")
    assert clocked.dit.config.day_period == 7 and clocked.dit.config.outcome_pool
    b, t = 2, 3
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(b, t, *source.codec.latent_shape, generator=g)
    args = (latents, torch.rand(b, t, generator=g), torch.zeros(b, t, dtype=torch.long), torch.arange(t)[None] + 40)
    ours, theirs = clocked.dit.eval()(*args), source.dit.eval()(*args)
    assert torch.equal(ours.velocity, theirs.velocity) and torch.allclose(ours.reward, theirs.reward, atol=1e-6)
    with pytest.raises(ValueError, match="one-pass"):
        train(tiny_config(dataset, tmp_path / "e", steps=1, outcome_clip_prob=0.5, commit_pass=False))
    # train_only: a fine-tune of the outcome parts alone leaves every other weight as it was
    train(tiny_config(dataset, tmp_path / "f", steps=3, lr=1e-2, warmup_steps=0, eval_windows=0,
                      init=str(tmp_path / "d" / "model"), model_overrides=dict(TINY, day_period=7, outcome_pool=True),
                      outcome_clip_prob=1.0, train_only=("outcome_head", "outcome_pool"), ema_decay=0.0))
    heads = WorldModel.from_pretrained(tmp_path / "f" / "model").dit.state_dict()
    changed = {name for name, value in clocked.dit.state_dict().items() if not torch.equal(value, heads[name])}
    assert changed and all(name.startswith(("outcome_head", "outcome_pool")) for name in changed), changed
    with pytest.raises(ValueError, match="names no parameter"):
        train(tiny_config(dataset, tmp_path / "g", steps=1, train_only=("no_such_module",)))


def test_outcome_clips_are_presented_as_a_commit_pass_and_alone_teach_the_outcome_heads():
    """`outcome_clip_prob`: some clips have every frame at a context level, and only their transitions count in the
    reward and termination losses (the positions are the window's episode steps)."""
    import torch.nn.functional as F

    from generator.model import DiT, dit_config
    from generator.train import flow_matching_loss

    torch.manual_seed(0)
    dit = DiT(dit_config("tiny", reward_values=(0.0, 1.0), action_space={"type": "Discrete", "n": 3, "start": 0}))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    b, t = 16, 4
    batch = {"actions": torch.randint(0, 3, (b, t)), "rewards": (torch.rand(b, t) < 0.3).float(),
             "valid": torch.ones(b, t, dtype=bool), "terminated": torch.zeros(b, t, dtype=bool),
             "is_first": torch.zeros(b, t, dtype=bool), "step": torch.arange(t)[None] + torch.arange(b)[:, None] * 10}
    seen = {}

    def capture(noisy, levels, actions, positions, **kwargs):
        seen.update(levels=levels, positions=positions, out=dit(noisy, levels, actions, positions, **kwargs))
        return seen["out"]

    capture.config, capture.reward_values = dit.config, dit.reward_values
    config = TrainConfig(data="-", out="-", outcome_clip_prob=0.5, context_noise_max=0.2)
    with torch.no_grad():
        _, metrics = flow_matching_loss(capture, torch.randn(b, t, 3, 16, 16), batch, config, torch.Generator().manual_seed(3))
    assert torch.equal(seen["positions"], batch["step"])
    clean = (seen["levels"] <= 0.2).all(1)  # outcome clips (a drawn clip is this clean by chance with odds ~1e-8)
    assert 0 < int(clean.sum()) < b
    logits = seen["out"].reward_logits[clean]
    expected = F.cross_entropy(logits.flatten(0, 1), batch["rewards"][clean].long().flatten())
    assert metrics["reward"] == pytest.approx(float(expected), rel=1e-5)
