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

import signal
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
    # Ctrl-C is held while it starts, so the caller's ``stop_forkserver`` always finds the server
    # it must stop (a KeyboardInterrupt in the middle would leave one not yet recorded).
    held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def stop_forkserver(grace: float = 1.0) -> None:
    """Stop the forkserver and multiprocessing's resource tracker if this process started them,
    waiting for both to exit, so a command leaves no process behind once it returns (by
    itself each notices its parent's exit only a moment later). A forkserver still importing
    its preloaded modules after ``grace`` seconds (a run that failed at once) is killed: it has
    no worker yet. Call when no worker pool is left; a later pool starts them again."""
    import os
    import signal
    import time
    from multiprocessing import util

    module = sys.modules.get("multiprocessing.forkserver")  # (never imported: never started)
    server = getattr(module, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is not None:
        with server._lock:
            try:
                os.close(server._forkserver_alive_fd)  # asks it to stop once it reads again
                deadline = time.monotonic() + grace
                while os.waitpid(pid, os.WNOHANG)[0] == 0:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        break
                    time.sleep(0.005)
            except (OSError, ChildProcessError):
                pass  # already gone
            address = server._forkserver_address
            server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None
            if address and not util.is_abstract_socket_namespace(address):
                try:
                    os.unlink(address)
                except OSError:
                    pass
    tracker = getattr(sys.modules.get("multiprocessing.resource_tracker"), "_resource_tracker", None)
    if tracker is not None and getattr(tracker, "_pid", None) is not None and hasattr(tracker, "_stop"):
        try:
            tracker._stop()  # (what CPython's own tests call)
        except (OSError, ChildProcessError):
            pass
