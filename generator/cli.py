"""Map dataclass configs onto command-line flags, so commands stay thin: one flag per field, same name.

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


NONE_WORDS = ("none", "default")  # how a command line spells None inside an optional value or a tuple


def parse_scalar(kind):
    """A parser for one value of `kind` (int, float, str, or `X | None` spelled "none"/"default")."""
    args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if type(None) in typing.get_args(kind) and len(args) == 1:
        inner = parse_scalar(args[0])
        return lambda text: None if text.lower() in NONE_WORDS else inner(text)
    if kind in (int, float, str):
        return kind
    raise TypeError(f"no command-line form for {kind}")


def parse_tuple(hint):
    """A parser for `tuple[X, ...]` or `tuple[X, Y]`: comma-separated values ("1,16,64"; integers also "64x48").
    A fixed-length tuple given one value repeats it ("64" -> (64, 64))."""
    args = typing.get_args(hint)
    variable = len(args) == 2 and args[1] is Ellipsis
    kinds = [args[0]] if variable else list(args)

    def parse(text: str) -> tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p] if all(k is int for k in kinds) else \
            [p for p in text.split(",") if p]
        if not variable and len(parts) == 1 and len(kinds) > 1:
            parts = parts * len(kinds)
        if not variable and len(parts) != len(kinds):
            raise argparse.ArgumentTypeError(f"expected {len(kinds)} comma-separated values, got {text!r}")
        try:
            return tuple(parse_scalar(kinds[0] if variable else kinds[i])(part) for i, part in enumerate(parts))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    return parse


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), choices: dict[str, typing.Sequence] | None = None
) -> None:
    """Add `--field-name` for every field of dataclass `cls`, with the field's comment and default as help.

    Types: int, float, str; `X | None` (the flag's default is None; "none" spells None); `bool` and `bool | None`
    (`--x/--no-x`); `tuple[...]` (comma-separated, see `parse_tuple`); `Literal[...]` (the listed values);
    `dict` (JSON); `list[str]` (several values). A field with `metadata={"positional": True}` is a positional
    argument. `choices` restricts named fields to listed values.
    """
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    choices = choices or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        positional = field.metadata.get("positional", False)
        flag = field.name if positional else "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = type(None) in typing.get_args(hint) and len(args) == 1
        base = args[0] if optional else hint
        allowed = choices.get(field.name)
        if typing.get_origin(base) is typing.Literal:
            allowed = list(typing.get_args(base))
        text = comments.get(field.name, "")
        if allowed is not None:
            text = "; ".join(filter(None, [text, "one of " + ", ".join(map(str, allowed))]))
        text = text.replace("%", "%%")  # argparse %-formats help strings
        if not required and base is not bool:  # BooleanOptionalAction shows its default itself
            shown = json.dumps(default) if isinstance(default, (dict, list)) else (
                ",".join("none" if v is None else str(v) for v in default) if isinstance(default, tuple) else
                "%(default)s")
            text = f"{text} (default: {shown})".strip()
        options: dict = dict(default=default, help=text)
        if not positional:
            options["required"] = required
        elif not required:
            options["nargs"] = "?"
        if base is bool:
            options.pop("required", None)
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(base) is dict or base is dict:
            parser.add_argument(flag, type=json.loads, **{**options, "help": f"JSON object; {text}"})
        elif typing.get_origin(base) is list:
            options["nargs"] = "+" if required or not positional else "*"
            parser.add_argument(flag, type=parse_scalar(typing.get_args(base)[0]), **options)
        elif typing.get_origin(base) is tuple:
            parser.add_argument(flag, type=parse_tuple(base), **options)
        elif typing.get_origin(base) is typing.Literal:
            kind = type(allowed[0])
            parser.add_argument(flag, type=parse_scalar(kind | None if optional else kind), choices=allowed, **options)
        else:
            parser.add_argument(flag, type=parse_scalar(hint), choices=allowed, **options)


def dataclass_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def parse_config(cls, argv: typing.Sequence[str] | None = None, description: str | None = None,
                 choices: dict[str, typing.Sequence] | None = None, prog: str | None = None):
    """`cls` from the command line `argv` (default: `sys.argv[1:]`): one flag per field (`add_dataclass_arguments`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, cls, choices=choices)
    return dataclass_from_args(cls, parser.parse_args(argv))
