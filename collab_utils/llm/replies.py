"""Reading untrusted server replies: a chat completion's first choice, its usage, the digit
probabilities of a judge reply, and what `/v1/models` says about the weights behind a name.
Anything malformed is a `ServerReplyError` (retried when it may pass, never cached)."""

from __future__ import annotations

import json
import math

from .servers import ServerReplyError

_CARD_FIELDS = ("id", "owned_by", "root", "parent", "meta")  # not created, permission, ...


def parse_completion(url: str, data: bytes, redact) -> tuple[dict, tuple[int, int]]:
    """The first choice of a chat completion and its (prompt, completion) usage."""
    try:
        reply = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        start = data[:200].decode("utf-8", "replace").strip()
        kind = "an HTML page" if start[:1] == "<" else "not JSON"
        raise ServerReplyError(url, f"reply is {kind}: {redact(start[:80])!r}") from None
    if not isinstance(reply, dict):
        raise ServerReplyError(url, f"reply is a JSON {type(reply).__name__}, not an object")
    if reply.get("error") is not None:
        error = reply["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ServerReplyError(url, f"server reported an error: {redact(str(message)[:200])}")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ServerReplyError(url, "reply has no choices")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise ServerReplyError(url, "reply's first choice has no message")
    return choice, usage(reply.get("usage"))


def content(url: str, choice: dict, cap: int) -> str:
    content = choice["message"].get("content")
    if content is None:
        raise ServerReplyError(url, "reply's message content is null")
    if not isinstance(content, str):
        raise ServerReplyError(url, f"reply's content is a {type(content).__name__}")
    if len(content) > cap:
        raise ServerReplyError(
            url, f"completion of {len(content)} characters is over the cap ({cap})", transient=False
        )
    return content


def usage(usage) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the server reports; 0 for anything missing or odd."""
    if not isinstance(usage, dict):
        return 0, 0

    def count(name):
        value = usage.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9
        return value if ok else 0

    return count("prompt_tokens"), count("completion_tokens")


def digit_probabilities(url: str, choice: dict) -> list[float] | None:
    """p(d) for d = 0..9 from the first token's top_logprobs; None when no digit is among
    them. A reply without logprobs is an error (the server cannot judge)."""
    try:
        top = choice["logprobs"]["content"][0]["top_logprobs"]
        items = [(item["token"], float(item["logprob"])) for item in top]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServerReplyError(
            url, "reply has no top_logprobs: this server cannot judge with rate()", transient=False
        ) from None
    probs = [0.0] * 10
    for token, logprob in items:
        if not isinstance(token, str) or not math.isfinite(logprob) or logprob > 1e-3:
            raise ServerReplyError(url, f"bad top_logprobs entry {token!r}: {logprob}")
        token = token.strip()
        if len(token) == 1 and token in "0123456789":
            probs[int(token)] += math.exp(min(logprob, 0.0))
    return probs if any(probs) else None


def model_cards(data: bytes) -> list[dict] | None:
    try:
        listing = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    cards = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(cards, list):
        return None
    return [c for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str)]


def card_identity(cards: list[dict] | None, name: str) -> dict:
    """What a server reports about the weights behind `name` (nothing per replica)."""
    card = next((c for c in cards or [] if c.get("id") == name), None)
    if card is None:
        return {"id": name, "listed": False}
    return {k: _plain(card[k]) for k in _CARD_FIELDS if k in card}


def _plain(value):
    text = json.dumps(value, sort_keys=True, default=str)
    return json.loads(text) if len(text) <= 4096 else text[:4096]
