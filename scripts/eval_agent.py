"""Score a policy in the real Crafter game (Crafter score, success rates, returns); writes JSON.

    python scripts/eval_agent.py --policy runs/ppo_dream/model.zip --episodes 100 --out runs/ppo_dream/eval_real.json
    python scripts/eval_agent.py --policy random --episodes 100 --out runs/random_baseline.json
    python scripts/eval_agent.py --policy shipped:crafter --episodes 30 --seed 1000000

--policy is an SB3 zip (it contains pickles: only load models you trained yourself), "shipped:<name>" (an agent
shipped in agents/assets/<name>/, see agents/shipped.py), "random" (the uniform-random baseline) or "sticky".
Episode j is reset with seed --seed + j.
"""
import argparse
import json
from pathlib import Path

from agents.ppo import CRAFTER_LENGTH, evaluate_policy_real
from agents.shipped import resolve_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="PATH to an SB3 zip, shipped:NAME, random, or sticky")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    parser.add_argument("--seed", type=int, default=0, help="episode j is reset with seed + j")
    parser.add_argument("--max-episode-steps", type=int, default=CRAFTER_LENGTH)
    parser.add_argument("--deterministic", action="store_true", help="SB3 policy: argmax actions")
    parser.add_argument("--workers", type=int, default=1, help="games in parallel (subprocesses when > 1)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    result = evaluate_policy_real(resolve_policy(args.policy), args.episodes, seed=args.seed,
                                  max_episode_steps=args.max_episode_steps, deterministic=args.deterministic,
                                  num_envs=args.workers, progress=not args.no_progress)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "episodes"}, indent=2))


if __name__ == "__main__":
    main()
