"""Worker processes that never import the caller's main script.

multiprocessing sends each new process the parent's main module (its file or module name), and
the child imports it again before running anything: a user's script that calls ``Engine.add``
without an ``if __name__ == "__main__":`` guard would run once more in every worker (and meet
its own writer lock there). mmsearch's workers need nothing from the main module, so while one
is started a bare stand-in takes the place of ``sys.modules["__main__"]``; the window is the few
microseconds of the start, under a lock, and the real module is put back at once.

This module imports only the standard library: the worker unpickles its process object, and
with it this module, before it runs anything.
"""

from __future__ import annotations

import sys
import threading
import types
from multiprocessing import context as _mp

_swap_lock = threading.Lock()

# What decode workers import before they fork (``worker_context``).
DECODE_MODULES = ["mmsearch.media.image", "mmsearch.media.video"]


class _NoMain:
    """Started without the parent's ``__main__`` (mixed into a start method's process class)."""

    def start(self) -> None:
        with _swap_lock:
            main = sys.modules.get("__main__")
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                super().start()
            finally:
                if main is not None:
                    sys.modules["__main__"] = main


class NoMainProcess(_NoMain, _mp.ForkServerProcess):
    """A forkserver process started without the parent's ``__main__``."""


class NoMainSpawnProcess(_NoMain, _mp.SpawnProcess):
    """A spawned process started without the parent's ``__main__`` (where there is no forkserver:
    Windows): a new interpreter would otherwise run the caller's unguarded script again."""


class NoMainSpawnContext(_mp.SpawnContext):
    """The spawn context, with ``NoMainSpawnProcess`` as its process class."""

    Process = NoMainSpawnProcess


class NoMainContext(_mp.ForkServerContext):
    """The forkserver context, with ``NoMainProcess`` as its process class."""

    Process = NoMainProcess


def worker_context(preload: list[str]) -> _mp.BaseContext:
    """A context for worker pools: forkserver without ``__main__`` where the platform has it
    (workers fork from a small clean server, never from a process holding model threads),
    else spawn, also without ``__main__``: a caller's script needs no main guard anywhere."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return NoMainSpawnContext()
    context = NoMainContext()
    context.set_forkserver_preload(preload)
    return context


def start_forkserver(preload: list[str] = DECODE_MODULES) -> None:
    """Start the forkserver now, without waiting for it: it imports ``preload`` (Pillow, PyAV,
    numpy: about half a second) in its own process while the caller goes on importing and
    opening the index, so the first decode worker forks from a ready server; a later
    ``worker_context`` pool uses this server. The server imports the caller's main module only
    when ``preload`` names ``__main__``, which it never does here. Without a forkserver on the
    platform, nothing to do."""
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    forkserver.set_forkserver_preload(preload)
    forkserver.ensure_running()


def stop_forkserver() -> None:
    """Stop the forkserver and multiprocessing's resource tracker if this process started them,
    waiting for both to exit, so a command leaves no process behind once it returns (by
    itself each notices its parent's exit only a moment later). Call when no worker pool is
    left; a later pool starts them again."""
    servers = [getattr(sys.modules.get(f"multiprocessing.{name}"), attr, None)  # (never imported: never started)
               for name, attr in (("forkserver", "_forkserver"), ("resource_tracker", "_resource_tracker"))]
    for server in filter(None, servers):
        stop = getattr(server, "_stop", None)  # (what CPython's own tests call; absent: nothing to do)
        if stop is not None and getattr(server, "_pid", getattr(server, "_forkserver_pid", None)) is not None:
            try:
                stop()
            except (OSError, ChildProcessError):
                pass  # already gone
