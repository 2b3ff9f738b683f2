"""Open-loop PSNR of a world model on held-out episodes, next to the copy-last-frame baseline.

    python scripts/evaluate.py --checkpoint runs/teacher/model --data data/crafter --out runs/teacher/eval

An alias of `nextframe evaluate` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="evaluate")
