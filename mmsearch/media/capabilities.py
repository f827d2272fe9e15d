"""What each modality's items can do, declared once, so that search, fusion, dupes, the
document index, metadata and the server ask a capability instead of a modality's name.

Importable without Pillow or PyAV (storage and search import it). Each handler names its
capabilities (``handler.capabilities``); a new modality (audio) is one more entry here and one
handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IMAGE = "image"
TEXT = "text"
VIDEO = "video"

# The two sides of a document (``Capabilities.side``): a modality's items are fused with the
# other side's (early and late fusion), or, on a side of their own name, with nothing.
IMAGE_SIDE = IMAGE
TEXT_SIDE = TEXT


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
    # How counts name its files (``info``: "images", "videos").
    plural: str = ""
    # What one moment is called ("frame"); its items are counted as "<modality>_<moment>s".
    moment: str = ""

    @property
    def text_side(self) -> bool:
        """Its items are a document's text side."""
        return self.side == TEXT_SIDE

    @property
    def image_side(self) -> bool:
        """Its items are a document's image side (pictures, frames)."""
        return self.side == IMAGE_SIDE


_CAPABILITIES = {
    IMAGE: Capabilities(IMAGE, side=IMAGE_SIDE, captured=True, thumbnail=True, plural="images"),
    TEXT: Capabilities(TEXT, side=TEXT_SIDE, plural="texts"),
    VIDEO: Capabilities(VIDEO, side=IMAGE_SIDE, moments=True, captured=True, thumbnail=True, reads_path=True,
                        in_documents=False, plural="videos", moment="frame"),
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


def on_side(side: str, in_documents: bool | None = None) -> tuple[str, ...]:
    """Modalities on one side of a document ('image' or 'text'); ``in_documents``: only those
    whose items may (True) or may not (False) be a document's part."""
    return tuple(m for m, c in _CAPABILITIES.items()
                 if c.side == side and (in_documents is None or c.in_documents == in_documents))


def in_documents() -> tuple[str, ...]:
    """Modalities whose items may be a part of a document (the others' items stand alone)."""
    return tuple(m for m, c in _CAPABILITIES.items() if c.in_documents)


def captured() -> tuple[str, ...]:
    """Modalities whose items carry capture metadata read from their file."""
    return tuple(m for m, c in _CAPABILITIES.items() if c.captured)


def has_moments(modality: str) -> bool:
    return capabilities(modality).moments


def side_of(modality: str) -> str:
    """The document side of ``modality``'s items (``IMAGE_SIDE``, ``TEXT_SIDE``, or its own)."""
    return capabilities(modality).side


def is_text_side(modality: str) -> bool:
    return capabilities(modality).text_side


def info_counts(items: dict[str, int], files: Callable[[str], int]) -> dict[str, int]:
    """The counts ``info`` shows, by modality in the listed order: items of each (``items``,
    by modality), and for a modality of moments its files (``files(modality)``) and then its
    moments: ``{"images": 3, "texts": 2, "videos": 1, "video_frames": 40}``."""
    out: dict[str, int] = {}
    for modality, c in _CAPABILITIES.items():
        if c.moments:
            out[c.plural] = files(modality)
            out[f"{modality}_{c.moment}s"] = items.get(modality, 0)
        else:
            out[c.plural] = items.get(modality, 0)
    return out
