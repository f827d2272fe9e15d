"""File extensions of the media handlers, importable without Pillow or PyAV (the query parser uses them)."""

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
# Video containers by extension; the content decides in the end (FFmpeg probes it).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".3gp", ".wmv",
                              ".flv", ".ts", ".mts", ".m2ts", ".ogv", ".qt"})
