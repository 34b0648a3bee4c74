"""Plain data across the sandbox boundary: a tagged JSON form of builtin values, and a channel.

Only exact builtin values (and dates and times) are written; an instance of a subclass of a
plain type is written as an exact copy made by the base type's own code, so no method the
solution defined runs when the other side reads it. `decode` builds new builtin objects and
refuses anything `encode` does not write.
"""

from __future__ import annotations

import datetime
import json
import os

MESSAGE_LIMIT = 32 * 1024 * 1024
EXACT_INT_LIMIT = 2**53


class Unencodable(TypeError):
    """A value that is not plain data and so cannot cross the sandbox boundary."""


def _plain_base(value):
    """Exact plain copy of an instance of a subclass of a plain type (via the base's own code)."""
    for base in type(value).__mro__[1:]:
        copy = _BASE_COPIES.get(base)
        if copy is not None:
            return copy(value)
    raise Unencodable(f"{type(value).__module__}.{type(value).__qualname__}")


_BASE_COPIES = {
    int: int.__int__,
    float: float.__float__,
    complex: complex.__complex__,
    str: str.__str__,
    bytes: bytes.__bytes__,
    bytearray: lambda v: bytearray(memoryview(v)),
    list: lambda v: list(list.__iter__(v)),
    tuple: lambda v: tuple(tuple.__iter__(v)),
    dict: lambda v: dict(dict.items(v)),
    set: lambda v: set(set.__iter__(v)),
    frozenset: lambda v: frozenset(frozenset.__iter__(v)),
    datetime.datetime: lambda v: datetime.datetime.fromisoformat(datetime.datetime.isoformat(v)),
    datetime.date: lambda v: datetime.date.fromisoformat(datetime.date.isoformat(v)),
}


def encode(value):
    """JSON-ready form of a plain value: scalars as themselves, everything else a tagged list."""
    kind = type(value)
    if value is None or kind in (bool, str, float):
        return value
    if kind is int:
        return value if -EXACT_INT_LIMIT < value < EXACT_INT_LIMIT else ["i", hex(value)]
    if kind in (list, tuple, set, frozenset):
        return [_TAGS[kind], *map(encode, value)]
    if kind is dict:
        return ["d", *(encode(item) for pair in value.items() for item in pair)]
    if kind is bytes or kind is bytearray:
        return [_TAGS[kind], value.hex()]
    if kind is complex:
        return ["c", value.real, value.imag]
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return [_TAGS[kind], value.isoformat()]
    if kind is datetime.timedelta:
        return ["td", value.days, value.seconds, value.microseconds]
    return encode(_plain_base(value))


_TAGS = {
    list: "l",
    tuple: "t",
    set: "s",
    frozenset: "f",
    bytes: "b",
    bytearray: "ba",
    datetime.datetime: "dt",
    datetime.date: "date",
    datetime.time: "time",
}
NATIVE = frozenset({type(None), bool, int, float, complex, str, dict, datetime.timedelta, *_TAGS})
_SEQUENCES = {"l": list, "t": tuple, "s": set, "f": frozenset}
_FROM_TEXT = {
    "b": bytes.fromhex,
    "ba": bytearray.fromhex,
    "dt": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "i": lambda text: int(text, 16),
}


def decode(node):
    """New builtin values from `encode`'s output; anything else raises ValueError."""
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is not list or not node or type(node[0]) is not str:
        raise ValueError("not a value the sandbox writes")
    tag, items = node[0], node[1:]
    if tag in _SEQUENCES:
        return _SEQUENCES[tag](map(decode, items))
    if tag == "d" and len(items) % 2 == 0:
        values = [decode(item) for item in items]
        return dict(zip(values[0::2], values[1::2]))
    if tag in _FROM_TEXT and len(items) == 1 and type(items[0]) is str:
        return _FROM_TEXT[tag](items[0])
    if tag == "c" and len(items) == 2 and all(type(i) in (int, float) for i in items):
        return complex(*items)
    if tag == "td" and len(items) == 3 and all(type(i) is int for i in items):
        return datetime.timedelta(days=items[0], seconds=items[1], microseconds=items[2])
    raise ValueError(f"unknown tag {tag!r}")


class Channel:
    """One JSON message per line over a pair of pipes; `pending` holds bytes not yet asked for."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.pending = bytearray()

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        if len(data) > MESSAGE_LIMIT:
            raise OverflowError("message over the size limit")
        while data:
            data = data[os.write(self.write_fd, data) :]

    def receive(self) -> dict:
        searched = 0
        while (end := self.pending.find(b"\n", searched)) < 0:
            if len(self.pending) > MESSAGE_LIMIT:
                raise ValueError("message over the size limit")
            searched = len(self.pending)
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise EOFError("the other side closed the channel")
            self.pending += chunk
        line, self.pending = bytes(self.pending[:end]), self.pending[end + 1 :]
        message = json.loads(line)
        if type(message) is not dict:
            raise ValueError("not a message")
        return message
