"""Agents shipped inside the package: `agents/assets/<name>/` holds `model.zip` (a Stable-Baselines3 model acting on
raw 64x64x3 uint8 Crafter frames, at most 10 MB) and `card.json` (how it was made and how it scores: at least
`command`, `budget` and `score`), with a human-readable `README.md` beside them. `scripts/eval_agent.py --policy
shipped:<name>` scores one in the real game.

SB3 zips contain pickles: loading one runs code from it. The shipped ones were trained by this project.
"""
from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import numpy as np

AGENT_ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_AGENT = "crafter"
MAX_AGENT_BYTES = 10 * 2**20
CARD_FIELDS = ("command", "budget", "score")
OBSERVATION_SPACE = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
# SB3 stores a CnnPolicy's observation space channel-first (VecTransposeImage) and transposes HWC input in predict.
TRANSPOSED_SPACE = gymnasium.spaces.Box(0, 255, (3, 64, 64), np.uint8)


def shipped_agents(root: str | Path | None = None) -> list[str]:
    """Names of the agents shipped under `root` (default `agents/assets/`)."""
    root = Path(root or AGENT_ASSETS)
    return sorted(p.parent.name for p in root.glob("*/model.zip")) if root.is_dir() else []


def shipped_agent(name: str = DEFAULT_AGENT, root: str | Path | None = None) -> tuple[Path, dict]:
    """`(model.zip path, card)` of shipped agent `name`, checked: the zip exists and is <= 10 MB, the card names
    its command, budget and score."""
    folder = Path(root or AGENT_ASSETS) / name
    model = folder / "model.zip"
    if not model.is_file():
        available = shipped_agents(root)
        raise FileNotFoundError(f"no shipped agent {name!r} ({model} missing); shipped: {available or 'none'}")
    size = model.stat().st_size
    if size > MAX_AGENT_BYTES:
        raise ValueError(f"{model} is {size / 2**20:.1f} MB; a shipped agent must be at most 10 MB")
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder}/card.json missing or unreadable ({error})") from None
    missing = [key for key in CARD_FIELDS if key not in card]
    if missing:
        raise ValueError(f"{folder}/card.json lacks {missing}")
    return model, card


def load_shipped_agent(name: str = DEFAULT_AGENT, root: str | Path | None = None, device: str = "cpu"):
    """The shipped agent `name` as a loaded SB3 model (checked to act on 64x64x3 uint8 frames) and its card."""
    from agents.ppo import load_agent

    path, card = shipped_agent(name, root)
    model = load_agent(path, device=device)
    if model.observation_space not in (OBSERVATION_SPACE, TRANSPOSED_SPACE):
        raise ValueError(f"{path} observes {model.observation_space}, not raw frames {OBSERVATION_SPACE}")
    return model, card


def resolve_policy(spec: str, root: str | Path | None = None) -> str:
    """`"shipped"` / `"shipped:<name>"` -> the shipped agent's zip path; any other policy spec unchanged."""
    if spec == "shipped" or spec.startswith("shipped:"):
        return str(shipped_agent(spec.partition(":")[2] or DEFAULT_AGENT, root)[0])
    return spec
