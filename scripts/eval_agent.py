"""Score a policy in the real Crafter game (Crafter score, success rates, returns); writes JSON.

    python scripts/eval_agent.py --policy runs/ppo_dream/model.zip --episodes 100 --out runs/ppo_dream/eval_real.json
    python scripts/eval_agent.py --policy random --episodes 100 --out runs/random_baseline.json
    python scripts/eval_agent.py --policy shipped:crafter --episodes 30 --seed 1000000

--policy is an SB3 zip (it contains pickles: only load models you trained yourself), "shipped:<name>" (an agent
shipped in agents/assets/<name>/, see agents/shipped.py), "random" (the uniform-random baseline) or "sticky".
Episode j is reset with seed --seed + j.

An alias of `nextframe eval-agent` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="eval-agent")
