"""Play the dream, or the real game, in real time with the keyboard (`scripts/play.py`, `docs/play.md`).

One loop drives both worlds through the same three calls (`reset`, `step`, `frame`): the learned simulator
(`DreamWorld`, a `WorldModelEnv`) and the real game it imitates (`RealWorld`, a `Game`). A control key switches
between them from the same moment: real -> dream prompts the dream with the last real frames and actions;
dream -> real resumes the real game where it was left, because a real game cannot jump to a dreamed state.

Input comes from one of two generators of `Tick`s: `keyboard_ticks` (pygame; held keys repeat every frame, like
crafter's own GUI) or `scripted_ticks` (a key sequence such as ``"right*5,space,m,left*3,q"``, for tests and demos).
`SessionRecorder` writes every contiguous stretch of play in one mode as one episode of the episode format.

The session is split by concern, as DIAMOND splits `src/game/`: `input` (key maps and tick streams), `worlds`
(real and dream behind one interface), `recording` (episodes and the segment log), `screen` (window and HUD) and
`session` (this module: `play` and the loop).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal


from world_env.games import Game, make_game
from world_env.play.input import MODES, KeyMap, Tick, keyboard_ticks, keymap_for, parse_script, scripted_ticks
from world_env.play.recording import Segment, SessionRecorder
from world_env.play.screen import FpsMeter, Screen
from world_env.play.worlds import DreamWorld, RealWorld, prompt_length


@dataclass
class PlayConfig:
    """`nextframe play`: the dream of a world model in real time with the keyboard (docs/play.md).

    M switches dream <-> real (real -> dream prompts the dream with the last real frames; dream -> real resumes the
    real game where it was left), N resets the current world, Esc or Q quits. `record` writes real/ and dream/
    episode datasets plus segments.jsonl (which episode came from which mode, in play order).
    """

    checkpoint: str | None = field(default=None, metadata={"positional": True})  # world-model folder (default: shipped)
    game: str | None = None  # real game (default: the model's): crafter, gym:<EnvId>, ...
    game_kwargs: dict | None = None  # e.g. {"area": [32, 32]}
    record: str | None = None  # folder to record the session into
    fps: int | None = None  # frames per second (default: the model's / game's)
    scale: int = 8  # window pixels per frame pixel
    script: str | None = None  # key sequence instead of the keyboard: "right*5,space,m,q"
    max_steps: int | None = None  # stop after this many steps
    realtime: bool = True  # pace to `fps` (--no-realtime: step as fast as possible)
    headless: bool | None = None  # no window (default: headless when `script` is given)
    device: str = "auto"  # auto, cpu, cuda, ...
    start: Literal["dream", "real"] = "dream"  # mode to start in
    seed: int | None = None  # seeds real resets (seed, seed+1, ...) and the dream
    sampler_steps: int | None = None  # denoising steps per frame
    speculation_depth: int = 1  # dream frames speculated ahead (0: off)


def run_play(config: PlayConfig) -> dict:
    """`play` as `config` says, narrating; returns the session summary."""
    return play(config.checkpoint, config.game, game_kwargs=config.game_kwargs, record=config.record, fps=config.fps,
                scale=config.scale, script=config.script, max_steps=config.max_steps, realtime=config.realtime,
                device=config.device, start=config.start, seed=config.seed, sampler_steps=config.sampler_steps,
                speculation_depth=config.speculation_depth, headless=config.headless, verbose=True)


def play(
    checkpoint=None,
    game: str | Game | None = None,
    *,
    game_kwargs: dict | None = None,
    record: str | os.PathLike | None = None,
    fps: int | None = None,
    scale: int = 8,
    script: str | Iterable[str] | None = None,
    max_steps: int | None = None,
    realtime: bool = True,
    device: str = "auto",
    start: str = "dream",
    seed: int | None = None,
    sampler_steps: int | None = None,
    speculation_depth: int = 1,
    headless: bool | None = None,
    verbose: bool = False,
) -> dict:
    """Play the dream of `checkpoint` (and the real `game`) with the keyboard or a `script`; returns a summary.

    Args:
        checkpoint: a world-model folder, a loaded `WorldModel`, or None for the shipped model.
        game: a `make_game` name, a `Game`, or None for the model's own game (built at the model's frame size with
            `game_kwargs`). Its frame size and action space must be the model's.
        record: folder to record into (`SessionRecorder`: `real/`, `dream/` datasets and `segments.jsonl`).
        fps: frames per second to play at (default: the model's fps when it was trained on this game, else the
            game's). `realtime=False` steps as fast as it can.
        scale: window pixels per frame pixel.
        script: a key sequence (`parse_script`) played instead of the keyboard; the run ends when it does.
        max_steps: stop after this many steps (of either world).
        start: "dream" (from the checkpoint's prompt clips, or the real reset frame when it has none) or "real".
        seed: seeds the real game's resets (seed, seed + 1, ...) and the dream's noise; None: fresh ones.
        speculation_depth: dream frames speculated ahead assuming the action repeats (async when `realtime`).
        headless: no window (SDL's dummy video driver); default: headless when a script is given.
        verbose: print the key map and each recorded episode.

    Keys: the game's key map (`keymap_for`), M toggles dream / real, N resets the current world, Esc or Q quits.
    Summary: steps (total, per mode), toggles, resets, episode ends, return per mode, segments, recorded episodes,
    target and measured fps, speculation statistics, what ended the run (`ended_by`) and the final mode.
    """
    from world_env.env import WorldModelEnv

    if start not in MODES:
        raise ValueError(f"start must be one of {MODES}, got {start!r}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    env = WorldModelEnv(
        checkpoint, device=device, sampler_steps=sampler_steps, speculation_depth=speculation_depth,
        async_speculation=realtime and speculation_depth > 0,
    )
    world = env.vec.world
    game_kwargs = dict(game_kwargs or {})
    own_game = game is None or isinstance(game, str)
    if not own_game and game_kwargs:
        raise ValueError("game_kwargs only apply when play() builds the game from its name")
    if own_game:
        name = game or world.info.game
        if game is None and not game_kwargs:
            game_kwargs = dict(world.info.game_kwargs)  # the model's game, made as it was recorded
        try:
            game = make_game(name, frame_size=tuple(world.info.frame_size), **game_kwargs)
        except ValueError as error:
            raise ValueError(f"cannot build the real game {name!r} for this model ({error}); pass game=") from None
    if tuple(game.frame_size) != tuple(world.info.frame_size):
        raise ValueError(f"game {game.name!r} has frames {game.frame_size}, the model {tuple(world.info.frame_size)}")
    if game.action_space != env.action_space:
        raise ValueError(f"game {game.name!r} has actions {game.action_space}, the model {env.action_space}")
    keymap = keymap_for(game.name, game.action_space, getattr(game, "action_names", None))
    fps = int(fps or (world.info.fps if world.info.game == game.name else game.fps))
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    ticks = scripted_ticks(parse_script(script, keymap)) if script is not None else None
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint_name = str(Path(checkpoint).resolve())
    else:
        checkpoint_name = "shipped model" if checkpoint is None else f"in-memory {type(checkpoint).__name__}"
    recorder = SessionRecorder(record, game, game.fps, game_kwargs, checkpoint_name) if record is not None else None
    if verbose:
        print("Keys:\n" + "\n".join(keymap.describe()))

    headless = script is not None if headless is None else headless
    saved_driver = os.environ.get("SDL_VIDEODRIVER")
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()
    pygame.font.init()
    try:
        screen = Screen(game.frame_size, scale, f"nextframe: {game.name}")
        if ticks is None:
            ticks = keyboard_ticks(keymap)
        real, dream = RealWorld(game, prompt_length(world), seed), DreamWorld(env, seed)
        session = PlaySession(real, dream, keymap, recorder, verbose)
        return session.run(ticks, start, screen, fps, realtime, max_steps)
    finally:
        pygame.quit()
        env.close()
        if own_game:
            game.close()
        if headless:
            if saved_driver is None:
                os.environ.pop("SDL_VIDEODRIVER", None)
            else:
                os.environ["SDL_VIDEODRIVER"] = saved_driver


class PlaySession:
    """The state of one play session: both worlds, the current mode and segment, counters, and the recorder."""

    def __init__(self, real: RealWorld, dream: DreamWorld, keymap: KeyMap, recorder: SessionRecorder | None,
                 verbose: bool = False):
        self.real, self.dream, self.keymap, self.recorder, self.verbose = real, dream, keymap, recorder, verbose
        self.worlds = {"real": real, "dream": dream}
        self.stats = {
            "steps": 0, "real_steps": 0, "dream_steps": 0, "toggles": 0, "resets": 0, "episode_ends": 0,
            "return": {"real": 0.0, "dream": 0.0},
        }
        self.segments: list[dict] = []
        self.continues: str | None = None  # the last recorded real episode of the current real game episode
        self.mode = "real"
        self.segment: Segment | None = None
        self.message = ""

    # -- starting and ending segments ----------------------------------------------------------------------------

    def begin(self, mode: str, started_by: str, fresh: bool) -> None:
        """Enter `mode`; `fresh` starts a new episode there (a dream always starts one)."""
        keep, real, dream = self.recorder is not None, self.real, self.dream
        self.mode = mode
        if mode == "dream":
            if fresh and dream.env.vec.world.prompts is not None:
                dream.reset()
                prompt, self.message = "checkpoint", "DREAM from the checkpoint's prompt clips"
            else:
                if not real.started:
                    real.reset()
                    self.continues = None
                dream.reset(real.prompt())
                prompt, self.message = "real", f"DREAM from the last {len(real.history)} real frame(s)"
            self.segment = Segment("dream", started_by, dream.frame, dream.last_seed, prompt, keep)
        elif fresh or not real.started:
            real.reset()
            self.continues = None
            self.segment = Segment("real", started_by, real.frame, real.last_seed, keep_frames=keep)
            self.message = "REAL new episode"
        else:
            self.segment = Segment("real", started_by, real.frame, keep_frames=keep)
            self.message = "REAL resumes where the real game was left (the dream cannot be carried over)"

    def finish(self, ended_by: str, terminated: bool = False) -> None:
        segment, name = self.segment, None
        if self.recorder is not None:
            continues = self.continues if segment.mode == "real" else None
            name = self.recorder.write(segment, ended_by, terminated, continues)
        if name is not None and segment.mode == "real":
            self.continues = f"real/{name}"
        if name is not None and self.verbose:
            print(f"recorded {segment.mode}/{name}: {segment.steps} steps ({segment.started_by} -> {ended_by})")
        self.segments.append({
            "mode": segment.mode, "steps": segment.steps, "return": float(sum(segment.rewards)),
            "started_by": segment.started_by, "ended_by": ended_by, "prompt": segment.prompt,
            "episode": None if name is None else f"{segment.mode}/{name}",
        })

    # -- one tick ---------------------------------------------------------------------------------------------

    def command(self, command: str) -> None:
        if command == "toggle":
            self.finish("toggle")
            self.stats["toggles"] += 1
            self.begin("dream" if self.mode == "real" else "real", "toggle", fresh=False)
        elif command == "reset":
            self.finish("reset")
            self.stats["resets"] += 1
            self.begin(self.mode, "reset", fresh=True)

    def step(self, action: int) -> float:
        frame, reward, terminated, truncated = self.worlds[self.mode].step(action)
        self.segment.add(action, frame, reward)
        self.stats["steps"] += 1
        self.stats[f"{self.mode}_steps"] += 1
        self.stats["return"][self.mode] += reward
        if terminated or truncated:
            self.finish("terminated" if terminated else "truncated", terminated)
            self.stats["episode_ends"] += 1
            self.begin(self.mode, "episode_end", fresh=True)
        return reward

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self, ticks: Iterator[Tick], start: str, screen: Screen, fps: int, realtime: bool,
            max_steps: int | None) -> dict:
        """Show, pace, read one tick, then handle its commands or step; until quit, the script's end or max_steps."""
        import pygame

        self.begin(start, "start", fresh=True)
        clock, meter = pygame.time.Clock(), FpsMeter()
        message_until = time.perf_counter() + 3
        reward, last_action, ended_by = 0.0, None, "quit"
        while True:
            spec = self.dream.env.vec.speculation_stats
            tried = spec["accepted"] + spec["rejected"]
            action_name = "-" if last_action is None else self.keymap.name(last_action)
            screen.draw(self.worlds[self.mode].frame, self.mode, [
                f"step {self.stats['steps']}  fps {meter.fps:.1f}/{fps}",
                f"reward {reward:+.2f}  return {self.stats['return'][self.mode]:.2f}  action {action_name}",
                f"speculation {spec['acceptance_rate']:.0%} accepted ({spec['accepted']}/{tried})"
                if self.dream.env.vec.speculation_depth else "speculation off",
                self.message if time.perf_counter() < message_until else "M dream/real   N reset   Esc/Q quit",
            ])
            if realtime:
                clock.tick(fps)
            meter.tick()
            tick = next(ticks, None)
            if tick is None:
                ended_by = "script_end"
                break
            if "quit" in tick.commands:
                break
            if tick.commands:
                for command in tick.commands:
                    self.command(command)
                reward, last_action, message_until = 0.0, None, time.perf_counter() + 3
                continue
            last_action = self.keymap.noop if tick.action is None else tick.action
            episodes = self.stats["episode_ends"]
            reward = self.step(last_action)
            if self.stats["episode_ends"] > episodes:
                message_until = time.perf_counter() + 3
            if max_steps is not None and self.stats["steps"] >= max_steps:
                ended_by = "max_steps"
                break
        self.finish(ended_by)
        return {
            **self.stats,
            "segments": self.segments,
            "recorded": dict(self.recorder.written) if self.recorder else None,
            "record": str(self.recorder.root) if self.recorder else None,
            "fps": fps,
            "fps_measured": round(meter.fps, 2),
            "speculation": self.dream.env.vec.speculation_stats,
            "ended_by": ended_by,
            "final_mode": self.mode,
        }
