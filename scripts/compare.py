"""Dream versus real on held-out episodes: PSNR, SSIM, IDM action accuracy, reward/termination precision and recall
per horizon, beside copy-last-frame; JSON, PNG plots and a side-by-side video (real | dream | difference).

    python scripts/compare.py --checkpoint runs/teacher/model --data data/crafter --out runs/teacher/compare \\
        --idm runs/idm --context-frames 4 --horizon 16 --windows 64

Writes compare.json, psnr.png, ssim.png, idm_accuracy.png (with --idm), compare.mp4 and compare.gif (agents/evaluation/compare.py).
FVD (--i3d) is not implemented.
"""
import argparse
import json

from agents.evaluation.compare import FVD_MISSING, CompareConfig, compare_checkpoint
from generator.cli import add_dataclass_arguments, dataclass_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, CompareConfig, skip=("sampler_steps",))
    parser.add_argument("--sampler-steps", type=int, default=None, help="denoising steps (default: the model's)")
    args = parser.parse_args()
    if args.i3d:
        parser.error(FVD_MISSING)
    metrics = compare_checkpoint(dataclass_from_args(CompareConfig, args))
    keys = ("horizons", "psnr", "copy_last_psnr", "ssim", "copy_last_ssim", "idm", "windows", "seconds")
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))


if __name__ == "__main__":
    main()
