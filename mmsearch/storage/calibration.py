"""Where calibration lives in the catalogue (a ``meta`` row, written in its own transaction:
it changes no vector) and the vector samples it is measured from. Each function takes the
catalogue transaction's session; callers reach them as the catalogue's ``Reader`` and ``Writer``
methods (``calibration``, ``save_calibration``, ``calibration_probes``, ...)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .rows import get_text, set_text
from .schema import Embedding, Item

CALIBRATION_KEY = "calibration"
PROBES_KEY = "calibration_probes"  # the probe captions' vectors, for one model


def load(session: Session) -> dict[str, Any] | None:
    raw = get_text(session, CALIBRATION_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def save(session: Session, data: dict[str, Any]) -> None:
    set_text(session, CALIBRATION_KEY, json.dumps(data, sort_keys=True))


def load_probes(session: Session, fingerprint: str, dim: int) -> np.ndarray | None:
    """The probe vectors stored for the model ``fingerprint`` (None: none, or another model's)."""
    raw = get_text(session, PROBES_KEY)
    try:
        data = json.loads(raw) if raw else None
        if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
            return None
        vectors = np.frombuffer(base64.b64decode(data["vectors"]), np.float32)
        return vectors.reshape(-1, dim) if vectors.size % dim == 0 and vectors.size else None
    except (ValueError, KeyError, TypeError):
        return None


def save_probes(session: Session, fingerprint: str, vectors: np.ndarray) -> None:
    data = base64.b64encode(np.ascontiguousarray(vectors, np.float32).tobytes()).decode("ascii")
    set_text(session, PROBES_KEY, json.dumps({"fingerprint": fingerprint, "vectors": data}))


def sample_vectors(session: Session, modalities: tuple[str, ...], want: int, dim: int) -> np.ndarray:
    """About ``want`` vectors of items of ``modalities``, spread evenly over their ids."""
    total = session.scalar(select(func.count()).select_from(Item).where(Item.modality.in_(modalities))) or 0
    if not total:
        return np.empty((0, dim), np.float32)
    step = max(1, total // max(1, want))
    query = (select(Embedding.vector).join(Item, Item.id == Embedding.item_id)
             .where(Item.modality.in_(modalities), Item.id % step == 0).order_by(Item.id).limit(want))
    blobs = [b for b in session.scalars(query) if len(b) == dim * 4]
    if len(blobs) < min(total, want) // 2:  # ids too unevenly spread: the first ones
        blobs = [b for b in session.scalars(
            select(Embedding.vector).join(Item, Item.id == Embedding.item_id)
            .where(Item.modality.in_(modalities)).order_by(Item.id).limit(want)) if len(b) == dim * 4]
    if not blobs:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)
