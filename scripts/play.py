"""Play the dream of a world model in real time with the keyboard (docs/play.md).

    python scripts/play.py runs/teacher/model                       # Crafter: WASD/arrows, space, tab, 1-6, ...
    python scripts/play.py runs/teacher/model --start real --record data/human
    SDL_VIDEODRIVER=dummy python scripts/play.py runs/teacher/model --script "right*5,space,m,left*3,q" --no-realtime

M switches dream <-> real (real -> dream prompts the dream with the last real frames; dream -> real resumes the real
game where it was left), N resets the current world, Esc or Q quits. --record writes real/ and dream/ episode
datasets plus segments.jsonl (which episode came from which mode, in play order).

An alias of `nextframe play` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="play")
