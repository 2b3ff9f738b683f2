"""Play the dream, or the real game, in real time with the keyboard (`scripts/play.py`, `docs/play.md`).

One loop drives both worlds through the same three calls (`reset`, `step`, `frame`): the learned simulator
(`DreamWorld`, a `WorldModelEnv`) and the real game it imitates (`RealWorld`, a `Game`). A control key switches
between them from the same moment: real -> dream prompts the dream with the last real frames and actions;
dream -> real resumes the real game where it was left, because a real game cannot jump to a dreamed state.

Input comes from one of two generators of `Tick`s: `keyboard_ticks` (pygame; held keys repeat every frame, like
crafter's own GUI) or `scripted_ticks` (a key sequence such as ``"right*5,space,m,left*3,q"``, for tests and demos).
`SessionRecorder` writes every contiguous stretch of play in one mode as one episode of the episode format.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import gymnasium
import numpy as np

from generator.data import EpisodeWriter
from world_env.games import Game, make_game
from world_env.games.crafter_game import CRAFTER_ACTIONS

MODES = ("dream", "real")
COMMANDS = ("toggle", "reset", "quit")
# Not T and R: crafter's own GUI already uses them for place_table and place_stone.
CONTROL_KEYS = {"m": "toggle", "n": "reset", "escape": "quit", "q": "quit"}
POLICY = {"name": "human", "interface": "keyboard"}  # constant: EpisodeWriter refuses a folder with another policy
SEGMENTS_LOG = "segments.jsonl"

# crafter/run_gui.py's key map, plus the arrow keys for moving.
CRAFTER_KEYS = {
    "a": "move_left", "d": "move_right", "w": "move_up", "s": "move_down",
    "left": "move_left", "right": "move_right", "up": "move_up", "down": "move_down",
    "space": "do", "tab": "sleep",
    "r": "place_stone", "t": "place_table", "f": "place_furnace", "p": "place_plant",
    "1": "make_wood_pickaxe", "2": "make_stone_pickaxe", "3": "make_iron_pickaxe",
    "4": "make_wood_sword", "5": "make_stone_sword", "6": "make_iron_sword",
}


# ----------------------------------------------------------------------------------------------------------
# Keys -> actions


@dataclass(frozen=True)
class KeyMap:
    """Which action each key (by pygame key name) sends; `noop` when no mapped key is pressed."""

    keys: dict[str, int]
    action_names: dict[int, str]
    noop: int

    def action(self, pressed: Iterable[str]) -> int:
        """The action of the first mapped key in `pressed` (most recent first), else `noop`."""
        for name in pressed:
            if name in self.keys:
                return self.keys[name]
        return self.noop

    def name(self, action: int) -> str:
        return self.action_names.get(int(action), f"action {int(action)}")

    def describe(self) -> list[str]:
        """One line per key, then the control keys."""
        lines = [f"  {key}: {self.name(action)}" for key, action in self.keys.items()]
        lines += [f"  {key}: {command}" for key, command in CONTROL_KEYS.items()]
        return lines


def keymap_for(game_name: str, action_space: gymnasium.Space, action_names: Iterable[str] | None = None) -> KeyMap:
    """Crafter's own key map for ``"crafter"``; number keys ``0``-``9`` for any other Discrete game of <= 10 actions.

    With the generic map, key ``i`` sends action ``start + i`` and nothing pressed sends ``start`` (the game's first
    action, which is not always a no-op). Raises ``ValueError`` for any other action space.
    """
    if not isinstance(action_space, gymnasium.spaces.Discrete):
        raise ValueError(
            f"keyboard play needs a Discrete action space; {game_name!r} has {action_space}. Add a key map for it "
            "in world_env/play.py (keymap_for)"
        )
    start, n = int(action_space.start), int(action_space.n)
    if game_name == "crafter":
        if n != len(CRAFTER_ACTIONS) or start != 0:
            raise ValueError(f"crafter has Discrete({len(CRAFTER_ACTIONS)}) actions, this game has {action_space}")
        index = {name: i for i, name in enumerate(CRAFTER_ACTIONS)}
        return KeyMap({key: index[name] for key, name in CRAFTER_KEYS.items()}, dict(enumerate(CRAFTER_ACTIONS)), 0)
    if n > 10:
        raise ValueError(
            f"{game_name!r} has {n} actions; the generic keyboard map covers 10 (number keys 0-9). Add a key map "
            "for it in world_env/play.py (keymap_for)"
        )
    names = list(action_names) if action_names is not None else [f"action {start + i}" for i in range(n)]
    return KeyMap({str(i): start + i for i in range(n)}, {start + i: names[i] for i in range(n)}, start)


# ----------------------------------------------------------------------------------------------------------
# Input: a stream of ticks, from the keyboard or from a script


@dataclass(frozen=True)
class Tick:
    """What the player did during one frame: control commands (handled instead of stepping) and the action."""

    commands: tuple[str, ...] = ()
    action: int | None = None  # None: no action key pressed (the key map's noop)


def parse_script(script: str | Iterable[str], keymap: KeyMap) -> list[Tick]:
    """A key sequence as ticks, one per comma-separated token: ``"right*5,space,m,left*3,q"``.

    A token is a key name (``left``, ``space``, ``a``, ``1``), an action name (``move_left``, ``noop``) or a command
    (``toggle``, ``reset``, ``quit``, or their keys ``m``, ``n``, ``q``, ``escape``); ``*k`` repeats it for k frames,
    ``+`` presses keys together (the first one's action wins). A list of such tokens works too.
    """
    tokens = script.split(",") if isinstance(script, str) else list(script)
    by_name = {name: action for action, name in keymap.action_names.items()}
    ticks: list[Tick] = []
    for token in tokens:
        text, _, repeat = str(token).strip().partition("*")
        try:
            count = int(repeat) if repeat else 1
        except ValueError:
            raise ValueError(f"script token {token!r}: the repeat count after '*' must be an integer") from None
        if count < 0:
            raise ValueError(f"script token {token!r}: negative repeat count")
        commands, actions = [], []
        for part in (p.strip().lower() for p in text.split("+")):
            if part in COMMANDS or part in CONTROL_KEYS:
                commands.append(CONTROL_KEYS.get(part, part))
            elif part in keymap.keys:
                actions.append(keymap.keys[part])
            elif part in by_name:
                actions.append(by_name[part])
            else:
                raise ValueError(
                    f"script token {token!r}: {part!r} is not a key of this game's map ({', '.join(keymap.keys)}), "
                    f"an action name, or a command ({', '.join(COMMANDS)})"
                )
        ticks += [Tick(tuple(commands), actions[0] if actions else None)] * count
    return ticks


def scripted_ticks(ticks: list[Tick]) -> Iterator[Tick]:
    yield from ticks


def keyboard_ticks(keymap: KeyMap) -> Iterator[Tick]:
    """Ticks from pygame's event queue and held keys; call `pygame.display.init` first.

    As in crafter's GUI, a key pressed since the last frame counts even if already released, and held keys repeat
    every frame. Closing the window quits.
    """
    import pygame

    codes = {pygame.key.key_code(name): name for name in keymap.keys}
    while True:
        commands, tapped = [], []
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                commands.append("quit")
            elif event.type == pygame.KEYDOWN:
                name = pygame.key.name(event.key)
                if name in CONTROL_KEYS:
                    commands.append(CONTROL_KEYS[name])
                elif name in keymap.keys:
                    tapped.append(name)
        held = pygame.key.get_pressed()
        pressed = tapped[::-1] + [name for code, name in codes.items() if held[code]]
        yield Tick(tuple(commands), keymap.action(pressed) if pressed else None)


# ----------------------------------------------------------------------------------------------------------
# The two worlds, behind one interface


class RealWorld:
    """The real game, remembering the last `prompt_frames` frames and actions of its episode to prompt a dream."""

    mode = "real"

    def __init__(self, game: Game, prompt_frames: int, seed: int | None = None):
        self.game = game
        self.history: deque[tuple[np.ndarray, Any]] = deque(maxlen=prompt_frames)
        self.base_seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None
        self.last_seed: int | None = None

    @property
    def started(self) -> bool:
        return self.frame is not None

    def reset(self) -> np.ndarray:
        self.last_seed = None if self.base_seed is None else self.base_seed + self.episodes
        self.episodes += 1
        self.frame = np.asarray(self.game.reset(self.last_seed)).copy()
        self.history.clear()
        self.history.append((self.frame, 0))  # the reset frame has no action (padding, as in datasets)
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated, _ = self.game.step(action)
        self.frame = np.asarray(frame).copy()
        self.history.append((self.frame, action))
        return self.frame, float(reward), bool(terminated), bool(truncated)

    def prompt(self) -> dict[str, np.ndarray]:
        """The last real frames `(P, H, W, 3)` and the actions that led to them `(P,)`, for `WorldModelEnv.reset`."""
        frames, actions = zip(*self.history)
        return {"frames": np.stack(frames), "actions": np.asarray(actions, dtype=np.int64)}


class DreamWorld:
    """The learned simulator (a `WorldModelEnv`), started from the checkpoint's prompt clips or a real clip."""

    mode = "dream"

    def __init__(self, env, seed: int | None = None):
        self.env = env
        self.base_seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None
        self.last_seed: int | None = None

    def reset(self, prompt: dict[str, np.ndarray] | None = None) -> np.ndarray:
        self.last_seed = None if self.base_seed is None else self.base_seed + self.episodes
        self.episodes += 1
        options = None if prompt is None else {"prompt": prompt}
        frame, _ = self.env.reset(seed=self.last_seed, options=options)
        self.frame = np.asarray(frame).copy()
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated, _ = self.env.step(action)
        self.frame = np.asarray(frame).copy()
        return self.frame, float(reward), bool(terminated), bool(truncated)


def prompt_length(world) -> int:
    """Frames a dream started from real play is prompted with: the checkpoint's prompt clip length, else
    ``window_frames - 1`` capped at 4; never more than the window leaves room for."""
    most = world.dit.config.window_frames - 1
    if world.prompts is not None:
        return max(1, min(int(world.prompts["frames"].shape[1]), most))
    return max(1, min(most, 4))


# ----------------------------------------------------------------------------------------------------------
# Segments and recording


@dataclass
class Segment:
    """A contiguous stretch of play in one mode: one recorded episode."""

    mode: str
    started_by: str  # "start", "toggle", "reset" or "episode_end"
    first_frame: np.ndarray
    seed: int | None = None  # the game's reset seed when the segment starts at a real reset
    prompt: str | None = None  # dream only: "checkpoint" (its prompt clips) or "real" (the last real frames)
    keep_frames: bool = False
    frames: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def __post_init__(self):
        if self.keep_frames:
            self.frames.append(self.first_frame)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    def add(self, action: int, frame: np.ndarray, reward: float) -> None:
        self.actions.append(int(action))
        self.rewards.append(float(reward))
        if self.keep_frames:
            self.frames.append(frame)

    def episode(self, terminated: bool) -> dict[str, np.ndarray]:
        """The segment in the episode format; a segment that did not end in a terminal state ends truncated."""
        length = self.steps
        ends = np.zeros(length + 1, dtype=bool)
        ends[-1] = True
        return {
            "frames": np.stack(self.frames),
            "actions": np.asarray([0, *self.actions], dtype=np.int64),
            "rewards": np.asarray([0.0, *self.rewards], dtype=np.float32),
            "terminated": ends & terminated,
            "truncated": ends & (not terminated),
        }


class SessionRecorder:
    """Records play under `root`: real segments in the dataset `root/real`, dreamed ones in `root/dream`.

    Both datasets share the policy `POLICY` and differ in `extra["source"]` (``"real"`` / ``"dream"``), so a real
    dataset never mixes in generated frames. `root/segments.jsonl` lists every written segment in play order:
    session, mode, episode name, how it started and ended, its dream prompt, and the real episode it continues.
    Segments without a transition are not written.
    """

    def __init__(self, root: str | os.PathLike, game: Game, fps: int, game_kwargs: dict, checkpoint: str):
        self.root = Path(root)
        self.session = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.checkpoint = checkpoint
        self.writers = {
            mode: EpisodeWriter(
                self.root / mode, game=game.name, frame_size=game.frame_size, action_space=game.action_space,
                fps=fps, policy=POLICY,
                extra={"source": mode, **({"game_kwargs": game_kwargs} if mode == "real" else {})},
            )
            for mode in MODES
        }
        self.written = {mode: 0 for mode in MODES}
        self.count = 0

    def write(self, segment: Segment, ended_by: str, terminated: bool, continues: str | None) -> str | None:
        if segment.steps == 0:
            return None
        name = self.writers[segment.mode].write(segment.episode(terminated), seed=segment.seed)
        self.written[segment.mode] += 1
        entry = {
            "session": self.session, "segment": self.count, "mode": segment.mode, "episode": f"{segment.mode}/{name}",
            "length": segment.steps, "return": float(sum(segment.rewards)), "started_by": segment.started_by,
            "ended_by": ended_by, "terminated": terminated, "prompt": segment.prompt,
            "continues": continues, "checkpoint": self.checkpoint,
        }
        self.count += 1
        with open(self.root / SEGMENTS_LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return name


# ----------------------------------------------------------------------------------------------------------
# Screen


MODE_COLOURS = {"dream": (235, 120, 235), "real": (120, 230, 120)}
TEXT = (230, 230, 230)
HUD_LINES = 4


class Screen:
    """The frame upscaled by `scale` (nearest neighbour) above a four-line HUD."""

    def __init__(self, frame_size: tuple[int, int], scale: int, title: str):
        import pygame

        self.pygame = pygame
        height, width = frame_size
        self.frame_px = (width * scale, height * scale)
        self.font = pygame.font.Font(None, 20)
        self.line_px = self.font.get_linesize()
        size = (max(self.frame_px[0], 420), self.frame_px[1] + HUD_LINES * self.line_px + 8)
        self.surface = pygame.display.set_mode(size)
        pygame.display.set_caption(title)

    def draw(self, frame: np.ndarray, mode: str, lines: list[str]) -> None:
        pygame = self.pygame
        self.surface.fill((0, 0, 0))
        image = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))  # (W, H, 3)
        left = (self.surface.get_width() - self.frame_px[0]) // 2
        self.surface.blit(pygame.transform.scale(image, self.frame_px), (left, 0))
        top = self.frame_px[1] + 4
        badge = self.font.render(mode.upper(), True, (0, 0, 0), MODE_COLOURS[mode])
        self.surface.blit(badge, (4, top))
        for i, line in enumerate(lines):
            x = 4 + (badge.get_width() + 8 if i == 0 else 0)
            self.surface.blit(self.font.render(line, True, TEXT), (x, top + i * self.line_px))
        pygame.display.flip()


class FpsMeter:
    """Frames per second over the last `window` ticks."""

    def __init__(self, window: int = 20):
        self.times: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


# ----------------------------------------------------------------------------------------------------------
# The play loop


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
                if self.dream.env.vec.core.speculation_depth else "speculation off",
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
