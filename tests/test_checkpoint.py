"""Checkpoint folders: round trips, atomicity, and the error messages a user sees when something is wrong."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from generator import checkpoint
from generator.checkpoint import (
    CheckpointError,
    atomic_write_json,
    capture_rng_state,
    flatten_state,
    load_checkpoint,
    load_state_into,
    restore_rng_state,
    save_checkpoint,
    unflatten_state,
)


def tiny_model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.LayerNorm(width), nn.Linear(width, 2))


def save_tiny(path, **config):
    model = tiny_model()
    save_checkpoint(path, config={"width": 8, **config}, tensors={"model": model.state_dict()})
    return model


def test_round_trip_restores_config_and_tensors(tmp_path):
    model = tiny_model()
    extra = {"step": torch.tensor(3), "table": torch.arange(6, dtype=torch.int16).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "ckpt", config={"width": 8, "name": "tiny"},
                           tensors={"model": model.state_dict(), "extra": extra})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "extra.safetensors", "model.safetensors"]
    on_disk = json.loads((path / "config.json").read_text())
    assert on_disk["format_version"] == checkpoint.FORMAT_VERSION
    assert set(on_disk["files"]) == {"model", "extra"} and len(on_disk["files"]["model"]["sha256"]) == 64

    config, states = load_checkpoint(path)
    assert config == {"width": 8, "name": "tiny"}
    for key, value in model.state_dict().items():
        assert torch.equal(states["model"][key], value)
    assert states["extra"]["table"].dtype == torch.int16 and states["extra"]["step"].shape == ()

    only_model = load_checkpoint(path, names=["model"])[1]
    assert list(only_model) == ["model"]
    fresh = tiny_model(8)
    load_state_into(fresh, states["model"], "model")


def test_overwrite_replaces_and_leaves_no_temporary_folders(tmp_path):
    save_tiny(tmp_path / "ckpt", run=1)
    save_tiny(tmp_path / "ckpt", run=2)
    assert load_checkpoint(tmp_path / "ckpt")[0]["run"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ckpt", config={}, tensors={}, overwrite=False)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_tiny(tmp_path / "ckpt", run=1)
    import safetensors.torch

    real_save_file = safetensors.torch.save_file
    calls = []

    def save_then_crash(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # second file of the new checkpoint: the first is already on disk
            raise OSError("disk full (simulated)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path / "ckpt", config={"run": 2},
                        tensors={"model": tiny_model().state_dict(), "ema": tiny_model().state_dict()})
    assert load_checkpoint(tmp_path / "ckpt")[0]["run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failed_rename_restores_previous_checkpoint(tmp_path, monkeypatch):
    save_tiny(tmp_path / "ckpt", run=1)
    real_rename = checkpoint.os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):  # moving the new folder into place
            raise OSError("crash during rename (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        save_tiny(tmp_path / "ckpt", run=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt")[0]["run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_reserved_and_unserialisable_config_rejected(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a", config={"files": 1}, tensors={})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "b", config={"x": object()}, tensors={})
    assert not any(tmp_path.iterdir())


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path / "empty")
    save_tiny(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        load_checkpoint(tmp_path / "ckpt", names=["ema"])
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_invalid_json_and_unsupported_version(tmp_path):
    save_tiny(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    good = json.loads(config_path.read_text())
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_checkpoint(tmp_path / "ckpt")
    config_path.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(CheckpointError, match="unsupported format_version 99"):
        load_checkpoint(tmp_path / "ckpt")


def test_flipped_bytes_fail_checksum_and_corrupt_header_is_named(tmp_path):
    save_tiny(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside tensor data: only the checksum can notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")

    data[-3] ^= 0xFF
    data[8] = ord("#")  # the JSON header starts at byte 8 with "{"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path / "ckpt", verify_checksums=False)


def test_truncated_file_is_named(tmp_path):
    save_tiny(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path / "ckpt", verify_checksums=False)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_tiny(tmp_path / "ckpt")
    _, states = load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as info:
        load_state_into(tiny_model(width=16), states["model"], "model")
    message = str(info.value)
    assert "model: tensor 0.weight has shape (8, 4) in checkpoint but (16, 4) in the model built from config" \
        in message
    assert "0.bias has shape (8,)" in message


def test_missing_unexpected_and_dtype_mismatch_listed():
    model = tiny_model()
    state = dict(model.state_dict())
    del state["2.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["0.bias"] = state["0.bias"].double()
    with pytest.raises(CheckpointError) as info:
        load_state_into(model, state, "ema")
    message = str(info.value)
    assert "ema: tensor 2.bias is missing from the checkpoint" in message
    assert "ema: tensor extra.weight is in the checkpoint but not in the model" in message
    assert "ema: tensor 0.bias has dtype torch.float64 in checkpoint but torch.float32" in message


def test_adamw_state_round_trips_and_continues_identically(tmp_path):
    def make():
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        return model, optimizer, scheduler

    def train_step(model, optimizer, scheduler, seed):
        inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()
        scheduler.step()

    model, optimizer, scheduler = make()
    for seed in range(3):
        train_step(model, optimizer, scheduler, seed)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton)  # the skeleton must be plain JSON
    save_checkpoint(tmp_path / "ckpt", config={"skeleton": skeleton},
                    tensors={"model": model.state_dict(), "training_state": tensors})

    config, states = load_checkpoint(tmp_path / "ckpt")
    restored = unflatten_state(states["training_state"], config["skeleton"])
    resumed_model, resumed_optimizer, resumed_scheduler = make()
    load_state_into(resumed_model, states["model"], "model")
    resumed_optimizer.load_state_dict(restored["optimizer"])
    resumed_scheduler.load_state_dict(restored["scheduler"])
    assert resumed_optimizer.param_groups[0]["betas"] == (0.8, 0.95)

    for seed in range(3, 6):
        train_step(model, optimizer, scheduler, seed)
        train_step(resumed_model, resumed_optimizer, resumed_scheduler, seed)
    for key, value in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key


def test_rng_state_round_trip_reproduces_draws(tmp_path):
    tensors, skeleton = flatten_state({"rng": capture_rng_state()})
    save_checkpoint(tmp_path / "ckpt", config={"skeleton": skeleton}, tensors={"rng": tensors})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on

    config, states = load_checkpoint(tmp_path / "ckpt")
    restore_rng_state(unflatten_state(states["rng"], config["skeleton"])["rng"])
    assert random.random() == expected[0]
    assert np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_flatten_handles_awkward_values():
    value = {
        1: ("a", None, float("inf"), b"\x00\xff"),
        "__weird": [np.float32(1.5), np.arange(4, dtype=np.uint32).reshape(2, 2)],
        "nested": {"t": torch.ones(2, 2).t(), "nan": float("nan")},
    }
    tensors, skeleton = flatten_state(value)
    restored = unflatten_state(tensors, json.loads(json.dumps(skeleton, allow_nan=False)))
    assert restored[1][:2] == ("a", None) and restored[1][2] == float("inf") and restored[1][3] == b"\x00\xff"
    assert restored["__weird"][0] == np.float32(1.5) and isinstance(restored["__weird"][0], np.float32)
    assert np.array_equal(restored["__weird"][1], value["__weird"][1])
    assert restored["__weird"][1].dtype == np.uint32
    assert torch.equal(restored["nested"]["t"], torch.ones(2, 2)) and np.isnan(restored["nested"]["nan"])
    with pytest.raises(TypeError, match="set"):
        flatten_state({"bad": {1, 2}})


def test_atomic_write_json(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "meta.json", {"a": [1, 2]})
    atomic_write_json(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 3}


def test_export_model_changes_only_the_sampling_defaults(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_world import make_tiny_world
    from generator.pretrained import WorldModel, export_model

    source = make_tiny_world().save_pretrained(tmp_path / "a")
    export_model(source, tmp_path / "b", sampler_steps=1, context_noise=0.0)
    a, b = WorldModel.from_pretrained(tmp_path / "a"), WorldModel.from_pretrained(tmp_path / "b")
    assert (b.sampling.sampler_steps, b.sampling.context_noise) == (1, 0.0)
    assert a.sampling.sampler_steps == 2 and b.sampling.shift == a.sampling.shift
    assert all(torch.equal(x, y) for x, y in zip(a.dit.state_dict().values(), b.dit.state_dict().values()))
    assert b.info.training["export"]["sampling"] == {"sampler_steps": 1, "context_noise": 0.0}
    with pytest.raises(ValueError, match="unknown sampling fields"):
        export_model(source, tmp_path / "c", steps=1)


def test_resumed_optimizer_keeps_saved_moments_and_takes_the_new_learning_rate():
    def build(lr):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
        return model, optimizer, scheduler

    model, optimizer, scheduler = build(1e-3)
    for _ in range(4):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()

    _, same, same_scheduler = build(1e-3)
    checkpoint.load_optimizer_state(same, saved_optimizer, same_scheduler, saved_scheduler)
    assert same.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 10)

    _, faster, faster_scheduler = build(4e-3)
    checkpoint.load_optimizer_state(faster, saved_optimizer, faster_scheduler, saved_scheduler)
    assert faster_scheduler.last_epoch == 4 and faster_scheduler.get_last_lr() == [pytest.approx(4e-3 * 5 / 10)]
    assert faster.param_groups[0]["lr"] == pytest.approx(4e-3 * 5 / 10)
    faster_scheduler.step()
    assert faster.param_groups[0]["lr"] == pytest.approx(4e-3 * 6 / 10)  # the schedule goes on from the new base
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert all(torch.equal(faster.state_dict()["state"][i][key], saved_optimizer["state"][i][key]) for i in (0, 1))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["info"]["action_space"].update(n=3), "action_space"),  # fewer actions: loaded silently before
        (lambda c: c["info"]["action_space"].update(n=8), "action_space"),  # more: IndexError at step() before
        (lambda c: c["info"].update(frame_size=[32, 32]), "frame_size"),  # failed at reset() before
        (lambda c: c["info"].update(frame_size=[16, 8]), "frame_size"),
    ],
)
def test_world_model_info_is_checked_against_its_network_at_load(tiny_checkpoint, edit, match):
    from generator.pretrained import WorldModel

    WorldModel.from_pretrained(tiny_checkpoint)
    path = tiny_checkpoint / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        WorldModel.from_pretrained(tiny_checkpoint)


def test_world_model_prompts_are_checked_against_info_at_load(tmp_path):
    from generator.pretrained import WorldModel
    from tiny_world import make_tiny_world

    world = make_tiny_world()
    world.prompts["frames"] = world.prompts["frames"][:, :, :8]  # clips of another frame size
    world.save_pretrained(tmp_path / "a")
    with pytest.raises(CheckpointError, match="prompts.safetensors: frames"):
        WorldModel.from_pretrained(tmp_path / "a")
    world = make_tiny_world()
    world.prompts["actions"][:, 1] = 7  # outside Discrete(5)
    world.save_pretrained(tmp_path / "b")
    with pytest.raises(CheckpointError, match="outside"):
        WorldModel.from_pretrained(tmp_path / "b")


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        path = tmp_path / "ckpt"
        save_tiny(path)
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.iterdir(), tmp_path / "metrics.json"]}
    assert modes == {"ckpt": 0o755, "config.json": 0o644, "model.safetensors": 0o644, "metrics.json": 0o644}
