"""``mmsearch migrate``: an index's catalogue copied between SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..fsutil import display_path
from .base import DbOpt, IndexOpt, JsonOpt, read_settings, command, err, out, write_json


@command("migrate")
def migrate_cmd(
    to: Annotated[str, typer.Option("--to", metavar="URL|DIR", show_default=False, help="Where the copy goes: a PostgreSQL URL (postgresql+psycopg://USER@HOST/DB, an empty database) or a new folder for an SQLite index.")],
    index: IndexOpt = None,
    db: DbOpt = None,
    to_index: Annotated[Optional[Path], typer.Option("--to-index", metavar="DIR", show_default=False, help="With a URL for --to: this machine's folder for the copy \\[default: the cache folder of that database].")] = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", help="Seconds to wait for a running indexing run (-1: forever).")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Copy an index between SQLite and PostgreSQL (rows and vectors, nothing re-encoded), then check the copy."""
    from ..migrate import migrate
    from ..storage.sqlite import DB_FILE  # here, not at import: `mmsearch --help` stays instant

    settings = read_settings(db)
    source = index if index is not None else settings.default_index()
    # $MMSEARCH_DB names the source's database unless the source is an SQLite index folder.
    source_db = db or (None if (Path(source).expanduser() / DB_FILE).is_file() else settings.db)
    report = migrate(source, to, source_db=source_db, target=to_index, settings=settings, wait=wait)
    if as_json:
        write_json(report.as_dict())
    else:
        for problem in report.check.problems:
            err.print(Text(f"{problem.kind}: {display_path(problem.detail)}"))
        rows = ", ".join(f"{n} {table}" for table, n in report.rows.items())
        verdict = "checked ok" if report.ok else "check found problems (see above)"
        out.print(Text(f"copied {rows} to {report.database} (index folder {display_path(report.target)}); {verdict}"))
    if not report.ok:
        raise typer.Exit(1)
