"""When to try an optimistic shortcut again: the plain INSERT of rows believed to be new.

A shortcut that fails costs a statement the database refuses, and then the careful way anyway.
Where the belief is usually right (a first load), it should be tried every time; where it is
usually wrong (rows stored already by another tool), hardly ever; and one surprising batch
should not turn it off for good. So: after *n* failures in a row, the next ``2**n - 1``
chances are skipped (at most ``most``), and a success starts afresh.
"""

from __future__ import annotations


class Tries:
    """Exponential back-off of an optimistic attempt, counted in chances (batches)."""

    def __init__(self, most: int = 64) -> None:
        self.most = most
        self._failures = 0
        self._skip = 0

    def due(self) -> bool:
        """Whether to try this time (a skipped chance counts down)."""
        if self._skip:
            self._skip -= 1
            return False
        return True

    @property
    def skipping(self) -> bool:
        """Whether the next chance will be skipped (asked without counting it down)."""
        return self._skip > 0

    def failed(self) -> None:
        """The attempt failed: skip the next 1, 3, 7, ... chances."""
        self._failures += 1
        self._skip = min(2**self._failures - 1, self.most)

    def succeeded(self) -> None:
        """The attempt worked: try every time again."""
        self._failures = 0
        self._skip = 0
