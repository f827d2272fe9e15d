"""A corpus of documents from all three sources (JSONL records naming images, sidecar captions,
captions embedded in images), shared by the fusion tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import make_image
from PIL import Image

from mmsearch.media.captions import iptc_segment

XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
       '<rdf:li xml:lang="x-default">{}</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>')

SHOES = [
    {"image": "img/123.jpg", "text": "red running shoe, size 42", "sku": "INV-2024-0042"},
    {"image": "img/456.png", "text": "blue leather boot with laces"},
    {"text": "a line of text with no image"},
    {"image": "img/missing.jpg", "text": "a record whose image is gone"},
]
CAPTIONS = {
    "photos/exif.jpg": "a lighthouse on a rocky coast",
    "photos/xmp.jpg": "children flying kites in a park",
    "photos/iptc.jpg": "fishing boats in the harbour at dawn",
}
SIDECAR = ("photos/market.jpg", "photos/market.txt", "fruit stall at the Saturday market")


def with_caption(path: Path, seed: int, caption: str, how: str) -> Path:
    make_image(path, seed)
    img = Image.open(path)
    out = io.BytesIO()
    if how == "exif":
        exif = Image.Exif()
        exif[0x010E] = caption
        img.save(out, "JPEG", quality=95, exif=exif)
        data = out.getvalue()
    elif how == "xmp":
        img.save(out, "JPEG", quality=95, xmp=XMP.format(caption).encode())
        data = out.getvalue()
    else:
        img.save(out, "JPEG", quality=95)
        data = out.getvalue()
        data = data[:2] + iptc_segment(caption) + data[2:]
    path.write_bytes(data)
    return path


def make_docs_corpus(root: Path) -> Path:
    make_image(root / "shop" / "img" / "123.jpg", seed=10)
    make_image(root / "shop" / "img" / "456.png", seed=11)
    (root / "shop" / "shoes.jsonl").write_text("\n".join(json.dumps(r) for r in SHOES) + "\n")
    for (rel, caption), how, seed in zip(CAPTIONS.items(), ("exif", "xmp", "iptc"), (20, 21, 22)):
        with_caption(root / rel, seed, caption, how)
    make_image(root / SIDECAR[0], seed=30)
    (root / SIDECAR[1]).write_text(SIDECAR[2])
    make_image(root / "photos" / "alone.png", seed=31)
    return root
