"""A trained world model as one loadable artefact: DiT + codec + sampling defaults + a dataset reference.

`WorldModel.from_pretrained(dir)` is the one way to load any trained generator (teacher, distilled, post-trained);
the folder is `config.json` + `model.safetensors` + `codec.safetensors` (see `generator.checkpoint`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from generator.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from generator.codec import CodecConfig, TileCodec, build_codec, dataset_frames, learn_tile_places
from generator.model import DiT, DiTConfig

KIND = "nextframe-world-model"


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"`: CUDA when present, else the CPU; anything else as `torch.device` reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SamplingConfig:
    """How frames are drawn from this model; the env's `sampler_steps` overrides `sampler_steps`."""

    sampler_steps: int = 8
    context_noise: float = 0.1  # flow time generated context frames are re-noised to before caching
    shift: float = 1.0  # timestep shift of the Euler schedule (SD3); > 1 spends more steps at high noise
    # "euler" (flow teachers), "euler_codes" (codebook models: Euler stepping from each token's most likely code at
    # every pass but the last), "consistency" (distilled students) or "categorical" (codebook models: codes drawn at
    # every pass but the last); `generator.sampler.denoise`
    solver: str = "euler"
    temperature: float = 1.0  # divides the code logits of the categorical solver's draws
    # True: each frame is generated, then written into the KV cache by a second pass at `context_noise` (two passes
    # per frame at one sampler step). False: the cache keeps the keys/values of the final sampling pass (AAPT; one
    # pass per frame at one step), for models trained so (`TrainConfig.commit_pass=False`, `generator.sampler`).
    commit_pass: bool = True
    # Tile codecs: a tile whose code is unchanged from the tile it came from in the previous frame shown (under the
    # view's motion, for motion-conditioned models) keeps that tile's pixels, so the prompt's real tiles stay as they
    # were shown, under their own light, instead of becoming their codes' copies (`generator.sampler.shown_frames`).
    # Only what is shown changes: the model reads the codes either way.
    carry_tiles: bool = False
    # Motion-conditioned models: divides the outcome model's motion logits before each row's view motion is drawn
    # (`generator.sampler.draw_motion`); 0 takes the most likely motion. Below 1 where the game's move rule is a
    # function of the frame shown and the action (Crafter: the tile the player faces), so the head's spread is its
    # own error, not the game's chance.
    motion_temperature: float = 1.0


@dataclass
class WorldModelInfo:
    """What the model was trained on, so the env can draw real prompts and present the real game's spaces."""

    game: str = "crafter"
    game_kwargs: dict = field(default_factory=dict)  # `make_game` arguments it was recorded with (area, resize, ...)
    frame_size: tuple[int, int] = (64, 64)
    fps: int = 15
    action_space: dict = field(default_factory=lambda: {"type": "Discrete", "n": 17, "start": 0})
    dataset: str | None = None  # path of the training dataset (its val split gives prompts)
    training: dict = field(default_factory=dict)  # steps, commands, metrics


class WorldModel(nn.Module):
    """The generator's trained parts together: `dit`, `codec`, `sampling`, `info`, and `prompts`.

    `prompts` (optional) are short real clips from the training data's validation split that start dream episodes
    without the dataset at hand: `frames` `(M, P, H, W, 3)` uint8, `actions` `(M, P, ...)`, `has_action` `(M, P)`.
    `outcome` (optional, tile models) is a `generator.outcome.OutcomeModel`: rewards and terminations read off the
    frames the dream shows, in place of the DiT's own outcome head.
    """

    def __init__(
        self,
        dit: DiT,
        codec: nn.Module,
        sampling: SamplingConfig,
        info: WorldModelInfo,
        prompts: dict[str, torch.Tensor] | None = None,
        outcome: nn.Module | None = None,
    ):
        super().__init__()
        self.dit, self.codec, self.sampling, self.info = dit, codec, sampling, info
        self.prompts = prompts
        self.outcome = outcome
        if dit.config.codebook_size and getattr(codec, "places", None) is not None:
            dit.bind_places(codec.places)  # the codec's tile places bound the code head too

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embed.weight.device

    def config_dict(self) -> dict:
        info = asdict(self.info)
        info["frame_size"] = list(self.info.frame_size)
        return {
            "kind": KIND,
            "dit": self.dit.config.to_dict(),
            "codec": self.codec.config.to_dict(),
            "sampling": asdict(self.sampling),
            "info": info,
            **({"outcome": self.outcome.config.to_dict()} if self.outcome is not None else {}),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_checkpoint(
            directory,
            config=self.config_dict(),
            tensors={
                "model": self.dit.state_dict(),
                "codec": self.codec.state_dict(),
                **({"prompts": self.prompts} if self.prompts else {}),
                **({"outcome": self.outcome.state_dict()} if self.outcome is not None else {}),
            },
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "WorldModel":
        config, tensors = load_checkpoint(directory)
        if config.get("kind") != KIND:
            raise CheckpointError(f"{directory}: config.json is not a nextframe world model (kind={config.get('kind')!r})")
        try:
            dit_config = DiTConfig.from_dict(config["dit"])
            codec_config = CodecConfig.from_dict(config["codec"])
            sampling = SamplingConfig(**config.get("sampling", {}))
            info = WorldModelInfo(**config.get("info", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}: invalid config.json: {err}") from err
        info.frame_size = tuple(info.frame_size)
        dit = DiT(dit_config)
        codec = build_codec(codec_config)
        for name, module in (("model", dit), ("codec", codec)):
            if name not in tensors:
                raise CheckpointError(f"{directory}: missing {name}.safetensors")
            load_state_into(module, tensors[name], what=f"{directory}/{name}.safetensors")
        expected = tuple(codec.latent_shape)
        found = (dit_config.latent_channels, *dit_config.latent_size)
        if expected != found:
            raise CheckpointError(f"{directory}: codec latents {expected} do not match the DiT's input {found}")
        if dit_config.codebook_size:
            if getattr(codec, "codebook", None) is None or tuple(codec.codebook.shape) != tuple(dit.codebook.shape):
                raise CheckpointError(
                    f"{directory}: the DiT predicts over a codebook of {tuple(dit.codebook.shape)} tiles but the codec "
                    f"has {None if getattr(codec, 'codebook', None) is None else tuple(codec.codebook.shape)}; the "
                    "model and codec files come from different runs"
                )
            if not torch.equal(dit.codebook, codec.codebook):
                raise CheckpointError(
                    f"{directory}: model.safetensors and codec.safetensors hold different codebooks; the model was "
                    "trained on another tile codec (rebuild the checkpoint from one training run)"
                )
        if dit_config.motion_classes and (dit_config.motion_view, dit_config.motion_player) != (
                codec_config.motion_view, codec_config.motion_player):
            raise CheckpointError(
                f"{directory}: the DiT shifts a view of {dit_config.motion_view} (player {dit_config.motion_player}) "
                f"but the codec's labels read {codec_config.motion_view} (player {codec_config.motion_player}); the "
                "model and codec files come from different runs"
            )
        check_info(info, dit_config, codec_config, tensors.get("prompts"), where=str(directory))
        world = cls(dit, codec, sampling, info, tensors.get("prompts"))
        if "outcome" in config:
            from generator.outcome import attach_outcome, outcome_from_state

            if "outcome" not in tensors:
                raise CheckpointError(f"{directory}: config.json names an outcome model but outcome.safetensors is missing")
            where = f"{directory}/outcome.safetensors"
            attach_outcome(world, outcome_from_state(config["outcome"], tensors["outcome"], where), where)
        return world.to(resolve_device(device)).eval()


def check_info(info: WorldModelInfo, dit_config: DiTConfig, codec_config: CodecConfig,
               prompts: dict[str, torch.Tensor] | None, where: str) -> None:
    """Raise `CheckpointError` unless `info` (what the env presents) fits the network, codec and prompt clips."""
    from generator.actions import action_array_spec, space_from_json

    fix = "config.json was edited or mixed from another model; restore the one written with the weights"
    try:
        space = space_from_json(info.action_space)
        network_space = space_from_json(dit_config.action_space)
    except ValueError as err:
        raise CheckpointError(f"{where}: invalid action space in config.json: {err}") from err
    if space != network_space:
        raise CheckpointError(f"{where}: info.action_space {space} does not match the network's action embedding "
                              f"{network_space} (dit.action_space); {fix}")
    if tuple(info.frame_size) != tuple(codec_config.frame_size):
        raise CheckpointError(f"{where}: info.frame_size {tuple(info.frame_size)} does not match the codec's frame "
                              f"size {tuple(codec_config.frame_size)}; {fix}")
    if prompts is None:
        return
    if not {"frames", "actions", "has_action"} <= set(prompts):
        raise CheckpointError(f"{where}/prompts.safetensors lacks frames/actions/has_action")
    frames, actions, has_action = prompts["frames"], prompts["actions"], prompts["has_action"]
    count, length = frames.shape[:2] if frames.ndim == 5 else (None, None)
    action_shape, _ = action_array_spec(space)
    problems = []
    if frames.dtype != torch.uint8 or frames.ndim != 5 or tuple(frames.shape[2:]) != (*info.frame_size, 3):
        problems.append(f"frames {tuple(frames.shape)} {frames.dtype}, expected (M, P, {info.frame_size[0]}, "
                        f"{info.frame_size[1]}, 3) uint8")
    elif tuple(actions.shape) != (count, length, *action_shape) or tuple(has_action.shape) != (count, length):
        problems.append(f"actions {tuple(actions.shape)} / has_action {tuple(has_action.shape)} for frames "
                        f"{tuple(frames.shape)} and actions of shape {action_shape}")
    elif not all(space.contains(a) for a in actions[has_action.bool()].numpy().astype(space.dtype)):
        problems.append(f"actions outside {space}")
    elif "steps" in prompts and (tuple(prompts["steps"].shape) != (count,) or bool((prompts["steps"] < length - 1).any())):
        problems.append(f"steps {tuple(prompts['steps'].shape)} must hold each clip's last step in its episode, "
                        f"({count},) values >= {length - 1}")
    if problems:
        raise CheckpointError(f"{where}/prompts.safetensors: {problems[0]}")


def build_prompts(
    data: str, context_frames: int = 4, count: int = 32, verify: str = "shape"
) -> dict[str, torch.Tensor] | None:
    """Real starting clips for dream episodes: windows of `context_frames` steps with no padding and no terminal
    step (a clip ending at a death would end its dream episode at once), from the validation split (train if val has
    none): `count` of them spread evenly, or all when there are fewer. None when the dataset has no such window."""
    from generator.data import open_datasets

    for split in ("val", "train"):
        dataset = open_datasets(data, window=context_frames, split=split, verify=verify)
        candidates = dataset.whole_windows(exclude_terminal=True)
        if candidates:
            break
    else:
        return None
    if len(candidates) > count:
        candidates = [candidates[i * len(candidates) // count] for i in range(count)]
    items = [dataset[i] for i in candidates]
    return {
        "frames": torch.stack([it["frames"] for it in items]).contiguous(),
        "actions": torch.stack([it["actions"] for it in items]).contiguous(),
        "has_action": torch.stack([~it["is_first"] for it in items]).contiguous(),
        "steps": torch.stack([it["step"][-1] for it in items]).contiguous(),  # each clip's last frame's episode step
    }


def resolved_folders(spec: str | Path) -> str:
    """A comma-separated list of dataset folders with every folder made absolute (what a model records of its data)."""
    return ",".join(str(Path(path).resolve()) for path in str(spec).split(",") if path)


def prompts_from_dataset(world: WorldModel, data: str | Path | list, count: int = 32,
                         context_frames: int | None = None) -> dict[str, torch.Tensor]:
    """A new prompt bank for `world` from the episode dataset `data` (`build_prompts`: clips without
    padding or a terminal step); `context_frames` defaults to the current bank's clip length, else 4. The dataset
    must have the model's frame size and action space."""
    from generator.data import open_datasets
    from generator.actions import space_from_json

    dataset = open_datasets(data)
    space = space_from_json(world.info.action_space)
    if tuple(dataset.frame_size) != tuple(world.info.frame_size) or dataset.action_space != space:
        raise ValueError(f"{data} holds {dataset.frame_size} frames and actions in {dataset.action_space}; the model "
                         f"takes {tuple(world.info.frame_size)} and {space}: use the model's own dataset")
    if context_frames is None:
        context_frames = int(world.prompts["frames"].shape[1]) if world.prompts else 4
    prompts = build_prompts(str(data), context_frames=context_frames, count=count)
    if prompts is None:
        raise ValueError(f"{data} has no window of {context_frames} steps without padding or an episode end")
    return prompts


def export_model(source: str | Path, destination: str | Path, prompts_from: str | Path | None = None,
                 prompt_count: int = 32, places_from: str | None = None, outcome: str | Path | None = None,
                 **sampling) -> WorldModel:
    """Copy a world model to `destination` with new sampling defaults (`SamplingConfig` fields, e.g.
    `sampler_steps=1, context_noise=0.0`), recording the change in `info.training["export"]`. Weights are unchanged.
    `prompts_from`: rebuild the prompt bank (`prompt_count` clips) from that dataset (`prompts_from_dataset`).
    `places_from`: tile models learn from that dataset which codes each tile position shows (`learn_tile_places`).
    `outcome`: attach this outcome model (`generator.outcome.train_outcome`'s run folder or its `model/`); it must
    have been trained on this model's codec."""
    world = WorldModel.from_pretrained(source)
    known = set(SamplingConfig.__dataclass_fields__)
    unknown = set(sampling) - known
    if unknown:
        raise ValueError(f"unknown sampling fields {sorted(unknown)}; known: {sorted(known)}")
    changes = {k: v for k, v in sampling.items() if v is not None}
    for key, value in changes.items():
        setattr(world.sampling, key, type(getattr(world.sampling, key))(value))
    export = {"source": str(source), "sampling": changes}
    if "export" in world.info.training:  # an export of an export keeps the whole chain
        export["previous"] = world.info.training["export"]
    if world.sampling.carry_tiles and not isinstance(world.codec, TileCodec):
        raise ValueError(f"carry_tiles needs a tile-codec model; {source} uses a {world.codec.config.kind!r} codec")
    if places_from is not None:
        if not isinstance(world.codec, TileCodec):
            raise ValueError(f"--places-from needs a tile-codec model; {source} uses a {world.codec.config.kind!r} codec")
        world.codec = learn_tile_places(world.codec, dataset_frames(places_from, "train", frame_stride=2))
        world.dit.bind_places(world.codec.places)
        export["places_from"] = resolved_folders(places_from)
    if prompts_from is not None:
        world.prompts = prompts_from_dataset(world, prompts_from, prompt_count)
        export["prompts_from"] = resolved_folders(prompts_from)
    if outcome is not None:
        from generator.outcome import attach_outcome, load_outcome

        model = load_outcome(outcome)
        attach_outcome(world, model, str(outcome))
        export["outcome"] = {"source": str(Path(outcome).resolve()), "val": model.training_report.get("val")}
    world.info.training = {**world.info.training, "export": export}
    world.save_pretrained(destination)
    return world


@dataclass
class ExportConfig:
    """`nextframe export-model`: copy a world model with new sampling defaults or a new prompt bank."""

    checkpoint: str  # world-model folder to copy
    out: str  # folder to write (replaced if it exists)
    sampler_steps: int | None = None  # new default denoising steps
    context_noise: float | None = None  # new default context-noise level
    shift: float | None = None  # new default schedule shift
    # new default solver (euler_codes / categorical: codebook models, most likely / drawn codes at every pass but the
    # last)
    solver: Literal["euler", "euler_codes", "consistency", "categorical"] | None = None
    temperature: float | None = None  # new default temperature of the categorical solver's draws
    # tile models: unchanged tiles keep the pixels they were shown with (`SamplingConfig.carry_tiles`)
    carry_tiles: bool | None = None
    # motion-conditioned models: new default temperature of the view-motion draw (0: the most likely motion)
    motion_temperature: float | None = None
    prompts_from: str | None = None  # dataset to rebuild the prompt bank from
    prompt_count: int = 32  # clips in a rebuilt prompt bank
    # tile models: dataset(s) whose train split teaches the codec which codes each tile position shows
    # (`generator.codec.learn_tile_places`; every 2nd frame), so generated tiles keep to them
    places_from: str | None = None
    # outcome model to attach (`nextframe train-outcome` run folder): rewards and terminations read off the frames
    outcome: str | None = None


def run_export(config: ExportConfig) -> str:
    """`export_model` as `config` says; returns a one-line summary."""
    world = export_model(config.checkpoint, config.out, prompts_from=config.prompts_from,
                         prompt_count=config.prompt_count, sampler_steps=config.sampler_steps,
                         context_noise=config.context_noise, shift=config.shift, solver=config.solver,
                         temperature=config.temperature, carry_tiles=config.carry_tiles,
                         motion_temperature=config.motion_temperature, places_from=config.places_from, outcome=config.outcome)
    clips = "none" if world.prompts is None else tuple(world.prompts["frames"].shape)
    return f"wrote {config.out}: sampling {world.sampling}, prompt clips {clips}"

