"""The study's web app (Starlette, an ASGI app served by uvicorn): a plain page and a JSON API.

    GET  /                              the participant's page (static HTML + JS)
    GET  /admin                         the admin page; it asks the API with the admin token
    GET  /api/study                     title, consent text, limits
    POST /api/sessions                  {consent: true, participant?} -> {session, state}
    GET  /api/sessions/{id}             the session's state (messages, ratings, waiting, done)
    POST /api/sessions/{id}/messages    {text, client_id}: a participant message; reply follows
    POST /api/sessions/{id}/ratings     {turn, rating}: 1-10 for an assistant reply
    POST /api/sessions/{id}/finish      {document, rating, comment}: final rating, code back
    POST /api/sessions/{id}/retry       ask again after a failed generation
    POST /api/sessions/{id}/events      {kind}: page opened, hidden or shown again
    GET  /api/admin/summary             progress per system (Authorization: Bearer TOKEN)
    GET  /api/admin/export.zip          every table as parquet (Authorization: Bearer TOKEN)

The state never names the system. Every refusal is `{"error": "..."}` with a message that says
what was wrong; the page shows it as text. Model output is data: the page renders it with
`textContent`, and a Content-Security-Policy allows only the page's own script file.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import tempfile
import zipfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .store import Store
from .systems import Replies

STATIC = Path(__file__).parent / "static"
MAX_BODY = 2 * 2**20
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARTICIPANT_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
PAGE_EVENTS = ("open", "hidden", "visible")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Settings:
    admin_token: str
    consent: str
    title: str = "Co-writing study"
    max_chars: int = 4000  # one message
    max_document_chars: int = 20000
    max_turns: int = 20  # participant messages per session


class Refusal(Exception):
    """A request the study refuses; the message is shown to the participant as it is."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(store: Store, replies: Replies, tasks: dict, settings: Settings) -> Starlette:
    """The ASGI app of one study; `tasks` maps task ids to `Task`s."""
    systems = list(replies.systems)

    def session_or_404(request: Request) -> dict:
        session_id = request.path_params["session_id"]
        session = store.session(session_id) if SESSION_ID.fullmatch(session_id) else None
        if session is None:
            raise Refusal(404, "unknown session id: open the study link again to start")
        return session

    def state(session: dict) -> dict:
        messages = store.messages(session["id"])
        waiting = bool(messages) and messages[-1]["role"] == "user"
        if waiting and not replies.waiting(session["id"]) and session["id"] not in replies.errors:
            replies.schedule(session["id"])  # e.g. the server restarted before the reply
        finished = session["finished_at"] is not None
        task = tasks.get(session["task_id"])
        return {
            "task": task.goal if task else f"(task {session['task_id']} is not served now)",
            "messages": [
                {k: m[k] for k in ("turn", "role", "content", "rating")} for m in messages
            ],
            "waiting": waiting,
            "error": replies.errors.get(session["id"]),
            "turns_left": settings.max_turns - sum(m["role"] == "user" for m in messages),
            "finished": finished,
            "document_rating": session["document_rating"],
            "completion_code": session["completion_code"] if finished else None,
        }

    def check_can_write(session: dict, messages: list[dict]) -> None:
        if session["finished_at"] is not None:
            raise Refusal(409, "this session is finished: your completion code is on the page")
        if messages and messages[-1]["role"] == "user":
            raise Refusal(409, "wait for the assistant's reply before you write again")
        if messages and messages[-1]["rating"] is None:
            raise Refusal(409, "rate the assistant's last reply (1 to 10) first")

    def is_admin(request: Request) -> bool:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return bool(given) and secrets.compare_digest(given.encode(), settings.admin_token.encode())

    def require_admin(request: Request) -> None:
        if not is_admin(request):
            raise Refusal(
                401,
                "the admin view needs the study's admin token (printed when the server "
                "started): open /admin#token=TOKEN",
            )

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def admin_page(request: Request) -> Response:
        return FileResponse(STATIC / "admin.html")

    async def study_info(request: Request) -> Response:
        return JSONResponse(
            {
                "title": settings.title,
                "consent": settings.consent,
                "max_chars": settings.max_chars,
                "max_turns": settings.max_turns,
            }
        )

    async def create_session(request: Request) -> Response:
        body = await read_json(request)
        if body.get("consent") is not True:
            raise Refusal(400, "consent is required to take part: tick the box to agree")
        participant = body.get("participant") or None
        if participant is not None and not (
            isinstance(participant, str) and PARTICIPANT_ID.fullmatch(participant)
        ):
            raise Refusal(400, "participant id: up to 64 letters, digits or . _ @ -")
        simulated = body.get("simulated", False) is True
        if simulated:
            require_admin(request)  # only the study's own simulator marks sessions simulated
        session_id = store.create_session(
            systems, list(tasks), participant=participant, simulated=simulated
        )
        session = store.session(session_id)
        return JSONResponse({"session": session_id, "state": state(session)}, status_code=201)

    async def get_state(request: Request) -> Response:
        return JSONResponse(state(session_or_404(request)))

    async def post_message(request: Request) -> Response:
        session = session_or_404(request)
        body = await read_json(request)
        text, client_id = body.get("text"), body.get("client_id")
        if not isinstance(text, str):
            raise Refusal(400, "the message must be text (field 'text')")
        if not (isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)):
            raise Refusal(400, "field 'client_id': up to 64 letters, digits, '-' or '_'")
        text = text.strip()
        if not text:
            raise Refusal(400, "empty message: write something before you send it")
        if len(text) > settings.max_chars:
            raise Refusal(
                413, f"message too long: {len(text):,} characters; the limit is "
                f"{settings.max_chars:,}"
            )  # fmt: skip
        messages = store.messages(session["id"])
        if store.seen_client_id(session["id"], client_id):
            return JSONResponse(state(session))  # a retried send: stored the first time
        check_can_write(session, messages)
        turns = sum(m["role"] == "user" for m in messages)
        if turns >= settings.max_turns:
            raise Refusal(
                409, f"this session has reached its {settings.max_turns} messages: finish it"
            )
        store.add_user_message(session["id"], turns + 1, text, client_id)
        replies.schedule(session["id"])
        return JSONResponse(state(session), status_code=202)

    async def post_rating(request: Request) -> Response:
        session = session_or_404(request)
        body = await read_json(request)
        if session["finished_at"] is not None:
            raise Refusal(409, "this session is finished: ratings can no longer change")
        turn, rating = body.get("turn"), check_rating(body.get("rating"))
        replied = {m["turn"] for m in store.messages(session["id"]) if m["role"] == "assistant"}
        if not isinstance(turn, int) or isinstance(turn, bool) or turn not in replied:
            raise Refusal(400, f"no assistant reply at turn {turn!r} to rate")
        store.rate(session["id"], turn, rating)
        return JSONResponse(state(session))

    async def finish(request: Request) -> Response:
        session = session_or_404(request)
        body = await read_json(request)
        messages = store.messages(session["id"])
        if not any(m["role"] == "assistant" for m in messages):
            raise Refusal(409, "chat with the assistant before you finish")
        check_can_write(session, messages)
        rating = check_rating(body.get("rating"))
        document, comment = body.get("document"), body.get("comment") or ""
        if not isinstance(document, str) or not document.strip():
            raise Refusal(400, "the final document is empty: paste or write it in the box")
        if len(document) > settings.max_document_chars:
            raise Refusal(
                413, f"document too long: {len(document):,} characters; the limit is "
                f"{settings.max_document_chars:,}"
            )  # fmt: skip
        if not isinstance(comment, str) or len(comment) > settings.max_chars:
            raise Refusal(400, f"the comment must be text of at most {settings.max_chars:,} "
                          "characters")  # fmt: skip
        store.finish(session["id"], document.strip(), rating, comment.strip())
        return JSONResponse(state(store.session(session["id"])))

    async def retry(request: Request) -> Response:
        session = session_or_404(request)
        if session["id"] not in replies.errors:
            raise Refusal(409, "nothing to retry: no reply failed")
        replies.errors.pop(session["id"], None)
        replies.schedule(session["id"])
        return JSONResponse(state(session), status_code=202)

    async def page_event(request: Request) -> Response:
        session = session_or_404(request)
        kind = (await read_json(request)).get("kind")
        if kind not in PAGE_EVENTS:
            raise Refusal(400, f"event kind must be one of {', '.join(PAGE_EVENTS)}")
        store.event(session["id"], f"page_{kind}")
        return JSONResponse({"ok": True})

    async def admin_summary(request: Request) -> Response:
        require_admin(request)
        return JSONResponse({"systems": systems, "progress": store.summary()})

    async def admin_export(request: Request) -> Response:
        require_admin(request)
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
            for name, path in store.export(folder).items():
                archive.write(path, f"{name}.parquet")
        headers = {"Content-Disposition": 'attachment; filename="study_export.zip"'}
        return Response(buffer.getvalue(), media_type="application/zip", headers=headers)

    async def refused(request: Request, exc: Refusal) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def http_error(request: Request, exc) -> Response:
        return JSONResponse(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"},
            status_code=exc.status_code,
        )

    async def secure(request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @asynccontextmanager
    async def lifespan(app):
        for session_id in store.waiting_for_reply():  # replies lost when the server stopped
            replies.schedule(session_id)
        yield

    session = "/api/sessions/{session_id}"
    return Starlette(
        routes=[
            Route("/", page),
            Route("/admin", admin_page),
            Route("/api/study", study_info),
            Route("/api/sessions", create_session, methods=["POST"]),
            Route(session, get_state),
            Route(f"{session}/messages", post_message, methods=["POST"]),
            Route(f"{session}/ratings", post_rating, methods=["POST"]),
            Route(f"{session}/finish", finish, methods=["POST"]),
            Route(f"{session}/retry", retry, methods=["POST"]),
            Route(f"{session}/events", page_event, methods=["POST"]),
            Route("/api/admin/summary", admin_summary),
            Route("/api/admin/export.zip", admin_export),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=secure)],
        exception_handlers={Refusal: refused, HTTPException: http_error},
        lifespan=lifespan,
    )


def check_rating(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        raise Refusal(400, f"a rating must be a whole number from 1 to 10; got {json.dumps(value)}")
    return value


async def read_json(request: Request) -> dict:
    """The request's JSON object; refuses bodies over 2 MiB and anything but an object."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refusal(413, f"request body over {MAX_BODY // 2**20} MiB")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refusal(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise Refusal(400, "the request body must be a JSON object")
    return data
