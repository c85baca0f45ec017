"""How every `loraplus` command reads its settings: flags through transformers' `HfArgumentParser`, each value
through one coercion shared with YAML files, and every mistake as a one-line `LoraPlusError`.

Each command declares its settings as a dataclass (`TrainConfig` for train, eval and the runs of compare,
sweep and tune; a small `...Arguments` dataclass for each command's own flags). `HfArgumentParser` turns each
field into its flag: the hyphenated alias (`--learning-rate`), a bool flag alone meaning true, `--no_X` for a
bool that defaults to true, help text and groups. Its own type conversion is switched off, on purpose: its
YAML and dict readers convert nothing (they hand raw values to the dataclass), and `type=int` cannot read
`none` into an optional int. So flags come back as written and, like YAML values, go through `coerce`: a
wrong value says the same thing whichever way it was given.

A list is one token, comma-separated (`--lrs 1e-4,3e-4`), as the README writes it, so a list flag never
swallows the positional path after it; a negative number is a value (`--max_steps -1`), not a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import yaml

from loraplus.core.errors import LoraPlusError

TRUE_WORDS, FALSE_WORDS, NONE_WORDS = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"none", "null"}
T = TypeVar("T")
_BAD = (ValueError, TypeError, yaml.YAMLError)  # what a value that does not fit its type raises


def fail(message: str) -> NoReturn:
    """Raise the one-line user error (a newline inside a quoted value would break the CLI's one line)."""
    raise LoraPlusError(" ".join(message.splitlines()))


def positive_numbers(flag: str, values: Sequence[float]) -> list[float]:
    """`values` if it is a non-empty list of finite numbers > 0 (a grid of lrs or ratios), else a one-line error."""
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        fail(f"{flag} needs numbers > 0, got {','.join(f'{v:g}' for v in values) or 'none'}")
    return list(values)


def nearest(name: str, names: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the known name closest to a mistyped one, or "" when none is close."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------------------------------------- values

def members(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (`X | None`); a plain annotation is its own only member."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def type_name(hint: Any) -> str:
    """A short readable name of an annotation: `float`, `list[str] | none`."""
    if len(members(hint)) > 1:
        return " | ".join(type_name(m) for m in members(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(map(type_name, args))}]"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "str"
    return {type(None): "none", Any: "any"}.get(hint) or getattr(hint, "__name__", str(hint))


def describe(hint: Any) -> str:
    """What a value of the annotation `hint` looks like when written: 'comma-separated numbers, e.g. 1e-4,3e-4'."""
    alternatives = [m for m in members(hint) if m is not type(None)]
    if len(alternatives) < len(members(hint)):
        return " or ".join(describe(m) for m in alternatives) + " or none"
    if len(alternatives) > 1:
        return " or ".join(describe(m) for m in alternatives)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return {float: "comma-separated numbers, e.g. 1e-4,3e-4", int: "comma-separated integers, e.g. 1,2"}.get(
            args[0] if args else None, "comma-separated names, e.g. a,b")
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text",
            dict: "a mapping, e.g. {key: value}"}.get(origin or hint, type_name(hint))


def coerce(key: str, value: Any, hint: Any, where: str = "; fix it in the YAML file or flag") -> Any:
    """`value` (from YAML or a flag) converted to the annotation `hint`, or a one-line error naming `key`."""
    try:
        return _convert(value, hint)
    except _BAD:
        fail(f"{key} takes {describe(hint)} ({type_name(hint)}), got {value!r}{where}")


def _rank(hint: Any) -> int:
    """Try order inside a union: narrow types first, so "1e-3" becomes a float and "true" a bool, not a str."""
    return {bool: 0, int: 1, float: 2, list: 3, dict: 4}.get(typing.get_origin(hint) or hint, 5)


def _convert(value: Any, hint: Any) -> Any:
    """`value` as the annotation `hint`; ValueError or TypeError when it does not fit."""
    alternatives = [m for m in members(hint) if m is not type(None)]
    if len(alternatives) < len(members(hint)) and (value is None or str(value).lower() in NONE_WORDS):
        return None
    if len(alternatives) != 1:
        stringy = any(_rank(m) == 5 for m in alternatives)
        for m in sorted(alternatives, key=_rank):
            # beside a str alternative, a plain string stays a string unless it looks like a list or a mapping
            if isinstance(value, str) and stringy and (
                    (_rank(m) == 3 and "," not in value) or (_rank(m) == 4 and not value.lstrip().startswith("{"))):
                continue
            try:
                return _convert(value, m)
            except _BAD:
                continue
        raise ValueError(value)
    hint = alternatives[0]
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is Any:
        return value
    if origin is list:
        if isinstance(value, str):  # a flag: comma-separated
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [_convert(v, args[0] if args else Any) for v in value]
    elif origin is dict:
        value = yaml.safe_load(value) if isinstance(value, str) else value  # a flag: '{"a": 1}' or {a: 1}
        if isinstance(value, Mapping):
            return dict(value)
    elif hint is bool:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS):
            return value if isinstance(value, bool) else value.lower() in TRUE_WORDS
    elif isinstance(value, bool):
        if hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
            return str(value).lower()  # YAML `bf16: true`
    elif hint is int:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
            return int(value)
        if isinstance(value, (str, float)) and float(value).is_integer():  # "1e3" is an int; "1.5" is not
            return int(float(value))
    elif hint is float:
        return float(value)
    elif hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        if isinstance(value, (str, int, float)):
            return str(value)
    elif not isinstance(hint, type) or isinstance(value, hint):
        return value  # another class (e.g. accelerate's ParallelismConfig) or a Literal: passed as given
    raise ValueError(value)


# ---------------------------------------------------------------------------------------------- flags

def is_number(token: str) -> bool:
    """Whether a token is a number (`-1`, `-1e-3`): a value, never a flag."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def command_parser(dataclass_types: Any, command: str, renamed: Mapping[str, str] | None = None):
    """A `CommandParser` over `dataclass_types` for `loraplus <command>` (HfArgumentParser is imported here,
    lazily: it brings transformers, and a mistyped flag should not wait for what it does not need)."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    class CommandParser(HfArgumentParser):
        """HfArgumentParser that returns only the flags given, as written, and raises one-line errors."""

        def __init__(self):
            super().__init__(dataclass_types, prog=f"loraplus {command}", allow_abbrev=False, add_help=False)
            self.renamed = dict(renamed or {})
            self.options: dict[str, argparse.Action] = {}
            self.bools: set[str] = set()  # the options of bool fields (a field may take an optional value too)
            for action in self._actions:
                action.default = argparse.SUPPRESS  # a flag not given stays out: YAML and defaults fill it
                if action.type is string_to_bool:
                    self.bools.update(action.option_strings)
                action.type = action.choices = None  # values as written, for `coerce`
                for option in action.option_strings:
                    self.options[option] = action

        def names(self) -> list[str]:
            """Every setting this parser knows, as its dataclass field name."""
            return sorted({a.dest for a in self.options.values()})

        def error(self, message: str) -> NoReturn:
            # argparse names a flag by all its spellings ("argument --a/--b: ..."): the first is enough
            fail(f"loraplus {command}: " + re.sub(r"^argument (--[\w-]+)\S*:", r"\1:", message))

        def parse_given(self, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
            """The flags of `argv` that this parser knows (field name -> value as written; a bool flag alone is
            True), and the other tokens, in their order."""
            namespace, rest = self.parse_known_args(self._one_token_values(argv))
            given = {name: value[0] if isinstance(value, list) and len(value) == 1 else value  # a list: one token
                     for name, value in vars(namespace).items()}
            return given, rest

        def _one_token_values(self, argv: Sequence[str]) -> list[str]:
            """argv with each known flag and its value joined as `--name=value`: a list is one comma-separated
            token, and anything but another --flag is a value (`--max_steps -1`); `-` in a name reads as `_`,
            and a renamed key as its new name."""
            out, argv, i = [], list(argv), 0
            while i < len(argv):
                token, i = argv[i], i + 1
                name, has_value, value = token.partition("=")
                if not token.startswith("--") or len(token) == 2:
                    out.append(token)
                    continue
                key = name[2:].replace("-", "_")
                option = "--" + self.renamed.get(key, key)
                action = self.options.get(option)
                if action is None:
                    out.append(token)  # not this parser's: left for the next one, or refused by the caller
                    continue
                if has_value or action.nargs == 0:  # --key=value, or --no_key
                    out.append(f"{option}={value}" if has_value else option)
                    continue
                following = argv[i] if i < len(argv) else None
                takes_it = following is not None and not following.startswith("--")  # "-1", "-6,-2": values
                if option in self.bools:  # alone it means true; it takes a value only if that is a bool word
                    takes_it = takes_it and following.lower() in TRUE_WORDS | FALSE_WORDS
                    out.append(f"{option}={following}" if takes_it else f"{option}=true")
                elif takes_it:
                    out.append(f"{option}={following}")
                elif action.nargs == "?":  # a value is optional (TrainingArguments' --fsdp alone turns it on)
                    out.append(option)
                else:
                    fail(f"flag {option} needs a value; write {option} VALUE or {option}=VALUE")
                i += takes_it
            return out

    return CommandParser()


def parse_own_flags(arguments_class: type[T], argv: Sequence[str], command: str) -> tuple[T, list[str]]:
    """The flags of `arguments_class` (a dataclass, one field per flag) read from `argv`, as an instance of it
    (defaults for the flags not given), and the other tokens, in their order (compare, sweep and tune pass
    those on to `loraplus train`'s parser)."""
    given, rest = command_parser(arguments_class, command).parse_given(argv)
    hints = typing.get_type_hints(arguments_class)
    values = {name: coerce(f"--{name}", value, hints[name], "") for name, value in given.items()}
    for name, value in values.items():
        if value == []:  # `--seeds ""`: a flag given means at least one value
            fail(f"--{name} takes {describe(hints[name])}, got {given[name]!r}")
    return arguments_class(**values), rest


def flag_lines(arguments_class: type) -> list[str]:
    """The --help lines of a dataclass's flags: `  --name type  (default: value)`, then its help, indented."""
    hints = typing.get_type_hints(arguments_class)
    lines = []
    for f in dataclasses.fields(arguments_class):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = ("none" if default is None else ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
                 if isinstance(default, list) else str(default).lower() if isinstance(default, bool) else default)
        lines.append(f"  --{f.name} {type_name(hints[f.name])}  (default: {shown})")
        if f.metadata.get("help"):
            lines.append(f"      {f.metadata['help']}")
    return lines


def given_values(arguments: Any) -> dict[str, Any]:
    """The fields of a parsed arguments dataclass that are not None: for a command whose flags default to
    its function's own defaults (`loraplus toy`), the keyword arguments to pass."""
    return {k: v for k, v in dataclasses.asdict(arguments).items() if v is not None}


def parse_command(arguments_class: type[T], argv: Sequence[str], command: str,
                  positionals: bool = False) -> tuple[T, list[str]]:
    """`parse_own_flags`, for a command that takes no other flags: an unknown one is refused naming the nearest
    flag and every flag the command takes; arguments that are not flags are returned if `positionals`."""
    values, rest = parse_own_flags(arguments_class, argv, command)
    names = [f.name for f in dataclasses.fields(arguments_class)]
    flags = ", ".join(f"--{name}" for name in names)
    for token in rest:
        if token.startswith("-") and not is_number(token):
            name = token.split("=", 1)[0].lstrip("-").replace("-", "_")
            fail(f"unknown flag --{name} for loraplus {command}{nearest(name, names)} ({command} takes {flags})")
    if rest and not positionals:
        fail(f"unexpected argument {rest[0]!r}; {command} takes {flags}, each with its value")
    return values, rest
