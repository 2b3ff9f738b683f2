"""Distill a flow-matching teacher into a few-step consistency student (NFD+: sCM + adversarial heads).

    python scripts/distill.py --data data/crafter --teacher runs/teacher/model --out runs/distill --steps 2000

Writes `out/model/` (a WorldModel sampled with the 4-step consistency solver). Rerunning with the same --out
resumes exactly where the last checkpoint left off.
"""
import argparse
import json

from generator.cli import add_dataclass_arguments, dataclass_from_args
from generator.distill import DistillConfig, distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, DistillConfig)
    result = distill(dataclass_from_args(DistillConfig, parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
