"""PPO agents trained in the dream or in the real game, and their evaluation in the real Crafter game.

Training (`train_agent`): Stable-Baselines3 PPO with a ``CnnPolicy`` on HWC uint8 frames (SB3 transposes them),
either in the dream (`world_env.sb3.SB3DreamVecEnv` over a world-model checkpoint) or in real Crafter (an SB3
``SubprocVecEnv``/``DummyVecEnv`` of `GameEnv("crafter")` under a ``TimeLimit``), for a number of env steps.
Defaults are SB3's PPO defaults, the Crafter paper's PPO baseline (danijar/crafter-baselines runs
``PPO("CnnPolicy", env)``), with ``n_steps * num_envs = 2048`` steps per update as its single env collects.
The run folder holds ``config.json``, ``tb/`` (TensorBoard), ``monitor.csv`` (episode returns and lengths),
``checkpoints/ppo_<steps>_steps.zip`` (SB3 ``CheckpointCallback``), ``model.zip`` and ``train.json``.

**SB3 zips contain pickles: loading one runs code from it. Load only models you trained yourself.**

Evaluation (`evaluate_policy_real`): episodes of the real Crafter game, episode ``j`` reset with seed ``seed + j``,
scored with the Crafter score (`agents.score`). The uniform-random baseline goes through the same evaluator
(``policy="random"``); the paper reports 1.6 % for it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.score import CRAFTER_ACHIEVEMENTS, crafter_score, success_rates
from world_env.collect import make_vector_env
from world_env.policies import RandomPolicy, SB3Policy, StickyPolicy, policy_rng

CRAFTER_LENGTH = 10_000  # crafter's own episode limit (CrafterReward-v1's max_episode_steps)
EVAL_SEED_OFFSET = 1_000_000  # train_agent's final evaluation seeds, away from the training envs' seeds


@dataclass
class AgentConfig:
    """One PPO run; `scripts/train_agent.py` maps its flags onto these fields."""

    env: Literal["dream", "real"] = "dream"  # "dream" (the world model at `checkpoint`) or "real" (Crafter)
    checkpoint: str | None = None  # world-model folder for env="dream" (None: the model shipped with nextframe)
    out: str = "runs/agent"
    steps: int = 1_000_000  # env steps (all envs together)
    seed: int = 0
    num_envs: int = 16
    max_episode_steps: int = CRAFTER_LENGTH
    # dream
    device: str = "auto"  # the world model's device
    sampler_steps: int | None = None
    speculation_depth: int = 0
    # Dream episodes from recorded real steps (`world_env.prompts.ReplayStarts`): a dataset folder or comma-separated
    # folders (None: the checkpoint's prompt clips). With it, `max_episode_steps` is the imagination horizon (DIAMOND
    # 15, IRIS 20), ending episodes by truncation.
    prompt_data: str | None = None
    burn_in: int | None = None  # real frames committed before imagining (None: the model's window - 1)
    recent_weight: float = 0.0  # probability of starting in the newest `recent_fraction` of the episodes
    recent_fraction: float = 0.25
    # real
    subprocess: bool = True  # SubprocVecEnv (one process per game) rather than DummyVecEnv
    # PPO
    n_steps: int = 128  # per env: 128 x 16 envs = 2048, SB3's default rollout
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    policy_device: str = "auto"
    checkpoint_every: int = 100_000  # env steps between CheckpointCallback saves (0: none)
    eval_episodes: int = 0  # real-Crafter episodes scored after training (0: none)
    progress: bool = False  # SB3's progress bar (needs `rich`)
    verbose: int = 1


# ---------------------------------------------------------------------------------------------------------------
# Environments


def _make_real_env(max_episode_steps: int, frame_size: tuple[int, int]):
    from gymnasium.wrappers import TimeLimit

    from world_env.games.env import GameEnv

    return TimeLimit(GameEnv("crafter", frame_size=frame_size, length=None), max_episode_steps=max_episode_steps)


def make_real_vec_env(num_envs: int, seed: int = 0, max_episode_steps: int = CRAFTER_LENGTH,
                      subprocess: bool = True, frame_size: tuple[int, int] = (64, 64)):
    """SB3 ``VecEnv`` of ``num_envs`` real Crafter games (``TimeLimit`` of ``max_episode_steps``), env ``i`` seeded
    with ``seed + i`` at its first reset (crafter then draws each later world from that seed and the episode count).
    ``subprocess``: one process per game (``SubprocVecEnv``, forkserver); otherwise ``DummyVecEnv`` in-process."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    make = functools.partial(_make_real_env, int(max_episode_steps), tuple(frame_size))
    cls = SubprocVecEnv if subprocess and num_envs > 1 else DummyVecEnv
    env = cls([make] * num_envs)  # no per-env Monitor: `make_train_env` adds one VecMonitor
    env.seed(seed)  # env i: seed + i, used by the next reset
    return env


def make_train_env(config: AgentConfig):
    """The run's SB3 ``VecEnv`` (dream or real), under ``VecMonitor`` writing ``out/monitor.csv``."""
    from stable_baselines3.common.vec_env import VecMonitor

    if config.env == "dream":
        from world_env.sb3 import SB3DreamVecEnv

        env = SB3DreamVecEnv(config.checkpoint, num_envs=config.num_envs, device=config.device,
                             sampler_steps=config.sampler_steps, speculation_depth=config.speculation_depth,
                             max_episode_steps=config.max_episode_steps, prompt_source=replay_starts(config))
    elif config.env == "real":
        env = make_real_vec_env(config.num_envs, config.seed, config.max_episode_steps, config.subprocess)
    else:
        raise ValueError(f"env must be 'dream' or 'real', got {config.env!r}")
    Path(config.out).mkdir(parents=True, exist_ok=True)
    return VecMonitor(env, filename=str(Path(config.out) / "monitor.csv"), info_keywords=())


def replay_starts(config: AgentConfig):
    """The dream's `ReplayStarts` for `config.prompt_data`, or None (the checkpoint's prompt clips)."""
    if config.prompt_data is None:
        if config.burn_in is not None or config.recent_weight:
            raise ValueError("burn_in and recent_weight apply to starts from recorded episodes: set prompt_data too")
        return None
    from world_env.prompts import ReplayStarts

    return ReplayStarts(config.prompt_data, burn_in=config.burn_in, recent_weight=config.recent_weight,
                        recent_fraction=config.recent_fraction)


def _achievements_callback():
    from stable_baselines3.common.callbacks import BaseCallback

    class CrafterAchievements(BaseCallback):
        """Logs ``crafter/score`` and ``crafter/success_<name>`` over the last 100 finished real episodes (the dream
        has no achievement counters; nothing is logged there)."""

        def __init__(self):
            super().__init__()
            self.recent: deque = deque(maxlen=100)

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "achievements" in info:
                    self.recent.append(dict(info["achievements"]))
            return True

        def _on_rollout_end(self) -> None:
            if self.recent:
                rates = success_rates(self.recent)
                self.logger.record("crafter/score", crafter_score(rates))
                for name, rate in rates.items():
                    self.logger.record(f"crafter/success_{name}", rate)

    return CrafterAchievements()


# ---------------------------------------------------------------------------------------------------------------
# Training


def train_agent(config: AgentConfig) -> dict:
    """Train PPO for ``config.steps`` env steps; returns (and writes to ``out/train.json``) a summary with the
    final model's path and, when ``eval_episodes > 0``, its real-Crafter evaluation (seeds from 1,000,000 + seed)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    env = make_train_env(config)
    started = time.time()
    try:
        model = PPO(
            "CnnPolicy", env, learning_rate=config.learning_rate, n_steps=config.n_steps,
            batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma, gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef, tensorboard_log=str(out / "tb"), seed=config.seed,
            device=config.policy_device, verbose=config.verbose,
        )
        callbacks = [_achievements_callback()]
        if config.checkpoint_every:
            callbacks.append(CheckpointCallback(save_freq=max(1, config.checkpoint_every // config.num_envs),
                                                save_path=str(out / "checkpoints"), name_prefix="ppo"))
        model.learn(total_timesteps=config.steps, callback=callbacks, tb_log_name=f"ppo_{config.env}",
                    progress_bar=config.progress)
        model.save(out / "model.zip")
    finally:
        env.close()
    summary: dict[str, Any] = {
        "env": config.env, "checkpoint": config.checkpoint, "steps": int(model.num_timesteps),
        "seconds": time.time() - started, "model": str(out / "model.zip"),
        "model_sha256": hashlib.sha256((out / "model.zip").read_bytes()).hexdigest(), "config": asdict(config),
    }
    if config.eval_episodes:
        summary["eval_real"] = evaluate_policy_real(model, config.eval_episodes, seed=EVAL_SEED_OFFSET + config.seed,
                                                    max_episode_steps=config.max_episode_steps)
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_agent(path: str | os.PathLike, device: str = "cpu"):
    """Load a saved PPO zip. It contains pickles: loading runs code from it; load only your own models."""
    from stable_baselines3 import PPO

    return PPO.load(Path(path), device=device)


# ---------------------------------------------------------------------------------------------------------------
# Real-game evaluation


class _ModelPolicy(SB3Policy):
    """`world_env.collect.SB3Policy` for an already loaded model (same per-episode seeded sampling)."""

    def __init__(self, model, num_envs: int, deterministic: bool = False) -> None:
        self.model, self.deterministic = model, bool(deterministic)
        self._rngs = [policy_rng(None) for _ in range(num_envs)]
        self._description = {"name": "sb3", "algorithm": type(model).__name__, "path": None,
                             "deterministic": self.deterministic}


def _make_actor(policy, action_space, num_envs: int, deterministic: bool):
    if policy == "random":
        return RandomPolicy(action_space, num_envs)
    if policy == "sticky":
        return StickyPolicy(action_space, num_envs)
    if isinstance(policy, (str, os.PathLike)):
        return SB3Policy(policy, action_space, num_envs, deterministic=deterministic)
    if policy.action_space != action_space:
        raise ValueError(f"the model acts in {policy.action_space}, Crafter in {action_space}")
    return _ModelPolicy(policy, num_envs, deterministic)


def evaluate_policy_real(
    policy,
    episodes: int,
    seed: int = 0,
    max_episode_steps: int = CRAFTER_LENGTH,
    deterministic: bool = False,
    num_envs: int = 1,
    frame_size: tuple[int, int] = (64, 64),
    progress: bool = False,
) -> dict:
    """Play ``episodes`` real Crafter episodes with ``policy`` and score them.

    ``policy``: a loaded SB3 model, the path of a saved zip (pickles: only your own), ``"random"`` (uniform over the
    17 actions: the Crafter paper's random baseline) or ``"sticky"``. Episode ``j`` is reset with seed ``seed + j``
    and sampled from a stream seeded with the same number, so results do not depend on ``num_envs`` (games run in
    subprocesses when > 1). Episodes end on death or after ``max_episode_steps``.

    Returns ``{"score", "success_rates" (percent per achievement), "mean_return", "mean_length", "episodes" (per
    episode: seed, return, length, terminated, achievements unlocked), "policy", "seconds"}``.
    """
    from tqdm.auto import tqdm

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = max(1, min(num_envs, episodes))
    started = time.time()
    envs = make_vector_env("crafter", num_envs, frame_size, {"length": int(max_episode_steps)})
    results: dict[int, dict] = {}
    try:
        actor = _make_actor(policy, envs.single_action_space, num_envs, deterministic)
        slot_episode: list[int | None] = list(range(num_envs))
        for i in range(num_envs):
            actor.reset(i, seed + i)
        next_episode = num_envs
        returns, lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        bar = tqdm(total=episodes, disable=not progress, desc="real crafter", unit="episode")
        while any(j is not None for j in slot_episode):
            actions = actor.act(obs)
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            reset_mask = np.zeros(num_envs, dtype=bool)
            reset_seeds: list[int | None] = [None] * num_envs
            for i in range(num_envs):
                j = slot_episode[i]
                if j is None:
                    continue  # parked (`ParkingEnv`): no episode left for this slot
                returns[i] += rewards[i]
                lengths[i] += 1
                if terminated[i] or truncated[i]:
                    counts = {name: int(infos["achievements"][name][i]) for name in CRAFTER_ACHIEVEMENTS}
                    results[j] = {"seed": seed + j, "return": float(returns[i]), "length": int(lengths[i]),
                                  "terminated": bool(terminated[i]),
                                  "achievements": sorted(name for name, count in counts.items() if count >= 1)}
                    bar.update(1)
                    returns[i], lengths[i] = 0.0, 0
                    slot_episode[i] = None
                    if next_episode < episodes:
                        slot_episode[i] = next_episode
                        reset_mask[i], reset_seeds[i] = True, seed + next_episode
                        actor.reset(i, seed + next_episode)
                        next_episode += 1
            if reset_mask.any():
                reset_obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                obs = np.where(reset_mask[:, None, None, None], reset_obs, obs)
        bar.close()
        description = actor.describe()
    finally:
        envs.close()
    per_episode = [results[j] for j in range(episodes)]
    rates = success_rates(episode["achievements"] for episode in per_episode)
    return {
        "score": crafter_score(rates),
        "success_rates": rates,
        "mean_return": float(np.mean([e["return"] for e in per_episode])),
        "mean_length": float(np.mean([e["length"] for e in per_episode])),
        "episodes": per_episode,
        "policy": description,
        "seed": seed,
        "max_episode_steps": int(max_episode_steps),
        "seconds": time.time() - started,
    }


@dataclass
class EvalAgentConfig:
    """`nextframe eval-agent`: score a policy in the real Crafter game (Crafter score, success rates, returns).

    `policy` is an SB3 zip (it contains pickles: only load models you trained yourself), "shipped:<name>" (an agent
    shipped in agents/assets/<name>/), "random" or "sticky". Episode j is reset with seed `seed + j`.
    """

    policy: str  # PATH to an SB3 zip, shipped:NAME, random, or sticky
    episodes: int = 100
    out: str | None = None  # JSON file to write (default: print only)
    seed: int = 0  # episode j is reset with seed + j
    max_episode_steps: int = CRAFTER_LENGTH
    deterministic: bool = False  # SB3 policy: argmax actions
    workers: int = 1  # games in parallel (subprocesses when > 1)
    progress: bool = True


def eval_agent(config: EvalAgentConfig) -> dict:
    """Score `config.policy`; writes `config.out` (with every episode) when given; returns the summary."""
    from agents.shipped import resolve_policy
    from generator.checkpoint import atomic_write_json

    result = evaluate_policy_real(resolve_policy(config.policy), config.episodes, seed=config.seed,
                                  max_episode_steps=config.max_episode_steps, deterministic=config.deterministic,
                                  num_envs=config.workers, progress=config.progress)
    if config.out:
        atomic_write_json(config.out, result)
    return {k: v for k, v in result.items() if k != "episodes"}
