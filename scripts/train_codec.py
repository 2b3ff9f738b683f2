"""Train the per-frame KL autoencoder (generator.codec.KLAutoencoder) on an episode dataset.

    python scripts/train_codec.py --data data/crafter --out runs/codec --steps 3000
    python scripts/train.py ... --codec runs/codec          # then diffuse in its latents

Rerunning with the same --out resumes from runs/codec/checkpoint; a larger --steps continues a finished run.

An alias of `nextframe train-codec` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="train-codec")
