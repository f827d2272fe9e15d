"""Modules imported on first use (the standard library's ``importlib.util.LazyLoader`` recipe).

``faiss = lazy_module("faiss")`` binds a module object whose code runs at the first attribute
access: a command that never touches a vector index (an index run that finds nothing changed)
never pays for importing it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types

_lock = threading.Lock()


def lazy_module(name: str) -> types.ModuleType:
    """``name``, imported now if it already is, else on the first use of one of its attributes;
    ImportError at once when it is not installed."""
    with _lock:
        module = sys.modules.get(name)
        if module is not None:
            return module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"No module named {name!r}", name=name)
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module
