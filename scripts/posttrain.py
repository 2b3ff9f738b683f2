"""AAPT-style one-step adversarial post-training with student forcing, starting from a distilled student.

    python scripts/posttrain.py --data data/crafter --generator runs/distill/model \
        --discriminator runs/teacher/model --out runs/posttrain --steps 500
    python scripts/posttrain.py ... --no-student-forcing --out runs/posttrain_tf   # teacher-forcing ablation

Writes `out/model/` (a WorldModel sampled in one step). Rerunning with the same --out resumes.

An alias of `nextframe posttrain` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="posttrain")
