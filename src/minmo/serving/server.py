"""HTTP + WebSocket server (FastAPI, uvicorn): the OpenAI Realtime endpoint, the browser
page, ``/healthz`` and ``/metrics``.

Endpoints:

* ``GET /``: the browser page (``serving/web/``); ``/static/*`` its scripts.
* ``WS /v1/realtime`` (also ``/realtime``): one Realtime session per connection; the
  ``model`` query parameter is accepted and ignored (one model per server).
* ``GET /healthz``: ``{"status": "ok", "sessions": n, "model": {...}}``.
* ``GET /metrics``: Prometheus text (session gauge, counters, per-stage latency histograms).

Limits: optional API key (``Authorization: Bearer``, ``api-key`` header, the browser
subprotocol ``openai-insecure-api-key.<key>`` or ``?api_key=``; a wrong or missing key is
refused with HTTP 401 before any session exists); ``max_sessions`` (a refused connection
gets an ``error`` event with code ``session_limit_reached`` and close code 1013); frames over
``max_message_bytes`` get an ``error`` event (frames over 4x that are cut by the WebSocket
layer with close code 1009); ``idle_timeout_s`` without client frames closes the session;
input audio backlog is bounded (the server stops reading until the engine catches up) and
so is the outgoing queue (generation pauses for a client that does not read; a client that
keeps sending while ``max_queued_events`` wait unread is disconnected with close code 1008).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from minmo import library_versions
from minmo.serving import protocol as R
from minmo.serving.engine import Engine, SessionLimitReached
from minmo.serving.session import CLOSE_EVENT

WEB_DIR = Path(__file__).parent / "web"
SUBPROTOCOL_KEY = "openai-insecure-api-key."


@dataclass
class ServerConfig:
    """Connection limits (see module docstring)."""

    api_key: str | None = None
    max_message_bytes: int = 2 * 1024 * 1024
    idle_timeout_s: float = 300.0
    max_backlog_seconds: float = 5.0
    max_queued_events: int = 2000


def _offered_key(ws: WebSocket) -> str | None:
    auth = ws.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if ws.headers.get("api-key"):
        return ws.headers["api-key"]
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(SUBPROTOCOL_KEY):
            return proto[len(SUBPROTOCOL_KEY):]
    return ws.query_params.get("api_key")


def create_app(engine: Engine, cfg: ServerConfig | None = None) -> FastAPI:
    """The ASGI app around a started (or to-be-started) :class:`Engine`."""
    cfg = cfg or ServerConfig()
    app = FastAPI(title="minmo", docs_url=None, redoc_url=None)
    app.state.engine, app.state.cfg = engine, cfg
    versions = library_versions()
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/")
    async def index() -> Response:
        page = WEB_DIR / "index.html"
        if not page.is_file():
            return PlainTextResponse("the browser page is not installed", status_code=404)
        return FileResponse(str(page), media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok" if engine.error is None else "degraded",
                             "sessions": engine.session_count,
                             "max_sessions": engine.cfg.max_sessions,
                             "model": engine.rt.info.to_dict(),
                             "engine_error": repr(engine.error) if engine.error else None,
                             "versions": versions})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(),
                                 media_type="text/plain; version=0.0.4")

    async def realtime(ws: WebSocket) -> None:
        await _serve_connection(ws, engine, cfg)

    app.add_api_websocket_route("/v1/realtime", realtime)
    app.add_api_websocket_route("/realtime", realtime)
    return app


async def _admit(ws: WebSocket, engine: Engine, cfg: ServerConfig) -> bool:
    """Check the API key and reserve a session; accept the WebSocket (with the ``realtime``
    subprotocol when offered) and return True, or answer the refusal and return False."""
    if cfg.api_key is not None:
        key = _offered_key(ws)
        if key is None or not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            await ws.send_denial_response(JSONResponse(
                {"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                           "message": "missing or wrong API key"}}, status_code=401))
            return False
    offered = ws.scope.get("subprotocols", [])
    subprotocol = "realtime" if "realtime" in offered else None
    try:
        engine.reserve()
    except SessionLimitReached as exc:
        await ws.accept(subprotocol=subprotocol)
        err = R.ProtocolError(str(exc), "session_limit_reached", error_type="server_error")
        await ws.send_text(json.dumps(R.error_event(err)))
        await ws.close(code=1013, reason="session limit reached")
        return False
    await ws.accept(subprotocol=subprotocol)
    return True


async def _serve_connection(ws: WebSocket, engine: Engine, cfg: ServerConfig) -> None:
    if not await _admit(ws, engine, cfg):
        return
    conn = _Connection(ws, engine, cfg)
    await conn.open()
    try:
        while await conn.receive():
            pass
    except WebSocketDisconnect:
        pass
    finally:
        await conn.finish()


class _Connection:
    """One admitted client: the session it opened on the engine, and the queue of events a
    writer task sends it in order (the engine's, from its thread, and the answers to bad
    client events, which never reach the engine)."""

    def __init__(self, ws: WebSocket, engine: Engine, cfg: ServerConfig) -> None:
        self.ws, self.engine, self.cfg = ws, engine, cfg
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue[tuple[dict, bool] | None] = asyncio.Queue()
        self.drained = asyncio.Event()
        self.session: Any = None
        self.writer: asyncio.Task | None = None
        self.submitted = 0  # audio samples handed to the engine
        self.sent = 0  # engine events sent to the client

    async def open(self) -> None:
        """Open the session on the engine's thread and start the writer."""
        opened: asyncio.Future = self.loop.create_future()
        beta = self.ws.headers.get("openai-beta", "").startswith("realtime=v1")

        def emit(ev: dict) -> None:  # engine thread
            self.loop.call_soon_threadsafe(self.out.put_nowait, (ev, True))

        def on_open(session: Any) -> None:  # engine thread
            session.on_drain = lambda: self.loop.call_soon_threadsafe(self.drained.set)
            self.loop.call_soon_threadsafe(opened.set_result, session)

        self.engine.open(emit, beta, on_open)
        self.session = await opened
        self.writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while (item := await self.out.get()) is not None:
            ev, from_engine = item
            if ev.get("type") == CLOSE_EVENT:
                await self.ws.close(code=1011, reason="internal error")
                return
            await self.ws.send_text(json.dumps(ev))
            if from_engine:
                self.sent += 1
                self.session.sent = self.sent

    def _reject(self, err: R.ProtocolError) -> None:
        """Answer a bad client event here, without the engine."""
        self.engine.metrics.inc("client_errors")
        self.out.put_nowait((R.error_event(err), False))

    async def receive(self) -> bool:
        """Take one client message to the engine (or answer it); ``False``: the connection
        is over (the client left, went idle, or stopped reading)."""
        cfg = self.cfg
        try:
            msg = await asyncio.wait_for(self.ws.receive(), timeout=cfg.idle_timeout_s)
        except asyncio.TimeoutError:
            self._last_word(f"no client event for {cfg.idle_timeout_s:.0f} s: session closed",
                            "idle_timeout")
            await self.writer  # the client reads: it gets the error before the close
            await self.ws.close(code=1000, reason="idle timeout")
            return False
        if msg["type"] == "websocket.disconnect":
            return False
        if self.out.qsize() > cfg.max_queued_events:
            self._last_word(f"over {cfg.max_queued_events} events wait for the client to read "
                            "them: session closed", "client_not_reading")
            await self.ws.close(code=1008, reason="client not reading")
            return False
        data = msg.get("text")
        if data is None:
            data = msg.get("bytes") or b""
        if len(data) > cfg.max_message_bytes:
            self._reject(R.ProtocolError(
                f"frame of {len(data)} bytes exceeds the limit of {cfg.max_message_bytes}: "
                "send audio in smaller input_audio_buffer.append events", "message_too_large"))
            return True
        try:
            await self._submit(R.parse_client_event(data))
        except R.ProtocolError as err:
            self._reject(err)
        return True

    def _last_word(self, message: str, code: str) -> None:
        """Queue a closing error event, then the writer's end."""
        self.out.put_nowait((R.error_event(R.ProtocolError(message, code)), False))
        self.out.put_nowait(None)

    async def _submit(self, ev: dict) -> None:
        if ev["type"] != "input_audio_buffer.append":
            self.engine.submit(self.session.id, "event", ev)
            return
        eid = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        pcm = R.decode_pcm16(ev.get("audio"), eid)
        await _backlog_below(self.cfg.max_backlog_seconds, self.session, self.submitted,
                             self.drained)
        self.submitted += pcm.size
        self.engine.submit(self.session.id, "audio", pcm)

    async def finish(self) -> None:
        """Close the session on the engine and stop the writer."""
        self.engine.submit(self.session.id, "close")
        self.out.put_nowait(None)
        self.writer.cancel()
        try:
            await self.writer
        except (asyncio.CancelledError, Exception):
            pass


async def _backlog_below(limit_s: float, session: Any, submitted: int,
                         drained: asyncio.Event) -> None:
    """Wait until the audio this connection has submitted but the engine not yet applied,
    plus what the session holds unprocessed, is at most ``limit_s`` seconds (the engine sets
    ``drained`` as it catches up; checked at least once a second). This is the back-pressure
    that keeps a client sending faster than real time from growing the server's memory."""
    while (submitted - session.applied_audio) / R.WIRE_RATE \
            + session.pending_samples / 16000 > limit_s:
        drained.clear()
        try:
            await asyncio.wait_for(drained.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass


class BackgroundServer:
    """uvicorn on a free 127.0.0.1 port in a thread (tests, benchmarks).

    The listening socket is bound before the thread starts, so clients can connect as soon as
    the constructor returns (connections wait in the backlog until uvicorn accepts).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", ws_max_size: int = 8 * 2 ** 20):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", ws_max_size=ws_max_size,
                                lifespan="off", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
