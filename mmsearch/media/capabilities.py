"""What each modality's items can do, declared once, so that search, fusion, dupes, the
document index, metadata and the server ask a capability instead of a modality's name.

Importable without Pillow or PyAV (storage and search import it). Each handler names its
capabilities (``handler.capabilities``); a new modality (audio) is one more entry here and one
handler.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "image"
TEXT = "text"
VIDEO = "video"


@dataclass(frozen=True)
class Capabilities:
    """What the items of one modality are and can do."""

    modality: str
    # Which side of a document it is on: 'image' (pictures, frames), 'text', or its own name for a
    # modality that joins no document (its vectors are fused with no other part).
    side: str
    # A file gives many items that are moments of it (video frames, audio windows): hits group to
    # one per file, shown by its best moment, and the file (not the moment) is what duplicates.
    moments: bool = False
    # Items carry capture metadata (date, camera, place) read from their file.
    captured: bool = False
    # A hit can show a thumbnail of the item (of its moment, for ``moments``).
    thumbnail: bool = False
    # The handler reads the file itself (streams it by path) instead of receiving its bytes.
    reads_path: bool = False
    # An item of this modality may be a part of a document (an image with its caption or record).
    in_documents: bool = True


_CAPABILITIES = {
    IMAGE: Capabilities(IMAGE, side=IMAGE, captured=True, thumbnail=True),
    TEXT: Capabilities(TEXT, side=TEXT),
    VIDEO: Capabilities(VIDEO, side=IMAGE, moments=True, captured=True, thumbnail=True, reads_path=True,
                        in_documents=False),
}


def capabilities(modality: str) -> Capabilities:
    """The capabilities of ``modality``; a modality this version does not know (an index written
    by a newer one) is a plain single-item modality on its own side."""
    found = _CAPABILITIES.get(modality)
    return found if found is not None else Capabilities(modality, side=modality, in_documents=False)


def modalities() -> tuple[str, ...]:
    """Every modality this version indexes, in the order types are listed to users."""
    return tuple(_CAPABILITIES)


def with_moments() -> tuple[str, ...]:
    """Modalities whose items are moments of a file (one hit per file)."""
    return tuple(m for m, c in _CAPABILITIES.items() if c.moments)


def on_side(side: str) -> tuple[str, ...]:
    """Modalities on one side of a document ('image' or 'text')."""
    return tuple(m for m, c in _CAPABILITIES.items() if c.side == side)


def captured() -> tuple[str, ...]:
    """Modalities whose items carry capture metadata read from their file."""
    return tuple(m for m, c in _CAPABILITIES.items() if c.captured)


def has_moments(modality: str) -> bool:
    return capabilities(modality).moments
