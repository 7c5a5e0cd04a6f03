"""Benchmark: limsync's populate against DataJoint's, on MariaDB and PostgreSQL.

N upstream keys (an ``Item`` Manual table) and a Computed table with one float column:

* **trivial make** (returns one row): one worker, four workers (the caller starts the other
  processes only when the work left is worth it, so here it works alone), and four processes
  forced from the start; for one process, the time per key minus the time spent inside
  ``make`` is populate's own bookkeeping (refresh of the job table, claims, writes);
* **10 ms make** (``time.sleep(0.01)``, I/O-like): one and four workers, 2,000 and 10,000
  keys, for the speed-up;
* **DataJoint** (``datajoint`` 2.x): ``populate()`` of the same tables declared with DataJoint,
  trivial ``make`` with ``self.insert1``, ``reserve_jobs=False`` and ``True``. MariaDB/MySQL
  only, unless ``psycopg2`` (DataJoint's PostgreSQL driver) is installed.

Each measurement runs in a fresh schema and its wall time includes the refresh (key source,
job rows) and the start-up of worker processes (the fork server is started by the first
multi-process run of this script and reused by later ones, as in a long-running daemon).

    PYTHONPATH=. python benchmarks/populate.py --keys 10000 --sleepy-keys 2000 10000

Server URLs come from LIMSYNC_TEST_MYSQL_URL / LIMSYNC_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import uuid
from typing import Annotated, Any

from limsync.errors import ConfigError
from limsync.pipeline import Computed, Database, Key, Manual, Ref, Schema, upsert
from limsync.pipeline.populate import populate
from limsync.pipeline.populate import run as run_mod
from limsync.pipeline.tables import MakeResult

bench = Schema("popbench")


class Item(Manual):
    """Upstream keys."""

    __schema__ = bench
    item_id: Annotated[int, Key]
    value: float


class Trivial(Computed):
    """One row per key, no work."""

    __schema__ = bench
    __references__ = (Ref(Item, key=True),)
    result: float

    def make(self, key: dict[str, Any]) -> MakeResult:
        return [{"result": 1.0}]


class Sleepy(Computed):
    """One row per key after 10 ms of waiting (I/O-like work)."""

    __schema__ = bench
    __references__ = (Ref(Item, key=True),)
    result: float

    def make(self, key: dict[str, Any]) -> MakeResult:
        time.sleep(0.01)
        return [{"result": 1.0}]


URLS = {"mysql": "LIMSYNC_TEST_MYSQL_URL", "postgres": "LIMSYNC_TEST_POSTGRES_URL"}


def _fresh(url: str, n: int) -> Database:
    db = Database(url, schema_prefix=f"b{uuid.uuid4().hex[:6]}_")
    db.declare(bench)
    with db.transaction() as conn:
        upsert(db, conn, Item, ({"item_id": i, "value": float(i)} for i in range(n)))
    return db


def _drop(db: Database) -> None:
    db.drop_schemas([db.physical_schema("popbench"), db.physical_schema("limsync")])
    db.dispose()


def limsync_run(
    url: str, n: int, table: type[Computed], workers: int, *, force: bool = False
) -> dict[str, Any]:
    """One populate of ``table`` over ``n`` fresh keys.

    ``force`` starts every worker process at once, even when one process would be faster.
    """
    db = _fresh(url, n)
    spawn_after = run_mod.SPAWN_AFTER_SECONDS
    try:
        if force:
            run_mod.SPAWN_AFTER_SECONDS = 0.0
        started = time.perf_counter()
        report = populate(db, [table], workers=workers)
        wall = time.perf_counter() - started
        tr = report.tables[0]
        assert tr.made == n, tr
        return {"wall": wall, "make": tr.make_seconds, "made": tr.made, "procs": tr.processes}
    finally:
        run_mod.SPAWN_AFTER_SECONDS = spawn_after
        _drop(db)


def datajoint_run(url: str, n: int, reserve: bool) -> dict[str, Any] | None:
    """DataJoint's populate of the same trivial table; None when datajoint is missing."""
    try:
        from limsync.pipeline.dj import configure_datajoint, import_datajoint

        dj = import_datajoint()
    except (ImportError, ConfigError):
        return None
    target = Database(url)
    try:
        # The same connection set-up as limsync's own DataJoint hook (limsync.pipeline.dj).
        configure_datajoint(dj, target)
    finally:
        target.dispose()
    name = f"djbench_{uuid.uuid4().hex[:6]}"
    schema = dj.Schema(name)

    @schema
    class DjItem(dj.Manual):
        definition = """
        item_id: int32
        ---
        value: float64
        """

    @schema
    class DjTrivial(dj.Computed):
        definition = """
        -> DjItem
        ---
        result: float64
        """

        def make(self, key: dict[str, Any]) -> None:
            self.insert1({**key, "result": 1.0})

    DjItem.insert([{"item_id": i, "value": float(i)} for i in range(n)])
    started = time.perf_counter()
    DjTrivial.populate(reserve_jobs=reserve, display_progress=False)
    wall = time.perf_counter() - started
    assert len(DjTrivial()) == n
    schema.drop(prompt=False) if "prompt" in schema.drop.__code__.co_varnames else schema.drop()
    return {"wall": wall}


def main() -> None:
    """Run the measurements and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--sleepy-keys", type=int, nargs="*", default=[2_000, 10_000],
                    help="key counts for the 10 ms make")  # fmt: skip
    ap.add_argument("--backends", nargs="+", default=["mysql", "postgres"])
    ap.add_argument("--no-datajoint", action="store_true")
    args = ap.parse_args()
    print(
        "| backend | run | keys | processes | wall s | make s | ms/key | bookkeeping ms/key "
        "| speed-up |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(backend: str, name: str, n: int, r: dict[str, Any], single: float | None) -> None:
        make = r.get("make")
        procs = r.get("procs")
        # Bookkeeping per key is only meaningful for one process: with several, make times
        # add up across processes while the wall time does not.
        book = (r["wall"] - (make or 0.0)) / n * 1000 if procs in (None, 1) else None
        cells = [
            backend, name, str(n), "" if procs is None else str(procs), f"{r['wall']:.2f}",
            "" if make is None else f"{make:.2f}", f"{r['wall'] / n * 1000:.3f}",
            "" if book is None else f"{book:.3f}",
            "" if single is None else f"{single / r['wall']:.2f}x",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)

    for backend in args.backends:
        url = os.environ.get(URLS[backend])
        if not url:
            print(f"(skipping {backend}: {URLS[backend]} not set)", file=sys.stderr)
            continue
        one = limsync_run(url, args.keys, Trivial, 1)
        row(backend, "limsync trivial, 1 worker", args.keys, one, None)
        four = limsync_run(url, args.keys, Trivial, 4)
        row(backend, "limsync trivial, 4 workers", args.keys, four, one["wall"])
        forced = limsync_run(url, args.keys, Trivial, 4, force=True)
        row(backend, "limsync trivial, 4 processes forced", args.keys, forced, one["wall"])
        for n in args.sleepy_keys:
            one = limsync_run(url, n, Sleepy, 1)
            row(backend, "limsync 10 ms make, 1 worker", n, one, None)
            four = limsync_run(url, n, Sleepy, 4)
            row(backend, "limsync 10 ms make, 4 workers", n, four, one["wall"])
        if args.no_datajoint:
            continue
        if backend == "postgres" and importlib.util.find_spec("psycopg2") is None:
            print("(datajoint on postgres skipped: DataJoint's PostgreSQL backend needs "
                  "psycopg2, which is not installed)", file=sys.stderr)  # fmt: skip
            continue
        for reserve in (False, True):
            try:
                r = datajoint_run(url, args.keys, reserve)
            except Exception as exc:  # report, do not hide: DataJoint 2.x may refuse a backend
                print(f"(datajoint on {backend} failed: {exc})", file=sys.stderr)
                r = None
            if r is not None:
                name = f"datajoint trivial, reserve_jobs={reserve}"
                row(backend, name, args.keys, r, None)


if __name__ == "__main__":
    main()
