"""The `nextframe` command: every job's flags derive from its config dataclass (generator/cli.py)."""
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from generator.cli import parse_config
from agents.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Example:
    out: str  # where
    sizes: tuple[int, ...] = (1, 16)  # comma list
    frame: tuple[int, int] = (64, 64)  # HxW
    steps: tuple[int | None, ...] = (None, 1)  # "default": the model's
    limit: float | None = None  # optional
    mode: Literal["a", "b"] = "a"
    flag: bool | None = None
    models: list[str] = dataclasses.field(default_factory=list, metadata={"positional": True})


def test_flags_follow_the_dataclass():
    assert parse_config(Example, ["--out", "x"]) == Example("x")
    config = parse_config(Example, ["m1=a", "m2=b", "--out", "x", "--sizes", "1,16,64", "--frame", "64x48",
                                    "--steps", "default,4", "--limit", "2.5", "--mode", "b", "--no-flag"])
    assert config == Example("x", (1, 16, 64), (64, 48), (None, 4), 2.5, "b", False, ["m1=a", "m2=b"])
    assert parse_config(Example, ["--out", "x", "--frame", "64"]).frame == (64, 64)
    with pytest.raises(SystemExit):
        parse_config(Example, ["--out", "x", "--mode", "c"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    from agents.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: nextframe " + command in capsys.readouterr().out


def test_every_script_is_an_alias_of_a_command():
    for script in sorted((REPO / "scripts").glob("*.py")):
        assert 'main(command="' in script.read_text(), script
    proc = subprocess.run([sys.executable, "-m", "agents.commands"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS)
