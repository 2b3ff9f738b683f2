"""Open-loop PSNR of a world model on held-out episodes, next to the copy-last-frame baseline.

    python scripts/evaluate.py --checkpoint runs/teacher/model --data data/crafter --out runs/teacher/eval
"""
import argparse
import json

from agents.evaluation.evaluate import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--context-frames", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--sampler-steps", type=int, default=None)
    parser.add_argument("--split", default="val", choices=["val", "train", "all"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    metrics = evaluate_checkpoint(**{k: v for k, v in vars(args).items()})
    for h, m, c in zip(metrics["horizons"], metrics["psnr"], metrics["copy_last_psnr"]):
        print(f"h={h:3d}  model {m:6.2f} dB   copy-last {c:6.2f} dB")


if __name__ == "__main__":
    main()
