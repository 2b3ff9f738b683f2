"""Benchmark the dream env (WorldModelVecEnv.step) against the real game, in one run (see world_env/bench.py).

    python scripts/bench.py --quick                                   # smoke run, random `small` model
    python scripts/bench.py --config small --num-envs 1,16 --dataset data/crafter --out runs/bench/small
    python scripts/bench.py --checkpoint runs/teacher/model --num-envs 1,16,64 --agent-ms 0,20 --agent-kind cnn

Writes OUT.json (every figure, device, versions, load average, command) and OUT.md (the table), and prints the
table. `--omp-wait-policy passive` sets OMP_WAIT_POLICY before torch loads: on a CPU shared with other busy
processes libgomp's default spin-waiting makes every multi-threaded op wait for descheduled threads.

An alias of `nextframe bench` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="bench")
