"""A small reusable HTTP server for fake LIMS APIs, with fault injection.

:class:`FakeServer` runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (ephemeral port) in a
background thread and dispatches requests by method and path pattern to handler functions that
return ``(status, headers, body)``. Every fake built on it (the fake Alyx, the fake PyRAT, the
toolkit's ``RecordServer``) shares the same request counters, credential-free request log and
:class:`~limsync.testing.faults.Faults` (defined in :mod:`limsync.testing.faults`, importable
from here too), so tests can make any fake misbehave in the same way: error bursts, throttling,
delays, truncated JSON and dropped connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit

from limsync.testing.faults import PAGING_PARAMS, Faults

__all__ = ["PAGING_PARAMS", "FakeServer", "Faults", "Reply", "Request", "RequestRecord"]

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"

# Query parameter names whose values the request log masks (substring match, lower case).
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "auth", "session")


class Reply(NamedTuple):
    """What a handler returns: status, extra headers, and a body.

    The body may be ``bytes``, ``str`` (sent as UTF-8 text) or any JSON-serialisable value, which
    is encoded with :func:`json.dumps` and sent as ``application/json``.
    """

    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request as a handler sees it."""

    method: str
    path: str
    """Path relative to the server's ``base_path``, percent-encoded as received."""
    raw_target: str
    """The request target exactly as received (base path, path and query)."""
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    host: str
    """The ``Host`` header, or the server's own address when the client sent none."""
    client_port: int

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name`` (Django's ``QueryDict.get``), or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    @property
    def absolute_url(self) -> str:
        """The full URL of this request, built from the Host header like Django does."""
        return f"http://{self.host}{self.raw_target}"

    def header(self, name: str) -> str | None:
        """A request header, case-insensitively."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` when it is not)."""
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        """The body decoded as ``application/x-www-form-urlencoded`` (last value wins)."""
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[-1] for k, v in parsed.items()}


Handler = Callable[..., Reply]


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log. It never holds headers, bodies or secret query values."""

    method: str
    path: str
    query: str
    status: int | None
    """The status sent, or None when the connection was dropped on purpose."""
    fault: str | None
    seconds: float


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    handler: Handler


_PARAM = re.compile(r"\{(\w+)\}")


def _compile(pattern: str) -> re.Pattern[str]:
    """``/subjects/{nickname}`` -> a regex with one named group per ``{param}``."""
    parts = _PARAM.split(pattern)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


def redact_query(query: Mapping[str, list[str]]) -> str:
    """The query string for the log, with the values of secret-looking parameters masked."""
    items: list[str] = []
    for name, values in query.items():
        secret = any(word in name.lower() for word in _SECRET_WORDS)
        items.extend(f"{name}={'***' if secret else value}" for value in values)
    return "&".join(items)


class FakeServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that routes to handler functions.

    Subclasses register routes with :meth:`route` and may override the reply hooks
    (:meth:`error_reply`, :meth:`throttled_reply`, :meth:`not_found_reply`,
    :meth:`method_not_allowed_reply`) to speak their API's error format.
    """

    server_version = "fakeserver"

    def __init__(self, *, base_path: str = "", log_size: int = 10_000) -> None:
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.faults = Faults()
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        self._requests = 0
        self._by_path: Counter[str] = Counter()
        self._by_route: Counter[str] = Counter()
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- routing ---------------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Send ``method`` requests whose path matches ``pattern`` to ``handler``.

        ``pattern`` is relative to ``base_path``; ``{name}`` segments are passed to the handler as
        keyword arguments, percent-decoded. The handler receives the :class:`Request` first.
        """
        self._routes.append(_Route(method.upper(), pattern, _compile(pattern), handler))

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], list[str]]:
        allowed: list[str] = []
        for route in self._routes:
            found = route.regex.match(path)
            if not found:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, {k: unquote(v) for k, v in found.groupdict().items()}, allowed
            allowed.append(route.method)
        return None, {}, allowed

    # --- reply hooks -----------------------------------------------------------------------------

    def error_reply(self, status: int, detail: str) -> Reply:
        """The body of an injected or internal error."""
        return Reply(status, {}, {"detail": detail, "status_code": status})

    def throttled_reply(self, retry_after: int) -> Reply:
        """The 429 answer; ``Retry-After`` is added by the caller when missing."""
        return Reply(429, {}, {"detail": "Request was throttled.", "status_code": 429})

    def not_found_reply(self, request: Request) -> Reply:
        """The answer for a path no route matches."""
        return Reply(404, {}, {"detail": "Not found.", "status_code": 404})

    def method_not_allowed_reply(self, request: Request, allowed: list[str]) -> Reply:
        """The answer for a known path with a method it does not take."""
        detail = f'Method "{request.method}" not allowed.'
        return Reply(405, {"Allow": ", ".join(allowed)}, {"detail": detail, "status_code": 405})

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 on an ephemeral port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, including idle keep-alive ones."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_all_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234/api`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    # --- counters and log ------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests received since start (or the last :meth:`reset_counters`), faults included."""
        return self._requests

    @property
    def requests_by_path(self) -> Counter[str]:
        """A copy of the per-path counter (path without query string)."""
        with self._lock:
            return Counter(self._by_path)

    @property
    def requests_by_route(self) -> Counter[str]:
        """A copy of the per-endpoint counter, keyed ``"GET /subjects/{nickname}"``."""
        with self._lock:
            return Counter(self._by_route)

    @property
    def request_log(self) -> list[RequestRecord]:
        """The most recent requests (bounded); never contains credentials."""
        with self._lock:
            return list(self._log)

    def reset_counters(self) -> None:
        """Zero the counters and clear the log."""
        with self._lock:
            self._requests = 0
            self._by_path.clear()
            self._by_route.clear()
            self._log.clear()

    # --- request processing (called from handler threads) ----------------------------------------

    def _count(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], list[str]]:
        route, params, allowed = self._match(method, path)
        key = f"{route.method} {route.pattern}" if route else f"{method} <unmatched>"
        with self._lock:
            self._requests += 1
            self._by_path[path] += 1
            self._by_route[key] += 1
        return route, params, allowed

    def _record(self, request: Request, status: int | None, fault: str | None, t0: float) -> None:
        record = RequestRecord(
            request.method,
            request.path,
            redact_query(request.query),
            status,
            fault,
            time.perf_counter() - t0,
        )
        with self._lock:
            self._log.append(record)

    def _respond(self, request: Request) -> tuple[Reply | None, str | None]:
        """The reply for ``request`` (None: drop the connection) and the fault applied, if any."""
        route, params, allowed = self._count(request.method, request.path)
        plan = self.faults._plan()
        if plan.drop:
            return None, "drop_connection"
        if plan.delay > 0:
            time.sleep(plan.delay)
        if plan.error_status is not None:
            return self.error_reply(plan.error_status, "Injected fault."), "error_burst"
        if plan.throttle_after is not None:
            reply = self.throttled_reply(plan.throttle_after)
            return _with_retry_after(reply, plan.throttle_after), "throttle"
        if route is None:
            if allowed:
                methods = [*allowed, *(["HEAD"] if "GET" in allowed else []), "OPTIONS"]
                return self.method_not_allowed_reply(request, methods), None
            return self.not_found_reply(request), None
        try:
            return self.faults._repeat(request, route.handler(request, **params)), None
        except Exception as exc:  # a fake must answer, as a real server does, not die
            logger.exception("handler for %s %s failed", request.method, route.pattern)
            return self.error_reply(500, str(exc)), None


def _with_retry_after(reply: Reply, seconds: int) -> Reply:
    if any(k.lower() == "retry-after" for k in reply.headers):
        return reply
    return Reply(reply.status, {**reply.headers, "Retry-After": str(seconds)}, reply.body)


def encode_body(reply: Reply) -> tuple[bytes, str | None]:
    """The body bytes and the default content type for a handler's reply."""
    body = reply.body
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    # Compact and UTF-8, as Django REST framework's JSONRenderer sends it.
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8"), JSON_TYPE


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn(): skip that lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = server.server_version
        sys_version = ""
        disable_nagle_algorithm = True  # headers and body go out in two writes
        timeout = 60  # idle keep-alive connections close after a minute

        def setup(self) -> None:
            super().setup()
            self._httpd().track(self.connection, True)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                self._httpd().track(self.connection, False)

        def _httpd(self) -> _HTTPServer:
            assert isinstance(self.server, _HTTPServer)
            return self.server

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the stdlib access log; the server keeps its own, credential-free one."""

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _handle(self) -> None:
            t0 = time.perf_counter()
            body = self._read_body()
            target = urlsplit(self.path)
            path = target.path
            if server.base_path:
                if path == server.base_path or path.startswith(server.base_path + "/"):
                    path = path[len(server.base_path) :] or "/"
                else:
                    path = "\0" + path  # outside the base path: matches no route
            request = Request(
                method=self.command,
                path=path,
                raw_target=self.path,
                query=parse_qs(target.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                host=self.headers.get("Host") or f"127.0.0.1:{server.port}",
                client_port=int(self.client_address[1]),
            )
            reply, fault = server._respond(request)
            # Logged before the reply goes out (or the connection is dropped): a client that
            # reads the log as soon as it sees the response or the reset must find it there.
            server._record(request, None if reply is None else reply.status, fault, t0)
            if reply is None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(request, reply)

        def _send(self, request: Request, reply: Reply) -> None:
            data, content_type = encode_body(reply)
            headers = dict(reply.headers)
            is_json = content_type == JSON_TYPE or "json" in headers.get("Content-Type", "")
            if is_json and 200 <= reply.status < 300 and data and server.faults._take_malformed():
                data = data[: len(data) // 2]
            if content_type and not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = content_type
            if reply.status == 204:
                data = b""
            try:
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if reply.status != 204:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if request.method != "HEAD" and data:
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # the stdlib dispatches on these names
        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

    return _Handler
