"""The `openai` backend: any OpenAI-compatible `/chat/completions` server (vLLM, llama.cpp,
Ollama, hosted APIs), one or many of them.

- `base_url` may list many servers (replicas of one model): each request goes to the one with
  the fewest outstanding requests, at most `concurrency` per server; a server that refuses
  connections, drops them or misses the deadline leaves the rotation for a while and its
  requests are retried on the others (`servers.ServerPool`). When none is left the batch stops
  with `ServersUnavailable`, naming every URL; what finished is already in the cache.
- Server replies are untrusted: bad JSON, an HTML page, no choices, an `error` object, no
  message, `content: null`, a judge reply without logprobs or a reply over the size cap is a
  `ServerReplyError`, retried when it may pass, never cached. `Retry-After` is honoured. Each
  request has one deadline, `timeout_s`, from connecting to the last byte.
- The cache fingerprint holds what the servers report about their weights (`/v1/models`: id,
  root, parent, owner, llama.cpp's `meta`), never per-replica details, so replicas share entries
  and servers with other weights under the same name do not.
- LoRA adapters: `adapter` (a local folder) is served by the server's LoRA support (vLLM:
  `--enable-lora`, loaded through `/v1/load_lora_adapter`, or found among `--lora-modules` by
  its path); `adapter_name` names one the server already serves. `adapter_backend` falls back
  to the `hf` backend when no server can serve the adapter.
- Secrets: the key is read from `api_key_env` only when the variable's name looks like an API
  key (`*_API_KEY`, `*_API_TOKEN`) or is listed in the user's own `COLLAB_UTILS_KEY_ENVS`, and
  it is sent only to https or loopback URLs; it never appears in messages (replies quoting it
  are redacted), params or the cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import random
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..cache import Entry, GenerationCache
from ..config import ModelSpec
from . import lora, replies, secrets
from .base import Backend, BackendError
from .lora import adapter_backend
from .servers import (
    LoRANotServed,
    ServerPool,
    ServerReplyError,
    ServersUnavailable,
    parse_retry_after,
    server_urls,
)

__all__ = [
    "LoRANotServed",
    "OpenAIBackend",
    "ServerReplyError",
    "ServersUnavailable",
    "adapter_backend",
]

REPLY_BYTES = 256 * 1024  # + REPLY_BYTES_PER_TOKEN per requested token
REPLY_BYTES_PER_TOKEN = 1024
TEXT_CHARS = 1024  # + TEXT_CHARS_PER_TOKEN per requested token: the completion-size cap
TEXT_CHARS_PER_TOKEN = 128


@dataclasses.dataclass
class _Shared:
    identity: dict | None = None  # what the servers report about the weights
    prepared: set = dataclasses.field(default_factory=set)  # servers identified (and loaded)
    served: dict = dataclasses.field(default_factory=dict)  # server -> name of a found LoRA


class _Down(Exception):
    """Refused, dropped or past the deadline: the server leaves the rotation for a while."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Excluded(Exception):
    """This server is out for good (other weights, or it cannot serve the adapter)."""


class OpenAIBackend(Backend):
    """OpenAI-compatible `/chat/completions` servers, many requests in flight at once."""

    name = "openai"

    def __init__(self, spec: ModelSpec, cache: GenerationCache | None):
        self._shared = _Shared()  # with this backend's role twins (same servers and model)
        super().__init__(spec, cache)
        self.urls = server_urls(spec.base_url)
        self.pool = ServerPool(self.urls, spec.concurrency)
        self.retries = 0  # attempts repeated (on this or another server), over the backend's life
        self._key_urls = {url for url in self.urls if secrets.may_receive(url)}
        if self._secret() is not None:  # raises for a variable that is not an API key
            for url in self.urls:
                if url not in self._key_urls:
                    warnings.warn(
                        f"${spec.api_key_env} is not sent to {url}: plain HTTP to a host that "
                        "is not loopback (use https)",
                        stacklevel=3,
                    )
        if spec.adapter and not (Path(spec.adapter) / "adapter_config.json").is_file():
            raise ValueError(f"adapter {spec.adapter}: not a LoRA adapter folder")
        self.served_model = spec.adapter_name or (
            f"collab-lora-{lora.folder_hash(spec.adapter)}" if spec.adapter else spec.model
        )
        self._locks: dict[int, asyncio.Lock] = {}

    # ------------------------------------------------------------------ identity

    @property
    def fingerprint(self) -> str:
        """Backend, model and adapter, plus what the servers report about their weights."""
        if self._shared.identity is None:
            self.prepare()
        digest = hashlib.sha256(
            json.dumps(self._shared.identity, sort_keys=True).encode()
        ).hexdigest()[:16]
        return f"{self._local_fingerprint}:served@{digest}"

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:
        self._local_fingerprint = value

    def prepare(self) -> None:
        """Ask the servers what they serve (and load the adapter on them) once; fixes the cache
        fingerprint. Raises ServersUnavailable when none answers, LoRANotServed when none can
        serve the adapter."""
        if self._shared.identity is None:
            _run_coroutine(self._prepare_all())

    def server_stats(self) -> dict[str, dict]:
        """Per server URL: attempts sent, replies used, failures, peak and mean in flight."""
        return self.pool.stats()

    def reset_server_stats(self) -> None:
        self.pool.reset_stats()

    # ------------------------------------------------------------------ generation

    def _generate(self, conversations, params, seeds, desc):
        entries: dict[int, Entry] = {}
        self._generate_each(conversations, params, seeds, desc, entries.update)
        return [entries[i] for i in range(len(conversations))]

    def _generate_each(self, conversations, params, seeds, desc, store):
        bodies = [self._body(c, params, s) for c, s in zip(conversations, seeds)]
        cap = TEXT_CHARS + TEXT_CHARS_PER_TOKEN * params["max_new_tokens"]

        def parse(url: str, data: bytes) -> Entry:
            choice, usage = replies.parse_completion(url, data, self._redact)
            text = replies.content(url, choice, cap)
            return Entry(text.strip(), *usage)

        _run_coroutine(self._run_batch(bodies, params["max_new_tokens"], desc, store, parse))

    def _rate_each(self, conversations, store):
        """One-token completions with top_logprobs (vLLM, llama.cpp and OpenAI support them)."""
        params = {"max_new_tokens": 1, "temperature": 0.0, "top_p": 1.0, "top_logprobs": 20}
        bodies = [self._body(c, params, 0) for c in conversations]

        def parse(url: str, data: bytes) -> list[float] | None:
            choice, _ = replies.parse_completion(url, data, self._redact)
            return replies.digit_probabilities(url, choice)

        _run_coroutine(self._run_batch(bodies, 1, None, store, parse))

    def _body(self, messages, params, seed) -> dict:
        body = {
            "model": self.served_model,
            "messages": messages,
            "max_tokens": params["max_new_tokens"],
            "temperature": params["temperature"],
            "top_p": params["top_p"],
            "seed": seed,
        }
        if "top_logprobs" in params:
            body.update(logprobs=True, top_logprobs=params["top_logprobs"])
        return body

    async def _run_batch(self, bodies, max_tokens, desc, store, parse):
        """Every request to completion (finished ones stored at once); then the first error."""
        self.pool.begin_batch(self.spec.max_retries, self.spec.concurrency)
        self._locks = {s.index: asyncio.Lock() for s in self.pool.servers}
        cap = REPLY_BYTES + REPLY_BYTES_PER_TOKEN * max_tokens
        bar = tqdm(total=len(bodies), desc=desc, disable=desc is None, leave=False)
        async with self._client() as client:

            async def one(position, body):
                result = await self._request(client, body, cap, parse)
                store({position: result})
                bar.update(1)

            outcomes = await asyncio.gather(
                *(one(i, b) for i, b in enumerate(bodies)), return_exceptions=True
            )
        bar.close()
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            down = [e for e in errors if isinstance(e, ServersUnavailable)]
            raise (down or errors)[0]

    async def _request(self, client, body, cap, parse):
        attempts, avoid, delay, last = 0, None, 0.0, ""
        while True:
            if delay:
                await asyncio.sleep(delay)
                delay = 0.0
            server, epoch = await self.pool.acquire(avoid)
            ok, error, retry = False, "", None
            try:
                if server.index not in self._shared.prepared:
                    await self._prepare_one(client, server)
                model = self._shared.served.get(server.index, self.served_model)
                status, headers, data = await self._exchange(
                    client, server, "POST", "/chat/completions", {**body, "model": model}, cap
                )
                if status == 200:
                    result = parse(server.url, data)
                    ok = True
                    return result
                snippet = self._snippet(data)
                if status in (408, 429) or status >= 500:
                    after = parse_retry_after(headers.get("retry-after"))
                    raise _Transient(f"HTTP {status}: {snippet}", after)
                raise BackendError(
                    f"{server.url}: HTTP {status} (not retried): {snippet}"
                    + self._auth_hint(server.url, status)
                )
            except _Down as exc:
                error = str(exc)
                self.pool.mark_down(server, epoch, error)
                self._shared.prepared.discard(server.index)  # identify it again when it is back
            except _Excluded as exc:
                error = str(exc)
            except ServerReplyError as exc:
                error = str(exc)
                if not exc.transient:
                    raise
                retry = _Transient(str(exc))
            except _Transient as exc:
                error = f"{exc} (from {server.url})"
                retry = exc
            except BackendError as exc:
                error = str(exc)
                raise
            finally:
                self.pool.release(server, ok=ok, error=error)
            self.retries += 1
            avoid = server
            if retry is None:  # the server is down or out: others take the request at once
                continue
            attempts += 1
            last = error
            if attempts > self.spec.max_retries:
                self.retries -= 1
                raise BackendError(
                    f"{', '.join(self.urls)}: gave up after {attempts} attempts; last error: {last}"
                )
            if retry.retry_after is not None:
                self.pool.pause(server, retry.retry_after)
            elif not self.pool.other_usable(server):
                delay = min(30.0, 0.5 * 2 ** (attempts - 1)) * (1 + random.random())

    # ------------------------------------------------------------------ servers

    def _client(self):
        import httpx

        n = len(self.urls)
        limits = httpx.Limits(max_connections=n * self.spec.concurrency + n)
        return httpx.AsyncClient(timeout=self.spec.timeout_s, limits=limits, follow_redirects=False)

    async def _exchange(self, client, server, method, path, body, cap):
        """(status, headers, body bytes) of one request, within one deadline and the size cap."""
        import httpx

        headers = {"Accept-Encoding": "identity"}
        key = self._secret()
        if key is not None and server.url in self._key_urls:
            headers["Authorization"] = f"Bearer {key}"
            self._announce(server.url)
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                request = client.build_request(
                    method, server.url + path, json=body, headers=headers
                )
                response = await client.send(request, stream=True)
                try:
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > cap:
                            raise ServerReplyError(
                                server.url,
                                f"reply over the size cap ({cap} bytes)",
                                transient=False,
                            )
                finally:
                    await response.aclose()
                return response.status_code, response.headers, bytes(data)
        except TimeoutError:
            raise _Down(
                f"no complete reply within timeout_s={self.spec.timeout_s:g} s ({server.url})"
            ) from None
        except httpx.HTTPError as exc:  # connect, read, protocol, decoding errors
            raise _Down(f"{type(exc).__name__}: {self._redact(str(exc))} ({server.url})") from None

    async def _prepare_all(self):
        """Identify the servers; the first in list order that answers sets the identity."""
        self.pool.begin_batch(self.spec.max_retries, self.spec.concurrency)
        self._locks = {s.index: asyncio.Lock() for s in self.pool.servers}
        async with self._client() as client:
            while self._shared.identity is None:
                verdict = self.pool.verdict()
                if verdict is not None:
                    if all(s.excluded.startswith("LoRA") for s in self.pool.servers):
                        raise LoRANotServed(str(verdict))
                    raise verdict
                now = time.monotonic()
                live = [s for s in self.pool.servers if not s.excluded]
                ready = [s for s in live if s.down_until <= now]
                if not ready:
                    await asyncio.sleep(min(s.down_until for s in live) - now)
                    continue
                tasks = [asyncio.create_task(self._identify_or_mark(client, s)) for s in ready]
                try:
                    for server, task in zip(ready, tasks):
                        try:
                            identity = await task
                        except (_Down, _Excluded):
                            continue
                        self._accept(server, identity)
                        break
                    for server, task in zip(ready, tasks):  # the others that already answered
                        done = task.done() and not task.cancelled() and not task.exception()
                        if done and server.index not in self._shared.prepared:
                            with contextlib.suppress(_Excluded):
                                self._accept(server, task.result())
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _prepare_one(self, client, server):
        """Identify `server` (and load the adapter there) before its first request."""
        async with self._locks[server.index]:
            if server.index not in self._shared.prepared:
                self._accept(server, await self._identify_or_mark(client, server))

    async def _identify_or_mark(self, client, server) -> dict:
        epoch = server.epoch
        try:
            return await self._identify(client, server)
        except _Down as exc:
            self.pool.mark_down(server, epoch, str(exc))
            raise
        except LoRANotServed as exc:
            self.pool.exclude(server, f"LoRA adapter not served: {exc}")
            raise _Excluded(str(exc)) from None

    def _accept(self, server, identity: dict) -> None:
        """The first identity is the pool's; a server reporting other weights leaves it."""
        shared = self._shared
        if shared.identity is None:
            shared.identity = identity
        elif identity != shared.identity:
            reason = f"serves other weights ({identity} instead of {shared.identity})"
            self.pool.exclude(server, reason)
            warnings.warn(f"{server.url} left the pool: {reason}", stacklevel=3)
            raise _Excluded(reason)
        shared.prepared.add(server.index)

    async def _identify(self, client, server) -> dict:
        status, _, data = await self._exchange(client, server, "GET", "/models", None, 4 << 20)
        if status in (401, 403):
            raise BackendError(
                f"{server.url}/models: HTTP {status}: {self._snippet(data)}"
                + self._auth_hint(server.url, status)
            )
        if status in (408, 429) or (status >= 500 and status != 501):
            raise _Down(f"HTTP {status} from /models ({server.url})")
        cards = replies.model_cards(data) if status == 200 else None
        identity = {"model": replies.card_identity(cards, self.spec.model)}
        if self.spec.adapter or self.spec.adapter_name:
            identity["adapter"] = await lora.serve_adapter(self, client, server, cards)
        return identity

    # ------------------------------------------------------------------ secrets

    def _secret(self) -> str | None:
        return secrets.api_key(self.spec.api_key_env)

    def _redact(self, text: str) -> str:
        return secrets.redact(self.spec.api_key_env, text)

    def _snippet(self, data: bytes) -> str:
        text = " ".join(data[:600].decode("utf-8", "replace").split())
        text = self._redact(text)
        return (text[:200] + "…") if len(text) > 200 else (text or "(empty)")

    def _auth_hint(self, url: str, status: int) -> str:
        return secrets.auth_hint(self.spec.api_key_env, url in self._key_urls, status)

    def _announce(self, url: str) -> None:
        secrets.announce(self.spec.api_key_env, url)


def _run_coroutine(coroutine):
    """asyncio.run, also from inside a running loop (Jupyter) through a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
