"""Train the Next-Frame Diffusion teacher on an episode dataset.

    python scripts/train.py --data data/crafter --out runs/teacher --model small --steps 20000
    torchrun --nproc_per_node 2 scripts/train.py --data data/crafter --out runs/teacher   # DDP

Rerunning with the same --out resumes exactly where the last checkpoint left off.
"""
import argparse
import json

from generator.cli import add_dataclass_arguments, dataclass_from_args
from generator.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig)
    result = train(dataclass_from_args(TrainConfig, parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
