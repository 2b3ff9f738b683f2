"""Build a tile codec: a nearest-neighbour codebook of a grid game's tiles, from recorded episodes.

    python scripts/build_codebook.py --data data/crafter --out runs/tiles --threshold 0.75
    python scripts/train.py --data data/crafter --codec runs/tiles --model tiles ...   # then train on it

Crafter at 64x64 draws 9x9 tiles of 7 px from pixel (0, 0) (the defaults); another grid game sets its own tile
size, offset and grid. A tile farther than --threshold (squared L2, pixels in [0, 1]) from every code becomes a new
code; codes never move. Prints the code count and the reconstruction PSNR on the val split.

An alias of `nextframe build-codebook` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="build-codebook")
