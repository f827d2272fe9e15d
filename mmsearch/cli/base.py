"""The CLI's frame: the typer app, where library errors become one-line messages (the only
place), the settings read once at start, shared options, and ``main``."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from ..errors import MMSearchError
from ..fsutil import display_path, json_safe

class _Command(TyperCommand):
    """Commands whose --help option shows no type marker (flags take no value)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


app = typer.Typer(
    cls=_Group,
    name="mmsearch",
    help="Cross-modal search over your images, texts and videos: index a folder, then query it with words, pictures, or both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # errors stay on one line


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        out.print(f"mmsearch {__version__}")
        raise typer.Exit()


_state: dict[str, Any] = {}


class _LogLines(logging.Handler):
    """The library's log warnings as the CLI's own lines (``warning: ...`` on stderr), never
    logging's raw ``WARNING:mmsearch.x:...`` (which appeared once anything called basicConfig)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "error" if record.levelno >= logging.ERROR else "warning"
            err.print(Text(f"{level}: {display_path(record.getMessage())}"), style="yellow")
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


def _route_library_logs() -> None:
    """Send the warnings logged by mmsearch and the libraries it uses (open_clip logs through the
    root logger) through ``_LogLines`` (once per process). A root logger with a handler also
    stops ``logging.warning()`` from calling ``basicConfig()``, whose raw lines appeared among
    the CLI's output."""
    root = logging.getLogger()
    if not any(isinstance(h, _LogLines) for h in root.handlers):
        root.addHandler(_LogLines(logging.WARNING))


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Cross-modal search over your images, texts and videos: index a folder, then query it with words, pictures, or both."""
    from ..settings import Settings

    _route_library_logs()
    try:  # every MMSEARCH_* variable, read once; a bad value stops here, before any work
        _state["settings"] = Settings.from_env()
    except MMSearchError as exc:
        err.print(Text(f"error: {display_path(str(exc))}"), style="bold red")
        raise typer.Exit(exc.exit_code) from None


def read_settings(db: str | None = None):
    """The settings read at start; ``db``: a --db given on the command line (it wins over $MMSEARCH_DB)."""
    from ..settings import Settings

    if "settings" not in _state:  # commands invoked without the app's callback (tests of one command)
        _state["settings"] = Settings.from_env()
    return _state["settings"].but(db=db) if db else _state["settings"]


def _friendly_errors(func: Callable) -> Callable:
    """The one place where library errors become CLI errors."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MMSearchError as exc:
            err.print(Text(f"error: {display_path(str(exc))}"), style="bold red")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as exc:
            line = _database_error(exc)
            if line is None:
                raise
            err.print(Text(f"error: {line}"), style="bold red")
            raise typer.Exit(1) from None

    return wrapper


def _database_error(exc: Exception) -> str | None:
    """One line for a database server's refusal that reached the CLI unnamed (a PostgreSQL
    connection lost mid-command, a privilege missing on one table); None for anything else."""
    postgres = sys.modules.get("mmsearch.storage.postgres")  # not loaded: no catalogue was opened
    return None if postgres is None else postgres.server_error(exc, "the PostgreSQL catalogue")


def command(*args: Any, **kwargs: Any) -> Callable:
    def register(func: Callable) -> Callable:
        return app.command(*args, cls=_Command, **kwargs)(_friendly_errors(func))

    return register


# -- shared options ------------------------------------------------------------------------------
IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", "-i", metavar="DIR", help="Index folder \\[default: $MMSEARCH_INDEX, else ./indexes/default where it exists, else your default index in the user data folder].", show_default=False),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", metavar="NAME", help="open_clip model name, JSON config path, hf-hub:ORG/REPO, local-dir:PATH, or a `mmsearch train` folder \\[default: the index's model, else ViT-B-32]."),
]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option("--pretrained", "-p", metavar="WEIGHTS", help="Pretrained tag (e.g. laion2b_s34b_b79k), checkpoint file, or 'none' for random weights."),
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", metavar="DEVICE", help="cuda, mps or cpu \\[default: best available].")]
DbOpt = Annotated[
    Optional[str],
    typer.Option("--db", metavar="URL", show_default=False, help="PostgreSQL catalogue shared by several machines, postgresql+psycopg://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass, never stored); --index is then this machine's local cache of it \\[default: $MMSEARCH_DB; without --index, a cache folder per database]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON document instead of a table.")]


def open_engine(index: Path | None, model: str | None = None, pretrained: str | None = None, device: str | None = None,
            db: str | None = None, **kwargs: Any):
    from ..engine import Engine  # imported here so `mmsearch --help` stays instant

    return Engine(index, model=model, pretrained=pretrained, device=device, settings=read_settings(db), **kwargs)



def write_json(data: Any) -> None:
    """One JSON document on stdout, always valid UTF-8 (file names come as ``path_fields``)."""
    sys.stdout.write(json.dumps(json_safe(data), ensure_ascii=False, default=str) + "\n")


def main() -> None:
    """The console script: usage errors become one line (``error: ...``) with exit code 2."""
    # typer raises click's exception classes (from its own copy of click in recent versions):
    # found through the public typer.BadParameter, whichever click that is.
    usage_error, click_exception = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                    for name in ("UsageError", "ClickException"))
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        if exc.format_message():  # (none when `mmsearch` alone printed the help)
            hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            err.print(Text(f"error: {display_path(exc.format_message())}{hint}"), style="bold red")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("[bold red]interrupted[/]")
        sys.exit(130)
    except click_exception as exc:
        err.print(Text(f"error: {display_path(exc.format_message())}"), style="bold red")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
