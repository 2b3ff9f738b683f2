"""Map dataclass configs onto command-line flags, so scripts stay thin: one flag per field, same name."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add `--field-name` for every field of dataclass `cls` (bool fields get `--x/--no-x`, dict fields take JSON)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is dict or hint is dict:
            parser.add_argument(flag, type=json.loads, default=default, help="JSON object")
        else:
            kind = hint if hint in (int, float, str) else str
            parser.add_argument(flag, type=kind, default=default, required=required)


def dataclass_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
