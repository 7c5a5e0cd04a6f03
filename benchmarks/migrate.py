"""Benchmark: ``limsync migrate`` of a generated legacy CSV export (subjects and weighings).

A temporary directory gets ``labs.csv``, ``subjects.csv`` (ROWS/10 subjects, latin-1-safe text,
dates as ``dd.mm.yyyy``) and ``weighings.csv`` (the other 9/10 of the rows, decimal commas),
mapped declaratively into ``tests/sync/fixtures/legacy/legacy_pipeline.py`` exactly as the
tests' ``migrate.toml`` does (a lab lookup per subject, date parsing, a value map, a template).
Each backend runs in its own child process, so its peak RSS (``resource.getrusage``) is its own:
the first migration, then the same migration again (nothing changed: everything is skipped by
content hash). ``cpu s`` is the child's own CPU time (the database server's is not in it): on a
shared machine it varies less than the wall-clock time.

    PYTHONPATH=. python benchmarks/migrate.py --rows 1000000 --backends sqlite mysql
    PYTHONPATH=. python benchmarks/migrate.py --rows 100000 --backends sqlite --profile
    PYTHONPATH=. python benchmarks/migrate.py --rows 100000 --backends mysql --statements
    PYTHONPATH=. python benchmarks/migrate.py --rows 1000000 --backends mysql --server-floor
    PYTHONPATH=. python benchmarks/migrate.py --rows 1000000 --backends mysql --server datajoint

``--server-floor`` (MariaDB/MySQL): the first migration's statements are recorded, then
replayed back to back into fresh schemas on one connection, committing where the migration
committed: the server's own time for exactly that work, with no client work between the
statements. The first migration cannot be faster than that.

``--server datajoint`` runs MariaDB/MySQL with the InnoDB settings of DataJoint's own server
image (``datajoint/mysql-docker``'s ``my.cnf``: a 4 GB buffer pool, a 2 GB redo log), set with
``SET GLOBAL`` and restored afterwards; ``--buffer-pool-mb`` sets the buffer pool alone.
MariaDB's defaults (a 128 MB buffer pool, a 96 MB redo log) hold less than a million-row
migration's ledger and tables, so past a few hundred thousand rows each row costs the server
more (see benchmarks/README.md).

MariaDB/MySQL comes from ``LIMSYNC_TEST_MYSQL_URL`` (skipped when unset); its schemas get a
unique ``bench_<random>_`` prefix and are dropped afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "sync" / "fixtures" / "legacy"
MYSQL_ENV = "LIMSYNC_TEST_MYSQL_URL"


def generate(root: Path, rows: int) -> tuple[int, int]:
    """Write the export; returns (subjects, weighings)."""
    subjects = max(1, rows // 10)
    weighings = rows - subjects
    (root / "labs.csv").write_text("Name;Institute\ncortex;UCL\nwitten;Princeton\n")
    with (root / "subjects.csv").open("w", encoding="utf-8") as f:
        f.write("Animal ID;Lab;Sex;DOB;Notes\n")
        for i in range(subjects):
            lab = "cortex" if i % 3 else "witten"
            f.write(
                f"S{i:07d};{lab};{'fm'[i % 2]};{1 + i % 28:02d}.{1 + i % 12:02d}.2020;Käfig {i % 40}\n"
            )
    with (root / "weighings.csv").open("w", encoding="utf-8") as f:
        f.write("Animal ID,Date,Weight (g)\n")
        for j in range(weighings):
            s, n = j % subjects, j // subjects
            day = f"{1 + n % 28:02d}.{1 + (n // 28) % 12:02d}.{2021 + n // 336} {8 + s % 10:02d}:00"
            f.write(f'S{s:07d},{day},"{18 + j % 9},{j % 10}"\n')
    return subjects, weighings


def config(root: Path, url: str, prefix: str, batch_size: int) -> Path:
    text = (FIXTURES / "migrate.toml").read_text()
    text = text.replace('type = "files"', f'type = "files"\nroot = {json.dumps(str(root))}')
    text = text.replace("page_size = 2", "page_size = 5000")
    head = f"database_url = {json.dumps(url)}\nschema_prefix = {json.dumps(prefix)}\n"
    head += f"batch_size = {batch_size}\n"
    path = root / "limsync.toml"
    path.write_text(head + text)
    return path


def child(args: argparse.Namespace) -> None:
    """One backend: migrate twice, print one JSON line per phase."""
    sys.path.insert(0, str(FIXTURES))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from measure import peak_rss_mb

    from limsync.cli.main import own_process
    from limsync.config.settings import load_settings
    from limsync.sync.migrate import migrate

    settings = load_settings(args.config)
    timings = _time_statements() if args.statements else None
    record = _record_statements(args.record) if args.record else None
    own_process()  # as the limsync command does once it has imported everything
    for phase in ("first", "unchanged")[: 1 if args.first_only else 2]:
        profiler = cProfile.Profile() if args.profile and phase == "first" else None
        started = time.perf_counter()
        cpu = time.process_time()
        if profiler:
            profiler.enable()
        result = migrate(settings)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        peak = peak_rss_mb()
        totals = result.reports[0].counts()
        line = {
            "phase": phase, "seconds": round(seconds, 2), "cpu": round(cpu, 2), "read": result.read,
            "rows_per_s": round(result.read / seconds), "peak_rss_mb": round(peak),
            "new": totals["new"], "unchanged": totals["unchanged"], "rejected": result.rejected,
            "ok": result.ok,
        }  # fmt: skip
        print(json.dumps(line), flush=True)
        if record is not None:
            record.close()  # the first migration's statements only
        if timings is not None:
            _print_statements(phase, timings, result.read)
            timings.clear()
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(
                os.environ.get("SORT", "tottime")
            ).print_stats(args.top)
            print(out.getvalue(), file=sys.stderr)


def _time_statements() -> dict[str, list[float]]:
    """Wall time of every statement by kind (its first words, schema prefixes taken out): the
    driver's formatting of parameters (PyMySQL escapes them in ``execute``), the round trip and
    the server's work."""
    from sqlalchemy import event

    timings: dict[str, list[float]] = {}

    @event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def before(conn: Any, *_: Any) -> None:
        conn.info["limsync_bench_t0"] = time.perf_counter()

    @event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seconds = time.perf_counter() - conn.info.pop("limsync_bench_t0")
        kind = re.sub(r"bench_[0-9a-f]+_", "", " ".join(statement.split()[:6]))[:70]
        t = timings.setdefault(kind, [0, 0.0])
        t[0] += 1
        t[1] += seconds

    return timings


def _record_statements(path: Path) -> Any:
    """Pickle every statement and commit of this process's engines to ``path``, in order (the
    write-behind and compare threads too: a lock keeps their records whole)."""
    import pickle
    import threading

    from sqlalchemy import event

    out = path.open("wb")
    lock = threading.Lock()

    def write(item: tuple[str, Any]) -> None:
        with lock:
            if not out.closed:
                pickle.dump(item, out)

    @event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def statement(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        write((sql, parameters))

    @event.listens_for(sa.engine.Engine, "commit")
    def commit(_conn: Any) -> None:
        write(("COMMIT", None))

    return out


def server_floor(url: str, prefix: str, path: Path, records: int) -> None:
    """Replay the recorded statements into fresh schemas and print the server's time."""
    import pickle

    drop_mysql(url, prefix)
    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    cursor = raw.cursor()
    kinds: dict[str, list[float]] = {}
    total, count = 0.0, 0
    # Not replayed: locks, and the savepoints of a batch (their statements all succeeded).
    skip = ("SELECT GET_LOCK", "SELECT RELEASE_LOCK", "SAVEPOINT", "RELEASE SAVEPOINT")
    try:
        with path.open("rb") as f:
            while True:
                try:
                    sql, parameters = pickle.load(f)
                except EOFError:
                    break
                if sql.lstrip().upper().startswith(skip):
                    continue
                started = time.perf_counter()
                if sql == "COMMIT":
                    raw.commit()
                else:
                    query = sql if not parameters else cursor.mogrify(sql, parameters)
                    try:
                        cursor.execute(query)
                        cursor.fetchall()
                    except Exception:
                        # As in the migration: asking for tables before they are declared.
                        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
                            raise
                seconds = time.perf_counter() - started
                kind = re.sub(r"bench_[0-9a-f]+_", "", " ".join(sql.split()[:4]))[:60]
                k = kinds.setdefault(kind, [0, 0.0])
                k[0] += 1
                k[1] += seconds
                total += seconds
                count += 1
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    print(
        f"server floor: {count:,} statements replayed in {total:.1f} s, "
        f"{records / total:,.0f} records/s at most"
    )
    for kind, (n, seconds) in sorted(kinds.items(), key=lambda x: -x[1][1])[:6]:
        print(f"  {seconds:7.2f} s {int(n):6d}x  {kind}")


def _print_statements(phase: str, timings: dict[str, list[float]], records: int) -> None:
    total = sum(t for _, t in timings.values())
    out = [
        f"statements of phase {phase}: {total:.2f} s in all, {1e6 * total / records:.0f} us a record"
    ]
    for kind, (n, seconds) in sorted(timings.items(), key=lambda x: -x[1][1])[:12]:
        out.append(
            f"  {seconds:7.2f} s {int(n):6d}x {1e6 * seconds / records:6.1f} us/record  {kind}"
        )
    print("\n".join(out), file=sys.stderr, flush=True)


def drop_mysql(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
                (prefix.replace("_", "\\_") + "%",),
            )
        ]
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        for n in names:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{n}`")
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
    engine.dispose()


# The InnoDB settings of DataJoint's own MySQL server image (datajoint/mysql-docker, my.cnf),
# the server a DataJoint lab is told to run; the rest of that file does not bear on speed.
SERVER_PRESETS: dict[str, dict[str, int]] = {
    "default": {},
    "datajoint": {
        "innodb_buffer_pool_size": 4 << 30,
        "innodb_log_file_size": 2 << 30,
        "max_allowed_packet": 512 << 20,
    },
}


def server_settings(url: str, settings: dict[str, int]) -> dict[str, int]:
    """Set MariaDB/MySQL global variables (online, server-wide); returns their values before.

    A buffer pool resize runs in the background: this waits until it is done.
    """
    engine = sa.create_engine(url)
    before: dict[str, int] = {}
    with engine.connect() as conn:
        for name, value in settings.items():
            before[name] = int(conn.exec_driver_sql(f"SELECT @@GLOBAL.{name}").scalar_one())
            conn.exec_driver_sql(f"SET GLOBAL {name} = {int(value)}")
        for _ in range(300 if "innodb_buffer_pool_size" in settings else 0):
            time.sleep(0.1)
            status = conn.exec_driver_sql(
                "SHOW STATUS LIKE 'Innodb_buffer_pool_resize_status'"
            ).fetchone()
            if status is None or not status[1] or "complete" in str(status[1]).lower():
                break
    engine.dispose()
    return before


def run_backend(
    cmd: list[str], backend: str, url: str, prefix: str, recorded: Path, args: argparse.Namespace
) -> subprocess.CompletedProcess[str] | None:
    """Run one backend's child, print its phases (and the server floor); None on a timeout."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"{backend}: timed out after {args.timeout:.0f} s")
        return None
    finally:
        if backend == "mysql":
            drop_mysql(url, prefix)
    for raw in proc.stdout.splitlines():
        r: dict[str, Any] = json.loads(raw)
        detail = f"new {r['new']:,}, unchanged {r['unchanged']:,}, rejected {r['rejected']}"
        print(
            f"{backend:8} {r['phase']:10} {r['seconds']:8.1f} {r['rows_per_s']:8,} "
            f"{r['cpu']:6.1f} {1e6 * r['cpu'] / max(1, r['read']):10.0f} "
            f"{r['peak_rss_mb']:12,}  {detail}"
        )
        if not r["ok"]:
            proc.returncode = proc.returncode or 1
    if backend == "mysql" and args.server_floor and recorded.exists():
        try:
            server_floor(url, prefix, recorded, args.rows)
        finally:
            recorded.unlink()
            drop_mysql(url, prefix)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mysql"])
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="cProfile the first migration")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    parser.add_argument(
        "--statements", action="store_true", help="time the SQL statements of each phase, by kind"
    )
    parser.add_argument(
        "--server-floor",
        action="store_true",
        help="MariaDB/MySQL: replay the first migration's statements alone (see above)",
    )
    parser.add_argument(
        "--server",
        choices=sorted(SERVER_PRESETS),
        default="default",
        help="MariaDB/MySQL: run with these server settings (SET GLOBAL; restored after): "
        "'datajoint' is DataJoint's server image (4 GB buffer pool, 2 GB redo log)",
    )
    parser.add_argument(
        "--buffer-pool-mb",
        type=int,
        help="MariaDB/MySQL: run with this innodb_buffer_pool_size (SET GLOBAL; restored after)",
    )
    parser.add_argument(
        "--first-only", action="store_true", help="skip the unchanged re-run (e.g. under py-spy)"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    failed = False
    with tempfile.TemporaryDirectory(prefix="limsync-migrate-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        subjects, weighings = generate(root, args.rows)
        size = sum(p.stat().st_size for p in root.glob("*.csv")) / 1e6
        print(
            f"export: {subjects:,} subjects + {weighings:,} weighings, {size:.0f} MB, "
            f"written in {time.perf_counter() - started:.1f} s"
        )
        from measure import host_speed  # this script's folder is first on sys.path

        print(f"host speed probe: {host_speed():.3f} s (measure.host_speed; lower is faster)")
        print(
            f"{'backend':8} {'phase':10} {'seconds':>8} {'rows/s':>8} {'cpu s':>6} {'cpu us/row':>10} "
            f"{'peak RSS MB':>12}  detail"
        )
        for backend in args.backends:
            prefix = f"bench_{uuid.uuid4().hex[:6]}_"
            if backend == "sqlite":
                url = f"sqlite:///{root / 'pipeline.db'}"
            elif backend == "mysql":
                url = os.environ.get(MYSQL_ENV, "")
                if not url:
                    print(f"mysql: skipped ({MYSQL_ENV} not set)")
                    continue
            else:
                print(f"{backend}: unknown backend")
                failed = True
                continue
            path = config(root, url, prefix, args.batch_size)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--config",
                str(path),
                "--top",
                str(args.top),
            ]
            if args.profile:
                cmd.append("--profile")
            if args.first_only:
                cmd.append("--first-only")
            if args.statements:
                cmd.append("--statements")
            recorded = root / "statements.pickle"
            if args.server_floor and backend == "mysql":
                cmd += ["--record", str(recorded)]
            wanted = dict(SERVER_PRESETS[args.server]) if backend == "mysql" else {}
            if args.buffer_pool_mb and backend == "mysql":
                wanted["innodb_buffer_pool_size"] = args.buffer_pool_mb << 20
            before = server_settings(url, wanted) if wanted else {}
            if wanted:
                print("mysql: " + ", ".join(
                    f"{k} {v >> 20} MB (was {before[k] >> 20})" for k, v in wanted.items()
                ))  # fmt: skip
            try:
                proc = run_backend(cmd, backend, url, prefix, recorded, args)
            finally:
                if before:
                    server_settings(url, before)
            if proc is None:
                failed = True
                continue
            if proc.returncode != 0 or args.profile or args.statements:
                sys.stdout.flush()
                print(proc.stderr[-20000:], file=sys.stderr)
            failed |= proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
