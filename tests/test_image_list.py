"""Image-list datasets (ImageNet-LT / Places-LT text lists, iNaturalist JSON) on a generated JPEG tree:
parsing, class counts, every kind of bad list line with its file:line, unreadable images, the image
pipeline, and end-to-end training / evaluation / decoupled re-training through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from image_tree import TEST_PER_CLASS, TRAIN_COUNTS, VAL_PER_CLASS, make_tree
from longtail.config import load_config
from longtail.data import build_data
from longtail.data.image_list import UnreadableImage
from longtail.data.loader import LoaderPipeline, TransformedImages
from longtail.data.samplers import EpochSampler, SeededSampler
from longtail.data.transforms import eval_transform, image_train_transform
from longtail.errors import LongtailError

TINY = [*TINY_RUN, "data.image_size=32", "train.batch_size=10", "eval.batch_size=64"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    return make_tree(tmp_path_factory.mktemp("jpegs"))


def list_config(tree: dict[str, Path], *extra: str, train: Path | None = None, test: Path | None = None, name: str = "imagenet_lt"):
    return load_config(None, [
        f"dataset.name={name}", f"dataset.root={tree['root']}", f"dataset.train_list={train or tree['train_list']}",
        f"dataset.val_list={tree['val_list']}", f"dataset.test_list={test or tree['test_list']}", *extra,
    ])


def list_args(tree: dict[str, Path]) -> list[str]:
    return [f"dataset.root={tree['root']}", f"dataset.train_list={tree['train_list']}",
            f"dataset.val_list={tree['val_list']}", f"dataset.test_list={tree['test_list']}"]


# ----------------------------------------------------------------------------- reading the lists


def test_text_lists_give_counts_classes_and_splits(tree):
    bundle = build_data(list_config(tree))
    assert bundle.class_counts == TRAIN_COUNTS
    assert bundle.num_classes == len(TRAIN_COUNTS) and not bundle.in_memory and bundle.in_channels == 3
    assert len(bundle.train) == sum(TRAIN_COUNTS)
    assert len(bundle.val) == VAL_PER_CLASS * len(TRAIN_COUNTS) and len(bundle.test) == TEST_PER_CLASS * len(TRAIN_COUNTS)
    assert list(bundle.train.targets[:3]) == [0, 0, 0] and int(bundle.train.targets[-1]) == len(TRAIN_COUNTS) - 1
    image, label = bundle.test[TEST_PER_CLASS]  # the first image of class 1
    assert image.dtype == torch.uint8 and image.shape == (3, 36, 36) and label == 1


def test_inat_json_takes_classes_from_categories(tree, tmp_path):
    cfg = list_config(tree, name="inat2018", train=tree["inat_train"], test=tree["inat_val"])
    cfg.dataset.val_list = None
    bundle = build_data(cfg)
    assert bundle.class_counts == TRAIN_COUNTS and bundle.num_classes == 5 and bundle.val is None
    assert len(bundle.test) == VAL_PER_CLASS * 5
    # categories define 7 classes: the 2 classes without training images are refused
    data = json.loads(tree["inat_train"].read_text())
    data["categories"] += [{"id": 5, "name": "x"}, {"id": 6, "name": "y"}]
    wide = tmp_path / "train7.json"
    wide.write_text(json.dumps(data))
    with pytest.raises(LongtailError, match="2 of 7 classes have no image in the train list train7.json"):
        build_data(list_config(tree, name="inat2018", train=wide, test=tree["test_list"]))
    # a test file whose categories differ from the training file's
    with pytest.raises(LongtailError, match="inat_val.json: defines 5 categories, the training data 7"):
        build_data(list_config(tree, name="inat2018", train=wide, test=tree["inat_val"]))
    # a category id outside the categories, reported with the annotation number
    data = json.loads(tree["inat_train"].read_text())
    data["annotations"][3]["category_id"] = 8141
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(LongtailError, match=r"bad.json annotation #3: label 8141 is outside 0\.\.4"):
        build_data(list_config(tree, name="inat2018", train=bad, test=tree["inat_val"]))


def test_configured_num_classes_must_match_the_json(tree):
    cfg = list_config(tree, "dataset.num_classes=8142", name="inat2018", train=tree["inat_train"], test=tree["inat_val"])
    with pytest.raises(LongtailError, match="dataset.num_classes is 8142 but inat_train.json defines 5 categories"):
        build_data(cfg)


def _bad_list(tmp_path: Path, tree, line: str, line_number: int = 3) -> Path:
    """The train list with `line` placed as line `line_number`."""
    lines = tree["train_list"].read_text().splitlines()
    lines.insert(line_number - 1, line)
    path = tmp_path / "bad_train.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line, expected", [
    ("train/n00000000/missing.JPEG 0", "image 'train/n00000000/missing.JPEG' does not exist"),
    ("train/n00000000/img_000.JPEG zero", "label 'zero' is not an integer"),
    ("train/n00000000/img_000.JPEG 1.0", "label '1.0' is not an integer"),
    ("train/n00000000/img_000.JPEG -1", r"label -1 is outside 0\.\.4"),
    ("train/n00000000/img_000.JPEG", "expected 'relative/path label'"),
    ("/etc/passwd 0", "is absolute"),
    ("train/../../outside.JPEG 0", "climbs out of dataset.root"),
    ("LINK_FILE 0", "symlink leaving dataset.root"),
    ("LINK_DIR/secret.JPEG 0", "leaves dataset.root through a symlinked folder"),
])
def test_each_bad_line_is_reported_with_file_and_line(tree, tmp_path, line, expected):
    outside = tree["root"].parent / "outside"  # a real image, but outside dataset.root
    outside.mkdir(exist_ok=True)
    (outside / "secret.JPEG").write_bytes((tree["root"] / "train/n00000000/img_000.JPEG").read_bytes())
    links = tree["root"] / "links"
    links.mkdir(exist_ok=True)
    for name, target in (("file.JPEG", outside / "secret.JPEG"), ("dir", outside)):
        if not (links / name).is_symlink():
            os.symlink(target, links / name)
    line = line.replace("LINK_FILE", "links/file.JPEG").replace("LINK_DIR", "links/dir")
    with pytest.raises(LongtailError, match=f"1 problem\\(s\\) in the image lists: bad_train.txt:3: .*{expected}"):
        build_data(list_config(tree, train=_bad_list(tmp_path, tree, line)))


def test_all_problems_are_collected_and_counted(tree, tmp_path):
    lines = ["a/missing1.JPEG 0", "a/missing2.JPEG 1", "b.JPEG x", "c.JPEG 2 ", "../d.JPEG 3", "a/missing3.JPEG 4", "e.JPEG"]
    train = tmp_path / "many.txt"
    train.write_text(tree["train_list"].read_text() + "\n".join(lines) + "\n")
    test = tmp_path / "test.txt"
    test.write_text("test/n00000000/img_000.JPEG 5\n")  # label beyond the 5 training classes
    with pytest.raises(LongtailError) as info:
        build_data(list_config(tree, train=train, test=test))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("8 problem(s) in the image lists (and 3 more):")  # 7 in train, 1 in test
    first = sum(TRAIN_COUNTS)  # the bad lines follow the 30 good ones
    assert f"many.txt:{first + 3}: label 'x' is not an integer" in message
    assert f"many.txt:{first + 7}: expected 'relative/path label'" in message


def test_val_and_test_labels_are_checked_against_the_train_classes(tree, tmp_path):
    test = tmp_path / "test.txt"
    test.write_text("test/n00000000/img_000.JPEG 0\n\ntest/n00000000/img_001.JPEG 5\n")
    with pytest.raises(LongtailError, match=r"test.txt:3: label 5 is outside 0\.\.4 \(the train list imagenet_train.txt defines 5 classes\)"):
        build_data(list_config(tree, test=test))


def test_missing_settings_are_clear(tree):
    cfg = list_config(tree)
    cfg.dataset.test_list = None
    with pytest.raises(LongtailError, match="needs dataset.train_list and dataset.test_list"):
        build_data(cfg)
    cfg = list_config(tree, "dataset.train_list=/nonexistent/list.txt")
    with pytest.raises(LongtailError, match="dataset.train_list '/nonexistent/list.txt' does not exist"):
        build_data(cfg)
    cfg = list_config(tree, "dataset.root=/nonexistent")
    with pytest.raises(LongtailError, match="dataset.root '/nonexistent' is not a folder"):
        build_data(cfg)


# ----------------------------------------------------------------------------- unreadable images


def test_unreadable_image_names_its_file_and_line(tree, tmp_path):
    root = tmp_path / "root"
    (root / "x").mkdir(parents=True)
    (root / "x/good.JPEG").write_bytes((tree["root"] / "train/n00000000/img_000.JPEG").read_bytes())
    (root / "x/bad.JPEG").write_bytes((root / "x/good.JPEG").read_bytes()[:200])  # truncated
    listing = tmp_path / "list.txt"
    listing.write_text("x/good.JPEG 0\nx/bad.JPEG 1\n")
    cfg = load_config(None, ["dataset.name=places_lt", f"dataset.root={root}", f"dataset.train_list={listing}",
                             f"dataset.test_list={listing}", "data.image_size=32"])
    bundle = build_data(cfg)  # the list itself is fine
    with pytest.raises(UnreadableImage, match=r"bad.JPEG' \(list.txt:2\) cannot be read") as direct:
        bundle.train[1]
    # through DataLoader workers, the error arrives as the same one-line message
    dataset = TransformedImages(bundle.train, image_train_transform(cfg.data, bundle.spec))
    batches = LoaderPipeline(dataset, SeededSampler(EpochSampler(bundle.train.targets, 0, shuffle=False)), 2, 0, num_workers=1)
    with pytest.raises(LongtailError) as info:
        list(batches)
    assert "\n" not in str(info.value) and "list.txt:2" in str(info.value)
    assert str(info.value) == str(direct.value)  # the dataset's message alone, no worker traceback
    # verify_images finds it before training
    cfg.dataset.verify_images = True
    with pytest.raises(LongtailError, match=r"1 unreadable image\(s\): list.txt:2: image 'x/bad.JPEG' cannot be decoded"):
        build_data(cfg)


# ----------------------------------------------------------------------------- the image pipeline


def test_train_and_eval_transforms_shapes_and_seeded_augmentation(tree):
    cfg = list_config(tree, "data.image_size=24", "data.randaugment=true", "data.color_jitter=0.4",
                      "data.grayscale=0.5", "data.blur=0.5")
    bundle = build_data(cfg)
    train = TransformedImages(bundle.train, image_train_transform(cfg.data, bundle.spec))
    x, y = train[(5, 123)]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == 0
    torch.manual_seed(0)
    before = torch.get_rng_state()
    again, _ = train[(5, 123)]
    assert torch.equal(x, again)  # the seed alone decides the augmentation ...
    assert torch.equal(torch.get_rng_state(), before)  # ... and the caller's random state is untouched
    assert not torch.equal(x, train[(5, 124)][0])
    evaluate = TransformedImages(bundle.test, eval_transform(bundle.spec))
    a, _ = evaluate[0]
    assert a.shape == (3, 24, 24) and torch.equal(a, evaluate[0][0])
    # eval: resize the short side to 24 * 256 / 224 = 27, centre crop 24; check against a hand-built pipeline
    from torchvision.transforms import v2

    raw, _ = bundle.test[0]
    manual = v2.functional.center_crop(v2.functional.resize(raw, [27], antialias=True), [24, 24]).float() / 255
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    assert torch.allclose(a, (manual - mean) / std, atol=1e-6)


# ----------------------------------------------------------------------------- end to end through the CLI


def test_train_evaluate_and_decoupled_retraining_via_cli(tree, tmp_path, cli):
    config = "configs/fmnist_lt/ce_imba100.yaml"
    stage1 = tmp_path / "stage1"
    cli("train", config, "dataset.name=imagenet_lt", *list_args(tree), *TINY, "data.num_workers=1",
        "data.randaugment=true", "data.color_jitter=0.4", "--out", str(stage1))
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert metrics["num_images"] == TEST_PER_CLASS * 5 and metrics["class_counts"] == TRAIN_COUNTS
    assert metrics["selected_by"] == "val_top1" and len(metrics["per_class"]) == 5

    # stage 2: frozen backbone from stage 1, class-balanced sampling, only the classifier trains
    stage2 = tmp_path / "stage2"
    cli("train", config, "dataset.name=imagenet_lt", *list_args(tree), *TINY, "data.num_workers=0",
        f"model.pretrained={stage1 / 'checkpoints' / 'best.pt'}", "model.freeze_backbone=true",
        "data.sampler=class_balanced", "train.lr=0.5", "--out", str(stage2))
    before = torch.load(stage1 / "checkpoints" / "best.pt", weights_only=True)["model"]
    after = torch.load(stage2 / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in before if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # incl. BN running stats
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    # re-evaluating stage 2 needs only its own checkpoint, not the stage-1 file it started from
    (stage1 / "checkpoints" / "best.pt").rename(tmp_path / "moved.pt")
    shown = cli("evaluate", str(stage2), "--split", "val")
    assert "val metrics" in shown.stdout


def test_inat_json_trains_via_cli(tree, tmp_path, cli):
    run = tmp_path / "inat"
    cli("train", "configs/fmnist_lt/ce_imba100.yaml", "dataset.name=inat2018", f"dataset.root={tree['root']}",
        f"dataset.train_list={tree['inat_train']}", f"dataset.test_list={tree['inat_val']}", *TINY,
        "data.num_workers=0", "--out", str(run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == VAL_PER_CLASS * 5 and metrics["selected_by"] == "last_epoch"


def test_bad_list_stops_the_cli_before_training(tree, tmp_path, cli):
    bad = _bad_list(tmp_path, tree, "train/n00000000/missing.JPEG 0", line_number=1)
    proc = cli("train", "configs/fmnist_lt/ce_imba100.yaml", "dataset.name=imagenet_lt", *list_args(tree),
               f"dataset.train_list={bad}", *TINY, "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert "bad_train.txt:1: image 'train/n00000000/missing.JPEG' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "config.yaml").exists()


# ----------------------------------------------------------------------------- shipped configs

LARGE_SCALE = {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142}


def _configs(folder: str) -> list[Path]:
    """The CE / LA / GALA configs of a large-scale folder (the LGLA ones come with the LGLA issue)."""
    return [p for p in sorted((Path(__file__).parents[1] / "configs" / folder).glob("*.yaml"))
            if p.name.split("_")[0] in {"ce", "la", "gala"}]


@pytest.mark.parametrize("path", [str(p) for d in LARGE_SCALE for p in _configs(d)])
def test_large_scale_configs_load(path):
    cfg = load_config(path)  # every key exists, every choice is valid
    folder = Path(path).parent.name
    assert cfg.dataset.name == folder and cfg.dataset.num_classes == LARGE_SCALE[folder]
    assert cfg.model.name in {"resnet50", "resnext50_32x4d", "resnet152"}
    assert cfg.loss.name in {"ce", "la", "gala"}  # la / gala come from the losses issue
    if "decoupled" in path:  # GALA's published large-scale rows: frozen backbone, class-balanced sampling
        assert cfg.model.freeze_backbone and cfg.data.sampler == "class_balanced"
        assert cfg.model.pretrained.startswith(f"runs/{folder}/ce_") and 10 <= cfg.train.epochs <= 30
        assert (cfg.eval.posthoc == "pn") == ("_pn_" in path)
    if folder == "inat2018":
        assert cfg.dataset.val_list is None and cfg.train.select == "last"


def test_large_scale_configs_ship_in_every_folder():
    for folder in LARGE_SCALE:
        names = {p.name for p in _configs(folder)}
        assert {n.split("_")[0] for n in names} == {"ce", "la", "gala"} and sum("_pn_" in n for n in names) == 1
