"""Progress bars: on stderr when it is a terminal, never mixed into the results on stdout."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "sync" / "fixtures" / "legacy"
#: One bar: a stream's name and the records read so far ("weighings      6 records").
BAR = re.compile(r"\bweighings\s+[\d,]+ records\b")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


def read_all(fd: int) -> str:
    """Everything written to a pty's master end, once the writer has closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_migrate_draws_bars_on_the_terminal_and_results_on_stdout(tmp_path: Path) -> None:
    database = json.dumps(f"sqlite:///{tmp_path / 'p.db'}")
    text = (FIXTURES / "migrate.toml").read_text()
    text = text.replace('type = "files"', f'type = "files"\nroot = {json.dumps(str(FIXTURES))}')
    config = tmp_path / "limsync.toml"
    config.write_text(f"database_url = {database}\n{text}")
    env = {**os.environ, "PYTHONPATH": str(FIXTURES), "COLUMNS": "120"}
    command = [sys.executable, "-m", "limsync", "migrate", "--config", str(config)]
    master, slave = pty.openpty()
    try:
        run = subprocess.run(
            [*command, "--allow-rejects"],
            stdout=subprocess.PIPE,
            stderr=slave,  # a terminal: bars are drawn
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        os.close(slave)
    terminal = read_all(master)
    os.close(master)
    stdout = run.stdout.decode()
    assert run.returncode == 0, stdout + terminal
    assert "rejected 8" in stdout  # the summary, on stdout
    assert BAR.search(terminal), terminal  # the bars, on the terminal
    assert not BAR.search(stdout), stdout  # and not in the results
