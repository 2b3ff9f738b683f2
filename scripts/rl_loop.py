r"""The world-model RL loop (agents/loop.py): collect real steps with the current agent, update the world model on
the growing dataset, train the agent with PPO in imagination from replay states; repeat. Resumable: run the same
command again after a stop or a kill.

    python scripts/rl_loop.py --out runs/loop --generator runs/teacher --real-steps 100000 \
        --real-steps-per-iteration 10000 --generator-steps-per-iteration 1000 --dream-steps-per-iteration 50000 \
        --horizon 15 --burn-in 5 --recent-weight 0.7 --eval-episodes 30

--generator is the folder of a scripts/train.py run (its train_state/ is copied into OUT/generator and continued);
without it, --generator-config '{"model": "small", ...}' (TrainConfig fields, JSON) starts a new model on
--initial-data plus the collected steps. With --generator-steps-per-iteration 0 the world is fixed: --generator may
then be an exported world model too (world_env/assets/crafter, with --initial-data for the replay starts), and
with --dream-steps-per-iteration 0 as well (and --real-ppo) the run is the no-dream control. TensorBoard:
tensorboard --logdir OUT/tb. SB3 zips contain pickles: load only agents you trained yourself.

An alias of `nextframe rl-loop` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="rl-loop")
