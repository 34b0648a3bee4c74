"""Reading params YAML safely and building validated dataclasses from it.

The machinery under `config.load`: a YAML loader that reads `5e-4` as a number and refuses
aliases, file checks that name what is wrong (missing, empty, binary, not UTF-8), `--set`
overrides, and the conversion of plain data into typed dataclasses that names the key of every
unknown key, wrong type or impossible value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import shlex
import types
import typing
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A params file or override that cannot be used; the message names the file and key."""


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise KeyProblem(key, message)


class KeyProblem(Exception):
    """A bad value at a dotted key; `load` turns it into a ParamsError naming the file."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads `5e-4` as a string; scientific notation without a dot is a float here.

    Aliases (`*name`) are refused as soon as they are read: a few hundred bytes of nested
    aliases expand to gigabytes (an "alias bomb"), and a params file never needs them.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not allowed in params and sweep files",
                event.start_mark,
            )
        return super().compose_node(parent, index)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str):
    """A `--set` value: YAML scalar syntax (`1e-4`, `true`, `null`, `[1, 2]`)."""
    return yaml.load(text, Loader=Loader)


def read_yaml(file: Path, what: str = "params file"):
    """The YAML data of `file`, or `ParamsError` naming it: missing, a directory, empty, binary,
    not UTF-8, not valid YAML, or using aliases."""
    if file.is_dir():
        raise ParamsError(f"{file}: is a directory, not a {what}")
    if not file.is_file():
        raise ParamsError(f"{file}: {what} not found")
    data = file.read_bytes()
    if not data.strip():
        raise ParamsError(f"{file}: the {what} is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParamsError(f"{file}: the {what} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise ParamsError(f"{file}: the {what} is a binary file (it holds NUL bytes), not YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"{file}: line {line}: the {what} is not UTF-8 text (byte {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ParamsError(f"{file}:{where} not valid YAML: {problem}") from None


# Overrides that say where a run goes, not what it does: they do not rename it.
PLACEMENT_KEYS = ("run_name", "output_dir", "cache_path")


def derived_run_name(stem: str, items: list[tuple[str, object]]) -> str:
    """The file's stem, plus each override that changes the run (`quickstart_lam0.0001`)."""
    changes = [f"{k.split('.')[-1]}{v}" for k, v in items if k not in PLACEMENT_KEYS]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join([stem, *changes]))


def override_items(overrides, file: Path) -> list[tuple[str, object]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    items = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"{file}: override '{item}' is not key=value")
        try:
            items.append((key.strip(), parse_value(value)))
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ParamsError(f"{file}: override '{item}': {problem}") from None
    return items


def set_dotted(raw: dict, key: str, value, file: Path) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{file}: override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def build(cls, data, prefix: str):
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "(top level)"
        raise KeyProblem(where, f"expected a mapping, got {describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise KeyProblem(dotted, f"unknown key{hint}; known keys: {', '.join(names)}")
        kwargs[key] = convert(hints[key], value, dotted)
    obj = cls(**kwargs)
    obj.check(prefix.rstrip("."))
    return obj


def convert(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key + ".")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise KeyProblem(key, f"must not be null (expected {_name(options)})")
    for option in options:
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise KeyProblem(key, f"must be a finite number, got {describe(value)}")
            return number
        if option is str and isinstance(value, str):
            return value
    raise KeyProblem(key, f"expected {_name(options)}, got {describe(value)}")


def _name(options) -> str:
    return " or ".join(o.__name__ for o in options if o is not type(None))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 40


def describe(value) -> str:
    """The type and a bounded repr of `value` (never expands a huge or deeply nested value)."""
    return f"{type(value).__name__} {_REPR.repr(value)}"
