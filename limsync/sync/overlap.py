"""Overlapping the engine's database waits with its Python work.

A synchronous client takes turns with its database: while the server inserts a batch, the
client waits; while the client validates, hashes and maps the next, the server idles. On a
database server (MariaDB, PostgreSQL) two background threads take the waits (drivers release
the GIL while they wait on their socket):

* :class:`WriteBehind` runs each batch's transaction while the engine prepares the next batch.
  Batches still commit one at a time and in order: a batch is handed over only once the one
  before it has committed, and a batch whose preparation must see the previous batch's rows
  waits for it first (see the engine).
* :class:`Ahead` runs each batch's comparison with the ledger while the engine reads and
  identifies (validates, hashes) the next batch: an unchanged re-sync is mostly those
  comparisons. A task waits only for the interpreter lock once its query is sent, so each
  task should make one round trip (the engine gives the thread a connection of its own).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class Ahead:
    """Tasks run in one background thread while the caller goes on (or inline when off).

    :meth:`submit` returns a :class:`~concurrent.futures.Future` either way, so the caller has
    one code path; an inline task has run when its future is returned (what it raises, it
    raises then).
    """

    def __init__(self, enabled: bool, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, name) if enabled else None

    @property
    def threaded(self) -> bool:
        """Whether tasks run in the background thread (else inline, in the caller's)."""
        return self._pool is not None

    def submit(self, task: Callable[[], T], *, inline: bool = False) -> Future[T]:
        """Start ``task`` in the background (run it now when off, or ``inline``)."""
        if self._pool is None or inline:
            done: Future[T] = Future()
            done.set_result(task())
            return done
        started = threading.Event()

        def run() -> T:
            started.set()
            return task()

        # The thread sees the caller's context variables (the log context: run, stream).
        future = self._pool.submit(contextvars.copy_context().run, run)
        # Wait until the thread runs: it takes the interpreter lock now and keeps it until
        # it waits on its socket, where a busy caller would hold it for a switch interval.
        started.wait()
        return future

    def close(self) -> None:
        """Wait for the tasks under way (their results are dropped) and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
