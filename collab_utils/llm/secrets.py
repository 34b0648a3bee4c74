"""Which API key the openai backend may send, and where.

The key is read from `api_key_env` only when the variable's name looks like an API key
(`*_API_KEY`, `*_API_TOKEN`) or is listed in the user's own `COLLAB_UTILS_KEY_ENVS`, so a shared
params file cannot name any variable of a student's environment; it goes only to https or
loopback URLs, and text quoting it is redacted.
"""

from __future__ import annotations

import os
import re
import warnings
from urllib.parse import urlsplit

from .servers import is_loopback

KEY_ENVS_VARIABLE = "COLLAB_UTILS_KEY_ENVS"  # the user's own list of other allowed variables
_KEY_NAME = re.compile(r"(?:[A-Z][A-Z0-9_]*_)?API_(?:KEY|TOKEN)")
_announced: set[tuple[str, str]] = set()


def key_env_allowed(name: str) -> bool:
    """Whether `api_key_env` may be read: an API-key-like name or one the user allowed."""
    allowed = {n.strip() for n in os.environ.get(KEY_ENVS_VARIABLE, "").split(",") if n.strip()}
    return name in allowed or bool(_KEY_NAME.fullmatch(name))


def may_receive(url: str) -> bool:
    """Whether a key may go to `url`: https, or a loopback address."""
    return urlsplit(url).scheme == "https" or is_loopback(url)


def api_key(name: str) -> str | None:
    """The key in variable `name`, if that variable may be read (else a ValueError)."""
    if not key_env_allowed(name):
        raise ValueError(
            f"api_key_env {name!r} does not look like an API key variable "
            f"(NAME_API_KEY or NAME_API_TOKEN): its value is not sent. To send it anyway, "
            f"add it to {KEY_ENVS_VARIABLE} in your own environment."
        )
    return os.environ.get(name) or None


def redact(name: str, text: str) -> str:
    """`text` with the key of variable `name` replaced by [secret]."""
    key = os.environ.get(name)
    return text.replace(key, "[secret]") if key and len(key) >= 4 else text


def auth_hint(name: str, sent: bool, status: int) -> str:
    """Why a 401/403 may have happened: the key was not sent, or not set."""
    if status not in (401, 403):
        return ""
    if os.environ.get(name) and not sent:
        return f" (${name} was not sent: plain HTTP to a host that is not loopback)"
    if not os.environ.get(name):
        return f" (${name} is not set)"
    return ""


def announce(name: str, url: str) -> None:
    """Warn once per (variable, host) that a key goes to a host that is not loopback."""
    host = urlsplit(url).hostname or url
    if is_loopback(url) or (name, host) in _announced:
        return
    _announced.add((name, host))
    warnings.warn(f"sending ${name} to {host}", stacklevel=3)
