"""Quality against speed for several world models on the same held-out episodes: PSNR/SSIM at horizons 1, 8, 32
beside copy-last-frame, IDM action accuracy, drift over a 500-frame rollout, frames/s (agents/evaluation/model_table.py).

    python scripts/model_table.py --data data/crafter_test --bank-data data/crafter --idm runs/idm \\
        --out runs/table teacher=runs/teacher/model@1 distilled4=runs/distill/model@4 \\
        distilled1=runs/distill/model@1 posttrained=runs/posttrain/model@1

Each model is name=checkpoint or name=checkpoint@sampler_steps. Writes table.json, table.md, drift.png and
drift_strip.png.

An alias of `nextframe model-table` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="model-table")
