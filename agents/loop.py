"""The world-model RL loop: real experience, world-model updates and imagination, repeated until the budgets end.

Each iteration runs three phases (DIAMOND, Alonso et al. 2024, Alg. 1; IRIS and Delta-IRIS alike):

1. ``collect``: the current agent plays ``real_steps_per_iteration`` steps of the real game; every episode goes into
   the growing dataset, one folder per iteration (``out/real/iter_0003/``, so a phase killed halfway is redone from
   scratch), each episode with the seed its game was reset with. With ``real_ppo`` the same steps also make SB3 PPO
   updates (the agent learns from the real game too).
2. ``generator``: `generator.train.train` continues the world model (and its reward/termination heads) on the initial
   data plus every collected folder, resumed from ``out/generator/train_state`` and stopped after
   ``generator_steps_per_iteration`` more steps (its ``stop_at``): the model is corrected where the agent now goes.
   With ``outcome_steps_per_iteration`` (tile generators) the outcome model that reads rewards and terminations off
   the frames (`generator.outcome`) continues on the same data too (``out/outcome``), and the dream uses it.
3. ``dream``: the agent trains with PPO in the updated model, episodes starting at recorded real steps
   (`world_env.prompts.ReplayStarts`, weighted toward recent episodes) and ending by truncation after ``horizon``
   imagined steps, for ``dream_steps_per_iteration`` steps.

A phase given 0 steps (``generator_steps_per_iteration`` or ``dream_steps_per_iteration``) is skipped: a fixed world
model (``generator`` then names the world every dream uses, a run or an exported model), or with both 0 and
``real_ppo`` the no-dream control (PPO on the same real collection schedule, nothing else).

Budgets: ``real_steps`` (all iterations), ``dream_steps`` (all dream phases; 0: no cap), ``max_minutes`` (wall time of
this process). Resume: ``out/loop_state.json`` names the next phase. Every phase is a function of the files the
earlier phases left (dataset folders, ``generator/train_state``, ``agent/model.zip``) and of seeds drawn from
``(seed, iteration, phase)``, and the agent is reloaded from its zip at every phase, so a run stopped after any phase
(``max_minutes``, ``stop_after``, a kill) and started again with the same command ends where one straight run ends.

Layout of ``out/``: ``loop_state.json``, ``config.json``, ``real/iter_XXXX/`` (episode datasets), ``generator/`` (a
`generator.train` run: ``train_state/``, ``model/``, ``tb/``), ``agent/model.zip`` (the current SB3 PPO agent; SB3
zips contain pickles: load only your own), ``tb/`` (TensorBoard: ``loop`` scalars per phase, SB3's ``real_*`` and
``dream_*`` runs), ``eval_real.json`` (with ``eval_episodes``) and ``summary.json``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from generator.checkpoint import atomic_write_json
from generator.run import saved_run
from generator.data import EpisodeWriter
from generator.actions import action_array_spec
from generator.sampler import mix_seed

PHASES = ("collect", "generator", "dream")
STATE_NAME = "loop_state.json"
SEED_RANGE = 2**31 - 1
# Fields a resumed run may change; any other change is refused (the run would no longer be one run). A new
# real_steps changes the number of iterations and so stretches the generator's learning-rate schedule.
RESUMABLE_CHANGES = ("real_steps", "dream_steps", "max_minutes", "stop_after", "progress", "eval_episodes",
                     "policy_device", "device")


@dataclass
class LoopConfig:
    """One world-model RL run; `scripts/rl_loop.py` maps its flags onto these fields."""

    out: str = "runs/loop"
    game: str = "crafter"
    game_kwargs: dict = field(default_factory=dict)  # `world_env.games.make_game` options
    frame_size: int = 64  # square frames, as the world model's
    # The world model: the folder of an existing `scripts/train.py` run, whose train_state (weights, optimizer, RNGs,
    # TrainConfig) is copied to out/generator and continued; or "" for a new one from `generator_config`. With
    # generator_steps_per_iteration 0 the world is fixed: a run folder (its model/) or an exported world model
    # (`export-model`, e.g. world_env/assets/crafter, with its own outcome model) that every dream phase uses as is.
    generator: str = ""
    generator_config: dict = field(default_factory=dict)  # TrainConfig fields over the run's (or the defaults)
    initial_data: str = ""  # dataset folder(s) trained on besides the collected steps ("": the run's own data)
    seed: int = 0
    # Budgets
    real_steps: int = 100_000  # real env steps over all iterations
    real_steps_per_iteration: int = 10_000
    generator_steps_per_iteration: int = 1_000
    dream_steps_per_iteration: int = 50_000
    dream_steps: int = 0  # dream env steps over all iterations (0: iterations x dream_steps_per_iteration)
    max_minutes: float = 0.0  # end this process (resumably) after the phase that passes this wall time; 0: none
    stop_after: int = 0  # end this process after this many phases (chunked runs, tests); 0: none
    # Real game
    real_envs: int = 8
    episode_steps: int = 10_000  # real episodes are cut (truncated) after this many steps
    real_ppo: bool = False  # PPO updates on the real steps too
    subprocess: bool = False  # real games in subprocesses (SubprocVecEnv) rather than in this process
    # Dream
    dream_envs: int = 16
    horizon: int = 15  # imagined steps per dream episode; ends it by truncation (bootstrapped)
    burn_in: int | None = None  # real frames committed before imagining (None: the model's window - 1)
    recent_weight: float = 0.7  # probability of starting in the newest `recent_fraction` of the episodes
    recent_fraction: float = 0.25
    device: str = "auto"  # the world model's
    sampler_steps: int | None = None
    # Rewards read off the frames (tile generators, `generator.outcome`): this many more outcome-model steps after
    # every generator update, on the same data, resumed from out/outcome; the dream then hands out its rewards and
    # terminations. 0: the generator's own outcome heads.
    outcome_steps_per_iteration: int = 0
    outcome_config: dict = field(default_factory=dict)  # `OutcomeTrainConfig` fields (dim, depth, lr, ...)
    # PPO (SB3 CnnPolicy on raw frames)
    n_steps: int = 64  # per env and update
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    policy_device: str = "auto"
    eval_episodes: int = 0  # real episodes scored at the end (seeds from agents.ppo.EVAL_SEED_OFFSET + seed)
    progress: bool = True

    def iterations(self) -> int:
        return math.ceil(self.real_steps / self.real_steps_per_iteration)

    def check(self) -> None:
        for name in ("real_steps", "real_steps_per_iteration", "real_envs", "dream_envs", "horizon",
                     "episode_steps", "n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("generator_steps_per_iteration", "dream_steps_per_iteration"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 skips the phase), got {getattr(self, name)}")
        if self.dream_steps_per_iteration == 0 and not self.real_ppo:
            raise ValueError("with dream_steps_per_iteration 0 the agent only learns from the real steps: set "
                             "real_ppo (--real-ppo), or give dream steps")
        unit = self.real_envs * (self.n_steps if self.real_ppo else 1)
        if self.real_steps_per_iteration % unit:
            raise ValueError(
                f"real_steps_per_iteration ({self.real_steps_per_iteration}) must be a multiple of {unit} (real_envs"
                f"{' x n_steps, as PPO updates on the real steps' if self.real_ppo else ''}) so every phase plays it "
                "exactly"
            )
        if self.outcome_steps_per_iteration < 0:
            raise ValueError(f"outcome_steps_per_iteration must be >= 0, got {self.outcome_steps_per_iteration}")
        from generator.outcome import OutcomeTrainConfig

        unknown = sorted(set(self.outcome_config) - set(OutcomeTrainConfig.__dataclass_fields__))
        owned = sorted({"world", "data", "out", "steps", "stop_at"} & set(self.outcome_config))
        if unknown or owned:
            raise ValueError(f"outcome_config: unknown fields {unknown}, fields the loop sets itself {owned}; give "
                             "OutcomeTrainConfig fields such as dim, depth, lr, batch_size, event_fraction")
        if self.generator_steps_per_iteration == 0 and self.dream_steps_per_iteration > 0:
            if not self.generator:
                raise ValueError("a fixed world model (generator_steps_per_iteration 0) needs generator: a train.py "
                                 "run folder or an exported world model")
            if self.outcome_steps_per_iteration:
                raise ValueError("outcome_steps_per_iteration continues the outcome model beside the generator's "
                                 "updates; with a fixed world (generator_steps_per_iteration 0) set it to 0 (the "
                                 "world's own outcome model or heads are used)")
        if not self.generator and not self.initial_data and self.generator_config.get("data"):
            raise ValueError("give the initial data as initial_data, not generator_config['data']")


def phase_seed(config: LoopConfig, iteration: int, phase: str) -> int:
    """The seed of one phase: every RNG the phase draws from is seeded with it."""
    return mix_seed(config.seed, iteration, PHASES.index(phase)) % SEED_RANGE


# ---------------------------------------------------------------------------------------------------------------
# Real game: every episode reset with its own seed, recorded into an episode dataset


class SeededEpisodes(gymnasium.Wrapper):
    """Resets without a seed draw the next one from ``(base_seed, slot, episode count)``: every episode of a vector
    env (SB3 resets ended envs itself, without a seed) can be replayed from its seed, given in ``info["seed"]``."""

    def __init__(self, env: gymnasium.Env, base_seed: int, slot: int):
        super().__init__(env)
        self.base_seed, self.slot, self.episodes = int(base_seed), int(slot), 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = mix_seed(self.base_seed, self.slot, self.episodes) % SEED_RANGE
        self.episodes += 1
        frame, info = self.env.reset(seed=seed, options=options)
        return frame, {**info, "seed": int(seed)}


def _make_seeded_game(game: str, frame_size: tuple[int, int], game_kwargs: dict, episode_steps: int,
                      base_seed: int, slot: int) -> gymnasium.Env:
    from gymnasium.wrappers import TimeLimit

    from world_env.games.env import GameEnv

    kwargs = dict(game_kwargs)
    if game == "crafter":
        kwargs.setdefault("length", None)  # the TimeLimit cuts episodes
    return SeededEpisodes(TimeLimit(GameEnv(game, frame_size=frame_size, **kwargs), episode_steps), base_seed, slot)


def make_seeded_real_env(game: str, num_envs: int, base_seed: int, episode_steps: int,
                         frame_size: tuple[int, int] = (64, 64), game_kwargs: dict | None = None,
                         subprocess: bool = False):
    """SB3 ``VecEnv`` of ``num_envs`` real games whose episodes each get a seed (`SeededEpisodes`)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    makers = [functools.partial(_make_seeded_game, game, tuple(frame_size), dict(game_kwargs or {}), episode_steps,
                                base_seed, slot) for slot in range(num_envs)]
    return SubprocVecEnv(makers) if subprocess and num_envs > 1 else DummyVecEnv(makers)


def _episode_recorder_class():
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from world_env.collect import EpisodeBuffer  # the collector's episode under construction

    class EpisodeRecorder(VecEnvWrapper):
        """Records every transition of an SB3 ``VecEnv`` of `SeededEpisodes` games into an `EpisodeWriter`:
        finished episodes as they end, unfinished ones (marked truncated) at `finish`. Keeps each finished
        episode's return, length and final info (Crafter's achievements) in ``finished``."""

        def __init__(self, venv, writer: EpisodeWriter):
            super().__init__(venv)
            self.writer = writer
            self.action_spec = action_array_spec(venv.action_space)
            self.episodes: list[EpisodeBuffer | None] = [None] * venv.num_envs
            self.seeds: list[int | None] = [None] * venv.num_envs
            self.returns = [0.0] * venv.num_envs
            self.finished: list[dict] = []
            self.steps = 0
            self._actions = None

        def _begin(self, i: int, frame: np.ndarray) -> None:
            self.episodes[i] = EpisodeBuffer(frame, *self.action_spec, len(self.writer.achievements))
            self.seeds[i], self.returns[i] = self.venv.reset_infos[i].get("seed"), 0.0

        def _write(self, i: int) -> None:
            if self.episodes[i].transitions >= 1:
                self.writer.write(self.episodes[i].arrays(self.action_spec[1]), seed=self.seeds[i])

        def reset(self):
            obs = self.venv.reset()
            for i in range(self.num_envs):
                self._begin(i, obs[i])
            return obs

        def step_async(self, actions):
            self._actions = np.asarray(actions)
            self.venv.step_async(actions)

        def step_wait(self):
            obs, rewards, dones, infos = self.venv.step_wait()
            self.steps += self.num_envs
            for i in range(self.num_envs):
                episode = self.episodes[i]
                action = self._actions[i].reshape(self.action_spec[0]).astype(self.action_spec[1])
                terminated = bool(dones[i]) and not infos[i].get("TimeLimit.truncated", False)
                episode.add(action, infos[i]["terminal_observation"] if dones[i] else obs[i], float(rewards[i]),
                            terminated, bool(dones[i]) and not terminated,
                            infos[i]["achievement_counts"] if self.writer.achievements else None)
                self.returns[i] += float(rewards[i])
                if dones[i]:
                    self._write(i)
                    self.finished.append({"seed": self.seeds[i], "return": self.returns[i],
                                          "length": episode.transitions, "terminated": terminated,
                                          "achievements": dict(infos[i].get("achievements", {}))})
                    self._begin(i, obs[i])
            return obs, rewards, dones, infos

        def finish(self) -> None:
            """Write every unfinished episode, cut (truncated) at its last step."""
            for i in range(self.num_envs):
                if self.episodes[i] is not None:
                    self.episodes[i].truncated[-1] = self.episodes[i].transitions >= 1
                    self._write(i)
                    self.episodes[i] = None

    return EpisodeRecorder


# ---------------------------------------------------------------------------------------------------------------
# The run's state and files


class LoopRun:
    """The files of one loop run and its state; the phases below read and write through it."""

    def __init__(self, config: LoopConfig):
        config.check()
        self.config = config
        self.out = Path(config.out)
        self.state_path = self.out / STATE_NAME
        self.generator_out = self.out / "generator"
        self.outcome_out = self.out / "outcome"
        self.agent_path = self.out / "agent" / "model.zip"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            saved = self.state["config"]
            changed = sorted(k for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
            if changed:
                raise ValueError(f"{self.out} holds a loop run with other settings ({', '.join(changed)}); resume it "
                                 "with the same ones or use a new --out")
        else:
            self.state = {"iteration": 0, "phase": PHASES[0], "real_steps": 0, "dream_steps": 0, "generator_step": 0,
                          "phases_done": 0, "history": [], "config": asdict(config)}
        self.state["config"] = asdict(config)

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def real_folder(self, iteration: int) -> Path:
        return self.out / "real" / f"iter_{iteration:04d}"

    def initial_data(self) -> list[str]:
        if self.config.initial_data:
            return [p for p in self.config.initial_data.split(",") if p]
        if self.config.generator:
            if not (Path(self.config.generator) / "train_state").exists():
                raise ValueError(f"{self.config.generator} is not a train.py run (no train_state/), so the loop cannot "
                                 "read which data it was trained on: give initial_data (--initial-data)")
            _, saved = saved_run(self.config.generator)
            return [p for p in str(saved["data"]).split(",") if p]
        return []

    def world(self) -> Path:
        """The world model the dream phase uses: the loop's own updated generator, or with
        ``generator_steps_per_iteration`` 0 the fixed one ``generator`` names (an exported model or a run's
        ``model/``)."""
        if self.config.generator_steps_per_iteration:
            return self.generator_out / "model"
        from generator.checkpoint import CONFIG_NAME, checkpoint_folder

        fixed = checkpoint_folder(self.config.generator)
        if (fixed / CONFIG_NAME).exists() and (fixed / "model.safetensors").exists():
            return fixed
        raise ValueError(f"{self.config.generator} holds no world model (config.json and model.safetensors, there or "
                         "in model/): give an exported world model or a train.py run folder as generator")

    def data(self, through: int) -> str:
        """The dataset folders of the initial data and iterations ``0 .. through`` (comma-separated)."""
        folders = self.initial_data() + [str(self.real_folder(i)) for i in range(through + 1)
                                         if (self.real_folder(i) / "meta.json").exists()]
        return ",".join(folders)

    def train_config(self, iteration: int):
        """The generator's `TrainConfig` for iteration ``iteration``: the run's own (or the defaults) with
        ``generator_config`` over it, the growing data, ``out/generator``, the schedule stretched over every
        iteration and ``stop_at`` after this iteration's steps."""
        from generator.train import TrainConfig

        config = self.config
        known = set(TrainConfig.__dataclass_fields__)
        base: dict[str, Any] = {}
        start = 0
        if config.generator:
            start, saved = saved_run(config.generator)
            base = {k: v for k, v in saved.items() if k in known}  # fields a newer TrainConfig dropped
        unknown = sorted(set(config.generator_config) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown} in generator_config")
        base.update(config.generator_config)
        base.update(data=self.data(iteration), out=str(self.generator_out), progress=False,
                    steps=start + config.iterations() * config.generator_steps_per_iteration,
                    stop_at=start + (iteration + 1) * config.generator_steps_per_iteration)
        base.setdefault("seed", config.seed)
        return TrainConfig(**base)

    def ensure_generator_state(self) -> None:
        """Copy the starting run's train_state once (temporary name, then rename)."""
        target = self.generator_out / "train_state"
        if not self.config.generator or target.exists():
            return
        self.generator_out.mkdir(parents=True, exist_ok=True)
        tmp = self.generator_out / "train_state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(self.config.generator) / "train_state", tmp)
        os.rename(tmp, target)

    def load_agent(self, env, seed: int):
        """The current agent on `env` (a new seeded PPO the first time), every RNG seeded with `seed`."""
        from stable_baselines3 import PPO

        config = self.config
        if self.agent_path.exists():
            agent = PPO.load(self.agent_path, env=env, device=config.policy_device)
        else:
            agent = PPO("CnnPolicy", env, learning_rate=config.learning_rate, n_steps=config.n_steps,
                        batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma,
                        gae_lambda=config.gae_lambda, ent_coef=config.ent_coef, tensorboard_log=str(self.out / "tb"),
                        seed=config.seed, device=config.policy_device, verbose=0)
        agent.set_random_seed(seed)
        return agent

    def save_agent(self, agent) -> None:
        self.agent_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.agent_path.with_name("model.tmp.zip")
        agent.save(tmp)
        os.replace(tmp, self.agent_path)


# ---------------------------------------------------------------------------------------------------------------
# Phases


def collect_phase(run: LoopRun, iteration: int) -> dict:
    """The agent plays ``real_steps_per_iteration`` real steps into ``real/iter_XXXX`` (PPO updates on them with
    ``real_ppo``); returns the phase's record."""
    from stable_baselines3.common.vec_env import VecMonitor

    from agents.score import CRAFTER_ACHIEVEMENTS, crafter_score, success_rates

    config = run.config
    seed = phase_seed(config, iteration, "collect")
    folder = run.real_folder(iteration)
    shutil.rmtree(folder, ignore_errors=True)  # a collect phase killed halfway starts again
    venv = make_seeded_real_env(config.game, config.real_envs, seed, config.episode_steps,
                                (config.frame_size, config.frame_size), config.game_kwargs, config.subprocess)
    writer = EpisodeWriter(folder, game=config.game,
                           frame_size=(config.frame_size, config.frame_size), action_space=venv.action_space,
                           fps=int(venv.get_attr("metadata")[0].get("render_fps", 15)),
                           policy={"name": "sb3", "algorithm": "PPO", "loop_iteration": iteration},
                           extra={"game_kwargs": config.game_kwargs, "loop_seed": seed},
                           achievements=venv.get_attr("achievement_names")[0])
    recorder = _episode_recorder_class()(venv, writer)
    try:
        env = VecMonitor(recorder)
        agent = run.load_agent(env, seed)
        if config.real_ppo:
            agent.learn(config.real_steps_per_iteration, reset_num_timesteps=False, tb_log_name="real")
        else:
            obs = env.reset()
            for _ in range(config.real_steps_per_iteration // config.real_envs):
                actions, _ = agent.predict(obs, deterministic=False)
                obs, _, _, _ = env.step(actions)
        recorder.finish()
        run.save_agent(agent)
    finally:
        venv.close()
    finished = recorder.finished
    record: dict[str, Any] = {"real_steps": recorder.steps, "episodes_finished": len(finished),
                              "episodes_written": writer.num_episodes,
                              "mean_return": float(np.mean([e["return"] for e in finished])) if finished else None,
                              "mean_length": float(np.mean([e["length"] for e in finished])) if finished else None}
    if config.game == "crafter" and finished:
        achievements = [{name: e["achievements"].get(name, 0) for name in CRAFTER_ACHIEVEMENTS} for e in finished]
        record["score"] = crafter_score(success_rates(achievements))
    return record


def generator_phase(run: LoopRun, iteration: int) -> dict:
    """``generator_steps_per_iteration`` more steps of `generator.train.train` on the data so far."""
    from generator.train import train

    if run.config.generator_steps_per_iteration == 0:  # a fixed world model (or none: the no-dream control)
        return {"generator_step": run.state["generator_step"], "skipped": True}
    run.ensure_generator_state()
    config = run.train_config(iteration)
    _seed_everything(phase_seed(run.config, iteration, "generator"))
    result = train(config)
    record = {"generator_step": int(result["step"]), "final_loss": (result["final"] or {}).get("loss"),
              "data_folders": len(config.data.split(","))}
    if run.config.outcome_steps_per_iteration:
        record.update(outcome_update(run, iteration))
    return record


def outcome_update(run: LoopRun, iteration: int) -> dict:
    """``outcome_steps_per_iteration`` more outcome-model steps (`generator.outcome.train_outcome`) on the data so
    far, reading the updated generator's codec; its ``out/outcome/model`` is what the dream phase attaches."""
    from generator.outcome import OutcomeTrainConfig, train_outcome

    config = run.config
    k = config.outcome_steps_per_iteration
    settings = {"seed": config.seed, "device": config.device, **config.outcome_config}
    result = train_outcome(OutcomeTrainConfig(
        **settings, world=str(run.generator_out / "model"), data=run.data(iteration), out=str(run.outcome_out),
        steps=config.iterations() * k, stop_at=(iteration + 1) * k, progress=False,
    ))
    positive = result["val"]["reward_positive"]
    return {"outcome_step": int(result["step"]), "outcome_val_precision": positive["precision"],
            "outcome_val_recall": positive["recall"]}


def dream_phase(run: LoopRun, iteration: int) -> dict:
    """PPO in the updated world model from replay states with a short horizon."""
    from stable_baselines3.common.vec_env import VecMonitor

    from world_env.prompts import ReplayStarts
    from world_env.sb3 import SB3DreamVecEnv

    config = run.config
    steps = config.dream_steps_per_iteration
    if config.dream_steps:
        steps = min(steps, config.dream_steps - run.state["dream_steps"])
    if steps <= 0:  # the dream budget is spent, or the no-dream control (dream_steps_per_iteration 0)
        return {"dream_steps": 0, "skipped": True}
    seed = phase_seed(config, iteration, "dream")
    starts = ReplayStarts(run.data(iteration), burn_in=config.burn_in, recent_weight=config.recent_weight,
                          recent_fraction=config.recent_fraction)
    world = run.world()
    if config.outcome_steps_per_iteration:  # rewards and terminations from the outcome model, read off the frames
        from generator.outcome import attach_outcome, load_outcome
        from generator.pretrained import WorldModel

        world = WorldModel.from_pretrained(world, device=config.device)
        attach_outcome(world, load_outcome(run.outcome_out), str(run.outcome_out))
    dream = SB3DreamVecEnv(world, num_envs=config.dream_envs, device=config.device,
                           sampler_steps=config.sampler_steps, max_episode_steps=config.horizon, prompt_source=starts)
    returns: list[float] = []
    try:
        env = VecMonitor(dream)
        agent = run.load_agent(env, seed)
        before = agent.num_timesteps
        agent.learn(steps, reset_num_timesteps=False, tb_log_name="dream")
        returns = [float(info["r"]) for info in agent.ep_info_buffer]
        run.save_agent(agent)
    finally:
        dream.close()
    return {"dream_steps": int(agent.num_timesteps - before),
            "mean_dream_return": float(np.mean(returns)) if returns else None,
            "outcome_model": bool(config.outcome_steps_per_iteration)}


def _seed_everything(seed: int) -> None:
    from stable_baselines3.common.utils import set_random_seed

    set_random_seed(seed)


PHASE_FUNCTIONS = {"collect": collect_phase, "generator": generator_phase, "dream": dream_phase}


# ---------------------------------------------------------------------------------------------------------------
# The loop


def run_loop(config: LoopConfig) -> dict:
    """Run (or resume) the loop until its budgets end or this process's ``max_minutes``/``stop_after``; returns the
    summary (``finished`` False when it stopped early: run the same command again to go on)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    run = LoopRun(config)
    if config.dream_steps_per_iteration:  # a missing world or unreadable data fails now, not after a collect phase
        run.world()
        run.initial_data()
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.out / "config.json", asdict(config))
    state = run.state
    started = time.time()
    writer = SummaryWriter(run.out / "tb" / "loop")
    bar = tqdm(total=config.real_steps, initial=min(state["real_steps"], config.real_steps), unit="real step",
               disable=not config.progress, desc="rl loop")
    phases_this_process = 0
    try:
        while state["real_steps"] < config.real_steps or state["phase"] != "collect":
            iteration, phase = state["iteration"], state["phase"]
            bar.set_postfix(iteration=iteration, phase=phase)
            phase_started = time.time()
            record = PHASE_FUNCTIONS[phase](run, iteration)
            record.update(iteration=iteration, phase=phase, seconds=time.time() - phase_started)
            state["real_steps"] += record.get("real_steps", 0)
            state["dream_steps"] += record.get("dream_steps", 0)
            state["generator_step"] = record.get("generator_step", state["generator_step"])
            state["history"].append(record)
            state["phases_done"] += 1
            next_index = PHASES.index(phase) + 1
            state["iteration"] += next_index // len(PHASES)
            state["phase"] = PHASES[next_index % len(PHASES)]
            run.save()
            bar.update(record.get("real_steps", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iteration",):
                    writer.add_scalar(f"{phase}/{key}", value, state["real_steps"])
            phases_this_process += 1
            if config.stop_after and phases_this_process >= config.stop_after:
                break
            if config.max_minutes and time.time() - started > 60 * config.max_minutes:
                break
    finally:
        bar.close()
        writer.close()
    finished = state["real_steps"] >= config.real_steps and state["phase"] == "collect"
    summary = {"finished": finished, **{k: state[k] for k in ("iteration", "phase", "real_steps", "dream_steps",
                                                             "generator_step")},
               "agent": str(run.agent_path),
               "world_model": (str(run.world()) if config.generator_steps_per_iteration or config.dream_steps_per_iteration
                               else None)}
    if finished and config.eval_episodes:
        from agents.ppo import EVAL_SEED_OFFSET, evaluate_policy_real

        evaluation = evaluate_policy_real(str(run.agent_path), config.eval_episodes, seed=EVAL_SEED_OFFSET + config.seed,
                                          max_episode_steps=config.episode_steps)
        atomic_write_json(run.out / "eval_real.json", evaluation)
        summary["eval_real"] = {k: v for k, v in evaluation.items() if k != "episodes"}
    atomic_write_json(run.out / "summary.json", summary)
    return summary
