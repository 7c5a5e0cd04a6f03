"""Pipeline tables for the populate tests (a module, so worker processes can import them).

Every ``make`` appends ``table key`` to the file named by ``LIMSYNC_TEST_MAKE_LOG`` (when set),
so tests count exactly how often each key was made, across processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

from limsync.pipeline import Computed, Key, Manual, Part, Ref, Schema
from limsync.pipeline.tables import MakeResult

upstream = Schema("popup", "upstream tables of the populate tests")
derived = Schema("popderived", "computed tables of the populate tests")


def log_make(table: str, key: dict[str, Any]) -> None:
    """Record one make call (one line, appended atomically)."""
    path = os.environ.get("LIMSYNC_TEST_MAKE_LOG")
    if path:
        line = f"{table} {','.join(str(v) for v in key.values())}\n"
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(line)


class Subject(Manual):
    """A subject."""

    __schema__ = upstream
    subject_id: Annotated[int, Key]
    name: str = ""


class Session(Manual):
    """A session of a subject, with one measured value."""

    __schema__ = upstream
    __references__ = (Ref(Subject, key=True),)
    session_no: Annotated[int, Key]
    value: float


class Weighing(Manual):
    """A weighing: names its subject without being part of any derived key."""

    __schema__ = upstream
    __references__ = (Subject,)
    weighing_id: Annotated[int, Key]
    weight: float


class SessionStat(Computed):
    """Doubled session value, with one part row per channel; negative values fail."""

    __schema__ = derived
    __references__ = (Ref(Session, key=True),)
    doubled: float

    class Channel(Part):
        """Per-channel values."""

        channel: Annotated[int, Key]
        scaled: float

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("SessionStat", key)
        (session,) = self.fetch(Session, **key)
        if session["value"] < 0:
            raise ValueError(f"negative value {session['value']}")
        yield {"doubled": 2 * session["value"]}
        for channel in range(2):
            yield SessionStat.Channel, {"channel": channel, "scaled": session["value"] * channel}


class KeptStat(Computed):
    """Like SessionStat, but its results must not move when upstream changes."""

    __schema__ = derived
    __references__ = (Ref(Session, key=True),)
    __on_change__ = "keep"
    doubled: float

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("KeptStat", key)
        (session,) = self.fetch(Session, **key)
        return [{"doubled": 2 * session["value"]}]


class SubjectWeight(Computed):
    """Per-subject weight summary: reads Weighing, which is not in its key."""

    __schema__ = derived
    __references__ = (Ref(Subject, key=True),)
    __depends_on__ = (Weighing,)
    n_weighings: int
    mean_weight: float | None = None

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("SubjectWeight", key)
        weights = [w["weight"] for w in self.fetch(Weighing, **key)]
        mean = sum(weights) / len(weights) if weights else None
        return [{"n_weighings": len(weights), "mean_weight": mean}]


class SubjectWeightLogged(Computed):
    """SubjectWeight that records its inputs in a Part, so deleted weighings map too."""

    __schema__ = derived
    __references__ = (Ref(Subject, key=True),)
    __depends_on__ = (Weighing,)
    n_weighings: int

    class Input(Part):
        """The weighings summarised (a key column, no foreign key: deletes leave it)."""

        weighing_id: Annotated[int, Key]

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("SubjectWeightLogged", key)
        weighings = self.fetch(Weighing, **key)
        yield {"n_weighings": len(weighings)}
        for w in weighings:
            yield SubjectWeightLogged.Input, {"weighing_id": w["weighing_id"]}


class StatSum(Computed):
    """Downstream of a computed table: the chain is followed through the outbox."""

    __schema__ = derived
    __references__ = (Ref(SessionStat, key=True),)
    plus_one: float

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("StatSum", key)
        (stat,) = self.fetch(SessionStat, **key)
        return [{"plus_one": stat["doubled"] + 1}]


class Item(Manual):
    """Many keys for the worker tests."""

    __schema__ = upstream
    item_id: Annotated[int, Key]


# ItemDone's make in the process named by LIMSYNC_TEST_INTERRUPT_PID: calls left before it is
# interrupted (tests set it).
_interrupt_countdown = [0]


class ItemDone(Computed):
    """A trivial make; hangs on the key named by LIMSYNC_TEST_HANG (to be killed there), or is
    interrupted in the process named by LIMSYNC_TEST_INTERRUPT_PID."""

    __schema__ = derived
    __references__ = (Ref(Item, key=True),)
    marker: int

    class Copy(Part):
        """A part row, to show a killed key leaves no partial rows."""

        copy_no: Annotated[int, Key]

    def make(self, key: dict[str, Any]) -> MakeResult:
        log_make("ItemDone", key)
        if os.environ.get("LIMSYNC_TEST_INTERRUPT_PID") == str(os.getpid()):
            _interrupt_countdown[0] -= 1
            if _interrupt_countdown[0] == 0:
                raise KeyboardInterrupt  # as if Ctrl-C reached this process only
        hang = os.environ.get("LIMSYNC_TEST_HANG")
        if hang and int(hang) == key["item_id"]:
            Path(os.environ["LIMSYNC_TEST_HANG_STARTED"]).write_text("started")
            time.sleep(120)  # killed long before
        return [{"marker": key["item_id"]}, (ItemDone.Copy, {"copy_no": 1})]


UPSTREAM = (upstream,)
