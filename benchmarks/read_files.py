"""Benchmark: the files connector alone, reading a generated legacy CSV export.

The export is ``migrate.py``'s (``generate``: ROWS/10 subjects in ``subjects.csv`` with ``;``,
the other 9/10 weighings in ``weighings.csv`` with ``,`` and quoted decimal commas; no delimiter
declared, so it is detected). Each stream is read as the engine reads it: the connector's
``read()`` pages (``page_size = 5000``, full scan, duplicate tracking), then
``stream.model.model_validate(raw)`` per record. No database, no mapping.

Each measurement runs in its own child process, so its peak RSS (``ru_maxrss``, interpreter
and imports included) is its own; ``base`` is the RSS after imports, before reading.

    PYTHONPATH=. python benchmarks/read_files.py --rows 1000000
    PYTHONPATH=. python benchmarks/read_files.py --rows 200000 --profile          # cProfile
    PYTHONPATH=. python benchmarks/read_files.py --rows 1000000 --tracemalloc     # Python heap

``--tracemalloc`` reports the peak of Python allocations during the read (tracemalloc slows
the read several times over, so its rows/s is not the speed).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import peak_rss_mb as rss_mb
from migrate import generate  # the same export as the migration benchmark

STREAMS = {
    "subjects": {"path": "subjects.csv", "key": ["Animal ID"]},
    "weighings": {"path": "weighings.csv", "key": ["Animal ID", "Date"]},
}


def child(args: argparse.Namespace) -> None:
    """Read every stream once; print one JSON line."""
    import pydantic

    from limsync.connectors.base import ReadContext, nothing_known
    from limsync.connectors.files import FilesConnector

    settings = FilesConnector.parse_settings(
        {"type": "files", "root": args.root, "page_size": args.page_size, "streams": STREAMS},
        name="legacy",
    )
    connector = FilesConnector("legacy", settings)
    base = rss_mb()
    profiler = cProfile.Profile() if args.profile else None
    if args.tracemalloc:
        tracemalloc.start()
    rows = invalid = 0
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for name in STREAMS:
        model = connector.stream(name).model
        ctx = ReadContext(full=True, cursor=None, known=nothing_known)
        for page in connector.read(name, ctx):
            for raw in page:
                try:
                    model.model_validate(raw)
                except pydantic.ValidationError:
                    invalid += 1
            rows += len(page)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    line: dict[str, Any] = {
        "rows": rows, "invalid": invalid, "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds), "base_mb": round(base), "peak_rss_mb": round(rss_mb()),
    }  # fmt: skip
    if args.tracemalloc:
        line["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    print(json.dumps(line), flush=True)
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(os.environ.get("SORT", "tottime")).print_stats(args.top)
        print(out.getvalue(), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="measurements (one process each)")
    parser.add_argument("--profile", action="store_true", help="cProfile the read")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    parser.add_argument("--tracemalloc", action="store_true", help="peak of Python allocations")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    failed = False
    with tempfile.TemporaryDirectory(prefix="limsync-read-") as tmp:
        started = time.perf_counter()
        subjects, weighings = generate(Path(tmp), args.rows)
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.csv")) / 1e6
        print(
            f"export: {subjects:,} subjects + {weighings:,} weighings, {size:.0f} MB, "
            f"written in {time.perf_counter() - started:.1f} s"
        )
        print(f"{'run':>3} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'base MB':>8} {'peak MB':>8}")
        cmd = [sys.executable, __file__, "--child", "--root", tmp, "--top", str(args.top)]
        cmd += ["--page-size", str(args.page_size)]
        cmd += ["--profile"] * args.profile + ["--tracemalloc"] * args.tracemalloc
        for run in range(1, args.repeat + 1):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            for raw in proc.stdout.splitlines():
                r = json.loads(raw)
                traced = f"  traced peak {r['traced_peak_mb']} MB" if "traced_peak_mb" in r else ""
                print(
                    f"{run:>3} {r['rows']:>9,} {r['seconds']:>8.2f} {r['rows_per_s']:>8,} "
                    f"{r['base_mb']:>8} {r['peak_rss_mb']:>8}{traced}"
                )
                failed |= r["invalid"] != 0 or r["rows"] != args.rows
            if proc.returncode != 0 or args.profile:
                print(proc.stderr[-20000:], file=sys.stderr)
            failed |= proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
