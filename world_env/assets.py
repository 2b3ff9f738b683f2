"""Where the model shipped inside the package lives."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "crafter"


def default_checkpoint() -> Path:
    """The shipped Crafter world model; a clear error when this install carries none."""
    if not (DEFAULT_MODEL / "config.json").exists():
        raise FileNotFoundError(
            f"no shipped world model at {DEFAULT_MODEL}; pass checkpoint=<folder written by scripts/train.py> "
            "(e.g. gymnasium.make('nextframe/Crafter-v0', checkpoint='runs/teacher/model'))"
        )
    return DEFAULT_MODEL
