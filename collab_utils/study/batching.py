"""Generation requests from many participants, gathered into batched `backend.chat` calls.

    queue = dispatcher(backend, sampling, wait_s=0.05, max_batch=16)
    queue.submit(conversation, seed, done, tag)  # done(generation, error) runs when answered

On the `hf` backend a worker thread takes the first waiting request, waits `wait_s` for others
(up to `max_batch`) and answers all of them with one `chat` call: one forward pass serves
every participant typing at that moment. An `openai` backend batches on its server, so each
request goes straight through, `spec.concurrency` at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

Done = Callable[[object, Exception | None], None]


@dataclass
class Request:
    conversation: list[dict]
    seed: int
    done: Done
    tag: str = ""  # who asked (a session id), for the batch log


class BatchQueue:
    """One worker thread per loaded model: gather for `wait_s`, then one batched call."""

    def __init__(self, backend, sampling: dict, *, wait_s: float, max_batch: int, on_batch=None):
        self.backend, self.sampling = backend, sampling
        self.wait_s, self.max_batch = wait_s, max_batch
        self.on_batch = on_batch  # called with the batch's tags before each model call
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="study-batch", daemon=True)
        self._worker.start()

    def submit(self, conversation: list[dict], seed: int, done: Done, tag: str = "") -> None:
        self._queue.put(Request(conversation, seed, done, tag))

    def _gather(self, first: Request) -> list[Request]:
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:  # after the deadline, still take what is already waiting
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # close(): answer this batch, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._gather(first)
            if self.on_batch is not None:
                self.on_batch([r.tag for r in batch])
            try:
                generations = self.backend.chat(
                    [r.conversation for r in batch], seed=[r.seed for r in batch], **self.sampling
                )
            except Exception as exc:  # each waiting participant hears about it
                for request in batch:
                    request.done(None, exc)
                continue
            for request, generation in zip(batch, generations, strict=True):
                request.done(generation, None)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=60)


class Direct:
    """Each request straight to the backend (an OpenAI-compatible server batches by itself)."""

    def __init__(self, backend, sampling: dict, *, concurrency: int):
        self.backend, self.sampling = backend, sampling
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="study-direct")

    def submit(self, conversation: list[dict], seed: int, done: Done, tag: str = "") -> None:
        self._pool.submit(self._one, Request(conversation, seed, done, tag))

    def _one(self, request: Request) -> None:
        try:
            generation = self.backend.chat(
                [request.conversation], seed=[request.seed], **self.sampling
            )[0]
        except Exception as exc:
            request.done(None, exc)
            return
        request.done(generation, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def dispatcher(backend, sampling: dict, *, wait_s: float, max_batch: int, on_batch=None):
    """A `BatchQueue` for local models, `Direct` for an OpenAI-compatible server."""
    if backend.spec.backend == "openai":
        return Direct(backend, sampling, concurrency=backend.spec.concurrency)
    return BatchQueue(backend, sampling, wait_s=wait_s, max_batch=max_batch, on_batch=on_batch)
