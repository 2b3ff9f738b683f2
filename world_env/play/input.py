"""Keyboard and scripted input for `world_env.play`: key maps per game and the `Tick` streams that drive a session."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import gymnasium

from world_env.games.crafter_game import CRAFTER_ACTIONS


MODES = ("dream", "real")
COMMANDS = ("toggle", "reset", "quit")
# Not T and R: crafter's own GUI already uses them for place_table and place_stone.
CONTROL_KEYS = {"m": "toggle", "n": "reset", "escape": "quit", "q": "quit"}

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
            "in world_env/play/input.py (keymap_for)"
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
