"""HTTP plumbing shared by the HTTP connectors.

:func:`build_session` makes a :class:`requests.Session` that applies, to every request, explicit
connect/read timeouts, retries through :class:`urllib3.util.Retry` (connection errors, 429, 502,
503, 504; ``Retry-After`` honoured up to a limit; capped exponential backoff with jitter), TLS
verification and an optional client-side rate limit.

:func:`send` and :func:`raise_for_response` turn what ``requests`` raises or returns into the
exceptions of :mod:`limsync.errors`. Their messages name the method, the URL (without
credentials or secret query values) and the server's own ``detail`` text; they never contain a
password or token.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from limsync.errors import (
    AuthenticationError,
    ConfigError,
    HTTPStatusError,
    SourceError,
    SourceUnreachableError,
)

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

log = logging.getLogger(__name__)

#: Status codes worth retrying: throttled, or a gateway/server that is briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: Query parameter names whose values are replaced by ``***`` when a URL is shown.
_SECRET_PARAM = re.compile(
    r"token|passw|secret|api[-_]?key|^key$|auth|signature|^sig$|session|credential", re.I
)
_DETAIL_MAX = 300


class HTTPSettings(Protocol):
    """What :func:`build_session` reads from a connector's settings."""

    @property
    def verify_tls(self) -> bool: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def backoff_factor(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def retry_after_max(self) -> float: ...
    @property
    def rate_limit_per_minute(self) -> float | None: ...


# --- URLs and secrets -----------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """Return ``url`` fit for a message: no user/password, secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal needs its brackets back
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    pieces = []
    for piece in parts.query.split("&") if parts.query else []:
        name, sep, _ = piece.partition("=")
        # Keep each piece as it was encoded, except the values of secret-looking names.
        pieces.append(f"{name}=***" if sep and _SECRET_PARAM.search(unquote_plus(name)) else piece)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pieces), ""))


_SECRET_QUERY_IN_TEXT = re.compile(
    r"([?&][^=&\s]*(?:token|passw|secret|api[-_]?key|auth|signature|session|credential)"
    r"[^=&\s]*=)[^&\s'\"]*",
    re.I,
)


class _RedactQuerySecrets(logging.Filter):
    """Masks secret-looking query values in urllib3's log lines (it logs request paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        redacted = _SECRET_QUERY_IN_TEXT.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _protect_library_logs() -> None:
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQuerySecrets) for f in logger.filters):
            logger.addFilter(_RedactQuerySecrets())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each (non-trivial) secret in ``text`` by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # masking "a" would mangle every message
            text = text.replace(secret, "***")
    return text


# --- rate limiting --------------------------------------------------------------------------------


class RateLimiter:
    """A thread-safe token bucket: at most ``per_minute`` requests a minute, small bursts allowed.

    ``acquire`` reserves a token and sleeps (outside the lock) until it is due, so concurrent
    callers are served in arrival order without holding each other up while sleeping.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0  # tokens per second
        # One second's worth of requests may go out at once; never less than one.
        self.capacity = max(1.0, burst if burst is not None else self.rate)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting if none is available; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0  # may go negative: a reservation for a token not yet earned
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"RateLimiter(per_minute={self.rate * 60:g}, capacity={self.capacity:g})"


# --- retries --------------------------------------------------------------------------------------


class RetryAfterTooLongError(Exception):
    """Internal: the server asked us to wait longer than we are willing to (see LimsyncRetry)."""

    def __init__(self, seconds: float, limit: float, status: int) -> None:
        super().__init__(f"Retry-After {seconds:g}s above the limit {limit:g}s")
        self.seconds = seconds
        self.limit = limit
        self.status = status


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait for a ``Retry-After`` value (delta seconds or HTTP date); None if invalid."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


class LimsyncRetry(Retry):
    """urllib3 ``Retry`` that refuses long ``Retry-After`` waits and jitters the short ones.

    A server that says "come back in an hour" should fail the run with a clear message rather
    than block a worker silently; the check sits in :meth:`increment` because every retrying
    caller (urllib3's pool and the ``responses`` test double alike) calls it before sleeping.
    Jitter is added to ``Retry-After`` too, so that throttled workers do not return in lockstep.
    """

    def __init__(
        self,
        *args: Any,
        retry_after_limit: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after_limit = retry_after_limit
        self.sleep_function = sleep

    def new(self, **kw: Any) -> Self:
        kw.setdefault("retry_after_limit", self.retry_after_limit)
        kw.setdefault("sleep", self.sleep_function)
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        if response is not None and self.respect_retry_after_header:
            header = response.headers.get("Retry-After")
            seconds = parse_retry_after(header) if header is not None else None
            if seconds is not None and seconds > self.retry_after_limit:
                raise RetryAfterTooLongError(seconds, self.retry_after_limit, response.status)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        header = response.headers.get("Retry-After")
        seconds = parse_retry_after(header) if header is not None else None
        if not seconds:
            return False
        self.sleep_function(seconds + random.uniform(0.0, self.backoff_jitter))
        return True

    def _sleep_backoff(self) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0:
            self.sleep_function(backoff)


def build_retry(
    settings: HTTPSettings,
    *,
    methods: Iterable[str] = ("GET", "HEAD"),
    sleep: Callable[[float], None] = time.sleep,
) -> LimsyncRetry:
    """The retry policy of the settings, for the given idempotent methods."""
    n = settings.max_retries
    return LimsyncRetry(
        total=n,
        connect=n,
        read=n,
        status=n,
        other=0,
        allowed_methods=frozenset(m.upper() for m in methods),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max,
        # Up to one backoff step of random extra wait spreads the retries of parallel workers.
        backoff_jitter=settings.backoff_factor,
        respect_retry_after_header=True,
        # The last error response is handed back (not a RetryError), so that its status and
        # the server's detail end up in our HTTPStatusError.
        raise_on_status=False,
        retry_after_limit=settings.retry_after_max,
        sleep=sleep,
    )


class LimsyncAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` with a default timeout, optional rate limit and firm TLS setting."""

    def __init__(
        self,
        *,
        retry: Retry,
        timeout: tuple[float, float],
        limiter: RateLimiter | None = None,
        verify_tls: bool = True,
    ) -> None:
        super().__init__(max_retries=retry)
        self.default_timeout = timeout
        self.limiter = limiter
        self.verify_tls = verify_tls

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if timeout is None:
            timeout = self.default_timeout
        if not self.verify_tls:
            # requests lets REQUESTS_CA_BUNDLE override a session's verify=False; the setting wins.
            verify = False
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            return super().send(request, stream, timeout, verify, cert, proxies)
        except RetryAfterTooLongError as exc:
            detail = (
                f"the server asked to retry after {exc.seconds:.0f} s (Retry-After), more "
                f"than retry_after_max = {exc.limit:g} s; giving up instead of waiting"
            )
            raise HTTPStatusError(
                request.method or "?", redact_url(request.url or ""), exc.status, detail
            ) from None


def build_session(
    settings: HTTPSettings,
    *,
    user_agent: str,
    retry_post: Sequence[str] = (),
    limiter: RateLimiter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> requests.Session:
    """A session applying the settings' timeouts, retries, TLS and rate limit to every request.

    ``retry_post`` lists URL prefixes whose POST is safe to repeat (a login endpoint): only those
    are retried on read errors and error statuses; other POSTs are not. ``limiter`` defaults to
    one built from ``settings.rate_limit_per_minute``; pass one to share it between sessions.
    ``sleep`` is what retries and the limiter wait with (tests pass a recorder).
    """
    _protect_library_logs()
    if limiter is None and settings.rate_limit_per_minute:
        limiter = RateLimiter(settings.rate_limit_per_minute, sleep=sleep)
    timeout = (settings.connect_timeout, settings.read_timeout)
    session = requests.Session()
    session.verify = settings.verify_tls
    session.headers["User-Agent"] = user_agent
    session.headers["Accept"] = "application/json"

    def adapter(methods: Iterable[str]) -> LimsyncAdapter:
        return LimsyncAdapter(
            retry=build_retry(settings, methods=methods, sleep=sleep),
            timeout=timeout,
            limiter=limiter,
            verify_tls=settings.verify_tls,
        )

    session.mount("https://", adapter(("GET", "HEAD")))
    session.mount("http://", adapter(("GET", "HEAD")))
    for prefix in retry_post:
        # requests picks the longest matching prefix, so this wins for the login URL only.
        session.mount(prefix, adapter(("GET", "HEAD", "POST")))
    return session


# --- errors ---------------------------------------------------------------------------------------


def response_detail(response: requests.Response, secrets: Iterable[str] = ()) -> str:
    """The server's explanation of an error response, short and without secrets."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        text = body["detail"]
    elif isinstance(body, dict | list) and body:
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "status_code"}
        text = json.dumps(body, separators=(",", ":"), default=str)
    else:
        text = " ".join((response.text or "").split())
    if not text:
        text = response.reason or "no detail"
    if len(text) > _DETAIL_MAX:
        text = text[: _DETAIL_MAX - 3] + "..."
    return scrub(text, secrets)


def error_for_response(
    response: requests.Response, *, secrets: Iterable[str] = ()
) -> HTTPStatusError:
    """The exception describing an error response (401/403 -> AuthenticationError)."""
    secrets = list(secrets)
    request = response.request
    method = (request.method if request is not None else None) or "GET"
    url = redact_url((request.url if request is not None else None) or response.url or "")
    detail = response_detail(response, secrets)
    cls = AuthenticationError if response.status_code in (401, 403) else HTTPStatusError
    return cls(method, scrub(url, secrets), response.status_code, detail)


def raise_for_response(response: requests.Response, *, secrets: Iterable[str] = ()) -> None:
    """Raise :func:`error_for_response` unless the status is below 400."""
    if response.status_code >= 400:
        raise error_for_response(response, secrets=secrets)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (``__cause__``, ``__context__``, ``reason``, args)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop()
        if any(item is s for s in seen):
            continue
        seen.append(item)
        for nxt in (item.__cause__, item.__context__, getattr(item, "reason", None), *item.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def _unreachable_reason(exc: requests.RequestException) -> str:
    causes = _causes(exc)

    def caused_by(*types: type[BaseException]) -> bool:
        return any(isinstance(c, types) for c in causes)

    if caused_by(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return "the host name could not be resolved (DNS)"
    if caused_by(ConnectionRefusedError):
        return "connection refused"
    if caused_by(requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError):
        return "TLS handshake or certificate verification failed"
    if caused_by(requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return "timed out connecting"
    if caused_by(requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        return "timed out waiting for the response"
    if caused_by(TimeoutError):
        return "timed out"
    return "connection failed"


def error_for_exception(
    exc: requests.RequestException, method: str, url: str, *, secrets: Iterable[str] = ()
) -> SourceError | ConfigError:
    """Translate an exception raised by ``requests`` into one of ours (message without secrets)."""
    safe_url = scrub(redact_url(url), list(secrets))
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return ConfigError(f"{method} {safe_url}: invalid URL")
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        reason = _unreachable_reason(exc)
        return SourceUnreachableError(f"{method} {safe_url}: cannot reach the server: {reason}")
    return SourceError(f"{method} {safe_url}: request failed ({type(exc).__name__})")


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    secrets: Iterable[str] = (),
    **kwargs: Any,
) -> requests.Response:
    """``session.request`` with ``requests`` exceptions translated; the response is unchecked."""
    log.debug("%s %s", method, redact_url(url))
    try:
        return session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        # "from None": the chained requests exception would repeat the URL with its query.
        raise error_for_exception(exc, method, url, secrets=secrets) from None
