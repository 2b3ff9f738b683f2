"""Play the dream, or the real game, in real time with the keyboard (`nextframe play`, `docs/play.md`).

`play` runs a session (`world_env.play.session`); the other modules hold one concern each: `input` (key maps,
keyboard and scripted `Tick` streams), `worlds` (the real game and the dream behind one interface), `recording`
(episodes and the segment log), `screen` (the pygame window and its HUD).
"""
from world_env.play.input import CONTROL_KEYS, KeyMap, Tick, keymap_for, parse_script
from world_env.play.session import PlaySession, play

__all__ = ["CONTROL_KEYS", "KeyMap", "PlaySession", "Tick", "keymap_for", "parse_script", "play"]
