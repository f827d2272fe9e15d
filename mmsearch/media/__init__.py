"""Media: one handler per modality (which files, their records, decoding for the model,
thumbnails), the registry that holds them, and the walk over the library's folders.

Names load on first use, so that importing a light part (``media.extensions``) stays light.
"""

from importlib import import_module

_WHERE = {
    "IMAGE": "image", "decode_image": "image", "load_image": "image", "open_image": "image",
    "TEXT": "text",
    "VIDEO": "video",
    "BadInput": "records", "FileEntry": "records", "Record": "records", "Skip": "records",
    "MediaHandler": "registry", "Registry": "registry", "default_registry": "registry", "media_registry": "registry",
    "ScanOptions": "scan", "ScanResult": "scan", "scan": "scan",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
