"""Episode datasets on disk: one tensordict memmap shard per episode plus a ``meta.json`` index.

Layout of a dataset folder (see ``docs/data-format.md`` for the full contract)::

    meta.json                  # index: game, frame_size, action_space, fps, policy, versions, episodes
    episode_000000/            # one shard per episode, a `TensorDict.memmap_` folder
        frames.memmap  actions.memmap  rewards.memmap  terminated.memmap  truncated.memmap  is_first.memmap
        meta.json              # tensordict's own shard metadata (shapes, dtypes)
        episode.json           # {"length", "checksum", "seed"}: lets a shard be re-verified without the index
    previews/episode_000000.mp4  # optional

An episode of ``L`` transitions is stored as ``L + 1`` step-aligned rows: ``frames[i]`` is the observation at step
``i`` (``frames[0]`` the reset frame), ``actions[i]`` the action that led to it (``actions[0]`` zero padding),
``rewards[i]`` / ``terminated[i]`` / ``truncated[i]`` belong to the transition into step ``i``;
``is_first[i] = i == 0``.

`EpisodeWriter` appends episodes atomically (shard under a temporary name, then ``os.rename``; index rewritten with
``os.replace``). `EpisodeDataset` reads back only the rows a window needs and yields fixed-length windows.

This module never imports ``world_env``: training reads datasets without the games installed.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import gymnasium
import numpy as np
import torch

from generator.actions import action_array_spec, first_outside, space_from_json, space_range, space_to_json
from generator.checkpoint import atomic_write, atomic_write_json

FORMAT_VERSION = 1
META_NAME = "meta.json"
SHARD_INFO_NAME = "episode.json"
PREVIEW_DIR = "previews"
EPISODE_PREFIX = "episode_"
TMP_MARKER = ".tmp"
ARRAY_KEYS = ("frames", "actions", "rewards", "terminated", "truncated", "is_first")
# Arrays a dataset stores only where its meta.json declares them: ``achievements`` (L+1, E) int32, the game's
# cumulative achievement counters after each step, E = len(meta["achievements"]) (their names, in order).
OPTIONAL_KEYS = ("achievements",)
FLAG_KEYS = ("terminated", "truncated", "is_first")
VERIFY_LEVELS = ("none", "shape", "checksum")
SPLITS = ("all", "train", "val")

PathLike = str | os.PathLike


class DatasetError(ValueError):
    """An episode dataset (or one of its shards) is missing, truncated, corrupt or inconsistent with its index."""


ArraySpec = tuple[tuple[int, ...], np.dtype]  # per-step shape and dtype of one stored array


def array_specs(frame_size: tuple[int, int], action_space: gymnasium.Space,
                achievements: int = 0) -> dict[str, ArraySpec]:
    """Per-step ``(shape, dtype)`` of every stored array (the leading ``L + 1`` step axis excluded); with
    ``achievements = E > 0`` also the optional ``achievements`` counters."""
    height, width = frame_size
    specs = {
        "frames": ((height, width, 3), np.dtype(np.uint8)),
        "actions": action_array_spec(action_space),
        "rewards": ((), np.dtype(np.float32)),
        "terminated": ((), np.dtype(np.bool_)),
        "truncated": ((), np.dtype(np.bool_)),
        "is_first": ((), np.dtype(np.bool_)),
    }
    if achievements:
        specs["achievements"] = ((int(achievements),), np.dtype(np.int32))
    return specs


def achievement_names(meta: Mapping[str, Any]) -> list[str]:
    """The achievement counters a dataset's ``meta.json`` declares (``[]``: the dataset stores none)."""
    names = meta.get("achievements") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise DatasetError(f"meta.json 'achievements' must be a list of distinct names, got {names!r}")
    return names


# ----------------------------------------------------------------------------------------------------------
# Episode validation and checksums


def validate_episode(
    episode: Mapping[str, Any], frame_size: tuple[int, int], action_space: gymnasium.Space, achievements: int = 0
) -> dict[str, np.ndarray]:
    """Check one episode against the format and return it as contiguous arrays of the stored dtypes.

    ``is_first`` may be omitted (it is derived). Integer actions are widened to int64, real rewards to float32 and
    Box actions to float32; frames must already be uint8 and flags bool. A dataset with ``achievements = E``
    counters needs an ``achievements`` array ``(L+1, E)`` of non-negative integers that never decrease (cumulative
    counts). Raises ``ValueError`` naming the problem.
    """
    specs = array_specs(frame_size, action_space, achievements)
    keys = list(specs)
    required = [key for key in keys if key != "is_first"]
    missing = [key for key in required if key not in episode]
    if missing:
        raise ValueError(f"episode is missing arrays {missing}; expected {keys}")
    unknown = sorted(set(episode) - set(keys))
    if unknown:
        raise ValueError(f"episode has unknown arrays {unknown}; expected {keys}"
                         + (" (this dataset declares no achievement counters)" if "achievements" in unknown else ""))
    arrays = {key: np.asarray(value) for key, value in episode.items()}
    steps = arrays["frames"].shape[0] if arrays["frames"].ndim > 0 else 0
    if steps < 1:
        raise ValueError("episode must hold at least one step (the reset frame)")
    if "is_first" not in arrays:
        arrays["is_first"] = np.arange(steps) == 0
    lengths = {key: (a.shape[0] if a.ndim else None) for key, a in arrays.items()}
    if any(n != steps for n in lengths.values()):
        raise ValueError(f"episode arrays disagree on the number of steps (L + 1): {lengths}")

    out: dict[str, np.ndarray] = {}
    for key in keys:
        array = arrays[key]
        shape, dtype = specs[key]
        if array.shape[1:] != shape:
            raise ValueError(f"episode {key!r} has per-step shape {array.shape[1:]}, expected {shape}")
        if key == "frames" and array.dtype != np.uint8:
            raise ValueError(f"episode 'frames' must be uint8, got {array.dtype}")
        if key == "achievements":
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"episode 'achievements' must be integer counters, got {array.dtype}")
            if array.size and (array.min() < 0 or np.any(np.diff(array.astype(np.int64), axis=0) < 0)):
                raise ValueError("episode 'achievements' must be non-negative cumulative counters that never "
                                 "decrease from one step to the next")
        if key in FLAG_KEYS and array.dtype != np.bool_:
            raise ValueError(f"episode {key!r} must be bool, got {array.dtype}")
        real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        if key == "rewards" and not real:
            raise ValueError(f"episode 'rewards' must be a real number dtype, got {array.dtype}")
        if key == "actions":
            integer_space = dtype == np.int64
            if integer_space and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"episode 'actions' must be integers for {action_space}, got {array.dtype}")
            if not integer_space and not real:
                raise ValueError(f"episode 'actions' must be real numbers for {action_space}, got {array.dtype}")
        out[key] = np.ascontiguousarray(array.astype(dtype, copy=False))

    if not np.all(np.isfinite(out["rewards"])):
        raise ValueError("episode 'rewards' contains NaN or infinity")
    if out["rewards"][0] != 0:
        raise ValueError(
            f"episode rewards[0] must be 0 (no transition leads to the reset frame), got {out['rewards'][0]}"
        )
    if np.any(out["actions"][0] != 0):
        raise ValueError(f"episode actions[0] is padding and must be zeros, got {out['actions'][0].tolist()}")
    _check_actions_in_space(out["actions"][1:], action_space)
    if not np.array_equal(out["is_first"], np.arange(steps) == 0):
        raise ValueError("episode 'is_first' must be True at step 0 and False elsewhere")
    for key in ("terminated", "truncated"):
        early = np.flatnonzero(out[key][:-1])
        if early.size:
            raise ValueError(f"episode {key!r} is True at step {int(early[0])}; only the last step may end the episode")
        if out[key][0]:
            raise ValueError(f"episode {key!r} is True at step 0 (the reset frame); only a transition can end it")
    return out


def _check_actions_in_space(actions: np.ndarray, space: gymnasium.Space, first_step: int = 1) -> None:
    """Raise ``ValueError`` naming the first step (``actions[0]`` is step ``first_step``) outside ``space``."""
    bad = first_outside(space, actions)
    if bad is not None:
        raise ValueError(f"episode actions[{bad + first_step}] = {actions[bad].tolist()} is outside {space}"
                         f"{space_range(space)}")


def _check_read_actions(shard: Path, actions: np.ndarray, first_step: int, space: gymnasium.Space) -> None:
    """Actions read back from a shard (``actions[0]`` is step ``first_step``) must lie in the action space, so a
    corrupt value fails here, naming the shard, instead of deep inside training. Step 0 is padding, not checked."""
    if first_step == 0:
        actions, first_step = actions[1:], 1
    try:
        _check_actions_in_space(actions, space, first_step)
    except ValueError as error:
        raise DatasetError(f"{shard}: stored {error} (corrupt, or written for another action space); collect this "
                           "episode again or remove the shard from meta.json") from None


def episode_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """``"blake2b:<hex>"`` over every stored array's key, dtype, shape and bytes (in `ARRAY_KEYS` order, then the
    optional arrays present)."""
    digest = hashlib.blake2b(digest_size=20)
    for key in (*ARRAY_KEYS, *(k for k in OPTIONAL_KEYS if k in arrays)):
        array = arrays[key]
        digest.update(f"{key}:{array.dtype.str}:{tuple(array.shape)};".encode())
        digest.update(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    return "blake2b:" + digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Small file helpers


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _versions(game: str) -> dict[str, str]:
    names = ["nextframe", "numpy", "torch", "tensordict", "gymnasium"]
    prefix = game.partition(":")[0]
    if prefix not in ("gym", *names):
        names.append(prefix)  # the game's own package when it has one (crafter, minerl)
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _episode_index(name: str) -> int | None:
    if not name.startswith(EPISODE_PREFIX) or TMP_MARKER in name:
        return None
    digits = name[len(EPISODE_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def _read_meta(root: Path) -> dict:
    path = root / META_NAME
    try:
        with open(path) as handle:
            meta = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; not an episode dataset") from None
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise DatasetError(f"{path}: unsupported format_version {version!r}; this code reads {FORMAT_VERSION}")
    for key in ("game", "frame_size", "action_space", "fps", "episodes"):
        if key not in meta:
            raise DatasetError(f"{path}: field {key!r} is missing")
    return meta


# ----------------------------------------------------------------------------------------------------------
# Reading one shard


def _check_shard_files(shard: Path, steps: int, specs: Mapping[str, ArraySpec]) -> None:
    """Presence, tensordict metadata, shapes, dtypes and exact file sizes of one shard; stat calls only."""
    if not shard.is_dir():
        raise DatasetError(f"{shard}: shard missing")
    try:
        with open(shard / "meta.json") as handle:
            td_meta = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{shard}: shard metadata meta.json missing") from None
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{shard}: shard metadata meta.json unreadable ({error})") from None
    for key, (shape, dtype) in specs.items():
        entry = td_meta.get(key) if isinstance(td_meta, dict) else None
        if not isinstance(entry, dict):
            raise DatasetError(f"{shard}: array {key!r} missing from the shard metadata")
        expected_shape = [steps, *shape]
        if list(entry.get("shape", [])) != expected_shape:
            raise DatasetError(
                f"{shard}: {key!r} has shape {entry.get('shape')}, expected {expected_shape} (wrong length or shape)"
            )
        torch_dtype = str(torch.from_numpy(np.zeros(0, dtype)).dtype)
        if entry.get("dtype") != torch_dtype:
            raise DatasetError(f"{shard}: {key!r} has dtype {entry.get('dtype')}, expected {torch_dtype}")
        path = shard / f"{key}.memmap"
        expected_bytes = math.prod(expected_shape) * dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DatasetError(f"{shard}: file {path.name} missing") from None
        if size != expected_bytes:
            raise DatasetError(
                f"{shard}: file {path.name} holds {size} bytes, expected {expected_bytes} (truncated or wrong size)"
            )


def _read_rows(
    shard: Path, key: str, spec: ArraySpec, start: int, stop: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of one array of a shard, read with one positioned read into ``out`` (or a new array).

    Not a memmap and not ``TensorDict.load_memmap``: that opens files read-write and silently zero-extends a
    truncated file to its expected size, and a mapped file truncated under a reader kills it with SIGBUS. A short
    read here becomes a `DatasetError`, and no file handle stays open between reads.
    """
    shape, dtype = spec
    row_bytes = math.prod(shape) * dtype.itemsize
    if out is None:
        out = np.empty((stop - start, *shape), dtype=dtype)
    path = shard / f"{key}.memmap"
    wanted = (stop - start) * row_bytes
    try:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(start * row_bytes)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < wanted:
                n = handle.readinto(view[got:])
                if not n:
                    break
                got += n
    except OSError as error:
        raise DatasetError(f"{shard}: cannot read {path.name} ({error})") from None
    if got != wanted:
        raise DatasetError(f"{shard}: file {path.name} ended early (truncated): rows {start}:{stop} not all present")
    return out


def _read_shard(shard: Path, steps: int, specs: Mapping[str, ArraySpec]) -> dict[str, np.ndarray]:
    return {key: _read_rows(shard, key, spec, 0, steps) for key, spec in specs.items()}


def read_episode(shard: PathLike, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Load one shard folder into memory as numpy arrays, using its own ``episode.json`` and metadata.

    With ``verify`` the stored checksum is checked. Raises `DatasetError` naming the shard.
    """
    shard = Path(shard)
    info = _read_shard_info(shard)
    try:
        with open(shard / "meta.json") as handle:
            td_meta = json.load(handle)
        specs = {}
        for key in (*ARRAY_KEYS, *(k for k in OPTIONAL_KEYS if k in td_meta)):
            entry = td_meta[key]
            dtype = torch.empty(0, dtype=getattr(torch, entry["dtype"].removeprefix("torch."))).numpy().dtype
            specs[key] = (tuple(entry["shape"][1:]), dtype)
    except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{shard}: shard metadata meta.json unreadable ({error})") from None
    steps = int(info["length"]) + 1
    _check_shard_files(shard, steps, specs)
    arrays = _read_shard(shard, steps, specs)
    if verify and episode_checksum(arrays) != info["checksum"]:
        raise DatasetError(f"{shard}: checksum mismatch (contents changed after writing)")
    return arrays


def _read_shard_info(shard: Path) -> dict:
    path = shard / SHARD_INFO_NAME
    try:
        with open(path) as handle:
            info = json.load(handle)
        int(info["length"]), str(info["checksum"])
    except FileNotFoundError:
        raise DatasetError(f"{shard}: {SHARD_INFO_NAME} missing") from None
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{shard}: {SHARD_INFO_NAME} unreadable ({error})") from None
    return info


# ----------------------------------------------------------------------------------------------------------
# Writing


class EpisodeWriter:
    """Appends whole episodes to a dataset folder; one writer per folder at a time.

    A new folder gets a ``meta.json`` at once. An existing folder is resumed: its game, frame size, action space,
    fps, policy and extra metadata must match (``ValueError`` otherwise; an extra key the dataset lacks is not
    compared, so datasets written before a key was recorded stay resumable); leftover ``*.tmp*`` entries from a killed
    writer are deleted; a finished shard missing from the index (killed between the shard rename and the index
    update) is re-verified against its own ``episode.json`` checksum and adopted, or deleted when it fails.

    Not safe for concurrent writers (two writers would pick the same shard name and delete each other's
    temporaries); parallel collection runs its envs in one process that owns the writer.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        game: str,
        frame_size: tuple[int, int],
        action_space: gymnasium.Space,
        fps: int,
        policy: dict,
        extra: dict | None = None,
        achievements: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self.root = Path(root)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.action_space = action_space
        self.achievements = [str(name) for name in achievements or ()]
        self._specs = array_specs(self.frame_size, action_space, len(self.achievements))
        wanted = {
            "game": str(game),
            "frame_size": list(self.frame_size),
            "action_space": space_to_json(action_space),
            "fps": int(fps),
            "policy": json.loads(json.dumps(policy)),
            "extra": json.loads(json.dumps(extra or {})),
        }
        if self.achievements:
            wanted["achievements"] = list(self.achievements)
        meta_path = self.root / META_NAME
        if meta_path.exists():
            try:
                self.meta = _read_meta(self.root)
            except DatasetError as error:
                raise ValueError(f"cannot resume {self.root}: {error}") from None
            self.meta.setdefault("extra", {})
            for key, value in wanted.items():
                if key == "extra":
                    if extra is not None:
                        self._check_extra(value)
                elif self.meta.get(key) != value:
                    raise ValueError(
                        f"{self.root} holds a dataset with {key}={self.meta.get(key)!r}, not {value!r}; "
                        "write to a new folder"
                    )
            if self.meta.get("achievements", []) != self.achievements:
                raise ValueError(
                    f"{self.root} holds a dataset with achievements={self.meta.get('achievements', [])!r}, not "
                    f"{self.achievements!r}; write to a new folder"
                )
            self._recover()
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            leftovers = [p.name for p in self.root.iterdir() if TMP_MARKER not in p.name]
            if leftovers:
                raise ValueError(f"{self.root} is not empty and has no {META_NAME}: {sorted(leftovers)[:5]}")
            self._remove_temporaries()
            now = _now()
            self.meta = {
                "format_version": FORMAT_VERSION,
                **wanted,
                "seeds": [],
                "created": now,
                "updated": now,
                "versions": _versions(str(game)),
                "episodes": [],
                "total_steps": 0,
            }
            atomic_write_json(meta_path, self.meta)

    @property
    def num_episodes(self) -> int:
        return len(self.meta["episodes"])

    @property
    def total_steps(self) -> int:
        return int(self.meta["total_steps"])

    def write(self, episode: Mapping[str, Any], *, seed: int | None = None, preview: bool = False) -> str:
        """Validate and append one episode; returns the shard name (``"episode_000123"``).

        ``episode`` maps `ARRAY_KEYS` (``is_first`` optional) to arrays of ``L + 1`` steps. Invalid episodes raise
        ``ValueError`` before anything is written. ``preview`` also writes ``previews/<name>.mp4``.
        """
        arrays = validate_episode(episode, self.frame_size, self.action_space, len(self.achievements))
        from tensordict import TensorDict

        name = f"{EPISODE_PREFIX}{self._next_index():06d}"
        checksum = episode_checksum(arrays)
        length = int(arrays["frames"].shape[0]) - 1
        seed = None if seed is None else int(seed)
        tmp = self.root / f"{name}{TMP_MARKER}-{uuid.uuid4().hex[:8]}"
        try:
            tensors = {key: torch.from_numpy(array) for key, array in arrays.items()}
            TensorDict(tensors, batch_size=[length + 1]).memmap_(tmp)
            atomic_write_json(tmp / SHARD_INFO_NAME, {"length": length, "checksum": checksum, "seed": seed})
            os.rename(tmp, self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._append({"name": name, "length": length, "checksum": checksum, "seed": seed})
        if preview:
            self.write_preview(name, arrays["frames"])
        return name

    def write_preview(self, name: str, frames: np.ndarray) -> Path:
        """Write ``previews/<name>.mp4`` (H.264 via imageio-ffmpeg, the dataset's fps) atomically; returns its path."""
        import imageio.v2 as imageio

        folder = self.root / PREVIEW_DIR
        folder.mkdir(exist_ok=True)

        def write(tmp: Path) -> None:
            # macro_block_size=1 keeps odd frame sizes (64x64 is fine either way) instead of resizing with a warning.
            with imageio.get_writer(tmp, fps=self.meta["fps"], macro_block_size=1, quality=8) as video:
                for frame in frames:
                    video.append_data(np.asarray(frame))

        return atomic_write(folder / f"{name}.mp4", write)

    # -- internals ------------------------------------------------------------------------------------------

    def _check_extra(self, extra: dict) -> None:
        """Every extra key the dataset records must have the same value; keys it lacks are not compared (it was
        written before they were recorded)."""
        stored = self.meta["extra"]
        for key in sorted(stored):
            if key not in extra or stored[key] != extra[key]:
                raise ValueError(
                    f"{self.root} holds a dataset with extra.{key}={stored[key]!r}, not {extra.get(key)!r}; "
                    "write to a new folder"
                )

    def _next_index(self) -> int:
        used = [_episode_index(p.name) for p in self.root.iterdir()]
        used += [_episode_index(e["name"]) for e in self.meta["episodes"]]
        used = [i for i in used if i is not None]
        return max(used, default=-1) + 1

    def _append(self, entry: dict) -> None:
        self.meta["episodes"].append(entry)
        self.meta["seeds"] = [e["seed"] for e in self.meta["episodes"]]
        self.meta["total_steps"] = sum(e["length"] + 1 for e in self.meta["episodes"])
        self.meta["updated"] = _now()
        atomic_write_json(self.root / META_NAME, self.meta)

    def _remove_temporaries(self) -> None:
        for folder in (self.root, self.root / PREVIEW_DIR):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if TMP_MARKER in path.name:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def _recover(self) -> None:
        self._remove_temporaries()
        listed = {e["name"] for e in self.meta["episodes"]}
        orphans = sorted(
            (p for p in self.root.iterdir() if _episode_index(p.name) is not None and p.name not in listed),
            key=lambda p: _episode_index(p.name),
        )
        for shard in orphans:
            try:
                info = _read_shard_info(shard)
                arrays = read_episode(shard, verify=True)
                validate_episode(arrays, self.frame_size, self.action_space, len(self.achievements))
            except (DatasetError, ValueError):
                shutil.rmtree(shard, ignore_errors=True)
                continue
            seed = info.get("seed")
            self._append({"name": shard.name, "length": int(info["length"]), "checksum": info["checksum"],
                          "seed": None if seed is None else int(seed)})


# ----------------------------------------------------------------------------------------------------------
# Reading


def split_episodes(names: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/val split by episode name: ``val`` holds names whose hash falls below ``val_fraction``.

    A hash (not position) keeps every episode on its side when the dataset grows. With ``val_fraction > 0`` and at
    least two episodes, val gets at least one episode and train keeps at least one.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")

    def score(name: str) -> float:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") / 2**64

    scores = {name: score(name) for name in names}
    val = {name for name in names if scores[name] < val_fraction}
    if val_fraction > 0 and len(names) >= 2:
        if not val:
            val.add(min(names, key=scores.__getitem__))
        if len(val) == len(names):
            val.discard(max(names, key=scores.__getitem__))
    return [n for n in names if n not in val], [n for n in names if n in val]


def sample_windows(dataset, batch_size: int, generator: torch.Generator | None = None,
                   weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``batch_size`` windows of ``dataset`` drawn with replacement, uniformly or in proportion to ``weights``
    ``(len(dataset),)``, stacked on a new dim 0."""
    if weights is None:
        indices = torch.randint(len(dataset), (batch_size,), generator=generator)
    else:
        if weights.shape != (len(dataset),):
            raise ValueError(f"weights must have one entry per window ({len(dataset)}), got {tuple(weights.shape)}")
        indices = torch.multinomial(weights.double(), batch_size, replacement=True, generator=generator)
    items = [dataset[int(i)] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class EpisodeDataset(torch.utils.data.Dataset):
    """Windows of consecutive steps from an episode dataset folder, as torch tensors.

    ``window=T``: item ``i`` is one of the windows of ``T`` steps starting at ``0..max(0, L + 1 - T)`` in each
    episode, a dict of ``frames (T, H, W, 3) uint8``, ``actions (T, ...)``, ``rewards (T,) float32``,
    ``terminated``, ``truncated``, ``is_first``, ``valid (T,) bool``; steps past the episode end are zero padding
    with ``valid=False``. ``window=None``: item ``i`` is the whole episode ``i`` (``valid`` all True).

    ``split`` selects episodes by a hash of their names (`split_episodes`). ``verify`` checks shards on open:
    ``"none"``; ``"shape"`` (default: presence, shapes, dtypes and exact file sizes, stat calls only); ``"checksum"``
    (also re-hashes every byte). Every read also checks the actions it returns against the action space (cheap; it
    catches a corrupt action that would otherwise crash training deep inside the embedding). Problems raise
    `DatasetError` naming the shard, at open or at the first read.
    A window reads only its own rows from the shard files (one positioned read per array, no handles kept open);
    ``load_into_memory=True`` reads every episode into RAM at open instead. The dataset is picklable, so
    ``torch.utils.data.DataLoader`` workers can share it.
    """

    def __init__(
        self,
        root: PathLike,
        window: int | None = None,
        split: str = "all",
        val_fraction: float = 0.1,
        verify: str = "shape",
        load_into_memory: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
        if window is not None and int(window) < 1:
            raise ValueError(f"window must be a positive number of steps or None, got {window!r}")
        self.root = Path(root)
        self.window = None if window is None else int(window)
        self.split = split
        self._meta = _read_meta(self.root)
        try:
            self._action_space = space_from_json(self._meta["action_space"])
            self._frame_size = (int(self._meta["frame_size"][0]), int(self._meta["frame_size"][1]))
        except (ValueError, TypeError, IndexError) as error:
            raise DatasetError(f"{self.root / META_NAME}: {error}") from None
        self._achievements = achievement_names(self._meta)
        self._specs = array_specs(self._frame_size, self._action_space, len(self._achievements))

        entries = {e["name"]: e for e in self._meta["episodes"]}
        train, val = split_episodes(list(entries), val_fraction)
        names = {"all": list(entries), "train": train, "val": val}[split]
        self._entries = [entries[name] for name in names]
        self._steps = np.array([int(e["length"]) + 1 for e in self._entries], dtype=np.int64)
        if self.window is None:
            counts = np.ones(len(self._entries), dtype=np.int64)
        else:
            counts = np.maximum(self._steps - self.window, 0) + 1
        self._window_ends = np.cumsum(counts)  # windows of episode k end (exclusive) at _window_ends[k]

        self.load_into_memory = bool(load_into_memory)
        self._in_memory: dict[int, dict[str, np.ndarray]] = {}
        for k, entry in enumerate(self._entries):
            shard = self.root / entry["name"]
            if verify != "none":
                _check_shard_files(shard, int(self._steps[k]), self._specs)
            if verify == "checksum" or self.load_into_memory:
                arrays = _read_shard(shard, int(self._steps[k]), self._specs)
                if verify == "checksum" and episode_checksum(arrays) != entry["checksum"]:
                    raise DatasetError(f"{shard}: checksum mismatch (contents changed after writing)")
                if self.load_into_memory:
                    self._in_memory[k] = arrays

    # -- properties -----------------------------------------------------------------------------------------

    @property
    def meta(self) -> dict:
        return self._meta

    @property
    def action_space(self) -> gymnasium.Space:
        return self._action_space

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._frame_size

    @property
    def num_episodes(self) -> int:
        return len(self._entries)

    @property
    def episode_names(self) -> list[str]:
        return [e["name"] for e in self._entries]

    @property
    def episode_lengths(self) -> list[int]:
        """Transitions ``L`` per episode of this split (each stores ``L + 1`` steps)."""
        return [int(e["length"]) for e in self._entries]

    @property
    def total_steps(self) -> int:
        """Stored steps (frames) in this split: the sum of ``L + 1``."""
        return int(self._steps.sum())

    @property
    def episode_seeds(self) -> list[int | None]:
        """The seed each episode of this split was recorded with (``None`` where none was stored)."""
        return [None if e.get("seed") is None else int(e["seed"]) for e in self._entries]

    @property
    def achievements(self) -> list[str]:
        """Names of the achievement counters every episode stores (``[]``: none); `episode` and `read_steps` then
        also return ``achievements`` ``(T, E)`` int32. Windows (training) carry only `ARRAY_KEYS`."""
        return list(self._achievements)

    # -- access ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._window_ends[-1]) if len(self._window_ends) else 0

    def episode(self, index: int) -> dict[str, torch.Tensor]:
        """Episode ``index`` of this split, whole: every array of ``L + 1`` steps as a fresh tensor."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range for {self.num_episodes} episodes")
        k = index % self.num_episodes
        if k in self._in_memory:
            return {key: torch.from_numpy(self._in_memory[k][key].copy()) for key in self._specs}
        shard = self.root / self._entries[k]["name"]
        arrays = _read_shard(shard, int(self._steps[k]), self._specs)
        _check_read_actions(shard, arrays["actions"], 0, self._action_space)
        return {key: torch.from_numpy(arrays[key]) for key in self._specs}

    def read_steps(self, index: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Steps ``start:stop`` of episode ``index`` of this split (every array, ``stop - start`` rows), reading only
        those rows; ``0 <= start < stop <= L + 1``."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range for {self.num_episodes} episodes")
        k = index % self.num_episodes
        steps = int(self._steps[k])
        if not 0 <= start < stop <= steps:
            raise IndexError(f"steps {start}:{stop} out of range for episode {index} of {steps} steps")
        if k in self._in_memory:
            return {key: torch.from_numpy(self._in_memory[k][key][start:stop].copy()) for key in self._specs}
        shard = self.root / self._entries[k]["name"]
        return {key: torch.from_numpy(_read_rows(shard, key, self._specs[key], start, stop)) for key in self._specs}

    def window_origin(self, index: int) -> tuple[int, int]:
        """Where window ``index`` comes from: its episode's index in this split and the step it starts at (0 for a
        dataset without a fixed window, whose items are whole episodes)."""
        index = int(index)
        total = len(self)
        if not -total <= index < total:
            raise IndexError(f"window index {index} out of range for {total} windows")
        index %= total
        k = int(np.searchsorted(self._window_ends, index, side="right"))
        return k, (0 if self.window is None else index - (int(self._window_ends[k - 1]) if k else 0))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, start = self.window_origin(index)
        if self.window is None:
            item = self.episode(k)
            item["valid"] = torch.ones(int(self._steps[k]), dtype=torch.bool)
            return item
        return self._window(k, start)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``batch_size`` windows drawn with replacement, uniformly over all windows or in proportion to
        ``weights`` ``(len(self),)`` (e.g. `event_weights`), stacked on a new dim 0."""
        if self.window is None:
            raise ValueError("sample() needs a fixed window; build the dataset with window=T")
        if len(self) == 0:
            raise ValueError(f"no windows to sample: the {self.split!r} split of {self.root} has no episodes")
        return sample_windows(self, batch_size, generator, weights)

    def window_events(self, terminations_only: bool = False, actions: tuple[int, ...] = ()) -> np.ndarray:
        """``(len(self),)`` bool: the window holds a transition with a non-zero reward or a termination (rare
        events a world model must see often enough: achievements, damage, death), or under one of the discrete
        `actions` (e.g. Crafter's sleep), or with `terminations_only` a termination. Reads only those arrays."""
        if self.window is None:
            raise ValueError("window_events() needs a fixed window; build the dataset with window=T")
        if actions and not isinstance(self._action_space, gymnasium.spaces.Discrete):
            raise ValueError(f"event actions {tuple(actions)} need a Discrete action space, {self.root} has "
                             f"{self._action_space}")
        flags = []
        for k, entry in enumerate(self._entries):
            steps = int(self._steps[k])
            shard = self.root / entry["name"]
            if k in self._in_memory:
                rewards, terminated = self._in_memory[k]["rewards"], self._in_memory[k]["terminated"]
            else:
                rewards = _read_rows(shard, "rewards", self._specs["rewards"], 0, steps)
                terminated = _read_rows(shard, "terminated", self._specs["terminated"], 0, steps)
            event = terminated.astype(bool) if terminations_only else (rewards != 0) | terminated.astype(bool)
            if actions and not terminations_only:
                taken = (self._in_memory[k]["actions"] if k in self._in_memory
                         else _read_rows(shard, "actions", self._specs["actions"], 0, steps))
                event |= np.isin(np.asarray(taken).reshape(steps, -1)[:, 0], actions)
            event[0] = False  # the reset step is no transition
            cumulative = np.concatenate([[0], np.cumsum(event)])
            starts = np.arange(max(steps - self.window, 0) + 1)
            stops = np.minimum(starts + self.window, steps)
            flags.append(cumulative[stops] - cumulative[starts + 1] > 0)  # events after each window's first step
        return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)

    def whole_windows(self, exclude_terminal: bool = True) -> list[int]:
        """Indices of the windows with no padding and, with ``exclude_terminal``, no terminal step (the last step
        of an episode that ``terminated``): clips a dream episode can start from without starting at its end.
        Reads one flag per terminated-candidate episode."""
        if self.window is None:
            raise ValueError("whole_windows() needs a fixed window; build the dataset with window=T")
        indices: list[int] = []
        for k in range(self.num_episodes):
            steps = int(self._steps[k])
            if steps < self.window:
                continue
            first = int(self._window_ends[k - 1]) if k else 0
            count = steps - self.window + 1
            if exclude_terminal and self._terminated(k):
                count -= 1  # only the episode's last window holds its last step
            indices.extend(range(first, first + count))
        return indices

    # -- internals ------------------------------------------------------------------------------------------

    def _terminated(self, k: int) -> bool:
        """Whether episode ``k`` ended by termination (its last step's flag)."""
        last = int(self._steps[k]) - 1
        if k in self._in_memory:
            return bool(self._in_memory[k]["terminated"][last])
        shard = self.root / self._entries[k]["name"]
        return bool(_read_rows(shard, "terminated", self._specs["terminated"], last, last + 1)[0])

    def _window(self, k: int, start: int) -> dict[str, torch.Tensor]:
        stop = min(start + self.window, int(self._steps[k]))
        count = stop - start
        shard = self.root / self._entries[k]["name"]
        item = {}
        for key in ARRAY_KEYS:
            shape, dtype = self._specs[key]
            out = np.empty((self.window, *shape), dtype=dtype)
            if k in self._in_memory:
                out[:count] = self._in_memory[k][key][start:stop]
            else:
                _read_rows(shard, key, self._specs[key], start, stop, out=out[:count])
            if key == "actions":
                _check_read_actions(shard, out[:count], start, self._action_space)
            out[count:] = 0
            item[key] = torch.from_numpy(out)
        valid = torch.zeros(self.window, dtype=torch.bool)
        valid[:count] = True
        item["valid"] = valid
        item["step"] = torch.arange(start, start + self.window)  # each row's step in its episode (padding counts on)
        return item

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.root)!r}, game={self._meta['game']!r}, split={self.split!r}, "
            f"episodes={self.num_episodes}, steps={self.total_steps}, window={self.window}, windows={len(self)})"
        )


class EpisodeDatasets(torch.utils.data.ConcatDataset):
    """Several episode dataset folders of one game read as one (e.g. recordings of different policies).

    Built by `open_datasets`; offers what training needs of `EpisodeDataset`: windows by index, `sample`,
    `window_events`, `whole_windows`, `frame_size`, `action_space`, `meta` (the first folder's) and `roots`.
    """

    def __init__(self, datasets: list[EpisodeDataset]) -> None:
        if not datasets:
            raise ValueError("EpisodeDatasets needs at least one dataset")
        first = datasets[0]
        for other in datasets[1:]:
            if (other.meta["game"], other.frame_size, other.action_space, other.window) != (
                first.meta["game"], first.frame_size, first.action_space, first.window
            ):
                raise DatasetError(
                    f"{other.root} does not match {first.root}: game {other.meta['game']!r} vs {first.meta['game']!r}, "
                    f"frame size {other.frame_size} vs {first.frame_size}, action space {other.action_space} vs "
                    f"{first.action_space}; only recordings of one game at one frame size can be mixed"
                )
        super().__init__(datasets)
        self.window = first.window

    @property
    def meta(self) -> dict:
        return self.datasets[0].meta

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.datasets[0].frame_size

    @property
    def action_space(self) -> gymnasium.Space:
        return self.datasets[0].action_space

    @property
    def roots(self) -> list[Path]:
        return [d.root for d in self.datasets]

    @property
    def num_episodes(self) -> int:
        return sum(d.num_episodes for d in self.datasets)

    @property
    def total_steps(self) -> int:
        return sum(d.total_steps for d in self.datasets)

    @property
    def episode_lengths(self) -> list[int]:
        """Transitions per episode, the folders' episodes one after the other."""
        return [length for d in self.datasets for length in d.episode_lengths]

    @property
    def episode_seeds(self) -> list[int | None]:
        return [seed for d in self.datasets for seed in d.episode_seeds]

    @property
    def achievements(self) -> list[str]:
        """The achievement counters of the folders when they all store the same ones, else ``[]``."""
        names = self.datasets[0].achievements
        return names if all(d.achievements == names for d in self.datasets) else []

    def read_steps(self, index: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        """As `EpisodeDataset.read_steps`, episodes numbered over the folders in order."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range for {self.num_episodes} episodes")
        index %= self.num_episodes
        for dataset in self.datasets:
            if index < dataset.num_episodes:
                return dataset.read_steps(index, start, stop)
            index -= dataset.num_episodes
        raise AssertionError("unreachable")

    def window_events(self, terminations_only: bool = False, actions: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate([d.window_events(terminations_only, actions) for d in self.datasets])

    def whole_windows(self, exclude_terminal: bool = True) -> list[int]:
        """As `EpisodeDataset.whole_windows`, indexed over the windows of every folder."""
        offsets = [0, *self.cumulative_sizes[:-1]]
        return [offset + i for offset, d in zip(offsets, self.datasets) for i in d.whole_windows(exclude_terminal)]

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """As `EpisodeDataset.sample`, over the windows of every folder."""
        if len(self) == 0:
            raise ValueError(f"no windows to sample in {[str(r) for r in self.roots]}")
        return sample_windows(self, batch_size, generator, weights)


def open_datasets(spec: str | PathLike | list, window: int | None = None, split: str = "all",
                  **kwargs: Any) -> EpisodeDataset | EpisodeDatasets:
    """One `EpisodeDataset`, or several mixed as `EpisodeDatasets`, from a folder, a comma-separated list of
    folders, or a list of them; `kwargs` go to every `EpisodeDataset`."""
    paths = [str(p) for p in spec] if isinstance(spec, (list, tuple)) else [p for p in str(spec).split(",") if p]
    if not paths:
        raise ValueError(f"no dataset folder given in {spec!r}")
    datasets = [EpisodeDataset(path, window=window, split=split, **kwargs) for path in paths]
    return datasets[0] if len(datasets) == 1 else EpisodeDatasets(datasets)
