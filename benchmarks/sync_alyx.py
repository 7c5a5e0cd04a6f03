"""Benchmark: whole syncs, from a fake Alyx over HTTP and from an in-process source.

Two parts, each on SQLite and (when ``LIMSYNC_TEST_MYSQL_URL`` is set) MariaDB/MySQL:

* **alyx** -- a :class:`~limsync.testing.fake_alyx.FakeAlyx` serving a generated colony
  (at ``--scale 1``: 20,000 subjects, 100,000 sessions, 200,000 weighings, 60,000 water
  administrations) synced with :func:`limsync.sync.runner.sync`: the first sync, an unchanged
  re-sync, and a re-sync after 1% of subjects and sessions were modified and 1% more weighings
  recorded (the colony has no way to edit a weighing, as Alyx's API has none we read).
  The server's request counters are compared with the number of list pages the data needs
  (every stream's records at 1,000 a page, nickname-keyed streams lab by lab), with the
  changed-since query of sessions, the session details and the login and schema requests
  counted apart.
* **engine** -- the sync engine alone: a :class:`~limsync.testing.memory.MemoryConnector` with
  N items (and N/100 groups they reference) mapped into a parent/child table pair: first load,
  unchanged re-sync, 1% changed.

Every phase runs in its own child process (so its peak RSS is its own) with a time limit; the
fake server stays in this process so the colony persists between phases and its work is not
counted in the child's RSS. Benchmark schemas are dropped at the end.

    python benchmarks/sync_alyx.py --scale 0.1
    python benchmarks/sync_alyx.py --quick
    python benchmarks/sync_alyx.py --parts engine --records 200000 --profile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import sqlalchemy as sa
from pydantic import BaseModel, Field

from limsync.cli.main import own_process
from limsync.connectors.base import Stream, Streams
from limsync.pipeline import Database, Key, Manual, Ref, Schema
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Emitted, Mapper, StreamMap
from limsync.testing.memory import MemoryConnector, MemorySettings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import host_speed, peak_rss_mb, profiled

MYSQL_ENV = "LIMSYNC_TEST_MYSQL_URL"
PHASES = ("first", "unchanged", "changed")
#: Colony size at --scale 1 (per subject: 5 sessions, 10 weighings, 3 water administrations).
FULL_SUBJECTS = 20_000

# -- the engine-only pipeline: a parent/child table pair ------------------------------------------

bench = Schema("bench")


class Group(Manual):
    """A group of items (the parent table)."""

    __schema__ = bench
    group_id: Annotated[int, Key]
    title: Annotated[str, Field(max_length=64)]


class Item(Manual):
    """An item (the child table): a few typical column types."""

    __schema__ = bench
    __references__ = (Ref(Group),)
    item_id: Annotated[uuid.UUID, Key]
    name: Annotated[str, Field(max_length=64)]
    value: float
    recorded: str
    note: str | None = None


class GroupRec(BaseModel):
    id: int
    title: str


class ItemRec(BaseModel):
    id: uuid.UUID
    group: int
    name: str
    value: float
    recorded: str
    note: str | None = None


class BenchSource(MemoryConnector):
    """Groups and items held in lists."""

    type_name = "benchmem"
    streams = Streams(
        Stream("groups", "groups", GroupRec, key=("id",)),
        Stream("items", "items", ItemRec, key=("id",)),
    )


def _group_rows(r: Any) -> list[Emitted]:
    return [(Group, {"group_id": r.id, "title": r.title})]


def _item_rows(r: Any) -> list[Emitted]:
    row = {"item_id": r.id, "group_id": r.group, "name": r.name, "value": r.value}
    return [(Item, {**row, "recorded": r.recorded, "note": r.note})]


BENCH_MAPS = [
    StreamMap("groups", (Group,), _group_rows),
    StreamMap("items", (Item,), _item_rows),
]


def engine_data(n: int, changed: bool) -> dict[str, list[dict[str, Any]]]:
    """N items and N/100 groups, deterministic; ``changed`` edits every 100th of each."""
    n_groups = max(1, n // 100)
    groups: list[dict[str, Any]] = [{"id": g, "title": f"group {g}"} for g in range(n_groups)]
    items: list[dict[str, Any]] = [
        {
            "id": str(uuid.UUID(int=i + 1)),
            "group": i % n_groups,
            "name": f"item-{i:07d}",
            "value": i * 0.25,
            "recorded": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00",
            "note": None if i % 3 else "checked",
        }
        for i in range(n)
    ]
    if changed:
        for g in groups[::100]:
            g["title"] += " (renamed)"
        for it in items[::100]:
            it["value"] += 1.0
    return {"groups": groups, "items": items}


# -- child processes: one phase each ---------------------------------------------------------------


def child_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine-only phase against the in-memory source."""
    # As the limsync command does once it has imported everything (see own_process): the
    # collector's full collections no longer walk what lives as long as the process (they took
    # a sixth of a MariaDB first load), and background threads get the interpreter lock sooner.
    # The source's records, made next, are collected as any.
    own_process()
    data = engine_data(spec["records"], spec["phase"] == "changed")
    rss_before = peak_rss_mb()
    db = Database(spec["url"], schema_prefix=spec["prefix"])
    try:
        db.declare(bench)
        source = BenchSource("bench", MemorySettings(page_size=1000), data=data)
        engine = SyncEngine(db, source, {m.stream: Mapper(db, m) for m in BENCH_MAPS})
        t0, c0 = time.perf_counter(), time.process_time()
        report, profile = profiled(engine.run, spec.get("profile", False))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        db.dispose()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "counts": {k: v for k, v in report.counts().items() if k != "streams"},
        "ok": report.ok,
        "error": report.first_error(),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "profile": profile,
    }


def child_alyx(spec: dict[str, Any]) -> dict[str, Any]:
    """One sync of the fake Alyx (served by the parent process) through the library entry."""
    from limsync.config.settings import Settings
    from limsync.sync.runner import sync

    own_process()  # as the limsync command does (see child_engine)

    settings = Settings(
        database_url=spec["url"],
        schema_prefix=spec["prefix"],
        connectors={
            "alyx": {
                "type": "alyx",
                "base_url": spec["alyx_url"],
                "username": "admin",
                "password": "alyxadmin",
                "rate_limit_per_minute": None,
                "page_size": 1000,
            }
        },
    )
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    reports, profile = profiled(lambda: sync(settings), spec.get("profile", False))
    seconds = time.perf_counter() - t0
    report = reports[0]
    return {
        "seconds": seconds,
        "counts": {k: v for k, v in report.counts().items() if k != "streams"},
        "per_stream": {
            s.stream: {
                "read": s.read,
                "new": s.new,
                "changed": s.changed,
                "s": round(s.seconds, 2),
            }
            for s in report.streams
        },
        "ok": report.ok,
        "error": report.first_error(),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "profile": profile,
    }


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; a phase over its time limit is stopped."""
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {
            "error": f"timed out after {timeout:.0f} s",
            "seconds": time.perf_counter() - started,
        }
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "seconds": 0.0}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- the fake Alyx side (parent process) -----------------------------------------------------------


def expected_pages(colony: Any, page_size: int) -> int:
    """List pages the colony needs at ``page_size``: nickname-keyed streams are read per lab."""
    labs = list(colony.table("lab").values())
    subject_lab = {s.id: s.lab for s in colony.table("subject").values()}
    pages = 0
    for kind in (
        "lab",
        "user",
        "project",
        "procedure",
        "watertype",
        "subject",
        "session",
    ):
        pages += max(1, math.ceil(colony.count(kind) / page_size))
    for kind in ("weighing", "wateradmin", "waterrestriction", "surgery"):
        per_lab = Counter(subject_lab.get(r.subject) for r in colony.table(kind).values())
        pages += sum(max(1, math.ceil(per_lab.get(lab.id, 0) / page_size)) for lab in labs)
    return pages + len(_PER_LAB_LAB_LISTS)


# Each nickname-keyed stream first lists the labs (one page each time).
_PER_LAB_LAB_LISTS = (
    "weighings",
    "water_administrations",
    "water_restrictions",
    "surgeries",
)


def changed_since_requests(alyx: Any) -> int | None:
    """List requests of the sessions' changed-since query (``auto_datetime__gte``, in slices
    when it leaves out held versions); None when the server's log no longer holds them all."""
    log = alyx.request_log
    if len(log) < alyx.requests:
        return None
    return sum(1 for r in log if r.path.endswith("/sessions") and "auto_datetime__gte" in r.query)


def count_requests(alyx: Any) -> int | None:
    """One-row requests of the session list for its count (a full scan's check that nothing
    was deleted); None when the server's log no longer holds them all."""
    log = alyx.request_log
    if len(log) < alyx.requests:
        return None
    return sum(
        1
        for r in log
        if r.path.endswith("/sessions") and parse_qs(r.query).get("limit") == ["1"]
        and "django" not in parse_qs(r.query)
    )  # fmt: skip


def mutate_one_percent(colony: Any) -> dict[str, int]:
    """Modify 1% of subjects and sessions, and record 1% more weighings."""
    subjects = colony.ids("subject")[::100]
    for i, sid in enumerate(subjects):
        colony.modify_subject(sid, description=f"benchmark edit {i}")
    sessions = colony.ids("session")[::100]
    for i, sid in enumerate(sessions):
        colony.modify_session(sid, narrative=f"benchmark edit {i}")
    owners = colony.ids("subject")
    n_weighings = max(1, colony.count("weighing") // 100)
    for i in range(n_weighings):
        colony.add_weighing(owners[i % len(owners)], 20.0 + (i % 50) / 10)
    return {
        "subjects": len(subjects),
        "sessions": len(sessions),
        "weighings": n_weighings,
    }


def bench_alyx(
    args: argparse.Namespace, backends: dict[str, str], rows: list[dict[str, Any]]
) -> None:
    from limsync.testing import Colony, FakeAlyx

    n_subjects = max(10, round(FULL_SUBJECTS * args.scale))
    t0 = time.perf_counter()
    base = Colony.generate(
        seed=7, n_subjects=n_subjects, sessions_per_subject=5, weighings_per_subject=10
    )
    print(
        f"# colony: {n_subjects} subjects, {base.count('session')} sessions, "
        f"{base.count('weighing')} weighings, {base.count('wateradmin')} water admins "
        f"(generated in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    for backend, url in backends.items():
        # A fresh colony per backend: the previous backend's mutations must not carry over.
        colony = (
            base
            if backend == next(iter(backends))
            else Colony.generate(
                seed=7,
                n_subjects=n_subjects,
                sessions_per_subject=5,
                weighings_per_subject=10,
            )
        )
        prefix = f"bench_{uuid.uuid4().hex[:8]}_"
        with FakeAlyx(colony, max_limit=1000) as alyx:
            for phase in PHASES:
                note = ""
                if phase == "changed":
                    note = "mutated " + json.dumps(mutate_one_percent(colony))
                pages = expected_pages(colony, 1000)
                alyx.reset_counters()
                spec = {
                    "kind": "alyx",
                    "url": url,
                    "prefix": prefix,
                    "alyx_url": alyx.url,
                    "profile": args.profile and phase in args.profile_phases,
                }
                res = run_child(spec, args.timeout)
                by_route = alyx.requests_by_route
                detail = sum(v for k, v in by_route.items() if k.endswith("/{key}"))
                other = by_route.get("POST /auth-token", 0) + by_route.get("GET /api/schema", 0)
                res.update(
                    requests=alyx.requests,
                    detail_requests=detail,
                    list_requests=alyx.requests - detail - other,
                    changed_requests=changed_since_requests(alyx),
                    count_requests=count_requests(alyx),
                    other_requests=other,
                    pages=pages,
                )
                rows.append(_row("alyx", backend, phase, res, note))
                _print_row(rows[-1])
        drop_schemas(url, prefix)


def bench_engine(
    args: argparse.Namespace, backends: dict[str, str], rows: list[dict[str, Any]]
) -> None:
    for backend, url in backends.items():
        prefix = f"bench_{uuid.uuid4().hex[:8]}_"
        for phase in PHASES:
            spec = {
                "kind": "engine",
                "url": url,
                "prefix": prefix,
                "phase": phase,
                "records": args.records,
                "profile": args.profile and phase in args.profile_phases,
            }
            rows.append(_row("engine", backend, phase, run_child(spec, args.timeout), ""))
            _print_row(rows[-1])
        drop_schemas(url, prefix)


# -- results ---------------------------------------------------------------------------------------


def _row(part: str, backend: str, phase: str, res: dict[str, Any], note: str) -> dict[str, Any]:
    counts = res.get("counts", {})
    read = counts.get("read", 0)
    seconds = res.get("seconds", 0.0)
    return {
        "part": part,
        "backend": backend,
        "phase": phase,
        "seconds": seconds,
        "read": read,
        "rate": read / seconds if seconds else 0.0,
        "counts": counts,
        "note": note,
        **{k: v for k, v in res.items() if k not in ("counts", "seconds")},
    }


def _print_row(r: dict[str, Any]) -> None:
    if r.get("error") and not r.get("counts"):
        print(
            f"{r['part']:7} {r['backend']:7} {r['phase']:10} FAILED: {r['error']}",
            flush=True,
        )
        return
    c = r["counts"]
    http = ""
    if "requests" in r:
        changed, counts = r.get("changed_requests"), r.get("count_requests")
        http = (
            f"{r['requests']:>6}/{r['pages']:<5} (list {r['list_requests']} incl. changed-since "
            f"{'?' if changed is None else changed} and count {'?' if counts is None else counts}"
            f", detail {r['detail_requests']}, "
            f"login+schema {r['other_requests']})"
        )
    # CPU seconds of this process (the database server's work is not in them): steadier than
    # wall time on a loaded machine.
    cpu = f"{r['cpu_seconds']:7.2f}" if "cpu_seconds" in r else f"{'':7}"
    print(
        f"{r['part']:7} {r['backend']:7} {r['phase']:10} {r['seconds']:8.2f} {cpu} {r['read']:>8} "
        f"{r['rate']:>9.0f} {r['peak_rss_mb']:>7.0f} {r['rss_before_mb']:>6.0f} {http:>18}  "
        f"new={c.get('new')} chg={c.get('changed')} unch={c.get('unchanged')} "
        f"q={c.get('quarantined')} ins={c.get('inserted')} upd={c.get('updated')}"
        f"{'  ERROR: ' + str(r['error']) if r.get('error') else ''} {r['note']}",
        flush=True,
    )
    if r.get("per_stream"):
        print("        streams: " + json.dumps(r["per_stream"]), flush=True)
    if r.get("profile"):
        print(r["profile"], flush=True)


HEADER = (
    f"{'part':7} {'backend':7} {'phase':10} {'seconds':>8} {'cpu s':>7} {'records':>8} "
    f"{'records/s':>9} "
    f"{'RSS MB':>7} {'base':>6} {'HTTP requests/pages':>18}  outcome"
)


def drop_schemas(url: str, prefix: str) -> None:
    """Drop every schema named with ``prefix`` (MariaDB/MySQL); SQLite files go with their dir."""
    engine = sa.create_engine(url)
    if engine.dialect.name not in ("mysql", "mariadb"):
        engine.dispose()
        return
    try:
        with engine.begin() as conn:
            names = [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
                    (prefix.replace("_", "\\_") + "%",),
                )
            ]
            # The schemas reference each other: drop them without foreign key checks.
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            for name in names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
    finally:
        engine.dispose()


def reachable(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return True
    except sa.exc.DBAPIError as exc:
        print(f"# skipping {url.split('@')[-1]}: {type(exc).__name__}", flush=True)
        return False
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--scale",
        type=float,
        default=0.1,
        help="colony size relative to 20k subjects/100k sessions/200k weighings",
    )
    parser.add_argument("--records", type=int, default=100_000, help="engine-only items")
    parser.add_argument(
        "--parts", nargs="+", choices=("alyx", "engine"), default=["alyx", "engine"]
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("sqlite", "mysql"),
        default=["sqlite", "mysql"],
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument("--quick", action="store_true", help="a small run (scale 0.01, 5k items)")
    parser.add_argument("--profile", action="store_true", help="cProfile the child phases")
    parser.add_argument("--profile-phases", nargs="+", default=list(PHASES), choices=PHASES)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = child_alyx(spec) if spec["kind"] == "alyx" else child_engine(spec)
        print(json.dumps(result))
        return
    if args.quick:
        args.scale, args.records, args.timeout = 0.01, 5_000, min(args.timeout, 120.0)
    with tempfile.TemporaryDirectory(prefix="limsync-bench-") as tmp:
        backends: dict[str, str] = {}
        for b in args.backends:
            if b == "sqlite":
                backends[b] = f"sqlite:///{Path(tmp) / 'bench.db'}"
            elif os.environ.get(MYSQL_ENV) and reachable(os.environ[MYSQL_ENV]):
                backends[b] = os.environ[MYSQL_ENV]
            elif not os.environ.get(MYSQL_ENV):
                print(f"# skipping mysql: {MYSQL_ENV} not set", flush=True)
        rows: list[dict[str, Any]] = []
        print(f"host speed probe: {host_speed():.3f} s (measure.host_speed; lower is faster)")
        print(HEADER, flush=True)
        for part in args.parts:
            per_part = {b: (u.replace("bench.db", f"{part}.db")) for b, u in backends.items()}
            (bench_alyx if part == "alyx" else bench_engine)(args, per_part, rows)
    failed = [r for r in rows if r.get("error")]
    print(f"# {len(rows)} phases, {len(failed)} with errors", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
