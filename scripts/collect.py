"""Collect real-game (or dream) episodes into an episode dataset (format: docs/data-format.md).

    python scripts/collect.py --game crafter --episodes 100 --out data/crafter --workers 4
    python scripts/collect.py --source dream --checkpoint runs/teacher/model --episodes 100 --out data/dream
    python scripts/collect.py --game gym:CartPole-v1 --episodes 20 --out data/cartpole --policy random
    python scripts/collect.py --game gym:ALE/Pong-v5 --frame-size 64x48 --episodes 20 --out data/pong  # ale-py
    python scripts/collect.py --game crafter --episodes 10 --out data/crafter_ppo --policy sb3:runs/ppo/model.zip

Episode j is seeded with --seed + j whatever --workers is. Rerunning with the same --out resumes: it appends until
--episodes are present. --max-steps caps each episode (default 1000; 0 lets the game end it, which for Crafter
means death or 10000 steps). sb3:PATH loads a Stable-Baselines3 zip, which contains pickles: only load your own.
--source dream plays the world model at --checkpoint instead (game, frame size and action space are the model's;
--workers is the number of dream envs stepping together; see world_env/collect_dream.py).
"""
import argparse
import json

from generator.data import EpisodeDataset
from world_env.collect import collect
from world_env.collect_dream import collect_dream

DEFAULT_MAX_STEPS = 1000


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"48x64"`` -> (48, 64) as height x width."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be N or HxW with positive sizes, got {text!r}")
    return sizes[0], sizes[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["real", "dream"], default="real", help="where episodes come from")
    parser.add_argument("--checkpoint", help="--source dream: the world-model folder to play")
    parser.add_argument("--device", default="auto", help="--source dream: model device (auto, cpu, cuda)")
    parser.add_argument("--sampler-steps", type=int, help="--source dream: denoising steps (default: the model's)")
    parser.add_argument("--game", default="crafter",
                        help='"crafter", "gym:<EnvId>" (or "gym:<module>:<EnvId>" to import the package that '
                             'registers it) or "minerl:<EnvId>"')
    parser.add_argument("--episodes", type=int, required=True, help="episodes the dataset should hold in total")
    parser.add_argument("--out", required=True, help="dataset folder (created, or resumed)")
    parser.add_argument("--policy", default="sticky", help="sticky | random | explorer | sb3:PATH")
    parser.add_argument("--workers", type=int, default=1, help="parallel envs (subprocesses when > 1)")
    parser.add_argument("--seed", type=int, default=0, help="episode j is reset with seed + j")
    parser.add_argument("--mean-repeat", type=float, default=4.0, help="sticky policy: mean action repeat")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"transitions per episode at most (default {DEFAULT_MAX_STEPS}; 0: no cap)")
    parser.add_argument("--frame-size", type=parse_frame_size, default=(64, 64),
                        help="N or HxW (default 64); an HxW of the game's aspect ratio keeps it, e.g. 64x48 for Atari")
    parser.add_argument("--resize", choices=["stretch", "letterbox"], default="stretch",
                        help="gym games: fit frames to --frame-size per axis, or keep the aspect ratio on black bars")
    parser.add_argument("--preview", action="store_true", help="also write previews/<episode>.mp4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()

    if args.source == "dream":
        if not args.checkpoint:
            parser.error("--source dream needs --checkpoint DIR")
        if not args.max_steps:
            parser.error("--source dream needs --max-steps >= 1 (a dream may never end on its own)")
        stats = collect_dream(
            args.checkpoint, args.out, args.episodes, policy=args.policy, num_envs=args.workers, seed=args.seed,
            mean_repeat=args.mean_repeat, max_steps=args.max_steps, device=args.device,
            sampler_steps=args.sampler_steps, preview=args.preview, progress=not args.no_progress,
        )
    else:
        game_kwargs = {}
        if args.resize != "stretch":
            if not args.game.startswith("gym:"):
                parser.error("--resize applies to gym:<EnvId> games (crafter renders at --frame-size itself)")
            game_kwargs["resize"] = args.resize  # recorded in the dataset and, through training, in the model
        stats = collect(
            args.game, args.out, args.episodes, policy=args.policy, num_workers=args.workers,
            frame_size=args.frame_size, seed=args.seed, mean_repeat=args.mean_repeat,
            max_steps=args.max_steps or None, preview=args.preview, progress=not args.no_progress,
            game_kwargs=game_kwargs,
        )
    print(f"wrote {stats['episodes_written']} episodes, {stats['frames']} frames in {stats['seconds']:.1f} s: "
          f"{stats['frames_per_s']:.1f} frames/s ({args.workers} worker(s))")
    dataset = EpisodeDataset(args.out)
    lengths = dataset.episode_lengths
    summary = {
        "dataset": str(args.out),
        "game": dataset.meta["game"],
        "frame_size": list(dataset.frame_size),
        "action_space": dataset.meta["action_space"],
        "policy": dataset.meta["policy"],
        "episodes": dataset.num_episodes,
        "total_steps": dataset.total_steps,
        "mean_length": sum(lengths) / len(lengths) if lengths else 0,
        "collect": {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
