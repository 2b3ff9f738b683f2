"""`nextframe <command> [flags]`: every job of the project from an installed package (`scripts/*.py` are aliases).

Each command is a config dataclass and a run function in the library; its flags and help are derived from the
dataclass (`generator.cli`: one flag per field, the field's comment as help, its default in one place). This module
only names them; a command's module is imported when it runs, so `nextframe --help` stays fast. It is the top of the
import graph: it may import `generator`, `world_env` and `agents`; nothing imports it.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Callable, NamedTuple, Sequence


class Command(NamedTuple):
    module: str  # where the config and the run function live
    config: str  # the config dataclass
    run: str  # the function taking the config
    summary: str  # one line for `nextframe --help`
    show: Callable[[Any], str | None] = lambda result: json.dumps(result, indent=2, default=str)


def _quiet(result: Any) -> None:
    return None


def _text(result: Any) -> str:
    return str(result)


def _without(*keys: str) -> Callable[[Any], str]:
    return lambda result: json.dumps({k: v for k, v in result.items() if k not in keys}, indent=2, default=str)


COMMANDS: dict[str, Command] = {
    "collect": Command("world_env.collect", "CollectConfig", "run_collect",
                       "record real-game (or dream) episodes into an episode dataset"),
    "train": Command("generator.train", "TrainConfig", "train", "train the flow-matching teacher (torchrun for DDP)"),
    "train-codec": Command("generator.train_codec", "CodecTrainConfig", "train_codec", "train the KL autoencoder"),
    "build-codebook": Command("generator.codec", "CodebookConfig", "build_codebook",
                              "build a tile codec from recorded episodes"),
    "distill": Command("generator.distill", "DistillConfig", "distill",
                       "distill a teacher into a few-step consistency student"),
    "posttrain": Command("generator.posttrain", "PosttrainConfig", "posttrain",
                         "AAPT-style one-step adversarial post-training"),
    "export-model": Command("generator.pretrained", "ExportConfig", "run_export",
                            "copy a world model with new sampling defaults or prompts", _text),
    "evaluate": Command("agents.evaluation.evaluate", "EvaluateConfig", "evaluate_checkpoint",
                        "open-loop PSNR on held-out episodes beside copy-last-frame",
                        lambda m: "\n".join(f"h={h:3d}  model {a:6.2f} dB   copy-last {c:6.2f} dB"
                                            for h, a, c in zip(m["horizons"], m["psnr"], m["copy_last_psnr"]))),
    "compare": Command("agents.evaluation.compare", "CompareConfig", "compare_checkpoint",
                       "dream vs real per horizon: PSNR, SSIM, IDM accuracy, outcomes, video",
                       lambda m: json.dumps({k: m.get(k) for k in ("horizons", "psnr", "copy_last_psnr", "ssim",
                                                                    "copy_last_ssim", "idm", "windows", "seconds")},
                                            indent=2)),
    "model-table": Command("agents.evaluation.model_table", "ModelTableConfig", "run_model_table",
                           "quality against speed for several models", _text),
    "evaluate-fidelity": Command("agents.evaluation.fidelity", "FidelityConfig", "run_fidelity",
                                 "action following, open loop, outcomes and rollout health of several models", _text),
    "train-outcome": Command("generator.outcome", "OutcomeTrainConfig", "train_outcome",
                             "train the reward/termination model that reads a tile model's frames",
                             _without("history")),
    "train-idm": Command("agents.evaluation.idm", "IDMConfig", "train_idm", "train the inverse dynamics model",
                         _without("history")),
    "demo": Command("world_env.demo", "DemoConfig", "run_demo", "the shipped dream next to the real game", _quiet),
    "play": Command("world_env.play.session", "PlayConfig", "run_play", "play the dream with the keyboard"),
    "bench": Command("world_env.bench", "BenchConfig", "run_bench", "time the dream env against the real game", _text),
    "train-agent": Command("agents.ppo", "AgentConfig", "train_agent", "train a PPO agent in the dream or the game",
                           _without("config")),
    "eval-agent": Command("agents.ppo", "EvalAgentConfig", "eval_agent", "score a policy in the real game"),
    "rl-loop": Command("agents.loop", "LoopConfig", "run_loop", "the world-model RL loop (collect, train, dream)"),
    "exploitability": Command("agents.exploit", "ExploitConfig", "exploitability_report",
                              "a policy's return in the dream and in the game from the same starts",
                              lambda report: json.dumps(report["summary"], indent=2)),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: nextframe <command> [flags]   (nextframe <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, command: str | None = None) -> Any:
    """Run `nextframe [command] [flags]`; `command` given: `argv` holds only its flags (the `scripts/` aliases)."""
    from generator.cli import parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if command is None:
        if not argv or argv[0] in ("-h", "--help"):
            print(usage())
            return None
        command, argv = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"nextframe: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if command == "demo":  # read once, when torch loads libgomp: no spin-waiting on shared cores
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if command == "bench" and "--omp-wait-policy" in argv[:-1]:  # likewise, before the bench module loads torch
        policy = argv[argv.index("--omp-wait-policy") + 1]
        if policy != "default":
            os.environ["OMP_WAIT_POLICY"] = policy.upper()
    entry = COMMANDS[command]
    module = importlib.import_module(entry.module)
    config_class = getattr(module, entry.config)
    choices = None
    if command == "train":
        from generator.data import VERIFY_LEVELS
        from generator.model import PRESETS

        choices = {"model": sorted(PRESETS), "verify_data": VERIFY_LEVELS}
    config = parse_config(config_class, argv, description=config_class.__doc__, prog=f"nextframe {command}",
                          choices=choices)
    try:
        result = getattr(module, entry.run)(config)
    except ValueError as error:  # the library's messages name the fix: show them as the command's error
        print(f"nextframe {command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    shown = entry.show(result)
    if shown:
        print(shown)
    return result


if __name__ == "__main__":
    main()
