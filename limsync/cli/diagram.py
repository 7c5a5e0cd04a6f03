"""``limsync diagram``: the pipeline as a picture (Mermaid, Graphviz DOT, or SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from limsync.cli.common import config_option, err, handle_errors
from limsync.config.settings import Settings, load_settings
from limsync.errors import ConfigError
from limsync.pipeline.diagram import FORMATS, find_dependants, render
from limsync.pipeline.tables import TableSpec, tables_in


def pipeline_of(settings: Settings) -> tuple[list[TableSpec], dict[str, list[str]]]:
    """The declared tables of every configured connector and of ``[populate] tables``, and
    which stream feeds which table."""
    from limsync.connectors import registry
    from limsync.pipeline.populate import load_tables
    from limsync.pipeline.populate.worker import specs_of
    from limsync.sync.runner import mapping_module

    if not settings.connectors and not settings.populate.tables:
        raise ConfigError("no connectors are configured: there is no pipeline to draw")
    specs: dict[str, TableSpec] = {}
    feeds: dict[str, list[str]] = {}
    for name in settings.connectors:
        cls = registry.get(settings.connector_settings(name).type)
        module: Any = mapping_module(cls)
        for spec in tables_in(module.SCHEMAS):
            specs.setdefault(spec.qualname, spec)
        for stream, smap in sorted(module.STREAM_MAPS.items()):
            if stream in cls.streams:
                feeds[f"{name}.{stream}"] = [s.qualname for s in smap.specs]
                for spec in smap.specs:
                    specs.setdefault(spec.qualname, spec)
    # The computed tables limsync populates ([populate] tables), with their Part tables.
    for populated in load_tables(settings.populate.tables):
        for spec in specs_of(populated):
            specs.setdefault(spec.qualname, spec)
    return list(specs.values()), feeds


@click.command()
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart text, Graphviz DOT text, or SVG (needs Graphviz's dot).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option(
    "--reflect",
    is_flag=True,
    help="Also draw tables found in the database that reference the pipeline's tables "
    "(e.g. the lab's DataJoint Computed tables).",
)
@handle_errors
def diagram(config_path: Path | None, fmt: str, output: Path | None, reflect: bool) -> None:
    """Draw the pipeline: tables coloured by tier, foreign keys as arrows, and the source
    streams that feed each table (dashed)."""
    settings = load_settings(config_path)
    specs, feeds = pipeline_of(settings)
    if reflect:
        from limsync.pipeline.database import Database

        db = Database(
            settings.database_url,
            schema_prefix=settings.schema_prefix,
            state_schema=settings.state_schema,
        )
        try:
            specs += find_dependants(db, specs)
        finally:
            db.dispose()
    text = render(specs, feeds, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
    err.print(f"wrote {output} ({fmt}, {len(specs)} tables)", highlight=False)
