"""Train a PPO agent (SB3 CnnPolicy) in the dream or in real Crafter; prints a JSON summary.

    python scripts/train_agent.py --env dream --checkpoint runs/teacher/model --steps 1000000 --seed 0 --out runs/ppo_dream
    python scripts/train_agent.py --env real --steps 1000000 --seed 0 --out runs/ppo_real --eval-episodes 100

The run folder gets config.json, tb/ (tensorboard --logdir OUT/tb), monitor.csv, checkpoints/ppo_<steps>_steps.zip,
model.zip and train.json (see agents/ppo.py). SB3 zips contain pickles: load only models you trained yourself.
"""
import argparse
import json

from agents.ppo import AgentConfig, train_agent
from generator.cli import add_dataclass_arguments, dataclass_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, AgentConfig, skip=("sampler_steps",))
    parser.add_argument("--sampler-steps", type=int, default=None, help="dream: denoising steps (default: the model's)")
    args = parser.parse_args()
    if args.env not in ("dream", "real"):
        parser.error(f"--env must be dream or real, got {args.env!r}")
    summary = train_agent(dataclass_from_args(AgentConfig, args))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
