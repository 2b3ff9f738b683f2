"""Train the Next-Frame Diffusion teacher on an episode dataset.

    python scripts/train.py --data data/crafter --out runs/teacher --model small --steps 20000
    torchrun --nproc_per_node 2 scripts/train.py --data data/crafter --out runs/teacher   # DDP

Rerunning with the same --out resumes exactly where the last checkpoint left off. --max-minutes N ends the run after
N minutes of wall time, saved; so does Ctrl-C or SIGTERM (a second Ctrl-C stops at once, unsaved).
"""
import argparse
import json

from generator.cli import add_dataclass_arguments, dataclass_from_args
from generator.data import VERIFY_LEVELS
from generator.model import PRESETS
from generator.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, choices={"model": sorted(PRESETS), "verify_data": VERIFY_LEVELS})
    result = train(dataclass_from_args(TrainConfig, parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
