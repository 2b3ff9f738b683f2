"""Distill a flow-matching teacher into a few-step consistency student (NFD+: sCM + adversarial heads).

    python scripts/distill.py --data data/crafter --teacher runs/teacher/model --out runs/distill --steps 2000

Writes `out/model/` (a WorldModel sampled with the 4-step consistency solver). Rerunning with the same --out
resumes exactly where the last checkpoint left off.

An alias of `nextframe distill` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="distill")
