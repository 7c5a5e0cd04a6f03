"""Benchmark: limsync's populate against DataJoint's, on MariaDB and PostgreSQL.

N upstream keys (an ``Item`` Manual table) and a Computed table with one float column:

* **trivial make** (returns one row): one worker and four workers; the time per key minus the
  time spent inside ``make`` is populate's own bookkeeping (claiming, writing, job rows);
* **10 ms make** (``time.sleep(0.01)``, I/O-like): one and four workers, for the speed-up;
* **DataJoint** (``datajoint`` 2.x): ``populate()`` of the same tables declared with DataJoint,
  trivial ``make`` with ``self.insert1``, ``reserve_jobs=False`` and ``True``.

Each measurement runs in a fresh schema; worker processes are included in the wall time
(spawn and imports: about a second per run on this machine).

    PYTHONPATH=. python benchmarks/populate.py --keys 10000 --backends mysql postgres

Server URLs come from LIMSYNC_TEST_MYSQL_URL / LIMSYNC_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Annotated, Any

import sqlalchemy as sa

from limsync.pipeline import Computed, Database, Key, Manual, Ref, Schema, upsert
from limsync.pipeline.populate import populate
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


def limsync_run(url: str, n: int, table: type[Computed], workers: int) -> dict[str, Any]:
    """One populate of ``table`` over ``n`` fresh keys."""
    db = _fresh(url, n)
    try:
        started = time.perf_counter()
        report = populate(db, [table], workers=workers)
        wall = time.perf_counter() - started
        tr = report.tables[0]
        assert tr.made == n, tr
        return {"wall": wall, "make": tr.make_seconds, "made": tr.made}
    finally:
        _drop(db)


def datajoint_run(url: str, n: int, reserve: bool) -> dict[str, Any] | None:
    """DataJoint's populate of the same trivial table; None when datajoint is missing."""
    try:
        import datajoint as dj
    except ImportError:
        return None
    parsed = sa.engine.make_url(url)
    dj.config["database.host"] = parsed.host or "127.0.0.1"
    dj.config["database.port"] = parsed.port
    dj.config["database.user"] = parsed.username
    dj.config["database.password"] = parsed.password or ""
    backend = "postgresql" if parsed.get_backend_name() == "postgresql" else "mysql"
    if "database.backend" in dj.config:
        dj.config["database.backend"] = backend
    if backend == "postgresql":
        dj.config["database.name"] = parsed.database
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
    ap.add_argument("--sleepy-keys", type=int, default=2_000, help="keys for the 10 ms make")
    ap.add_argument("--backends", nargs="+", default=["mysql", "postgres"])
    ap.add_argument("--no-datajoint", action="store_true")
    args = ap.parse_args()
    print("| backend | run | keys | wall s | make s | ms/key | bookkeeping ms/key |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for backend in args.backends:
        url = os.environ.get(URLS[backend])
        if not url:
            print(f"(skipping {backend}: {URLS[backend]} not set)", file=sys.stderr)
            continue
        runs: list[tuple[str, int, dict[str, Any] | None]] = [
            ("limsync trivial, 1 worker", args.keys, limsync_run(url, args.keys, Trivial, 1)),
            ("limsync trivial, 4 workers", args.keys, limsync_run(url, args.keys, Trivial, 4)),
            ("limsync 10 ms make, 1 worker", args.sleepy_keys,
             limsync_run(url, args.sleepy_keys, Sleepy, 1)),
            ("limsync 10 ms make, 4 workers", args.sleepy_keys,
             limsync_run(url, args.sleepy_keys, Sleepy, 4)),
        ]  # fmt: skip
        if not args.no_datajoint:
            for reserve in (False, True):
                try:
                    r = datajoint_run(url, args.keys, reserve)
                except Exception as exc:  # report, do not hide: DataJoint 2.x may refuse a backend
                    print(f"(datajoint on {backend} failed: {exc})", file=sys.stderr)
                    r = None
                runs.append((f"datajoint trivial, reserve_jobs={reserve}", args.keys, r))
        for name, n, r in runs:
            if r is None:
                continue
            make = r.get("make")
            book = (r["wall"] - make) / n * 1000 if make is not None else r["wall"] / n * 1000
            print(
                f"| {backend} | {name} | {n} | {r['wall']:.2f} | "
                f"{'' if make is None else f'{make:.2f}'} | {r['wall'] / n * 1000:.3f} | {book:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
