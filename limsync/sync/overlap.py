"""Writing one batch while the next is read and prepared: the engine's write-behind.

A synchronous client takes turns with its database: while the server inserts a batch, the
client waits; while the client validates, hashes and maps the next, the server idles. On a
database server (MariaDB, PostgreSQL), :class:`WriteBehind` runs each batch's transaction in
one background thread while the engine prepares the next batch, so the two overlap (drivers
release the GIL while they wait on their socket). Batches still commit one at a time and in
order: a batch is handed over only once the one before it has committed, and a batch whose
preparation must see the previous batch's rows waits for it first (see the engine).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class WriteBehind:
    """At most one batch write in flight, run in a background thread (or inline when off).

    ``total`` sums what the finished writes returned. A write's exception is raised by the
    next :meth:`submit` or :meth:`wait`; :meth:`close` always waits for the write in flight, so
    nothing writes after the caller has moved on (released its lock, say).
    """

    def __init__(self, enabled: bool) -> None:
        self._pool = ThreadPoolExecutor(1, "limsync-write") if enabled else None
        self._pending: Future[int] | None = None
        self.total = 0

    def submit(self, write: Callable[[], int]) -> None:
        """Run ``write`` once the write before it has finished: in the background, or now."""
        self.wait()
        if self._pool is None:
            self.total += write()
            return
        # The thread sees the caller's context variables (the log context: run, stream).
        self._pending = self._pool.submit(contextvars.copy_context().run, write)

    def wait(self) -> None:
        """Wait for the write in flight; raise what it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.total += pending.result()

    def close(self) -> None:
        """Wait for the write in flight, without raising (the caller is failing already, or
        has waited), and stop the thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                self.total += pending.result()
            except BaseException as exc:  # reported: the caller's own error wins
                log.error("a batch write failed while the run was stopping: %s", exc)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
