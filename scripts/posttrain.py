"""AAPT-style one-step adversarial post-training with student forcing, starting from a distilled student.

    python scripts/posttrain.py --data data/crafter --generator runs/distill/model \
        --discriminator runs/teacher/model --out runs/posttrain --steps 500
    python scripts/posttrain.py ... --no-student-forcing --out runs/posttrain_tf   # teacher-forcing ablation

Writes `out/model/` (a WorldModel sampled in one step). Rerunning with the same --out resumes.
"""
import argparse
import json

from generator.cli import add_dataclass_arguments, dataclass_from_args
from generator.posttrain import PosttrainConfig, posttrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, PosttrainConfig)
    result = posttrain(dataclass_from_args(PosttrainConfig, parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
