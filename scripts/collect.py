"""Collect real-game (or dream) episodes into an episode dataset (format: docs/data-format.md).

    python scripts/collect.py --game crafter --episodes 100 --out data/crafter --workers 4
    python scripts/collect.py --source dream --checkpoint runs/teacher/model --episodes 100 --out data/dream
    python scripts/collect.py --game gym:CartPole-v1 --episodes 20 --out data/cartpole --policy random
    python scripts/collect.py --game gym:ALE/Pong-v5 --frame-size 64x48 --episodes 20 --out data/pong  # ale-py
    python scripts/collect.py --game crafter --episodes 10 --out data/crafter_ppo --policy sb3:runs/ppo/model.zip

Episode j is seeded with --seed + j whatever --workers is. Rerunning with the same --out resumes: it appends until
--episodes are present. --max-steps caps each episode (default 1000; 0 lets the game end it, which for Crafter
means death or 10000 steps). sb3:PATH loads a Stable-Baselines3 zip, which contains pickles: only load your own.
--source dream plays the world model at --checkpoint instead (game, frame size and action space are the model's;
--workers is the number of dream envs stepping together; see world_env/collect_dream.py).

An alias of `nextframe collect` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="collect")
