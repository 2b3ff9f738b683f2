"""Copy a world model with new sampling defaults (what the env uses unless told otherwise), or a new prompt bank.

    python scripts/export_model.py --checkpoint runs/teacher/model --out world_env/assets/crafter \
        --sampler-steps 1 --context-noise 0.0
    python scripts/export_model.py --checkpoint world_env/assets/crafter --out runs/crafter_new_prompts \
        --prompts-from data/crafter     # start clips without padding or a death, from the val split

An alias of `nextframe export-model` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="export-model")
