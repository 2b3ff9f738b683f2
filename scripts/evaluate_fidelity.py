"""Does the dream do its job? Action following (view-shift agreement), open-loop PSNR/SSIM per horizon beside
copy-last-frame, reward/termination on real transitions, and 1000-frame rollout health (agents/evaluation/fidelity.py).

    python scripts/evaluate_fidelity.py --streams sticky=data/test_sticky explorer=data/test_explorer \\
        --out runs/fidelity shipped=world_env/assets/crafter new=runs/tiles/model@1

Each model is name=checkpoint or name=checkpoint@sampler_steps; each stream is name=dataset of held-out, new-seed
episodes recorded with that policy. Writes fidelity.json, fidelity.md, open_loop_<stream>.png, health.png and
strip.png.

An alias of `nextframe evaluate-fidelity` (agents/commands.py); `--help` lists the flags.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a clone, not installed

from agents.commands import main  # noqa: E402

if __name__ == "__main__":
    main(command="evaluate-fidelity")
