"""The search room: the request (``request``), its terms and hit types (``query``), candidate
sources under filters (``candidates``), fusion of documents and words (``fusion``), score
calibration (``calibration``), near-duplicate collapse (``dupes``) and the searcher that runs a
request over an index's store and encoders (``searcher``).

Nothing is imported here: the HTTP client imports ``request`` and ``query`` without pulling
FAISS or the catalogue in.
"""
