"""Benchmark: limsync's batched upsert against the raw driver, on SQLite, MariaDB, PostgreSQL.

A realistic subject/session pair (sessions reference subjects; uuid, datetime, json, float
columns). For each backend, N sessions (and N/10 subjects) are written:

1. first load into empty tables,
2. the same rows again (all unchanged),
3. the same rows with 1% changed,

and, as the baseline, the raw driver: ``executemany`` of the dialect's own upsert statement
in batches of 1,000 (the first load, into fresh tables). Each measurement runs in its own
process so its peak RSS is its own; rows are generated lazily, so a bounded peak at 10x the
rows shows memory does not grow with the data.

    python benchmarks/upsert.py --rows 100000 --backends sqlite mysql postgres
    python benchmarks/upsert.py --rows 20000 --backends mysql --profile unchanged   # cProfile
    python benchmarks/upsert.py --rows 100000 --backends sqlite --memory-keys none  # no spill

"cpu s" is the child's own CPU time (user + system) in the measured section: the Python side,
less disturbed than wall time by other processes on a shared machine (the database server's
work is not in it). Server URLs come from LIMSYNC_TEST_MYSQL_URL / LIMSYNC_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field

from limsync.pipeline import Database, Key, Manual, Ref, Schema, upsert
from limsync.pipeline.upsert import DEFAULT_MEMORY_KEYS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import cpu_seconds, host_speed, peak_rss_mb, profiled

bench = Schema("bench")


class Subject(Manual):
    """Benchmark subject."""

    __schema__ = bench
    subject_uuid: Annotated[uuid.UUID, Key]
    nickname: Annotated[str, Field(max_length=64)]
    lab_name: Annotated[str, Field(max_length=64)]
    birth_date: dt.date | None = None


class Session(Manual):
    """Benchmark session."""

    __schema__ = bench
    __references__ = (Ref(Subject),)
    session_uuid: Annotated[uuid.UUID, Key]
    start_time: dt.datetime
    number: int
    task_protocol: Annotated[str, Field(max_length=255)]
    n_trials: int | None = None
    performance: float | None = None
    extended_qc: dict[str, Any] | None = None


def subjects(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {
            "subject_uuid": uuid.UUID(int=i + 1), "nickname": f"SUBJ{i:06d}",
            "lab_name": f"lab{i % 7}", "birth_date": dt.date(2026, 1, 1) + dt.timedelta(days=i % 300),
        }  # fmt: skip


def sessions(n: int, changed_every: int = 0) -> Iterator[dict[str, Any]]:
    n_subjects = max(1, n // 10)
    t0 = dt.datetime(2026, 1, 1, 9)
    for i in range(n):
        changed = changed_every and i % changed_every == 0
        yield {
            "session_uuid": uuid.UUID(int=10**9 + i), "subject_uuid": uuid.UUID(int=i % n_subjects + 1),
            "start_time": t0 + dt.timedelta(minutes=i), "number": i % 5 + 1,
            "task_protocol": "_iblrig_tasks_trainingChoiceWorld6.4.2",
            "n_trials": 400 + i % 300 + (1 if changed else 0), "performance": (i % 100) / 100,
            "extended_qc": {"task": "PASS", "behavior": i % 2},
        }  # fmt: skip


def run_limsync(
    url: str, prefix: str, n: int, phase: str, profile: bool, memory_keys: int | None
) -> dict[str, Any]:
    db = Database(url, schema_prefix=prefix)
    db.declare(bench)
    changed_every = 100 if phase == "changed" else 0

    def load() -> Any:
        with db.transaction() as conn:
            upsert(db, conn, Subject, subjects(max(1, n // 10)))
        with db.transaction() as conn:
            return upsert(db, conn, Session, sessions(n, changed_every), memory_keys=memory_keys)

    cpu, started = cpu_seconds(), time.perf_counter()
    cs, report = profiled(load, profile, own=25, cumulative=30)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    db.dispose()
    return {"seconds": seconds, "cpu": cpu, "counts": cs.counts(), "rss_mb": peak_rss_mb(),
            "profile": report}  # fmt: skip


def run_raw(url: str, prefix: str, n: int) -> dict[str, Any]:
    """executemany of the dialect's own upsert statement, batches of 1,000 (first load)."""
    db = Database(url, schema_prefix=prefix)
    db.declare(bench)
    codec_s = db.codecs(Subject.spec)
    codec_x = db.codecs(Session.spec)
    cpu, started = cpu_seconds(), time.perf_counter()
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        for spec, codecs, rows in (
            (Subject.spec, codec_s, subjects(max(1, n // 10))),
            (Session.spec, codec_x, sessions(n)),
        ):
            cols = spec.column_names
            p = "?" if db.dialect == "sqlite" else "%s"
            head = f"INSERT INTO {db.qualified(spec)} ({', '.join(db.quote(c) for c in cols)}) VALUES ({', '.join([p] * len(cols))})"
            rest = [c for c in cols if c not in spec.primary_key]
            if db.dialect == "mysql":
                sql = (
                    head
                    + " ON DUPLICATE KEY UPDATE "
                    + ", ".join(f"{db.quote(c)}=VALUES({db.quote(c)})" for c in rest)
                )
            else:
                pk = ", ".join(db.quote(c) for c in spec.primary_key)
                sql = (
                    head
                    + f" ON CONFLICT ({pk}) DO UPDATE SET "
                    + ", ".join(f"{db.quote(c)}=excluded.{db.quote(c)}" for c in rest)
                )
            batch: list[tuple[Any, ...]] = []
            for row in rows:
                batch.append(tuple(c.encode(row.get(k)) for c, k in zip(codecs, cols, strict=True)))
                if len(batch) == 1000:
                    cur.executemany(sql, batch)
                    batch = []
            if batch:
                cur.executemany(sql, batch)
        raw.commit()
    finally:
        raw.close()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    db.dispose()
    return {"seconds": seconds, "cpu": cpu, "rss_mb": peak_rss_mb()}


def child(args: argparse.Namespace) -> None:
    if args.phase == "raw":
        result = run_raw(args.url, args.prefix, args.rows)
    else:
        result = run_limsync(
            args.url, args.prefix, args.rows, args.phase, args.phase in args.profile,
            _memory_keys(args.memory_keys),
        )  # fmt: skip
    print(json.dumps(result))


def drop(url: str, prefix: str) -> None:
    db = Database(url, schema_prefix=prefix)
    if db.dialect != "sqlite":
        if db.dialect == "mysql":
            with db.engine.begin() as c:
                c.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
                c.exec_driver_sql(f"DROP DATABASE IF EXISTS `{prefix}bench`")
        else:
            db.drop_schemas([f"{prefix}bench"])
    db.dispose()


def _memory_keys(text: str) -> int | None:
    return None if text == "none" else int(text)


def measure(
    url: str, prefix: str, rows: int, phase: str, profile: list[str], memory_keys: str
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--url", url, "--prefix", prefix, "--rows", str(rows), "--phase", phase,
         "--memory-keys", memory_keys, "--profile", *profile],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "mysql", "postgres"])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--url")
    ap.add_argument("--prefix", default="bench_")
    ap.add_argument("--phase", default="first")
    ap.add_argument(
        "--profile",
        nargs="*",
        default=[],
        choices=["first", "unchanged", "changed"],
        help="cProfile these phases (printed after the table)",
    )
    ap.add_argument(
        "--memory-keys",
        default=str(DEFAULT_MEMORY_KEYS),
        help="upsert's memory_keys: keys held in memory before they spill to a file ('none': never)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="measure every backend this many times")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    tmp = tempfile.mkdtemp()
    urls = {
        "sqlite": lambda tag: f"sqlite:///{tmp}/{tag}.db",
        "mysql": lambda tag: os.environ["LIMSYNC_TEST_MYSQL_URL"],
        "postgres": lambda tag: os.environ["LIMSYNC_TEST_POSTGRES_URL"],
    }
    total = args.rows + args.rows // 10
    print(f"host speed probe: {host_speed():.3f} s (measure.host_speed; lower is faster)")
    print(
        f"{'backend':9} {'phase':10} {'seconds':>8} {'cpu s':>6} {'rows/s':>9} {'peak RSS MB':>12}  detail"
    )
    profiles: list[str] = []
    for backend in [b for _ in range(args.repeat) for b in args.backends]:
        url_ours, url_raw = urls[backend]("ours"), urls[backend]("raw")
        prefix, raw_prefix = f"bu{os.getpid()}_", f"br{os.getpid()}_"
        try:
            raw = measure(url_raw, raw_prefix, args.rows, "raw", [], args.memory_keys)
            results = [("raw", raw)]
            for phase in ("first", "unchanged", "changed"):
                results.append(
                    (
                        phase,
                        measure(url_ours, prefix, args.rows, phase, args.profile, args.memory_keys),
                    )
                )
            for phase, r in results:
                detail = (
                    json.dumps(r.get("counts", ""))
                    if phase != "raw"
                    else "executemany, batches of 1000"
                )
                print(
                    f"{backend:9} {phase:10} {r['seconds']:8.2f} {r['cpu']:6.2f} {total / r['seconds']:9.0f} {r['rss_mb']:12.0f}  {detail}",
                    flush=True,
                )
                if r.get("profile"):
                    profiles.append(f"--- {backend} {phase} ---\n{r['profile']}")
            got = dict(results)
            first, unchanged = got["first"], got["unchanged"]
            print(f"{backend:9} first load / raw = {first['seconds'] / raw['seconds']:.2f}x "
                  f"(cpu {first['cpu'] / raw['cpu']:.2f}x); "
                  f"first / unchanged = {first['seconds'] / unchanged['seconds']:.1f}x "
                  f"(cpu {first['cpu'] / unchanged['cpu']:.1f}x)", flush=True)  # fmt: skip
        finally:
            drop(url_ours, prefix)
            drop(url_raw, raw_prefix)
    for text in profiles:
        print(text)


if __name__ == "__main__":
    main()
