"""Codecs: exact pixel round trips, KL autoencoder shapes/gradients/learning, statistics, save/load."""
from __future__ import annotations

import pytest
import torch

from generator.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from generator.codec import (
    CodecConfig,
    KLAutoencoder,
    PixelCodec,
    build_codec,
    codec_from_pretrained,
    fit_latent_statistics,
    float_to_frames,
    frames_to_float,
    load_codec,
    save_codec,
)

TINY = dict(frame_size=(16, 16), latent_channels=4, downsample=2, channels=(8, 16), norm_groups=4)


def blocky_frames(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (count, size, size, 3): a coloured background with two solid rectangles, like a tiled game."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.empty(count, size, size, 3, dtype=torch.uint8)
    for i in range(count):
        colours = torch.randint(0, 256, (3, 3), generator=generator, dtype=torch.uint8)
        frames[i] = colours[0]
        for colour in colours[1:]:
            top, left = torch.randint(0, size - 4, (2,), generator=generator).tolist()
            frames[i, top: top + 4 + top % 5, left: left + 4 + left % 3] = colour
    return frames


def test_frame_conversion_is_exact_for_every_byte():
    values = torch.arange(256, dtype=torch.uint8)
    frames = values.reshape(1, 256, 1, 1).expand(1, 256, 2, 3).contiguous()  # (1, H=256, W=2, 3)
    images = frames_to_float(frames)
    assert images.shape == (1, 3, 256, 2) and images.min() == -1 and images.max() == 1
    assert torch.equal(float_to_frames(images), frames)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_float(frames.float())


def test_pixel_codec_round_trip_is_exact_with_leading_dims():
    codec = PixelCodec(CodecConfig(kind="pixels", frame_size=(8, 12)))
    assert codec.latent_shape == (3, 8, 12) and not list(codec.parameters())
    frames = torch.randint(0, 256, (2, 5, 8, 12, 3), dtype=torch.uint8)  # (B, T, H, W, 3)
    latents = codec.encode(frames)
    assert latents.shape == (2, 5, 3, 8, 12) and latents.dtype == torch.float32
    assert torch.equal(latents, frames_to_float(frames))
    assert torch.equal(float_to_frames(codec.decode(latents)), frames)


def test_encode_and_decode_reject_wrong_shapes():
    codec = PixelCodec(CodecConfig(kind="pixels", frame_size=(8, 8)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 8, 8, 3\)"):
        codec.encode(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 8, 8\)"):
        codec.decode(torch.zeros(2, 4, 8, 8))


def test_config_validation_and_dict_round_trip():
    config = CodecConfig(**TINY, kl_weight=1e-3)
    assert CodecConfig.from_dict(config.to_dict()) == config
    assert CodecConfig().latent_shape == (4, 16, 16)
    with pytest.raises(ValueError, match="power of 2"):
        CodecConfig(downsample=3)
    with pytest.raises(ValueError, match="log2"):
        CodecConfig(downsample=8)  # default channels are for downsample 4
    with pytest.raises(ValueError, match="unknown CodecConfig fields"):
        CodecConfig.from_dict({"kind": "kl", "widths": [1]})


def test_default_kl_autoencoder_shapes_and_size():
    codec = KLAutoencoder(CodecConfig())
    assert codec.latent_shape == (4, 16, 16)
    assert sum(p.numel() for p in codec.parameters()) < 1_000_000
    frames = torch.randint(0, 256, (1, 2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        latents = codec.encode(frames)
        images = codec.decode(latents)
    assert latents.shape == (1, 2, 4, 16, 16)
    assert images.shape == (1, 2, 3, 64, 64) and images.abs().max() <= 1


def test_kl_encode_is_deterministic_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    codec = KLAutoencoder(CodecConfig(**TINY))
    frames = blocky_frames(4)
    assert torch.equal(codec.encode(frames), codec.encode(frames))
    losses = codec.training_losses(frames_to_float(frames))
    losses["loss"].backward()
    for name, parameter in codec.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_kl_reconstruction_loss_decreases():
    torch.manual_seed(0)
    codec = KLAutoencoder(CodecConfig(**TINY))
    images = frames_to_float(blocky_frames(8))
    optimizer = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(30):
        losses = codec.training_losses(images, generator=generator)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["recon"].item())
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5, history


def test_fit_latent_statistics_normalises_latents():
    torch.manual_seed(0)
    codec = KLAutoencoder(CodecConfig(**TINY))
    frames = blocky_frames(12)
    mean, std = fit_latent_statistics(codec, [frames[:5], frames[5:].reshape(1, 7, 16, 16, 3)])
    assert torch.equal(codec.latent_mean, mean) and mean.shape == (4,)
    with torch.no_grad():
        latents = codec.encode(frames)  # (N, C, h, w)
    assert torch.allclose(latents.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(latents.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    with torch.no_grad():  # normalisation is undone by decode: stats do not change reconstructions
        fresh = KLAutoencoder(CodecConfig(**TINY))
        fresh.load_state_dict({k: v for k, v in codec.state_dict().items() if not k.startswith("latent_")},
                              strict=False)
        assert torch.allclose(codec.decode(codec.encode(frames)), fresh.decode(fresh.encode(frames)), atol=1e-5)


def test_codec_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = KLAutoencoder(CodecConfig(**TINY))
    fit_latent_statistics(codec, [blocky_frames(4)])
    save_codec(codec, tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    assert isinstance(loaded, KLAutoencoder) and loaded.config == codec.config and not loaded.training
    frames = blocky_frames(3, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded.encode(frames), codec.encode(frames))
    assert isinstance(KLAutoencoder.from_pretrained(tmp_path / "codec"), KLAutoencoder)
    with pytest.raises(CheckpointError, match="not a PixelCodec"):
        PixelCodec.from_pretrained(tmp_path / "codec")

    pixels = build_codec(CodecConfig(kind="pixels", frame_size=(16, 16)))
    save_codec(pixels, tmp_path / "pixels")
    assert isinstance(codec_from_pretrained(tmp_path / "pixels"), PixelCodec)


def test_load_codec_reports_mismatches(tmp_path):
    codec = KLAutoencoder(CodecConfig(**TINY))
    config = {"codec": {**codec.config.to_dict(), "channels": [16, 16]}}
    save_checkpoint(tmp_path / "wrong", config=config, tensors={"codec": codec.state_dict()})
    with pytest.raises(CheckpointError, match=r"codec: tensor encoder\.conv_in\.weight has shape \(8, 3, 3, 3\) in "
                                              r"checkpoint but \(16, 3, 3, 3\)"):
        load_codec(tmp_path / "wrong")
    save_checkpoint(tmp_path / "bad", config={"codec": {"kind": "vq"}}, tensors={"codec": {}})
    with pytest.raises(CheckpointError, match="invalid codec config"):
        load_codec(tmp_path / "bad")
    save_checkpoint(tmp_path / "none", config={}, tensors={"codec": {}})
    with pytest.raises(CheckpointError, match="no 'codec' config"):
        load_codec(tmp_path / "none")
    assert load_checkpoint(tmp_path / "none")[0] == {}


# ----------------------------------------------------------------------------------------------------------
# Training loop (generator.train_codec) on an in-memory stand-in for EpisodeDataset(window=1)


class FakeFrames:
    """The slice of the EpisodeDataset interface train_codec uses, over `blocky_frames`."""

    def __init__(self, count: int, seed: int = 0, crash_after: int | None = None):
        self.frames = blocky_frames(count, seed=seed)  # (N, 16, 16, 3)
        self.frame_size = (16, 16)
        self.crash_after, self.calls = crash_after, 0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        return {"frames": self.frames[index: index + 1], "valid": torch.ones(1, dtype=torch.bool)}

    def sample(self, batch_size: int, generator: torch.Generator) -> dict:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("simulated crash")
        picks = torch.randint(len(self), (batch_size,), generator=generator)
        return {"frames": self.frames[picks][:, None], "valid": torch.ones(batch_size, 1, dtype=torch.bool)}


def tiny_codec_run(out, steps=4, **kwargs):
    from generator.train_codec import CodecTrainConfig

    codec = {key: value for key, value in TINY.items() if key not in ("kind", "frame_size")}
    return CodecTrainConfig(data="", out=str(out), steps=steps, batch_size=4, lr=3e-3, device="cpu", log_every=2,
                            ckpt_every=2, progress=False, eval_frames=8, stats_frames=16, **{**codec, **kwargs})


def run_tiny_training(out, datasets, steps=4, **kwargs):
    from generator.train_codec import train_codec

    return train_codec(tiny_codec_run(out, steps, **kwargs), datasets=datasets)


def test_train_codec_writes_a_loadable_run(tmp_path):
    metrics = run_tiny_training(tmp_path / "run", (FakeFrames(12), FakeFrames(6, seed=1)), steps=3)
    assert metrics["step"] == 3 and metrics["eval_split"] == "val" and metrics["eval_frames"] == 6
    assert 0 < metrics["val_psnr"] < 100 and metrics["latent_shape"] == [4, 8, 8]
    run = tmp_path / "run"
    assert (run / "reconstructions.png").is_file() and (run / "metrics.json").is_file()
    assert any((run / "tb").iterdir())
    codec = load_codec(run)  # the run folder resolves to run/model
    assert torch.equal(codec.latent_std, torch.tensor(metrics["latent_std"]))
    config, _ = load_checkpoint(run / "model", names=["codec"])
    assert config["training"]["step"] == 3


def test_train_codec_resumes_exactly_after_a_crash(tmp_path):
    run_tiny_training(tmp_path / "straight", (FakeFrames(12), None))
    straight = load_codec(tmp_path / "straight")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tiny_training(tmp_path / "crashed", (FakeFrames(12, crash_after=3), None))  # dies in step 4
    assert load_checkpoint(tmp_path / "crashed" / "train_state")[0]["step"] == 2
    metrics = run_tiny_training(tmp_path / "crashed", (FakeFrames(12), None))
    assert metrics["steps_this_run"] == 2 and metrics["eval_split"] == "train"
    resumed = load_codec(tmp_path / "crashed")
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_train_codec_refuses_to_resume_a_different_codec(tmp_path):
    run_tiny_training(tmp_path / "run", (FakeFrames(8), None), steps=1)
    from generator.train_codec import train_codec

    with pytest.raises(ValueError, match="different"):
        train_codec(tiny_codec_run(tmp_path / "run", steps=1, latent_channels=8), datasets=(FakeFrames(8), None))
