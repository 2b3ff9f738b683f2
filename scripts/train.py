"""Train the Next-Frame Diffusion teacher on an episode dataset.

    python scripts/train.py --data data/crafter --out runs/teacher --model small --steps 20000
    torchrun --nproc_per_node 2 scripts/train.py --data data/crafter --out runs/teacher   # DDP

Rerunning with the same --out resumes exactly where the last checkpoint left off. --max-minutes N ends the run after
N minutes of wall time, saved; so does Ctrl-C or SIGTERM (a second Ctrl-C stops at once, unsaved).

An alias of `nextframe train` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="train")
