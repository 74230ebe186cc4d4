"""Your own data: folder trees and CSVs (dataset.name=folder), the stratified split, class names,
`longtail inspect`'s diagnostics, timm backbones, and the end-to-end run through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import TINY_RUN, main_here
from image_tree import OWN_COUNTS, make_class_folders, write_csv_twin
from longtail.config import load_config
from longtail.data import build_data
from longtail.data.splits import split_share, stratified_split
from longtail.diagnostics import gini, head_tail_mass, summarize_counts
from longtail.errors import LongtailError

NAMES = sorted(OWN_COUNTS)  # cat dog emu yak
REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "own_data" / "ce.yaml"
SPLIT = ["dataset.name=folder", "dataset.val_per_class=2", "dataset.test_per_class=3", "data.num_workers=0"]
TINY = [*TINY_RUN, "data.image_size=16", "train.batch_size=16", "eval.batch_size=64", "train.amp=false"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("own") / "photos")


def _bundle(*overrides: str):
    return build_data(load_config(None, [*SPLIT, *overrides]))


def _rows(text: str) -> list[tuple[str, str]]:
    return [(r["path"], r["label"]) for r in csv.DictReader(text.splitlines())]


# ----------------------------------------------------------------------------- the split rule


@pytest.mark.parametrize("n, asked, share", [(1, 5, 0), (2, 5, 0), (3, 5, 1), (4, 5, 1), (5, 5, 2), (11, 5, 5), (40, 5, 5), (40, 0, 0)])
def test_split_share_by_hand(n, asked, share):
    assert split_share(n, asked) == share


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=6), st.integers(0, 12), st.integers(0, 12), st.integers(0, 3))
def test_stratified_split_keeps_a_training_image_of_every_class(sizes, val, test, seed):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    train_idx, val_idx, test_idx, short = stratified_split(labels, len(sizes), seed, val, test)
    assert sorted(np.concatenate([train_idx, val_idx, test_idx]).tolist()) == list(range(len(labels)))  # a partition
    for cls, n in enumerate(sizes):
        got_val, got_test = int((labels[val_idx] == cls).sum()), int((labels[test_idx] == cls).sum())
        assert (got_val, got_test) == (min(val, (n - 1) // 2), min(test, (n - 1) // 2))
        assert (labels[train_idx] == cls).sum() >= 1
        assert (cls in short) == (got_val < val or got_test < test)


def test_stratified_split_is_seeded_and_test_does_not_move_with_val():
    labels = np.repeat(np.arange(3), [30, 12, 7])
    a = stratified_split(labels, 3, seed=1, val_per_class=2, test_per_class=3)
    b = stratified_split(labels, 3, seed=1, val_per_class=2, test_per_class=3)
    c = stratified_split(labels, 3, seed=2, val_per_class=2, test_per_class=3)
    more_val = stratified_split(labels, 3, seed=1, val_per_class=4, test_per_class=3)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    assert not np.array_equal(a[2], c[2])
    assert np.array_equal(a[2], more_val[2]) and len(more_val[1]) > len(a[1])


# ----------------------------------------------------------------------------- diagnostics


def test_gini_and_mass_against_hand_values():
    assert gini([7, 7, 7, 7]) == 0.0
    assert gini([1, 3]) == pytest.approx(0.25)  # |1-3| * 2 pairs / (2 * 2^2 * 2)
    assert gini([1, 1, 1, 5]) == pytest.approx(24 / (2 * 16 * 2))  # 3 pairs of |4|, counted twice
    head, tail = head_tail_mass([40, 20, 10, 5])  # head: 1 class of 4, tail: 2 classes
    assert (head, tail) == (pytest.approx(40 / 75), pytest.approx(15 / 75))
    summary = summarize_counts([40, 20, 10, 200], ["a", "b", "c", "d"])
    assert summary["imbalance_factor"] == 20.0
    assert summary["shots"] == {"many": {"classes": 1, "images": 200}, "medium": {"classes": 2, "images": 60},
                                "few": {"classes": 1, "images": 10}}


# ----------------------------------------------------------------------------- trees and CSVs


def test_single_tree_is_split_by_class_with_names(tree):
    (tree / ".ipynb_checkpoints").mkdir(exist_ok=True)  # hidden folders are not classes
    bundle = _bundle(f"dataset.root={tree}")
    assert bundle.class_names == NAMES and bundle.num_classes == 4
    # val 2 and test 3 per class; yak (5 images) gives 2 to each: (5 - 1) // 2
    assert bundle.class_counts == [40 - 5, 20 - 5, 10 - 5, 5 - 4]
    assert np.bincount(bundle.test.targets).tolist() == [3, 3, 3, 2]
    assert np.bincount(bundle.val.targets).tolist() == [2, 2, 2, 2]
    assert len(bundle.notes) == 1 and "yak (5 images: 2 val, 2 test)" in bundle.notes[0] and "cat" not in bundle.notes[0]
    rows = {k: _rows(text) for k, text in bundle.split_files.items()}
    assert sorted(rows) == ["split_test.csv", "split_train.csv", "split_val.csv"]
    every = [p for part in rows.values() for p, _ in part]
    assert len(every) == len(set(every)) == sum(OWN_COUNTS.values())
    assert all(path.split("/")[0] == label for part in rows.values() for path, label in part)


def test_csv_twin_and_written_split_give_the_same_data(tree, tmp_path):
    from_tree = _bundle(f"dataset.root={tree}")
    twin = write_csv_twin(tree, tmp_path / "all.csv")
    from_csv = _bundle(f"dataset.csv={twin}", f"dataset.root={tree}")
    assert from_csv.class_names == NAMES and from_csv.split_files == from_tree.split_files
    for name, text in from_tree.split_files.items():
        (tmp_path / name).write_text(text)
    reused = _bundle(f"dataset.root={tree}", f"dataset.train_list={tmp_path / 'split_train.csv'}",
                     f"dataset.val_list={tmp_path / 'split_val.csv'}", f"dataset.test_list={tmp_path / 'split_test.csv'}")
    assert reused.split_files == from_tree.split_files and reused.class_counts == from_tree.class_counts


def test_index_labels_and_split_subtrees(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"a": 6, "b": 3})
    make_class_folders(root / "test", {"a": 2, "b": 2})
    bundle = _bundle(f"dataset.root={root}", "dataset.val_per_class=1")
    assert bundle.class_names == ["a", "b"] and len(bundle.test) == 4
    assert bundle.class_counts == [5, 2] and len(bundle.val) == 2  # val carved from train/: 1 per class
    (tmp_path / "idx.csv").write_text("path,label\n" + "".join(f"train/{c}/img_000.jpg,{i}\n" for i, c in enumerate("ab")) * 1
                                      + "".join(f"train/a/img_00{k}.jpg,0\n" for k in range(1, 5)))
    indexed = _bundle(f"dataset.csv={tmp_path / 'idx.csv'}", f"dataset.root={root}", "dataset.val_per_class=1",
                      "dataset.test_per_class=1")
    assert indexed.class_names is None and indexed.names() == ["0", "1"] and indexed.class_counts == [3, 1]


def _fails(*overrides: str) -> str:
    with pytest.raises(LongtailError) as info:
        _bundle(*overrides)
    return str(info.value)


def test_bad_inputs_say_what_is_wrong(tree, tmp_path):
    empty = tmp_path / "empty_class"
    make_class_folders(empty, {"a": 4, "b": 4})
    (empty / "c").mkdir()
    assert "'c'" in _fails(f"dataset.root={empty}").replace(str(empty) + "/", "'") and "hold no images" in _fails(f"dataset.root={empty}")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(tree / "cat" / "img_000.jpg", flat / "x.jpg")
    assert "holds no class folders" in _fails(f"dataset.root={flat}") and "x.jpg" in _fails(f"dataset.root={flat}")
    (tmp_path / "train.csv").write_text("path,label\ncat/img_000.jpg,cat\ndog/img_000.jpg,dog\n")
    (tmp_path / "test.csv").write_text("path,label\ncat/img_001.jpg,cat\ndog/img_001.jpg,dgo\n")
    message = _fails(f"dataset.root={tree}", f"dataset.train_list={tmp_path / 'train.csv'}", f"dataset.test_list={tmp_path / 'test.csv'}")
    assert "test.csv:3" in message and "unknown class name 'dgo'" in message
    (tmp_path / "cols.csv").write_text("file,class\ncat/img_000.jpg,cat\n")
    message = _fails(f"dataset.root={tree}", f"dataset.csv={tmp_path / 'cols.csv'}")
    assert "path,label" in message and "file,class" in message
    (tmp_path / "missing.csv").write_text("path,label\ncat/nope.jpg,cat\n")
    assert "missing.csv:2" in _fails(f"dataset.root={tree}", f"dataset.csv={tmp_path / 'missing.csv'}")


# ----------------------------------------------------------------------------- timm


def test_timm_backbone_loads_a_local_file_and_gets_a_new_classifier(tmp_path):
    timm = pytest.importorskip("timm")
    from longtail.config import ModelConfig
    from longtail.models import create_model

    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model(ModelConfig(name="timm/test_efficientnet", pretrained=str(tmp_path / "weights.pth")), 4, 3)
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(model.state_dict()["backbone." + key], value), key
    assert model.classifier.weight.shape == (4, source.num_features)
    assert model(torch.randn(2, 3, 16, 16))["logits"].shape == (2, 4)
    with pytest.raises(LongtailError, match="class count"):  # keeping a 10-class head for 4 classes cannot work
        create_model(ModelConfig(name="timm/test_efficientnet", pretrained=str(tmp_path / "weights.pth"),
                                 pretrained_classifier=True), 4, 3)
    with pytest.raises(LongtailError, match="timm has no model"):
        create_model(ModelConfig(name="timm/no_such_net"), 4, 3)


# ----------------------------------------------------------------------------- end to end through the CLI

README = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"  # the walkthrough moved from the README to the docs
WALKTHROUGH = "<!-- own-data walkthrough: tests/test_folder.py runs these commands -->"


def walkthrough_commands() -> list[list[str]]:
    """The `longtail ...` lines of the own-data walkthrough block (docs/own-data.md), split into arguments."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(WALKTHROUGH):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split()[1:] for line in block.splitlines() if line.startswith("longtail ")]


def test_readme_walkthrough_inspect_train_predict_export(tree, tmp_path, capsys, monkeypatch):
    """The README's commands on a generated tree (40/20/10/5 images), made tiny by overrides; predict reads
    the cat folder as the new photos, and export writes into the test's folder. The commands run in this process
    (`longtail.cli.main`, as the console script does): the interpreter start-up is tested elsewhere."""
    monkeypatch.chdir(README.parents[1])  # the commands' config paths are relative to the checkout
    commands = walkthrough_commands()
    assert [c[0] for c in commands] == ["inspect", "train", "predict", "export"]
    paths = {"dataset.root=photos": f"dataset.root={tree}", "runs/": f"{tmp_path}/runs/", "new_photos/": str(tree / "cat"),
             "preds.csv": str(tmp_path / "preds.csv"), "photos.onnx": str(tmp_path / "photos.onnx")}
    outputs = {}
    for args in commands:
        for old, new in paths.items():
            args = [a.replace(old, new) for a in args]
        overrides = [*SPLIT[1:], *(TINY if args[0] == "train" else [])] if args[0] in ("inspect", "train") else []
        outputs[args[0]] = main_here(capsys, *args, *overrides)
    run, inspected = tmp_path / "runs" / "photos", tmp_path / "runs" / "photos-inspect"

    report = json.loads((inspected / "inspect.json").read_text())
    assert report["images_per_class"] == {"cat": 35, "dog": 15, "emu": 5, "yak": 1}
    assert report["splits"] == {"train": 56, "val": 8, "test": 11} and report["imbalance_factor"] == 35.0
    assert report["test_per_class"] == [3, 3, 3, 2]
    assert (inspected / "class_counts.png").stat().st_size > 1000

    assert "yak (5 images: 2 val, 2 test)" in outputs["train"].stdout  # the small class is reported, and trained on
    for name in ("split_train.csv", "split_val.csv", "split_test.csv"):  # the split inspect showed is the one trained on
        assert (run / name).read_text() == (inspected / name).read_text()
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["class_names"] == NAMES and ckpt["class_counts"] == [35, 15, 5, 1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == NAMES and metrics["num_images"] == 11 and metrics["posthoc"]["name"] == "la"
    assert metrics["per_class_named"] == dict(zip(NAMES, metrics["per_class"]))
    assert metrics["raw"]["per_class_named"] == dict(zip(NAMES, metrics["raw"]["per_class"]))

    main_here(capsys, "evaluate", str(run), "--posthoc", "la", "--save")
    saved = json.loads((run / "eval_la.json").read_text())
    assert saved["per_class"] == metrics["per_class"] and saved["per_class_named"] == metrics["per_class_named"]

    import csv

    with open(tmp_path / "preds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and all(r["class_name"] in NAMES and not r["error"] for r in rows)  # every cat photo (40)
    assert "predicted 40 of 40 images" in outputs["predict"].stdout
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "photos.onnx")).metadata_props}
    assert meta["class_names"] == NAMES


def test_an_unreadable_training_image_stops_the_run_with_its_path(tmp_path):
    from longtail.engine import fit

    root = make_class_folders(tmp_path / "photos", {"a": 6, "b": 6})
    (root / "b" / "img_004.jpg").write_bytes(b"not a jpeg")
    cfg = load_config(REPO_CONFIG, [f"dataset.root={root}", *SPLIT[1:], *TINY, "dataset.val_per_class=0", "dataset.test_per_class=1"])
    with pytest.raises(LongtailError) as info:
        fit(cfg, tmp_path / "run")
    assert str(root / "b" / "img_004.jpg") in str(info.value) and "cannot be read" in str(info.value)
    assert "\n" not in str(info.value)


def test_inspect_needs_no_images_for_fmnist(tmp_path):
    from longtail.diagnostics import inspect_dataset

    cfg = load_config(REPO_CONFIG.parents[1] / "fmnist_lt" / "ce_imba100.yaml", ["dataset.root=/nonexistent"])
    report = inspect_dataset(cfg, tmp_path, log=lambda line: None)
    assert report["class_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # methods.md's profile
    assert report["class_names"][0] == "T-shirt/top" and report["splits"] == {"train": 12406, "val": 1000, "test": 10000}
    assert json.loads((tmp_path / "inspect.json").read_text()) == json.loads(json.dumps(report))
