"""Does the dream do its job? Action following (view-shift agreement), open-loop PSNR/SSIM per horizon beside
copy-last-frame, reward/termination on real transitions, and 1000-frame rollout health (agents/evaluation/fidelity.py).

    python scripts/evaluate_fidelity.py --streams sticky=data/test_sticky explorer=data/test_explorer \\
        --out runs/fidelity shipped=world_env/assets/crafter new=runs/tiles/model@1

Each model is name=checkpoint or name=checkpoint@sampler_steps; each stream is name=dataset of held-out, new-seed
episodes recorded with that policy. Writes fidelity.json, fidelity.md, open_loop_<stream>.png, health.png and
strip.png.
"""
import argparse
from pathlib import Path

from agents.evaluation.fidelity import FidelityConfig, evaluate_fidelity
from generator.cli import add_dataclass_arguments, dataclass_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, FidelityConfig, skip=("models", "streams", "codebook", "view_tiles"))
    parser.add_argument("--view-tiles", default="7,9", help="rows,cols of the world view's tiles (Crafter: 7,9)")
    parser.add_argument("models", nargs="+", help="name=checkpoint[@sampler_steps]")
    parser.add_argument("--streams", nargs="+", required=True, help="name=dataset folder of held-out episodes")
    parser.add_argument("--codebook", default=None, help="tile codec for the health figure (default: a model's)")
    args = parser.parse_args()
    config = dataclass_from_args(FidelityConfig, args)
    config.view_tiles = tuple(int(v) for v in args.view_tiles.split(","))
    evaluate_fidelity(config)
    print((Path(config.out) / "fidelity.md").read_text())


if __name__ == "__main__":
    main()
