"""Shipped agents (`agents/assets/<name>/`): the folder convention, the checked loader, and scoring one in the real
game with one `scripts/eval_agent.py` command."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import agents.shipped
from agents.ppo import make_real_vec_env
from agents.shipped import load_shipped_agent, shipped_agent, shipped_agents

REPO = Path(__file__).resolve().parents[1]


def ship(root, name="crafter", card=None):
    from stable_baselines3 import PPO

    env = make_real_vec_env(1, subprocess=False)
    (root / name).mkdir(parents=True)
    PPO("CnnPolicy", env, n_steps=8, batch_size=8, seed=0, device="cpu").save(root / name / "model.zip")
    env.close()
    card = {"command": "python scripts/rl_loop.py ...", "budget": {"real_env_steps": 0}, "score": None} \
        if card is None else card
    (root / name / "card.json").write_text(json.dumps(card))


def test_a_shipped_agent_loads_checked_and_scores_in_the_real_game(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    ship(tmp_path)
    assert shipped_agents(tmp_path) == ["crafter"]
    model, card = load_shipped_agent("crafter", root=tmp_path)
    action, _ = model.predict(np.zeros((64, 64, 3), np.uint8))  # raw frames in
    assert 0 <= int(action) < 17 and card["budget"] == {"real_env_steps": 0}

    monkeypatch.setattr(agents.shipped, "AGENT_ASSETS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["eval_agent.py", "--policy", "shipped:crafter", "--episodes", "1",
                                      "--max-episode-steps", "5", "--seed", "7", "--no-progress",
                                      "--out", str(tmp_path / "eval.json")])
    runpy.run_path(str(REPO / "scripts" / "eval_agent.py"), run_name="__main__")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["episodes"][0]["length"] == 5 and result["episodes"][0]["seed"] == 7
    assert result["policy"]["path"] == str((tmp_path / "crafter" / "model.zip").resolve())


def test_missing_or_incomplete_shipped_agents_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped: none"):
        shipped_agent("crafter", root=tmp_path)
    ship(tmp_path, "nocard", card={"command": "x"})
    with pytest.raises(ValueError, match=r"lacks \['budget', 'score'\]"):
        shipped_agent("nocard", root=tmp_path)
    assert shipped_agents() == sorted(p.parent.name for p in (REPO / "agents" / "assets").glob("*/model.zip"))
