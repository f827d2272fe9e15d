"""Cold text queries of a multilingual (XLM-RoBERTa) model: torch path vs ONNX + tokenizers.

    python scripts/bench_multilingual.py --size tiny --runs 5
    python scripts/bench_multilingual.py --size base --runs 5   # xlm-roberta-base's text tower size

No multilingual weights can be downloaded here, so the model is made offline
(tests/multilingual_model.py): a randomly initialised XLM-RoBERTa text tower, ``tiny`` (2 layers,
32 wide) or ``base`` (xlm-roberta-base's size: 12 layers, 768 wide, 250002-token embedding, 278M
parameters), a tiny image tower, and a tokenizer trained on a few captions. Random weights cost
what trained ones cost to load and run, so the timings stand for the published model's text
side; the torch path also builds the image tower, to which the real model's ViT-B-32 would add
88M parameters (the ONNX path never loads it for a text query).

An index of a few multilingual captions is built (which exports the ONNX text encoder), then
``mmsearch query TEXT --json`` runs in new processes, ``--runs`` times per path after one
untimed warm-up, the two paths measured in the same run (scripts/bench_cold_query.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_cold_query import cold_query  # noqa: E402
from multilingual_model import BASE_TEXT, CAPTIONS, write_xlmr_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--text", default="un chien qui court sur l'herbe")
    parser.add_argument("--work", type=Path, default=None, help="folder for the model and index (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmsearch-bench-mling-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MMSEARCH_CACHE"] = str(work / "cache")  # the query processes inherit it
    os.environ["HF_HUB_OFFLINE"] = "1"

    from mmsearch import Engine
    from mmsearch.encoders import onnx_text

    started = time.perf_counter()
    base = args.size == "base"
    config, checkpoint = write_xlmr_model(work / "model", name=f"mmxlmr{args.size}", proj="mlp",
                                          text=BASE_TEXT if base else None, embed_dim=512 if base else 32)
    made = time.perf_counter() - started
    root = work / "corpus"
    root.mkdir(exist_ok=True)
    for i, text in enumerate(CAPTIONS):
        (root / f"t{i:02d}.txt").write_text(text, encoding="utf-8")
    index = work / "index"
    started = time.perf_counter()
    with Engine(index, model=str(config), pretrained=str(checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
    indexed = time.perf_counter() - started
    if record.get("status") != "ok":
        raise SystemExit(f"no ONNX text export: {record}")
    onnx = cold_query(index, args.text, args.runs, onnx=True)
    torch = cold_query(index, args.text, args.runs, onnx=False)
    print(json.dumps({
        "size": args.size, "text": args.text, "machine": platform.processor() or platform.machine(),
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 1),
        "onnx_mb": round(sum((index / record[k]).stat().st_size for k in ("file", "data")) / 2**20, 1),
        "make_model_s": round(made, 1), "index_and_export_s": round(indexed, 1),
        "export_s": record.get("export_seconds"), "max_abs_diff": record.get("max_abs_diff"),
        "onnx": onnx, "torch": torch, "torch_over_onnx_p50": round(torch["p50_s"] / onnx["p50_s"], 1),
        "same_top_ids": onnx["top_ids"] == torch["top_ids"],
    }, indent=1))


if __name__ == "__main__":
    main()
