"""``limsync new-connector NAME``: write a connector package that passes its contract tests."""

from __future__ import annotations

from pathlib import Path

import click

from limsync.cli.common import handle_errors, out


@click.command("new-connector")
@click.argument("name")
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to create (default: ./limsync-NAME). It must not exist.",
)
@handle_errors
def new_connector(name: str, path: Path | None) -> None:
    """Write a ready-to-install connector package for connector type NAME.

    The package has a pyproject.toml with the "limsync.connectors" entry point, the connector
    module, a fake server and the contract tests, which pass as generated. Nothing is
    overwritten.
    """
    from limsync.scaffold import generate

    directory = path or Path(f"limsync-{name.replace('_', '-')}")
    written = generate(name, directory)
    out.print(f"wrote {len(written)} files to {directory}:", highlight=False)
    for file in written:
        out.print(f"  {file.relative_to(directory)}", highlight=False)
    out.print(f'next: cd {directory} && pip install -e ".[test]" && pytest', markup=False)
