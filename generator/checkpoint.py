"""Checkpoints as folders of safetensors + JSON, written atomically, never pickled.

A checkpoint folder holds::

    config.json            # the caller's config + "format_version" + "files": {name: {"sha256", "bytes"}}
    <name>.safetensors     # one flat {tensor_name: tensor} dict per entry ("model", "ema", "optimizer", ...)

`save_checkpoint` builds the folder under a temporary sibling name and renames it into place, so the final
path only ever holds a complete checkpoint (DIAMOND's episode save does the same for single files).
`load_checkpoint` checks presence, JSON, format version and checksums and names the file at fault.

Nested training state (optimizer, LR scheduler, RNG states) is not a flat tensor dict; `flatten_state` splits
it into tensors (stored in a safetensors file) and a JSON skeleton (stored in config.json) that
`unflatten_state` reassembles exactly.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
RESERVED_CONFIG_KEYS = ("format_version", "files")
_MAX_LISTED_PROBLEMS = 5


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------------------------------------
# Small file helpers


def _fsync_dir(directory: Path) -> None:
    # Makes renames inside `directory` durable; not every platform lets a folder be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def default_mode(directory: bool = False) -> int:
    """The permissions `open()` / `mkdir()` would give a new file or folder under the current umask (0644 / 0755 by
    default). `tempfile` and safetensors create theirs private (0600 / 0700); we widen them to this."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def file_digest(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write the file `path` atomically: `write(tmp)` fills a temporary file in the same folder, which is synced and
    renamed over `path`, so readers see the old file or the complete new one, never a partial write.

    The temporary name is `.<stem>.<random>.tmp<suffix>`: it keeps the suffix (writers that choose a format by
    extension still do) and holds ".tmp" (`generator.data` sweeps such leftovers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp_name))
        _fsync_file(Path(tmp_name))
        os.chmod(tmp_name, default_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically (`atomic_write`); NaN and infinities are refused."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# ----------------------------------------------------------------------------------------------------------
# Save / load


def _validate_name(name: str) -> None:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"checkpoint entry name must be a plain file stem, got {name!r}")
    if name == Path(CONFIG_NAME).stem:
        raise ValueError(f"checkpoint entry name {name!r} is reserved")


def _prepare_state(name: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors; tensors sharing storage are cloned (safetensors refuses aliases)."""
    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[int, int]] = set()
    for key, tensor in state.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: tensor names must be str, got {key!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: entry {key!r} is a {type(tensor).__name__}, not a torch.Tensor "
                            "(use flatten_state for nested state)")
        tensor = tensor.detach().to("cpu").contiguous()
        storage_key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if tensor.numel() > 0 and storage_key in seen_storages:
            tensor = tensor.clone()
        elif tensor.numel() > 0:
            seen_storages.add(storage_key)
        prepared[key] = tensor
    return prepared


def save_checkpoint(
    directory: str | Path,
    *,
    config: dict,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Args:
        directory: the final checkpoint folder.
        config: JSON-serialisable dict stored as config.json (keys "format_version" and "files" are reserved;
            they are added here).
        tensors: ``{name: {tensor_name: tensor}}``; each entry becomes ``<name>.safetensors``.
        overwrite: replace an existing checkpoint at `directory`; if False, raise FileExistsError.

    The folder is built as a temporary sibling, fsynced, then renamed into place. An existing checkpoint is
    renamed away first and deleted only after the new one is in place.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    clash = [key for key in RESERVED_CONFIG_KEYS if key in config]
    if clash:
        raise ValueError(f"config keys {clash} are reserved for checkpoint metadata")
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint config is not JSON-serialisable: {error}") from error
    for name in tensors:
        _validate_name(name)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {directory} already exists (pass overwrite=True to replace it)")

    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}.tmp-"))
    displaced: Path | None = None
    try:
        os.chmod(staging, default_mode(directory=True))
        files = {}
        for name, state in tensors.items():
            path = staging / f"{name}.safetensors"
            save_file(_prepare_state(name, state), str(path))
            os.chmod(path, default_mode())
            _fsync_file(path)
            files[name] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
        full_config = {"format_version": FORMAT_VERSION, **config, "files": files}
        with open(staging / CONFIG_NAME, "w") as f:
            f.write(json.dumps(full_config, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)

        if directory.exists():
            displaced = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}.old-"))
            os.rmdir(displaced)  # only the unique name is wanted; rename needs it free
            os.rename(directory, displaced)
        os.rename(staging, directory)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if displaced is not None and displaced.exists() and not directory.exists():
            os.rename(displaced, directory)  # put the previous checkpoint back
        raise
    if displaced is not None:
        shutil.rmtree(displaced, ignore_errors=True)
    return directory


def _read_config(directory: Path) -> dict:
    if not directory.exists():
        leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.exists() else []
        hint = f" (an interrupted save left the previous version at {leftovers[-1]})" if leftovers else ""
        raise CheckpointError(f"checkpoint folder {directory} does not exist{hint}")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint path {directory} is not a folder")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (not a checkpoint folder, or an incomplete copy)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: invalid JSON ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported format_version {version!r} "
                              f"(this code reads version {FORMAT_VERSION})")
    files = config.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise CheckpointError(f"{config_path}: missing or malformed 'files' table")
    return config


def read_checkpoint_config(directory: str | Path) -> dict:
    """The caller's config from a checkpoint's config.json (metadata keys removed), validated like a load."""
    config = _read_config(Path(directory))
    return {k: v for k, v in config.items() if k not in RESERVED_CONFIG_KEYS}


def checkpoint_folder(directory: str | Path) -> Path:
    """`directory` itself, or the `model/` in it when only that holds a checkpoint (a training run's folder)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).exists() and (directory / "model" / CONFIG_NAME).exists():
        return directory / "model"
    return directory


def load_checkpoint(
    directory: str | Path,
    names: list[str] | None = None,
    verify_checksums: bool = True,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Load a checkpoint folder written by `save_checkpoint`.

    Args:
        directory: the checkpoint folder.
        names: which safetensors entries to load (default: all listed in config.json).
        verify_checksums: compare each file's sha256 with the one recorded at save time.

    Returns:
        ``(config, states)``: the config as passed to `save_checkpoint` (without "format_version"/"files") and
        ``{name: {tensor_name: cpu tensor}}``.

    Raises:
        CheckpointError naming the file and the problem.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _read_config(directory)
    files: dict = config["files"]
    if names is None:
        names = sorted(files)
    states = {}
    for name in names:
        if name not in files:
            raise CheckpointError(f"checkpoint {directory} has no '{name}' entry (it has: {sorted(files)})")
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {CONFIG_NAME})")
        if verify_checksums:
            expected = files[name].get("sha256")
            actual = file_digest(path)
            if expected != actual:
                raise CheckpointError(f"{path}: sha256 mismatch (recorded {expected}, file has {actual}); "
                                      "the file is corrupt or was changed after saving")
        try:
            states[name] = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError plus OSError/ValueError
            raise CheckpointError(f"{path}: not a readable safetensors file "
                                  f"({type(error).__name__}: {error})") from error
    config = {k: v for k, v in config.items() if k not in RESERVED_CONFIG_KEYS}
    return config, states


def _shape(shape: Iterable[int]) -> str:
    dims = tuple(shape)
    return f"({dims[0]},)" if len(dims) == 1 else str(dims)


def state_mismatches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's state dict (`expected`) and a checkpoint's (`found`)."""
    problems = []
    for key in expected:
        if key not in found:
            problems.append(f"tensor {key} is missing from the checkpoint")
    for key in found:
        if key not in expected:
            problems.append(f"tensor {key} is in the checkpoint but not in the model built from config")
    for key, want in expected.items():
        have = found.get(key)
        if have is None:
            continue
        if tuple(have.shape) != tuple(want.shape):
            problems.append(f"tensor {key} has shape {_shape(have.shape)} in checkpoint but "
                            f"{_shape(want.shape)} in the model built from config")
        elif have.dtype != want.dtype:
            problems.append(f"tensor {key} has dtype {have.dtype} in checkpoint but {want.dtype} "
                            "in the model built from config")
    return problems


def load_state_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict(state)` after checking names, shapes and dtypes.

    Raises CheckpointError listing the first few problems, each prefixed with `what` (e.g. "model", "ema").
    """
    problems = state_mismatches(module.state_dict(), state)
    if problems:
        listed = [f"{what}: {problem}" for problem in problems[:_MAX_LISTED_PROBLEMS]]
        more = len(problems) - len(listed)
        if more:
            listed.append(f"... and {more} more")
        header = f"{what}: checkpoint does not fit the model built from config ({len(problems)} problems)"
        raise CheckpointError("\n  ".join([header, *listed]))
    module.load_state_dict(dict(state), strict=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, scheduler: Any = None,
                         scheduler_state: dict | None = None) -> None:
    """Resume an optimizer (and its LambdaLR scheduler) from saved state, keeping this run's settings.

    The saved moments and step counts are restored; the learning rates and other group settings (betas, alpha,
    weight decay) are the ones the optimizer was just built with, so a resumed command given a new --lr uses it
    instead of silently training on with the saved one. With a scheduler, the new base rates go through the
    scheduler's factor at the saved position.
    """
    wanted = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, mine in zip(optimizer.param_groups, wanted):
        group.update(mine)
    if scheduler is not None:
        step = scheduler_state["last_epoch"]
        rates = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        scheduler.load_state_dict({**scheduler_state, "base_lrs": scheduler.base_lrs, "_last_lr": rates})
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr


# ----------------------------------------------------------------------------------------------------------
# Nested state <-> (flat tensors, JSON skeleton)

_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__bytes__", "__npscalar__")


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested state into ``(tensors, skeleton)``: safetensors-ready tensors and a JSON-able skeleton.

    Handles dicts (any JSON-scalar keys, e.g. the int parameter ids of ``optimizer.state_dict()``), lists,
    tuples, None/bool/int/float/str (non-finite floats too), bytes, torch tensors, numpy arrays and scalars
    (``np.random.get_state()``). Tensors are named by their path, e.g. ``state/0/exp_avg``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def tensor_key(path: str) -> str:
        key = f"{prefix}{path}" or "value"
        candidate, n = key, 1
        while candidate in tensors:
            candidate, n = f"{key}~{n}", n + 1
        return candidate

    def encode(value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and not isinstance(value, np.integer):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, torch.Tensor):
            key = tensor_key(path)
            tensors[key] = value.detach().to("cpu").contiguous()
            return {"__tensor__": key}
        if isinstance(value, np.ndarray):
            key = tensor_key(path)
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"flatten_state: object array at {path or '<root>'} cannot be stored")
            tensors[key] = torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8)
            return {"__ndarray__": key, "dtype": array.dtype.str, "shape": list(array.shape)}
        if isinstance(value, np.generic):
            return {"__npscalar__": encode(value.item(), path), "dtype": value.dtype.str}
        if isinstance(value, bytes):
            return {"__bytes__": base64.b64encode(value).decode("ascii")}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            items = [(k, encode(v, f"{path}/{k}" if path else str(k))) for k, v in value.items()]
            if plain:
                return dict(items)
            return {"__dict__": [[encode(k, f"{path}/<key>"), v] for k, v in items]}
        raise TypeError(f"flatten_state: cannot store {type(value).__name__} at {path or '<root>'}")

    skeleton = encode(obj, "")
    return tensors, skeleton


def unflatten_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state`: rebuild the nested object from its tensors and skeleton."""

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        marker = next((k for k in node if k in _MARKERS), None)
        if marker is None:
            return {k: decode(v) for k, v in node.items()}
        if marker in ("__tensor__", "__ndarray__"):
            key = node[marker]
            if key not in tensors:
                raise CheckpointError(f"state skeleton refers to tensor {key!r}, which is not stored")
            tensor = tensors[key]
            if marker == "__tensor__":
                return tensor
            dtype = np.dtype(node["dtype"])
            return np.frombuffer(tensor.numpy().tobytes(), dtype=dtype).reshape(node["shape"]).copy()
        if marker == "__tuple__":
            return tuple(decode(v) for v in node["__tuple__"])
        if marker == "__dict__":
            return {_hashable(decode(k)): decode(v) for k, v in node["__dict__"]}
        if marker == "__float__":
            return float(node["__float__"])
        if marker == "__bytes__":
            return base64.b64decode(node["__bytes__"])
        if marker == "__npscalar__":
            return np.dtype(node["dtype"]).type(decode(node["__npscalar__"]))
        raise AssertionError(marker)

    return decode(skeleton)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ----------------------------------------------------------------------------------------------------------
# RNG state, for exact resumption


def capture_rng_state() -> dict:
    """Python, numpy (legacy global), torch CPU and CUDA RNG states, in a form `flatten_state` stores compactly."""
    version, mt_state, gauss = random.getstate()
    state = {
        "python": (version, torch.tensor(mt_state, dtype=torch.int64), gauss),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored only when CUDA is in use here too."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt_state.tolist()), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
