"""File extensions of the image handler, importable without Pillow (the query parser uses them)."""

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
