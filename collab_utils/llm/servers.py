"""A pool of OpenAI-compatible servers: least-loaded choice, failover, Retry-After, verdicts.

The `openai` backend sends each request to the server with the fewest outstanding requests
(at most `concurrency` each). A server that refuses connections, drops them or misses the
deadline leaves the rotation for a cool-down that doubles with each failure in a row (0.5 s up
to 30 s); after it, one probe request at a time tests it again. A `Retry-After` answer pauses
that server for the time it asks (at most `RETRY_AFTER_MAX_S`). When every server has failed
more than `max_retries` times in a row within one batch, or was excluded (other weights, an
adapter it cannot serve), the batch stops with `ServersUnavailable`, naming every URL and why.

All state changes happen on one asyncio loop per batch (`begin_batch`); the counters survive
across batches so `stats()` reports the backend's whole life until `reset_stats()`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .base import BackendError

COOLDOWN_BASE_S = 0.5
COOLDOWN_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0


class ServerReplyError(BackendError):
    """A reply the backend cannot use (not JSON, no choices, an error object, no content, no
    logprobs, too large). Never cached; `transient` ones are retried."""

    def __init__(self, url: str, message: str, *, transient: bool = True):
        super().__init__(f"{url}: {message}")
        self.url, self.transient = url, transient


class ServersUnavailable(BackendError):
    """Every server of the pool is down or excluded; the message names each one."""

    def __init__(self, message: str, urls: list[str]):
        super().__init__(message)
        self.urls = urls


class LoRANotServed(BackendError):
    """The inference server cannot serve the requested LoRA adapter."""


@dataclass
class Server:
    url: str
    concurrency: int
    index: int
    in_flight: int = 0
    sent: int = 0  # attempts started here
    ok: int = 0  # replies used
    failed: int = 0  # attempts that failed
    strikes: int = 0  # down-type failures in a row (connect, drop, deadline)
    batch_strikes: int = 0  # the same, within the current batch
    epoch: int = 0  # bumped each time the server is marked down
    down_until: float = 0.0
    paused_until: float = 0.0  # Retry-After
    last_error: str = ""
    excluded: str = ""  # why this server never gets requests again ("" = usable)
    peak_in_flight: int = 0
    busy_area: float = 0.0  # ∫ in_flight dt, for the mean number in flight
    busy_since: float = field(default_factory=time.monotonic)

    def capacity(self) -> int:
        return 1 if self.strikes else self.concurrency  # one probe at a time after a failure

    def usable(self, now: float) -> bool:
        return (
            not self.excluded
            and self.down_until <= now
            and self.paused_until <= now
            and self.in_flight < self.capacity()
        )

    def _account(self, now: float) -> None:
        self.busy_area += self.in_flight * (now - self.busy_since)
        self.busy_since = now


class ServerPool:
    """The servers of one backend (shared by its role twins)."""

    def __init__(self, urls: list[str], concurrency: int):
        self.servers = [Server(url, concurrency, i) for i, url in enumerate(urls)]
        self.max_retries = 0
        self._changed: asyncio.Event | None = None
        self.stats_since = time.monotonic()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def begin_batch(self, max_retries: int, concurrency: int) -> None:
        """A new batch on the running loop: fresh strike counts; probe at once if none is up."""
        self.max_retries = max_retries
        for server in self.servers:
            server.concurrency = concurrency
        self._changed = asyncio.Event()
        now = time.monotonic()
        for server in self.servers:
            server.batch_strikes = 0
            server.in_flight = 0
            server.busy_since = now
        if not any(s.down_until <= now for s in self.servers if not s.excluded):
            for server in self.servers:
                server.down_until = 0.0

    async def acquire(self, avoid: Server | None = None) -> tuple[Server, int]:
        """The least-loaded usable server (not `avoid` when another is usable) and its epoch;
        waits for a free slot or the end of a cool-down; raises the pool's verdict."""
        while True:
            verdict = self.verdict()
            if verdict is not None:
                raise verdict
            now = time.monotonic()
            usable = [s for s in self.servers if s.usable(now)]
            choices = [s for s in usable if s is not avoid] or usable
            if choices:
                server = min(choices, key=lambda s: (s.in_flight, s.sent, s.index))
                server._account(now)
                server.in_flight += 1
                server.sent += 1
                server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                return server, server.epoch
            wakes = [
                t
                for s in self.servers
                if not s.excluded
                for t in (s.down_until, s.paused_until)
                if t > now
            ]
            timeout = min(wakes) - now if wakes else None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def release(self, server: Server, *, ok: bool, error: str = "") -> None:
        now = time.monotonic()
        server._account(now)
        server.in_flight -= 1
        if ok:
            server.ok += 1
            server.strikes = 0
            server.down_until = 0.0
        else:
            server.failed += 1
            server.last_error = error
        self._changed.set()

    def mark_down(self, server: Server, epoch: int, error: str) -> None:
        """A refused, dropped or timed-out attempt: out of rotation for a cool-down. Attempts
        that were already in flight when the server went down add no strike."""
        server.last_error = error
        if epoch != server.epoch:
            return
        server.epoch += 1
        server.strikes += 1
        server.batch_strikes += 1
        cooldown = min(COOLDOWN_MAX_S, COOLDOWN_BASE_S * 2 ** (server.strikes - 1))
        server.down_until = time.monotonic() + cooldown
        self._changed.set()

    def pause(self, server: Server, seconds: float) -> None:
        """Retry-After: no requests to this server for `seconds` (capped)."""
        seconds = min(max(seconds, 0.0), RETRY_AFTER_MAX_S)
        server.paused_until = max(server.paused_until, time.monotonic() + seconds)
        self._changed.set()

    def exclude(self, server: Server, reason: str) -> None:
        server.excluded = reason
        server.last_error = reason
        self._changed.set()

    def other_usable(self, server: Server) -> bool:
        now = time.monotonic()
        return any(s.usable(now) for s in self.servers if s is not server)

    def verdict(self) -> ServersUnavailable | None:
        """ServersUnavailable when no server is left: each excluded or struck out."""
        gone = [s.excluded or s.batch_strikes > self.max_retries for s in self.servers]
        if not all(gone):
            return None
        return ServersUnavailable(
            f"all {len(self.servers)} servers are unavailable: " + self.describe(),
            self.urls,
        )

    def describe(self) -> str:
        """Every URL with its state and last error."""
        parts = []
        for s in self.servers:
            if s.excluded:
                state = f"excluded: {s.excluded}"
            else:
                state = f"{s.batch_strikes} failures in a row: {s.last_error or 'no error'}"
            parts.append(f"{s.url} ({state})")
        return "; ".join(parts)

    def stats(self) -> dict[str, dict]:
        """Per server: attempts sent, replies used, failures, peak and mean requests in flight
        since the pool was made or `reset_stats()`, and whether it is usable now."""
        now = time.monotonic()
        elapsed = max(now - self.stats_since, 1e-9)
        out = {}
        for s in self.servers:
            s._account(now)
            out[s.url] = {
                "sent": s.sent,
                "ok": s.ok,
                "failed": s.failed,
                "peak_in_flight": s.peak_in_flight,
                "mean_in_flight": round(s.busy_area / elapsed, 3),
                "down": s.down_until > now,
                "excluded": s.excluded or None,
            }
        return out

    def reset_stats(self) -> None:
        self.stats_since = now = time.monotonic()
        for s in self.servers:
            s.sent = s.ok = s.failed = s.peak_in_flight = 0
            s.busy_area, s.busy_since = 0.0, now


# ------------------------------------------------------------------ helpers


def server_urls(base_url: str | list[str]) -> list[str]:
    """`base_url` (one URL or a list) as a list of distinct URLs without a trailing '/'."""
    items = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = []
    for item in items:
        url = str(item).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url {item!r} is not an http(s) URL with a host")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("base_url lists no server")
    return urls


def is_loopback(url: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent or
    unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
