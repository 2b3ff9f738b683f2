"""Copy a world model with new sampling defaults (what the env uses unless told otherwise).

    python scripts/export_model.py --checkpoint runs/teacher/model --out world_env/assets/crafter \
        --sampler-steps 1 --context-noise 0.0
"""
import argparse

from generator.pretrained import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sampler-steps", type=int, default=None)
    parser.add_argument("--context-noise", type=float, default=None)
    parser.add_argument("--shift", type=float, default=None)
    args = parser.parse_args()
    world = export_model(args.checkpoint, args.out, sampler_steps=args.sampler_steps,
                         context_noise=args.context_noise, shift=args.shift)
    print(f"wrote {args.out}: sampling {world.sampling}")


if __name__ == "__main__":
    main()
