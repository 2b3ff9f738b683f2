"""Train the per-frame KL autoencoder (generator.codec.KLAutoencoder) on an episode dataset.

    python scripts/train_codec.py --data data/crafter --out runs/codec --steps 3000
    python scripts/train.py ... --codec runs/codec          # then diffuse in its latents

Rerunning with the same --out resumes from runs/codec/checkpoint; a larger --steps continues a finished run.
"""
import argparse
import json

import torch

from generator.codec import CodecConfig
from generator.train_codec import train_codec


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main() -> None:
    defaults = CodecConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="episode dataset folder")
    parser.add_argument("--out", required=True, help="run folder (checkpoint/, tb/, reconstructions.png)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: min(500, steps // 20)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--latent-channels", type=int, default=defaults.latent_channels)
    parser.add_argument("--downsample", type=int, default=defaults.downsample)
    parser.add_argument("--channels", type=int_list, default=defaults.channels, help="widths, e.g. 32,64,64")
    parser.add_argument("--res-blocks", type=int, default=defaults.res_blocks)
    parser.add_argument("--norm-groups", type=int, default=defaults.norm_groups)
    parser.add_argument("--kl-weight", type=float, default=defaults.kl_weight)
    parser.add_argument("--recon-loss", choices=("l1", "l2", "l1+l2"), default=defaults.recon_loss)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--ckpt-every", type=int, default=500)
    parser.add_argument("--eval-frames", type=int, default=512)
    parser.add_argument("--stats-frames", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    config = CodecConfig(kind="kl", latent_channels=args.latent_channels, downsample=args.downsample,
                         channels=args.channels, res_blocks=args.res_blocks, norm_groups=args.norm_groups,
                         kl_weight=args.kl_weight, recon_loss=args.recon_loss)
    metrics = train_codec(
        args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, config=config,
        device=args.device, seed=args.seed, log_every=args.log_every, ckpt_every=args.ckpt_every,
        resume=args.resume, progress=args.progress, warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_frames=args.eval_frames, stats_frames=args.stats_frames,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
