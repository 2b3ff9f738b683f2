"""The main job: the shipped Crafter dream next to the real game, offline (see world_env/demo.py).

    python scripts/demo.py                                   # shipped model, 8 dream envs, 200 steps -> demo/
    python scripts/demo.py --checkpoint runs/teacher/model --num-envs 16 --steps 300 --out runs/demo

Prints the dream's env-steps/s next to the real game's, and writes demo/demo.mp4 (real | dream | difference, same
start and actions), demo/demo.png (PSNR over time, speeds) and demo/demo.json.

An alias of `nextframe demo` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="demo")
