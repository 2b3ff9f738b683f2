"""Quality against speed for several world models on the same held-out episodes: PSNR/SSIM at horizons 1, 8, 32
beside copy-last-frame, IDM action accuracy, drift over a 500-frame rollout, frames/s (agents/evaluation/model_table.py).

    python scripts/model_table.py --data data/crafter_test --bank-data data/crafter --idm runs/idm \\
        --out runs/table teacher=runs/teacher/model@1 distilled4=runs/distill/model@4 \\
        distilled1=runs/distill/model@1 posttrained=runs/posttrain/model@1

Each model is name=checkpoint or name=checkpoint@sampler_steps. Writes table.json, table.md, drift.png and
drift_strip.png.
"""
import argparse
from pathlib import Path

from agents.evaluation.model_table import ModelTableConfig, model_table
from generator.cli import add_dataclass_arguments, dataclass_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, ModelTableConfig, skip=("models", "horizons", "idm", "bank_data"))
    parser.add_argument("models", nargs="+", help="name=checkpoint[@sampler_steps]")
    parser.add_argument("--horizons", default="1,8,32", help="comma list")
    parser.add_argument("--idm", default=None, help="IDM folder (scripts/train_idm.py) for action accuracy")
    parser.add_argument("--bank-data", default=None, help="real frames for the drift metric (default: --data)")
    args = parser.parse_args()
    config = dataclass_from_args(ModelTableConfig, args)
    config.horizons = tuple(int(h) for h in args.horizons.split(","))
    result = model_table(config)
    print((Path(config.out) / "table.md").read_text())
    print(f"real frames' nearest-real PSNR: {result['real_reference_nn_psnr']:.2f} dB")


if __name__ == "__main__":
    main()
