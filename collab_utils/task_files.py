"""Reading untrusted task files: records with their place in the file, typed fields.

Every problem raises `TaskFormatError` naming the file, the line (or record) and the field: bytes
that are not UTF-8, a corrupt .gz, a binary or empty file, a line over `MAX_LINE_BYTES`, invalid
JSON or CSV, a missing field or one of the wrong type.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_LINE_BYTES",
    "TaskFormatError",
    "records",
    "text_field",
    "typed_field",
]

MAX_LINE_BYTES = 1 << 20  # one jsonl/csv line
MAX_JSON_BYTES = 128 << 20  # one whole .json file
_GZIP_MAGIC = b"\x1f\x8b"


class TaskFormatError(ValueError):
    """A record that does not fit its format; the message names file, line/record and field."""

    def __init__(self, path, where: str, field_name: str, problem: str):
        super().__init__(f"{path}: {where}: field {field_name!r}: {problem}")


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) pairs from jsonl(.gz) lines, a json list/`data` list, or a csv."""
    _check_file(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        yield from _csv_records(path)
    elif name.endswith(".json"):
        yield from _json_records(path)
    else:
        yield from _jsonl_records(path)


def text_field(record: dict, name: str, path: Path, where: str, *, required: bool = True):
    """`record[name]` as a non-empty string; None when absent or blank and not `required`."""
    if record.get(name) is None:
        if required:
            raise TaskFormatError(path, where, name, "missing")
        return None
    value = record[name]
    if not isinstance(value, str):
        raise TaskFormatError(path, where, name, f"expected a string, got {_type(value)}")
    if not value.strip():
        if required:
            raise TaskFormatError(path, where, name, "empty")
        return None
    return value


def typed_field(record: dict, name: str, kind: type, path: Path, where: str, default=None):
    """`record[name]` checked to be of `kind` (dict or list); `default` when absent."""
    value = record.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "a list"}[kind]
        raise TaskFormatError(path, where, name, f"expected {expected}, got {_type(value)}")
    return value


def _type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; name a task file inside it")
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if not head:
        raise TaskFormatError(path, "file", "<records>", "the file is empty")
    if not head.startswith(_GZIP_MAGIC) and b"\0" in head:
        raise TaskFormatError(path, "file", "<records>", "a binary file, not a task file")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered byte lines (gzip by magic number), each at most MAX_LINE_BYTES."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            while line := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    problem = f"line longer than {MAX_LINE_BYTES} bytes"
                    raise TaskFormatError(path, f"line {number}", "<line>", problem)
                yield number, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise TaskFormatError(
            path, f"line {number + 1}", "<gzip>", f"corrupt gzip: {exc}"
        ) from None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
        raise TaskFormatError(path, f"line {number}", "<encoding>", problem) from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    for number, raw in _raw_lines(path):
        yield number, _decode(raw, path, number)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    found = False
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFormatError(path, f"line {number}", "<json>", exc.msg) from None
        if not isinstance(record, dict):
            raise TaskFormatError(path, f"line {number}", "<record>", "not a JSON object")
        found = True
        yield f"line {number}", record
    if not found:
        raise TaskFormatError(path, "file", "<records>", "no records (blank lines only)")


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    chunks, size = [], 0
    for number, raw in _raw_lines(path):
        size += len(raw)
        if size > MAX_JSON_BYTES:
            problem = f"a .json file over {MAX_JSON_BYTES} bytes; use jsonl"
            raise TaskFormatError(path, f"line {number}", "<file>", problem)
        chunks.append(_decode(raw, path, number))
    try:
        data = json.loads("".join(chunks))
    except json.JSONDecodeError as exc:
        raise TaskFormatError(path, f"line {exc.lineno}", "<json>", exc.msg) from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise TaskFormatError(path, "top level", "data", "expected a list of records")
    if not data:
        raise TaskFormatError(path, "top level", "data", "no records (an empty list)")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise TaskFormatError(path, f"record {index}", "<record>", "not an object")
        yield f"record {index}", record


def _csv_records(path: Path) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(line for _number, line in _text_lines(path))
    found, start = False, 1
    try:
        reader.fieldnames  # noqa: B018 (reads the header)
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            found = True
            yield f"line {start}", row
    except csv.Error as exc:
        raise TaskFormatError(path, f"line {start}", "<csv>", str(exc)) from None
    if not found:
        raise TaskFormatError(path, "file", "<records>", "no records (a header only)")
