"""The main job: the shipped Crafter dream next to the real game, offline (see world_env/demo.py).

    python scripts/demo.py                                   # shipped model, 8 dream envs, 200 steps -> demo/
    python scripts/demo.py --checkpoint runs/teacher/model --num-envs 16 --steps 300 --out runs/demo

Prints the dream's env-steps/s next to the real game's, and writes demo/demo.mp4 (real | dream | difference, same
start and actions), demo/demo.png (PSNR over time, speeds) and demo/demo.json.
"""
import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spin-waiting on shared cores


def main() -> None:
    from world_env.demo import DemoConfig, run_demo

    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="world-model folder (default: the shipped model)")
    parser.add_argument("--num-envs", type=int, default=defaults.num_envs)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--sampler-steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--speculation-depth", type=int, default=defaults.speculation_depth, help="0: off")
    parser.add_argument("--speculation", choices=["auto", "sync", "async"], default=defaults.speculation,
                        help="auto: speculate only while it measurably pays")
    parser.add_argument("--mean-repeat", type=float, default=defaults.mean_repeat)
    parser.add_argument("--prompt-frames", type=int, default=defaults.prompt_frames)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--video-format", choices=["mp4", "gif"], default=defaults.video_format)
    args = parser.parse_args()
    run_demo(DemoConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()}))


if __name__ == "__main__":
    main()
