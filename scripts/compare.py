"""Dream versus real on held-out episodes: PSNR, SSIM, IDM action accuracy, reward/termination precision and recall
per horizon, beside copy-last-frame; JSON, PNG plots and a side-by-side video (real | dream | difference).

    python scripts/compare.py --checkpoint runs/teacher/model --data data/crafter --out runs/teacher/compare \\
        --idm runs/idm --context-frames 4 --horizon 16 --windows 64

Writes compare.json, psnr.png, ssim.png, idm_accuracy.png (with --idm), compare.mp4 and compare.gif (agents/evaluation/compare.py).
FVD (--i3d) is not implemented.

An alias of `nextframe compare` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="compare")
