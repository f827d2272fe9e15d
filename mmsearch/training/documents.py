"""Evaluating document retrieval: image-only, text-only, early, late and RRF fusion, lexical
and hybrid ranking, through a real index, on a captioned dataset.

Each image with at least two captions becomes a document: a JSON Lines record naming the image,
with its first caption as the document's text and a unique product code (``DOC-00042``) as a
field. The query for a document is another of its captions, never the one indexed (a user
describes what they look for in their own words); the exact-token query is its product code.
Every configuration runs through ``Engine.search_fused`` over one index built here with the
model under test, so the figures are those of the shipped ranking code, not of a re-implementation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..search.request import Ranking

DEFAULT_KS = (1, 5, 10)
TOKEN_FORMAT = "DOC-{:05d}"


@dataclass(frozen=True)
class Config:
    """One way of ranking documents: a name, the fusion options, and the item type kept."""

    name: str
    options: Ranking
    type: str = "all"


def default_configs(weights: Sequence[float] = (0.3, 0.5, 0.7)) -> list[Config]:
    """Image only, text only, early/late fusion at several image weights, RRF, lexical, hybrid."""
    configs = [Config("image only", Ranking("late"), "image"),
               Config("text only", Ranking("late"), "text")]
    for w in weights:
        configs.append(Config(f"early (image {w:g})", Ranking("early", image_weight=w, text_weight=1 - w)))
    for w in weights:
        configs.append(Config(f"late (image {w:g})", Ranking("late", image_weight=w, text_weight=1 - w)))
    configs += [Config("rrf", Ranking("rrf")),
                Config("lexical (BM25)", Ranking("none", "lexical")),
                Config("hybrid (late + BM25)", Ranking("late", "hybrid")),
                Config("hybrid (early + BM25)", Ranking("early", "hybrid")),
                Config("hybrid (rrf + BM25)", Ranking("rrf", "hybrid"))]
    return configs


@dataclass
class DocumentEvalReport:
    dataset: str
    model: str
    documents: int
    queries: int
    # name -> {"R@1", "R@5", "R@10", "token@1"} in percent
    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "model": self.model, "documents": self.documents, "queries": self.queries,
                "rows": self.rows}

    def best(self, names: Sequence[str], key: str = "R@1") -> float:
        return max(self.rows[n][key] for n in names)


def write_documents(items: Sequence[Any], folder: Path) -> list[tuple[int, str, str]]:
    """A JSONL file of documents in ``folder`` from dataset items with two captions or more;
    returns (line number, query caption, token) per document."""
    folder.mkdir(parents=True, exist_ok=True)
    # A record's image is read only inside the indexed folder (the library rule), so the images
    # are linked (or copied) into it; a hidden folder, so the scan does not index them as files too.
    pictures = folder / ".images"
    pictures.mkdir(exist_ok=True)
    lines, queries = [], []
    for item in items:
        if len(item.captions) < 2:
            continue
        token = TOKEN_FORMAT.format(len(lines) + 1)
        source = Path(item.image).resolve()
        inside = pictures / f"{len(lines) + 1:06d}{source.suffix}"
        if not inside.exists():
            try:
                os.link(source, inside)
            except OSError:
                shutil.copyfile(source, inside)
        lines.append(json.dumps({"image": f".images/{inside.name}", "text": item.captions[0], "code": token}))
        queries.append((len(lines), item.captions[1], token))
    (folder / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return queries


def _line_of(hit: Any) -> int:
    return int(hit.locator.split(":", 1)[0])


def evaluate_documents(engine_for: Callable[[Path], Any], dataset: Any, *, configs: Sequence[Config] | None = None,
                       ks: Sequence[int] = DEFAULT_KS, work: Path | None = None, progress: Any = None,
                       batch_size: int = 64) -> DocumentEvalReport:
    """Recall@K of each configuration for caption queries, and the share of exact-token queries
    that find their document first. ``engine_for(folder)``: a new ``Engine`` on an index folder
    with the model under test (the index is built there, then deleted unless ``work`` is given)."""
    configs = list(configs or default_configs())
    own = work is None
    base = Path(tempfile.mkdtemp(prefix="mmsearch-doceval-")) if own else Path(work)
    try:
        queries = write_documents(dataset.items, base / "documents")
        if not queries:
            from ..errors import QueryError

            raise QueryError("no image in the dataset has two captions: document evaluation needs one to index "
                             "and one to query")
        with engine_for(base / "index") as engine:
            engine.add([base / "documents"], progress=progress)
            vectors = np.concatenate([engine.encode_texts([q for _, q, _ in queries[i:i + batch_size]])
                                      for i in range(0, len(queries), batch_size)])
            tokens = np.concatenate([engine.encode_texts([t for _, _, t in queries[i:i + batch_size]])
                                     for i in range(0, len(queries), batch_size)])
            report = DocumentEvalReport(str(getattr(dataset, "source", "")), engine.spec.display, len(queries), len(queries))
            depth = max(ks)
            for config in configs:
                if progress is not None:
                    progress.start(config.name, len(queries))
                hits_at = np.zeros(len(ks))
                token_first = 0
                for (line, caption, token), vector, token_vector in zip(queries, vectors, tokens):
                    ranked = [_line_of(h) for h in engine.search_fused(vector, caption, config.options, k=depth,
                                                                       type=config.type)]
                    for j, k in enumerate(ks):
                        hits_at[j] += line in ranked[:k]
                    found = engine.search_fused(token_vector, token, config.options, k=1, type=config.type)
                    token_first += bool(found) and _line_of(found[0]) == line
                    if progress is not None:
                        progress.advance(1)
                row = {f"R@{k}": round(100.0 * hits_at[j] / len(queries), 2) for j, k in enumerate(ks)}
                row["token@1"] = round(100.0 * token_first / len(queries), 2)
                report.rows[config.name] = row
        return report
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
