"""Map dataclass configs onto command-line flags, so scripts stay thin: one flag per field, same name.

A field's help text is its comment in the dataclass source (the `# ...` after it, or the comment lines just above
it), as cleanrl's `tyro.cli(Args)` does, so the config and `--help` never disagree.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
import typing

_LAYOUT_TOKENS = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)


def field_comments(cls) -> dict[str, str]:
    """`{field name: its comment}` read from the source of dataclass `cls` (empty when the source is unavailable)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    code_lines = {t.start[0] for t in tokens if t.type not in _LAYOUT_TOKENS}
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    body_column = next((t.end[1] for t in tokens if t.type == tokenize.INDENT), 4)
    out = {}
    for token, after in zip(tokens, tokens[1:]):
        if not (token.type == tokenize.NAME and token.string in names and token.start[1] == body_column
                and after.string == ":"):
            continue
        line = token.start[0]
        if line in comments:
            out[token.string] = comments[line]
            continue
        above = []
        while line - 1 in comments and line - 1 not in code_lines:
            line -= 1
            above.insert(0, comments[line])
        if above:
            out[token.string] = " ".join(above)
    return out


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), choices: dict[str, typing.Sequence] | None = None
) -> None:
    """Add `--field-name` for every field of dataclass `cls` (bool fields get `--x/--no-x`, dict fields take JSON),
    with the field's comment and default as help; `choices` restricts named fields to listed values."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    choices = choices or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
        text = comments.get(field.name, "")
        if field.name in choices:
            text = "; ".join(filter(None, [text, "one of " + ", ".join(map(str, choices[field.name]))]))
        text = text.replace("%", "%%")  # argparse %-formats help strings
        if not required and hint is not bool:  # BooleanOptionalAction shows its default itself
            shown = json.dumps(default) if isinstance(default, dict) else "%(default)s"
            text = f"{text} (default: {shown})".strip()
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(hint) is dict or hint is dict:
            parser.add_argument(flag, type=json.loads, default=default, help=f"JSON object; {text}")
        else:
            optional = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if type(None) in typing.get_args(hint) and len(optional) == 1:
                hint = optional[0]  # `int | None`: an int flag whose default is None
            kind = hint if hint in (int, float, str) else str
            parser.add_argument(flag, type=kind, default=default, required=required, help=text,
                                choices=choices.get(field.name))


def dataclass_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
