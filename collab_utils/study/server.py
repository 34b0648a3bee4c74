"""A study assembled from a params file, and uvicorn serving it.

    study = open_study(config.load("params/quickstart.yaml"))
    with running(study.app()) as url:          # a real server on a free loopback port
        ...
    serve(study, port=8000)                    # blocks; Ctrl-C stops it

The database defaults to `<run>/study/study.sqlite`; the systems are the run's (see
`systems.build_systems`); the tasks are the built-in doc tasks unless another source is given.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import tasks as task_sources
from ..cache import GenerationCache
from .app import Settings, create_app
from .store import Store
from .systems import Replies, build_systems

TOKEN_ENV = "COLLAB_STUDY_ADMIN_TOKEN"
PLACEHOLDER_CONSENT = """\
PLACEHOLDER consent text: the researcher running this study must replace it with the text \
their ethics board approved (python -m collab_utils study PARAMS.yaml --consent consent.txt).

You are invited to a research study on writing with an AI assistant. You will get a writing \
task and chat with an assistant until you are happy with the document, rating each reply and \
the final document from 1 to 10. It takes about 15 minutes.

We store your messages, your ratings and the time you spend, under a random session id; \
nothing else about you. You may stop at any time without giving a reason."""


def study_folder(params) -> Path:
    return Path(params.run_dir) / "study"


@dataclass
class Study:
    params: object
    store: Store
    replies: Replies
    tasks: dict
    settings: Settings

    def app(self):
        return create_app(self.store, self.replies, self.tasks, self.settings)

    def close(self) -> None:
        self.replies.close()
        self.store.close()


def open_study(
    params,
    *,
    db: str | Path | None = None,
    task_source: str = "builtin:doc",
    systems: list[str] | None = None,
    adapters: dict[str, str] | None = None,
    consent: str | None = None,
    admin_token: str | None = None,
    max_turns: int = 20,
    batch_wait_s: float = 0.05,
) -> Study:
    """Load the systems and tasks, open (or create) the database, register the systems."""
    loaded = task_sources.load(task_source)
    if not loaded:
        raise ValueError(f"task source {task_source!r} holds no tasks")
    cache = GenerationCache(params.cache_file)
    built = build_systems(params, systems, adapters, cache)
    store = Store(db or study_folder(params) / "study.sqlite")
    store.register_systems({s.name: (s.fingerprint, s.detail()) for s in built.values()})
    sampling = {
        "max_new_tokens": params.generation.max_new_tokens,
        "temperature": params.generation.temperature,
        "top_p": params.generation.top_p,
    }
    batch = max(s.backend.spec.batch_size for s in built.values())
    replies = Replies(
        store, built, seed=params.seed, sampling=sampling, wait_s=batch_wait_s, max_batch=batch
    )
    settings = Settings(
        admin_token=admin_token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24),
        consent=consent or PLACEHOLDER_CONSENT,
        max_turns=max_turns,
    )
    return Study(params, store, replies, {t.id: t for t in loaded}, settings)


def _uvicorn_server(app, host: str, port: int):
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    return uvicorn.Server(config)


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0):
    """Serve `app` from a background thread; yields its base URL; stops it on exit."""
    server = _uvicorn_server(app, host, port)
    thread = threading.Thread(target=server.run, name="study-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the study server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def serve(study: Study, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the study until interrupted, printing the participant and admin links."""
    print(f"study database: {study.store.path}")
    print(f"systems: {', '.join(study.replies.systems)}  |  tasks: {len(study.tasks)}")
    print(f"participants: http://{host}:{port}/   (add ?pid=ID to pass a crowd-worker id)")
    print(f"admin:        http://{host}:{port}/admin#token={study.settings.admin_token}")
    _uvicorn_server(study.app(), host, port).run()
