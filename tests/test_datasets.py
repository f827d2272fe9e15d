"""The captioned dataset reader: JSONL, CSV, folder + .txt, Karpathy JSON; bad rows named and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch.training.datasets import load_dataset
from mmsearch.errors import DatasetError
from conftest import make_image


def _images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        make_image(root / name, seed=i, size=(16, 16))


def test_jsonl_relative_paths_caption_forms_merging_and_bad_rows(tmp_path):
    data = tmp_path / "set"
    _images(data / "img", ["a.png", "b.png", "c.png"])
    lines = [
        json.dumps({"image": "img/a.png", "caption": "a  red\tthing"}),
        json.dumps({"filepath": "img/b.png", "captions": ["first", "second"], "split": "val"}),
        "{not json",
        json.dumps({"image": "img/missing.png", "caption": "gone"}),
        "",
        json.dumps({"image": "img/c.png"}),
        json.dumps(["img/c.png", "list row"]),
        json.dumps({"image": "img/a.png", "text": "another caption of a"}),
        json.dumps({"caption": "no image"}),
        json.dumps({"file": str(data / "img" / "c.png"), "sentences": [{"raw": "absolute path"}, "plain"]}),
    ]
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_dataset(data / "captions.jsonl")
    by_name = {item.image.name: item for item in ds.items}
    assert set(by_name) == {"a.png", "b.png", "c.png"}
    assert by_name["a.png"].captions == ("a red thing", "another caption of a")  # merged, whitespace folded
    assert by_name["a.png"].image == data / "img" / "a.png"
    assert by_name["b.png"].captions == ("first", "second") and by_name["b.png"].split == "val"
    assert by_name["c.png"].captions == ("absolute path", "plain")
    assert ds.captions == 6
    problems = {p.line: p.reason for p in ds.problems}
    assert sorted(problems) == [3, 4, 6, 7, 9]
    assert "not valid JSON" in problems[3]
    assert "image not found" in problems[4] and "missing.png" in problems[4]
    assert problems[6] == "no caption"
    assert "expected an object" in problems[7]
    assert "no image path" in problems[9]
    assert str(ds.problems[0]).startswith(f"{data / 'captions.jsonl'}:3: ")
    texts, owners = ds.pairs()
    assert len(texts) == 6 and [ds.items[o].image.name for o in owners].count("a.png") == 2


def test_csv_with_header_several_caption_columns_and_bad_rows(tmp_path):
    _images(tmp_path / "pics", ["x.jpg", "y.jpg"])
    (tmp_path / "data.csv").write_text(
        "image,caption_1,caption_2,split\n"
        'pics/x.jpg,"a cat, sitting",a cat,train\n'
        "pics/y.jpg,a dog,,test\n"
        "pics/x.jpg,another cat,,train\n"
        "pics/y.jpg,too,many,columns,here\n"
        "pics/nope.jpg,ghost,,test\n"
        "pics/y.jpg,,,test\n"
    )
    ds = load_dataset(tmp_path / "data.csv")
    by_name = {item.image.name: item for item in ds.items}
    assert by_name["x.jpg"].captions == ("a cat, sitting", "a cat", "another cat")
    assert by_name["y.jpg"].captions == ("a dog",)
    assert ds.splits == ["test", "train"]
    assert [i.image.name for i in ds.split("test").items] == ["y.jpg"]
    assert {p.line: p.reason.split(":")[0] for p in ds.problems} == {
        5: "5 columns, the header has 4", 6: "image not found", 7: "no caption",
    }
    (tmp_path / "bad.csv").write_text("picture,words\na.jpg,x\n")
    with pytest.raises(DatasetError, match="no image column"):
        load_dataset(tmp_path / "bad.csv")


def test_tsv(tmp_path):
    _images(tmp_path, ["p.png"])
    (tmp_path / "d.tsv").write_text("filename\ttext\np.png\ta caption, with comma\n")
    ds = load_dataset(tmp_path / "d.tsv")
    assert ds.items[0].captions == ("a caption, with comma",)


def test_folder_of_images_with_same_named_txt(tmp_path):
    root = tmp_path / "folder"
    _images(root, ["train/one.png", "train/two.jpg", "test/three.png", "test/lonely.png"])
    (root / "train" / "one.txt").write_text("first caption\n\n  second   caption \n")
    (root / "train" / "two.txt").write_text("only one")
    (root / "test" / "three.txt").write_text("held out")
    ds = load_dataset(root)
    by_name = {item.image.name: item for item in ds.items}
    assert by_name["one.png"].captions == ("first caption", "second caption")
    assert by_name["one.png"].split == "train" and by_name["three.png"].split == "test"
    assert len(ds.problems) == 1 and "lonely" in ds.problems[0].source and "no caption file" in ds.problems[0].reason
    assert len(ds.split("train")) == 2


def test_karpathy_json_coco_and_flickr_layouts(tmp_path):
    coco = tmp_path / "coco"
    _images(coco, ["val2014/COCO_1.jpg", "train2014/COCO_2.jpg", "val2014/COCO_3.jpg", "val2014/COCO_4.jpg"])
    entries = [
        {"filepath": "val2014", "filename": "COCO_1.jpg", "split": "test", "sentences": [{"raw": "A man."}, {"raw": "A person."}]},
        {"filepath": "train2014", "filename": "COCO_2.jpg", "split": "train", "sentences": [{"raw": "A bus."}]},
        {"filepath": "val2014", "filename": "COCO_3.jpg", "split": "restval", "sentences": [{"raw": "A dog."}]},
        {"filepath": "val2014", "filename": "COCO_missing.jpg", "split": "test", "sentences": [{"raw": "x"}]},
        {"filepath": "val2014", "filename": "COCO_4.jpg", "split": "val", "sentences": []},
        {"sentences": [{"raw": "no file name"}]},
    ]
    (coco / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    ds = load_dataset(coco / "dataset_coco.json")
    assert [(i.image.name, i.split) for i in ds.items] == [("COCO_1.jpg", "test"), ("COCO_2.jpg", "train"), ("COCO_3.jpg", "train")]
    assert ds.items[0].captions == ("A man.", "A person.")
    assert [p.line for p in ds.problems] == [4, 5, 6]
    assert "not found" in ds.problems[0].reason and "no sentences" in ds.problems[1].reason
    assert len(ds.split("train")) == 2 and len(ds.split("restval")) == 2
    with pytest.raises(DatasetError, match="no 'val' split"):
        ds.split("val")

    flickr = tmp_path / "flickr"
    _images(flickr / "flickr30k-images", ["1000.jpg"])
    (flickr / "dataset_flickr30k.json").write_text(json.dumps({"images": [
        {"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "Two kids play."}]}]}))
    ds = load_dataset(flickr / "dataset_flickr30k.json")
    assert ds.items[0].image == flickr / "flickr30k-images" / "1000.jpg"
    # --image-root points elsewhere
    ds = load_dataset(flickr / "dataset_flickr30k.json", image_root=flickr / "flickr30k-images")
    assert ds.items[0].image == flickr / "flickr30k-images" / "1000.jpg"


def test_unusable_inputs_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nothing.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset(tmp_path / "x.parquet")
    (tmp_path / "all_bad.jsonl").write_text('{"image": "nope.png", "caption": "c"}\n')
    with pytest.raises(DatasetError, match=r"no usable captioned images; first problem: .*:1: image not found"):
        load_dataset(tmp_path / "all_bad.jsonl")
    (tmp_path / "broken.json").write_text('{"images": [\n')
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "broken.json")
    (tmp_path / "nosplit.jsonl").write_text(json.dumps({"image": "a.png", "caption": "c"}) + "\n")
    _images(tmp_path, ["a.png"])
    with pytest.raises(DatasetError, match="no split field"):
        load_dataset(tmp_path / "nosplit.jsonl").split("test")


def test_holdout_is_deterministic_and_disjoint(tmp_path):
    names = [f"i{n}.png" for n in range(60)]
    _images(tmp_path, names)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"image": n, "caption": n}) + "\n" for n in names))
    ds = load_dataset(tmp_path / "d.jsonl")
    rest, held = ds.holdout(0.25)
    rest2, held2 = ds.holdout(0.25)
    assert [i.image for i in held.items] == [i.image for i in held2.items]
    assert not {i.image for i in rest.items} & {i.image for i in held.items}
    assert len(rest) + len(held) == 60 and 5 <= len(held) <= 25


def test_folder_holding_a_dataset_file(tmp_path):
    """A folder is read through the dataset file it holds: dataset.* by name, Karpathy's
    dataset_*.json, or its only JSONL/CSV when its images have no .txt captions."""
    root = tmp_path / "synthetic"
    _images(root / "images", ["a.png", "b.png"])
    rows = [{"image": "images/a.png", "captions": ["a"], "split": "train"},
            {"image": "images/b.png", "captions": ["b"], "split": "test"}]
    (root / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test.jsonl").write_text(json.dumps(rows[1]) + "\n")  # a per-split file beside it
    ds = load_dataset(root)
    assert ds.source == str(root / "dataset.jsonl") and len(ds) == 2 and ds.splits == ["test", "train"]

    only = tmp_path / "only"
    _images(only, ["x.jpg"])
    (only / "captions.csv").write_text("image,caption\nx.jpg,an x\n")
    assert load_dataset(only).source == str(only / "captions.csv")
    (only / "more.jsonl").write_text(json.dumps({"image": "x.jpg", "caption": "c"}) + "\n")
    with pytest.raises(DatasetError, match="several dataset files .*captions.csv, more.jsonl.*name one"):
        load_dataset(only)

    karpathy = tmp_path / "flickr"
    _images(karpathy / "flickr30k-images", ["1.jpg"])
    (karpathy / "dataset_flickr30k.json").write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "A kid."}]}]}))
    assert load_dataset(karpathy).items[0].captions == ("A kid.",)

    # Images with same-named .txt captions win over a stray table that is not named dataset.*.
    paired = tmp_path / "paired"
    _images(paired, ["p.png"])
    (paired / "p.txt").write_text("a p")
    (paired / "notes.csv").write_text("not,a,dataset\n")
    ds = load_dataset(paired)
    assert ds.source == str(paired) and ds.items[0].captions == ("a p",)
