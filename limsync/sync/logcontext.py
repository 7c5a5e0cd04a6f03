"""Which run a log line belongs to: run id, connector and stream, as context variables.

The engine binds them while it works (:func:`bound`); a logging filter (``limsync.cli.logs``)
copies them onto every record, so JSON log lines carry them without each call passing them.
Context variables rather than thread-locals: they follow the code into threads started with
``contextvars.copy_context`` and never leak from one run into the next.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

FIELDS = ("run_id", "connector", "stream")
_VARS: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"limsync_{name}", default=None) for name in FIELDS
}


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Set some of ``run_id``, ``connector``, ``stream`` for the block, then restore them."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current() -> dict[str, Any]:
    """The fields bound now (None where unset)."""
    return {name: var.get() for name, var in _VARS.items()}
