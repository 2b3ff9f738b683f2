"""Copy a world model with new sampling defaults (what the env uses unless told otherwise), or a new prompt bank.

    python scripts/export_model.py --checkpoint runs/teacher/model --out world_env/assets/crafter \
        --sampler-steps 1 --context-noise 0.0
    python scripts/export_model.py --checkpoint world_env/assets/crafter --out runs/crafter_new_prompts \
        --prompts-from data/crafter     # start clips without padding or a death, from the val split
"""
import argparse

from generator.pretrained import export_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="world-model folder to copy")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--sampler-steps", type=int, default=None, help="new default denoising steps")
    parser.add_argument("--context-noise", type=float, default=None, help="new default context-noise level")
    parser.add_argument("--shift", type=float, default=None, help="new default schedule shift")
    parser.add_argument("--solver", choices=["euler", "consistency", "categorical"], default=None,
                        help="new default solver (categorical: codebook models, one pass, codes sampled per token)")
    parser.add_argument("--prompts-from", default=None, help="dataset to rebuild the prompt bank from")
    parser.add_argument("--prompt-count", type=int, default=32, help="clips in a rebuilt prompt bank")
    args = parser.parse_args()
    world = export_model(args.checkpoint, args.out, prompts_from=args.prompts_from, prompt_count=args.prompt_count,
                         sampler_steps=args.sampler_steps, context_noise=args.context_noise, shift=args.shift,
                         solver=args.solver)
    clips = "none" if world.prompts is None else tuple(world.prompts["frames"].shape)
    print(f"wrote {args.out}: sampling {world.sampling}, prompt clips {clips}")


if __name__ == "__main__":
    main()
