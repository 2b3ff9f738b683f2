"""Benchmark the dream env (WorldModelVecEnv.step) against the real game, in one run (see world_env/bench.py).

    python scripts/bench.py --quick                                   # smoke run, random `small` model
    python scripts/bench.py --config small --num-envs 1,16 --dataset data/crafter --out runs/bench/small
    python scripts/bench.py --checkpoint runs/teacher/model --num-envs 1,16,64 --agent-ms 0,20 --agent-kind cnn

Writes OUT.json (every figure, device, versions, load average, command) and OUT.md (the table), and prints the
table. `--omp-wait-policy passive` sets OMP_WAIT_POLICY before torch loads: on a CPU shared with other busy
processes libgomp's default spin-waiting makes every multi-threaded op wait for descheduled threads.
"""
import argparse
import os


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def float_list(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def steps_list(text: str) -> tuple[int | None, ...]:
    return tuple(None if x == "default" else int(x) for x in text.split(",") if x)


def str_list(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="WorldModel folder (default: a random-weight model of --config)")
    p.add_argument("--config", default="small", help="random model size: tiny, small, base, paper")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-envs", type=int_list, default=(1, 16, 64), help="comma list, e.g. 1,16,64")
    p.add_argument("--sampler-steps", type=steps_list, default=(None, 1, 4), help="comma list; 'default' = model's")
    p.add_argument("--speculation", type=str_list, default=("off", "auto", "sync", "async"),
                   help="subset of off,auto,sync,async")
    p.add_argument("--speculation-depth", type=int, default=2)
    p.add_argument("--streams", type=str_list, default=("sticky", "recorded", "random"),
                   help="subset of sticky,recorded,random")
    p.add_argument("--dataset", help="episode dataset whose recorded actions form the 'recorded' stream")
    p.add_argument("--agent-ms", type=float_list, default=(0.0, 20.0), help="agent think times between steps")
    p.add_argument("--agent-kind", default="sleep", choices=("sleep", "cnn"))
    p.add_argument("--mean-repeat", type=float, default=4.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per case")
    p.add_argument("--max-case-s", type=float, help="stop a case's timed loop after this many seconds")
    p.add_argument("--budget-s", type=float, help="skip remaining dream cases after this many seconds")
    p.add_argument("--game", default="crafter", help="real game to time in the same run ('none' to skip)")
    p.add_argument("--game-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast + bf16 KV cache")
    p.add_argument("--peak-tflops", type=float, help="device dense peak for MFU (default: known GPUs only)")
    p.add_argument("--matmul-peak-s", type=float, default=1.0,
                   help="seconds measuring the dense matmul rate at the start and the end of the run (0: skip)")
    p.add_argument("--commit-pass", choices=("model", "on", "off"), default="model",
                   help="off: one network pass per frame (SamplingConfig.commit_pass=False); model: the model's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 1-2 envs, default and 1 sampler steps, 4 steps")
    p.add_argument("--out", default="runs/bench/bench", help="output path without extension (.json and .md)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()  # read once, when torch loads libgomp
    from world_env.bench import BenchSettings, quick_settings, run_benchmark, to_markdown, write_results

    settings = BenchSettings(
        model_config=args.config, checkpoint=args.checkpoint, device=args.device, num_envs=args.num_envs,
        sampler_steps=args.sampler_steps, speculation=args.speculation, speculation_depth=args.speculation_depth,
        streams=args.streams, dataset=args.dataset, agent_ms=args.agent_ms, agent_kind=args.agent_kind,
        mean_repeat=args.mean_repeat, warmup=args.warmup, steps=args.steps, max_case_s=args.max_case_s,
        budget_s=args.budget_s, game=None if args.game == "none" else args.game, game_steps=args.game_steps,
        threads=args.threads or None, precision=args.precision, peak_tflops=args.peak_tflops, seed=args.seed,
        matmul_peak_s=args.matmul_peak_s, commit_pass={"model": None, "on": True, "off": False}[args.commit_pass],
    )
    if args.quick:
        settings = quick_settings(settings)
    results = run_benchmark(settings)
    write_results(results, args.out + ".json", args.out + ".md")
    print()
    print(to_markdown(results))
    print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
