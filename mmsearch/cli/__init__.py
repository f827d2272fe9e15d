"""The ``mmsearch`` command: a thin typer layer over ``mmsearch.Engine``.

Each command opens an engine, calls one library method and formats the result. Library errors
(``MMSearchError``) become one-line messages and non-zero exit codes in one place
(``base._friendly_errors``); usage errors too, in ``main``.
"""

from . import library, migrate, serve, training  # noqa: F401 - each module registers its commands on the app
from .base import app, main

__all__ = ["app", "main"]
