"""Play the dream of a world model in real time with the keyboard (docs/play.md).

    python scripts/play.py runs/teacher/model                       # Crafter: WASD/arrows, space, tab, 1-6, ...
    python scripts/play.py runs/teacher/model --start real --record data/human
    SDL_VIDEODRIVER=dummy python scripts/play.py runs/teacher/model --script "right*5,space,m,left*3,q" --no-realtime

M switches dream <-> real (real -> dream prompts the dream with the last real frames; dream -> real resumes the real
game where it was left), N resets the current world, Esc or Q quits. --record writes real/ and dream/ episode
datasets plus segments.jsonl (which episode came from which mode, in play order).
"""
import argparse
import json

from world_env.play import play


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=None, help="world-model folder (default: the shipped model)")
    parser.add_argument("--game", default=None, help="real game (default: the model's): crafter, gym:<EnvId>, ...")
    parser.add_argument("--game-kwargs", type=json.loads, default=None, help='JSON, e.g. \'{"area": [32, 32]}\'')
    parser.add_argument("--record", default=None, help="folder to record the session into")
    parser.add_argument("--fps", type=int, default=None, help="frames per second (default: the model's / game's)")
    parser.add_argument("--scale", type=int, default=8, help="window pixels per frame pixel (default 8)")
    parser.add_argument("--script", default=None, help='key sequence instead of the keyboard: "right*5,space,m,q"')
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--no-realtime", action="store_true", help="do not pace to --fps (step as fast as possible)")
    parser.add_argument("--headless", action=argparse.BooleanOptionalAction, default=None,
                        help="no window (default: headless when --script is given)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--start", choices=["dream", "real"], default="dream", help="mode to start in")
    parser.add_argument("--seed", type=int, default=None, help="seeds real resets (seed, seed+1, ...) and the dream")
    parser.add_argument("--sampler-steps", type=int, default=None, help="denoising steps per frame")
    parser.add_argument("--speculation-depth", type=int, default=1, help="dream frames speculated ahead (0: off)")
    args = parser.parse_args()

    summary = play(
        args.checkpoint, args.game, game_kwargs=args.game_kwargs, record=args.record, fps=args.fps, scale=args.scale,
        script=args.script, max_steps=args.max_steps, realtime=not args.no_realtime, device=args.device,
        start=args.start, seed=args.seed, sampler_steps=args.sampler_steps,
        speculation_depth=args.speculation_depth, headless=args.headless, verbose=True,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
