"""docs/authoring.md: every Python block runs, in order, and the guide's connector passes the
whole contract suite; the blocks are ruff-formatted and the TOML blocks parse."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from limsync.testing.contract import ConnectorContract

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "authoring.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(GUIDE.read_text()) if lang == language]


@pytest.fixture(scope="module")
def guide() -> Iterator[types.ModuleType]:
    """The guide's Python blocks executed in order as one module."""
    module = types.ModuleType("authoring_guide")
    sys.modules[module.__name__] = module  # pydantic resolves annotations through it
    try:
        for i, code in enumerate(blocks("python")):
            exec(compile(code, f"{GUIDE.name}[python block {i + 1}]", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_the_guide_has_the_worked_example() -> None:
    assert len(blocks("python")) >= 6


def test_every_python_block_runs(guide: types.ModuleType) -> None:
    assert guide.MouseDbConnector.type_name == "mousedb"


def test_the_guide_connector_passes_the_contract(guide: types.ModuleType, tmp_path: Path) -> None:
    contract = guide.TestMouseDbContract()
    assert isinstance(contract, ConnectorContract)
    checks = sorted(n for n, _ in inspect.getmembers(ConnectorContract) if n.startswith("test_"))
    failures = {}
    for i, name in enumerate(checks):
        method = getattr(contract, name)
        workdir = tmp_path / str(i)
        workdir.mkdir()
        with contract.serve() as server:
            kwargs = {"contract_server": server}
            if "tmp_path" in inspect.signature(method).parameters:
                kwargs["tmp_path"] = workdir
            try:
                method(**kwargs)
            except AssertionError as exc:
                failures[name] = str(exc)
    assert failures == {}


def test_the_checks_table_lists_every_check() -> None:
    checks = {n for n, _ in inspect.getmembers(ConnectorContract) if n.startswith("test_")}
    listed = set(re.findall(r"^\| `(test_\w+)` \|", GUIDE.read_text(), re.M))
    assert listed == checks


def test_toml_blocks_parse() -> None:
    for code in blocks("toml"):
        tomllib.loads(code)


def test_python_blocks_are_ruff_formatted() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    for i, code in enumerate(blocks("python")):
        run = subprocess.run(
            [ruff, "format", "--line-length", "100", "--stdin-filename", "block.py", "-"],
            input=code,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == code, f"python block {i + 1} is not ruff-formatted"
