"""What every benchmark measures in its child process: peak RSS, CPU time, a cProfile report;
and how fast the host is running, to compare runs.

The scripts run as ``python benchmarks/NAME.py``, so this folder is first on ``sys.path`` and
they import it as ``measure``.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import resource
import time
from collections.abc import Callable
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux's ``VmHWM`` where there is one: ``ru_maxrss`` survives ``exec``, so a child started
    by a parent holding a large fake colony reported the parent's size at the fork as its own
    (256 MB "before the sync" at scale 1). Elsewhere ``ru_maxrss`` (kilobytes on Linux).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time this process has used, user and system (the database server's is not in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def profiled(
    fn: Callable[[], Any], enabled: bool, *, own: int = 20, cumulative: int = 25
) -> tuple[Any, str | None]:
    """Run ``fn``; with ``enabled``, also its top functions by own and by cumulative time."""
    if not enabled:
        return fn(), None
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(own)
    stats.sort_stats("cumulative").print_stats(cumulative)
    return result, out.getvalue()


def host_speed() -> float:
    """CPU seconds of a fixed pure-Python workload (best of three): this host's speed now.

    Small dicts and strings made, serialised, parsed and sorted, as a sync's records are: it
    follows the host's memory as well as its cores. The shared VMs these benchmarks run on
    change speed by half within an hour for the same code, so a run's figures compare only with
    runs whose probe read about the same.
    """
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        rows = [
            {"id": f"S{i:07d}", "n": i, "w": i / 7, "tags": [i % 3, "x"]} for i in range(100_000)
        ]
        rows = json.loads(json.dumps(rows))
        rows.sort(key=lambda r: (r["n"] % 97, r["id"]))
        best = min(best, time.process_time() - started)
    return best
