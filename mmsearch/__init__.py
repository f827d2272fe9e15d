"""mmsearch: cross-modal image/text retrieval on open_clip, FAISS and SQLite."""

__version__ = "0.1.0"
