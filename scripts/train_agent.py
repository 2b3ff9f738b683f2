"""Train a PPO agent (SB3 CnnPolicy) in the dream or in real Crafter; prints a JSON summary.

    python scripts/train_agent.py --env dream --checkpoint runs/teacher/model --steps 1000000 --seed 0 --out runs/ppo_dream
    python scripts/train_agent.py --env real --steps 1000000 --seed 0 --out runs/ppo_real --eval-episodes 100

The run folder gets config.json, tb/ (tensorboard --logdir OUT/tb), monitor.csv, checkpoints/ppo_<steps>_steps.zip,
model.zip and train.json (see agents/ppo.py). SB3 zips contain pickles: load only models you trained yourself.

An alias of `nextframe train-agent` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="train-agent")
