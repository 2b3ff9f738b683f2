"""Train an inverse dynamics model (frames t, t+1 -> action) on an episode dataset; reports held-out accuracy.

    python scripts/train_idm.py --data data/crafter --out runs/idm --steps 3000

Writes a checkpoint folder (config.json + model.safetensors; load with agents.evaluation.idm.load_idm) whose config.json holds
the training report: val accuracy beside the majority-action baseline. Used by scripts/compare.py --idm.
"""
import argparse
import json

from agents.evaluation.idm import IDMConfig, train_idm
from generator.cli import add_dataclass_arguments, dataclass_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, IDMConfig, skip=("widths",))
    parser.add_argument("--widths", default="32,64,128,128",
                        help="conv widths, comma-separated (one stride-2 block each)")
    args = parser.parse_args()
    config = dataclass_from_args(IDMConfig, args)
    config.widths = tuple(int(w) for w in args.widths.split(","))
    result = train_idm(config)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
