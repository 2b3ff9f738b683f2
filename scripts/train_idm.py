"""Train an inverse dynamics model (frames t, t+1 -> action) on an episode dataset; reports held-out accuracy.

    python scripts/train_idm.py --data data/crafter --out runs/idm --steps 3000

Writes a checkpoint folder (config.json + model.safetensors; load with agents.evaluation.idm.load_idm) whose config.json holds
the training report: val accuracy beside the majority-action baseline. Used by scripts/compare.py --idm.

An alias of `nextframe train-idm` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="train-idm")
