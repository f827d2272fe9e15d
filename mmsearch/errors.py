"""Exception types raised by the mmsearch library.

Every error a user can cause or fix is one of these narrow types; the CLI turns them into
one-line messages with a non-zero exit code (see ``mmsearch.cli``).
"""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""

    exit_code = 1


class IndexNotFoundError(MMSearchError):
    """The index folder does not exist."""


class NotAnIndexError(MMSearchError):
    """The folder exists but holds no readable mmsearch index."""


class IndexVersionError(MMSearchError):
    """The index was written by a newer, incompatible schema version."""


class IndexLockedError(MMSearchError):
    """Another process is writing to the index."""


class ModelLoadError(MMSearchError):
    """The model or its weights could not be loaded."""


class ModelMismatchError(MMSearchError):
    """The requested model differs from the one the index was built with."""


class QueryError(MMSearchError):
    """The query is malformed or names an input that cannot be used."""

    exit_code = 2


class FilterError(QueryError):
    """A search filter (date, camera, place, order) has a bad value; the message names it."""


class TextInputError(QueryError):
    """A text given to a search (query text, folder, camera) holds a NUL character, which no
    catalogue stores and no file name holds; the message names the field."""


class IndexingInterrupted(MMSearchError):
    """Indexing stopped on request; the work done so far was saved."""

    exit_code = 130


class ServerError(MMSearchError):
    """An mmsearch server refused a request or could not be reached (``status``: HTTP code or None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class IndexWriteError(MMSearchError):
    """The index folder cannot be written (disk full, read-only, I/O error); what was saved before is kept."""


class DatasetError(MMSearchError):
    """A captioned dataset cannot be read or holds nothing usable."""


class TrainingError(MMSearchError):
    """Training cannot start or continue (bad options, unusable output folder, broken resume state)."""


class TrainingInterrupted(MMSearchError):
    """Training stopped on request; the state was saved and ``--resume`` continues from it."""

    exit_code = 130


class DecodeWorkersError(MMSearchError):
    """The image decoding worker processes could not start."""


class OnnxTextUnavailable(MMSearchError):
    """The ONNX text encoder cannot be exported or loaded; text queries then use the torch model."""


class OnnxImageUnavailable(MMSearchError):
    """The ONNX image encoder cannot be exported or loaded; images are then encoded by the torch model."""


class IndexTypeError(MMSearchError):
    """An unknown vector index type, or unusable vector index parameters, were asked for."""


class PathNotFoundError(MMSearchError):
    """A folder or file named for indexing does not exist (nothing was created or changed)."""

    exit_code = 2


class EmptyIndexError(NotAnIndexError):
    """The index folder holds nothing indexed yet: a first indexing run never saved anything."""


class DamagedIndexError(MMSearchError):
    """Rows of the index are damaged (a stored vector of the wrong size); ``mmsearch check --repair`` fixes them."""


class UnfinishedCopyError(NotAnIndexError):
    """The folder holds a copy ``mmsearch migrate`` did not finish; the same migrate run again starts it over."""


class DamagedManifestError(NotAnIndexError):
    """The index's manifest is damaged; ``mmsearch check --repair`` rebuilds it from the database."""


class SettingsError(MMSearchError):
    """An environment variable (``MMSEARCH_*``) holds a value mmsearch cannot use."""

    exit_code = 2


class RayUnavailableError(MMSearchError):
    """``--runner ray`` was asked for but Ray is not installed (``pip install "mmsearch[ray]"``)."""

    exit_code = 2


class RayRunError(MMSearchError):
    """The Ray job failed (a worker kept dying after its retries, or the cluster cannot be
    reached); what was committed before stays in the index and a re-run continues."""


class CatalogueDatabaseError(MMSearchError):
    """The catalogue's database server cannot be reached or used (refused connection, no such database,
    missing privileges or extension); nothing was written."""
