"""The two logit-adjustment releases as released (issue 26): google-research's TFRecord files read without
TensorFlow, its schedule, normalisation and dropped last batch, its Keras ResNet-32, mmpretrain's
ResNet-34-CIFAR, and the google configs trained for an epoch on generated files."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fake_tfrecords import (
    bytes_feature, crc32c, example, float_feature, image_examples, int64_feature, write_fake_release, write_tfrecord,
)
from longtail.config import ModelConfig, TrainConfig, load_config
from longtail.data import build_data
from longtail.data.base import TensorImages
from longtail.data.batch_augment import BatchAugment
from longtail.data.cifar_tfrecord import URL, read_split
from longtail.data.device import DevicePipeline
from longtail.data.loader import LoaderPipeline, TransformedImages
from longtail.data.pipeline import eval_batches
from longtail.data.samplers import EpochSampler, SeededSampler
from longtail.data.tfrecord import crc32c_rows, masked_crc, parse_example, read_records
from longtail.data.transforms import eval_transform
from longtail.distributed import Runtime
from longtail.engine import fit
from longtail.errors import LongtailError
from longtail.input_spec import InputSpec
from longtail.models import create_model
from longtail.optim import build_optimizer, build_scheduler, lr_factor

REPO = Path(__file__).resolve().parents[1]
GOOGLE = {d: {m: REPO / "configs" / d / f"google_{m}.yaml" for m in ("baseline", "posthoc", "loss")}
          for d in ("cifar10_lt", "cifar100_lt")}
COUNTS = [24, 14, 9, 6, 4, 3, 2, 2, 1, 1]  # a small EXP-like profile, 66 images


# ----------------------------------------------------------------------------- TFRecord reader


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    rows = np.frombuffer(b"123456789" * 2 + b"abcdefghi", dtype=np.uint8).reshape(3, 9)
    assert crc32c_rows(rows).tolist() == [0xE3069283, 0xE3069283, crc32c(b"abcdefghi")]
    # the masking, by hand: rotate right by 15, add 0xA282EAD8 (mod 2**32)
    c = 0xE3069283
    assert int(masked_crc(np.array([c], dtype=np.uint32))[0]) == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_records_read_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)  # HWC, as google writes them
    labels = [3, 0, 9, 9, 1, 5, 2]
    path = write_tfrecord(tmp_path / "x.tfrecord", image_examples(images, labels))
    split = read_split(path, 10)
    assert split.labels.tolist() == labels
    assert split.images.dtype == torch.uint8 and split.images.shape == (7, 3, 32, 32)
    assert torch.equal(split.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert split.images[2, 1, 5, 7] == images[2, 5, 7, 1]  # channel, row, column from HWC by hand


def test_example_parsing_of_every_feature_kind():
    payload = example({
        "a": int64_feature(-3, 0, 2**40, packed=False), "b": int64_feature(7, 300), "c": float_feature(0.5, -2.0),
        "d": bytes_feature(b"x", b""),
    })
    assert parse_example(payload) == {
        "a": ("int64_list", [-3, 0, 2**40]), "b": ("int64_list", [7, 300]), "c": ("float_list", [0.5, -2.0]),
        "d": ("bytes_list", [b"x", b""]),
    }


@pytest.fixture
def record_file(tmp_path):
    images = np.full((3, 32, 32, 3), 7, dtype=np.uint8)
    return write_tfrecord(tmp_path / "train.tfrecord", image_examples(images, [0, 1, 2]))


def _record_offsets(path: Path) -> list[int]:
    data, offsets, offset = path.read_bytes(), [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack_from("<Q", data, offset)[0]
    return offsets


def test_a_flipped_payload_byte_is_one_line_naming_file_and_record(record_file):
    data = bytearray(record_file.read_bytes())
    data[_record_offsets(record_file)[1] + 12 + 100] ^= 0x01
    record_file.write_bytes(bytes(data))
    with pytest.raises(LongtailError) as exc:
        read_records(record_file)
    _one_line(exc, str(record_file), "record 1", "CRC of its data")


def test_a_flipped_length_byte_is_one_line(record_file):
    data = bytearray(record_file.read_bytes())
    data[_record_offsets(record_file)[2]] ^= 0x04
    record_file.write_bytes(bytes(data))
    with pytest.raises(LongtailError) as exc:
        read_records(record_file)
    _one_line(exc, str(record_file), "record 2", "CRC of its length")


@pytest.mark.parametrize("cut", [5, 40])  # inside the header, inside the payload
def test_a_truncated_record_is_one_line(record_file, cut):
    data = record_file.read_bytes()
    record_file.write_bytes(data[: _record_offsets(record_file)[2] + cut])
    with pytest.raises(LongtailError) as exc:
        read_records(record_file)
    _one_line(exc, str(record_file), "record 2", "truncated")


def test_a_wrong_feature_type_is_one_line(tmp_path):
    good = image_examples(np.zeros((1, 32, 32, 3), dtype=np.uint8), [1])[0]
    wrong = example({"image/encoded": bytes_feature(bytes(3072)), "image/class/label": bytes_feature(b"1")})
    path = write_tfrecord(tmp_path / "t.tfrecord", [good, wrong])
    with pytest.raises(LongtailError) as exc:
        read_split(path, 10)
    _one_line(exc, str(path), "record 1", "image/class/label", "bytes_list", "int64_list")


@pytest.mark.parametrize("features, words", [
    ({"image/encoded": bytes_feature(bytes(3072))}, ["no feature 'image/class/label'"]),
    ({"image/encoded": bytes_feature(bytes(100)), "image/class/label": int64_feature(1)}, ["100 bytes"]),
    ({"image/encoded": bytes_feature(bytes(3072)), "image/class/label": int64_feature(10)}, ["label 10"]),
    ({"image/encoded": bytes_feature(bytes(3072)), "image/class/label": int64_feature(1, 2)}, ["2 values"]),
])
def test_bad_records_are_one_line(tmp_path, features, words):
    path = write_tfrecord(tmp_path / "t.tfrecord", [example(features)])
    with pytest.raises(LongtailError) as exc:
        read_split(path, 10)
    _one_line(exc, str(path), "record 0", *words)


def test_a_malformed_proto_is_one_line(tmp_path):
    path = write_tfrecord(tmp_path / "t.tfrecord", [b"\x0a\xff\x01abc"])  # a field announcing 255 bytes, holding 3
    with pytest.raises(LongtailError) as exc:
        read_split(path, 10)
    _one_line(exc, str(path), "record 0", "malformed")


# ----------------------------------------------------------------------------- the dataset kinds


def _overrides(root: Path, *extra: str) -> list[str]:
    return [f"dataset.root={root}", "dataset.download=false", "train.progress=false", "data.num_workers=0",
            "device=cpu", *extra]


def test_dataset_counts_normalisation_and_holdout(tmp_path):
    root = write_fake_release(tmp_path, "cifar10", COUNTS, test_per_class=6)
    bundle = build_data(load_config(GOOGLE["cifar10_lt"]["loss"], _overrides(root)))
    assert bundle.class_counts == COUNTS and len(bundle.test) == 60 and bundle.val is None
    assert bundle.spec.mean == (0.5, 0.5, 0.5) and bundle.spec.std == (1.0, 1.0, 1.0)  # x / 255 - 0.5
    held = build_data(load_config(GOOGLE["cifar10_lt"]["loss"], _overrides(root, "dataset.val_source=test_holdout",
                                                                             "dataset.val_per_class=2")))
    assert len(held.val) == 20 and len(held.test) == 40 and held.class_counts == COUNTS
    with pytest.raises(LongtailError, match="no unused training images"):
        build_data(load_config(GOOGLE["cifar10_lt"]["loss"], _overrides(root, "dataset.val_source=train_unused")))
    with pytest.raises(LongtailError, match="'data.mean' has 2 values"):
        build_data(load_config(GOOGLE["cifar10_lt"]["loss"], _overrides(root, "data.mean=[0.5,0.5]")))


def test_normalisation_is_x_over_255_minus_half(tmp_path):
    root = write_fake_release(tmp_path, "cifar10", COUNTS, test_per_class=2)
    cfg = load_config(GOOGLE["cifar10_lt"]["baseline"], _overrides(root))
    bundle = build_data(cfg)
    runtime = Runtime(device=torch.device("cpu"))
    x, _ = next(eval_batches(bundle.test, bundle, cfg, runtime))
    assert torch.allclose(x, bundle.test.images[: len(x)].float() / 255 - 0.5, atol=1e-6)


def test_missing_files_are_fetched_from_the_release_urls(tmp_path, monkeypatch):
    source = write_fake_release(tmp_path / "server", "cifar10", COUNTS, test_per_class=2)
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr("longtail.data.cifar_tfrecord.urllib.request.urlopen", urlopen)
    cfg = load_config(GOOGLE["cifar10_lt"]["baseline"], [f"dataset.root={tmp_path / 'cache'}", "dataset.download=true"])
    assert build_data(cfg).class_counts == COUNTS
    assert asked == [URL + "cifar10-lt_train.tfrecord", URL + "cifar10_test.tfrecord"]
    assert URL == "https://storage.googleapis.com/gresearch/logit_adjustment/"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar10-lt_train.tfrecord", "cifar10_test.tfrecord"]


def test_offline_and_missing_is_one_line(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr("longtail.data.cifar_tfrecord.urllib.request.urlopen", urlopen)
    with pytest.raises(LongtailError) as exc:
        build_data(load_config(GOOGLE["cifar100_lt"]["loss"], [f"dataset.root={tmp_path}"]))
    _one_line(exc, "cifar100-lt_train.tfrecord", URL, "network unreachable")
    assert list(tmp_path.iterdir()) == []  # no partial file left
    with pytest.raises(LongtailError) as exc:
        build_data(load_config(GOOGLE["cifar100_lt"]["loss"], [f"dataset.root={tmp_path}", "dataset.download=false"]))
    _one_line(exc, "cifar100-lt_train.tfrecord", "cifar100_test.tfrecord", "dataset.download")


# ----------------------------------------------------------------------------- the recipe's engine options


def _release_lr(schedule: list[tuple[float, int]], step: int, steps_per_epoch: int, base: float = 0.1) -> float:
    """google-research utils.LearningRateSchedule, written from its docstring and code."""
    epoch = step / steps_per_epoch
    mult0, warmup_end = schedule[0]
    lr = base * mult0 * epoch / warmup_end
    for mult, start in schedule:
        if epoch >= start:
            lr = base * mult
    return lr


@pytest.mark.parametrize("dataset, train_images, schedule", [
    ("cifar10_lt", 12406, [(1.0, 20), (0.1, 604), (0.01, 926), (0.001, 1128)]),
    ("cifar100_lt", 10847, [(1.0, 22), (0.1, 691), (0.01, 1059), (0.001, 1290)]),
])
def test_schedule_is_the_release_formula(dataset, train_images, schedule):
    cfg = load_config(GOOGLE[dataset]["loss"])
    steps = train_images // 128  # int(num_train / batch): the last partial batch dropped
    assert cfg.train.epochs == {"cifar10_lt": 1241, "cifar100_lt": 1419}[dataset]
    chosen = [0, 1, steps - 1, steps, 7 * steps + 5]
    for _, start in schedule:
        chosen += [start * steps - 1, start * steps, start * steps + 1]
    chosen.append(cfg.train.epochs * steps - 1)
    for step in chosen:
        assert cfg.train.lr * lr_factor(cfg.train, step / steps) == pytest.approx(_release_lr(schedule, step, steps), rel=1e-9, abs=1e-15), step
    # and the optimiser sees it, step by step
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps)
    seen = []
    for step in range(3 * steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([_release_lr(schedule, s, steps) for s in range(3 * steps)], rel=1e-9, abs=1e-15)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9


def test_norm_weight_decay_leaves_batchnorm_alone():
    model = create_model(ModelConfig(name="resnet32_keras"), 10, 3)
    groups = build_optimizer(model, TrainConfig(weight_decay=2e-4, norm_weight_decay=0.0)).param_groups
    norm = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert [g["weight_decay"] for g in groups] == [2e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == norm
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()} - norm
    assert len(build_optimizer(model, TrainConfig()).param_groups) == 1  # unset: every parameter at weight_decay


def _pipelines(drop_last: bool, n: int = 70, batch: int = 32):
    labels = torch.arange(n) % 5
    split = TensorImages(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), labels)
    spec = InputSpec(3, 8, (0.5,) * 3, (1.0,) * 3, crop_pct=1.0)
    device = DevicePipeline(split, EpochSampler(labels, seed=1), batch, 1, torch.device("cpu"), spec,
                            BatchAugment(8, 8, crop=False, flip=False), drop_last=drop_last)
    loader = LoaderPipeline(TransformedImages(split, eval_transform(spec)), SeededSampler(EpochSampler(labels, seed=1)),
                            batch, seed=1, drop_last=drop_last)
    return device, loader


@pytest.mark.parametrize("drop_last, sizes", [(True, [32, 32]), (False, [32, 32, 6])])
def test_drop_last_in_both_pipelines(drop_last, sizes):
    for pipeline in _pipelines(drop_last):
        pipeline.set_epoch(2)
        batches = list(pipeline)
        assert len(pipeline) == len(sizes) and [len(y) for _, y in batches] == sizes
    device, loader = _pipelines(drop_last)
    for (xd, yd), (xl, yl) in zip(device, loader):  # the same images in both
        assert torch.equal(yd, yl) and torch.equal(xd, xl)


# ----------------------------------------------------------------------------- the models


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def test_resnet34_cifar_parameters_shape_and_stem():
    # hand count: stem 3x3 conv + BN; BasicBlock = two 3x3 convs + two BNs (+ 1x1 conv and BN where the shape changes)
    def block(cin: int, cout: int) -> int:
        return _conv(cin, cout, 3) + _conv(cout, cout, 3) + 4 * cout + (_conv(cin, cout, 1) + 2 * cout if cin != cout else 0)

    expected, cin = _conv(3, 64, 3) + 2 * 64, 64
    for blocks, width in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        expected += block(cin, width) + (blocks - 1) * block(width, width)
        cin = width
    expected += 512 * 10 + 10
    model = create_model(ModelConfig(name="resnet34_cifar"), 10, 3)
    assert sum(p.numel() for p in model.parameters()) == expected == 21_282_122
    x = torch.randn(2, 3, 32, 32)
    assert model.stem(x).shape == (2, 64, 32, 32)  # 3x3 stride 1, no max-pool: 32x32 kept
    assert model.stages[0](model.stem(x)).shape == (2, 64, 32, 32)
    out = model(x)
    assert out["logits"].shape == (2, 10) and out["features"].shape == (2, 512)
    # mmpretrain's initialisation: every residual branch starts at zero, the head at std 0.01
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in model.modules() if hasattr(b, "bn2"))
    assert float(model.classifier.weight.detach().std()) < 0.02


def test_resnet32_keras_parameters_sizes_and_same_padding():
    def block(cin: int, width: int, project: bool) -> int:
        return _conv(cin, width, 1) + _conv(width, width, 3) + _conv(width, width, 1) + 6 * width + (
            _conv(cin, width, 1) + 2 * width if project else 0)

    expected, cin = _conv(3, 16, 3) + 2 * 16, 16
    for width in (16, 32, 64):
        expected += block(cin, width, True) + 4 * block(width, width, False)
        cin = width
    expected += 2 * 64 + 64 * 10 + 10  # final BatchNorm, classifier
    model = create_model(ModelConfig(name="resnet32_keras"), 10, 3)
    assert sum(p.numel() for p in model.parameters()) == expected == 300_762
    x = torch.randn(2, 3, 32, 32)
    h = model.stem(x)
    assert h.shape[-1] == 36  # pad 3, valid 3x3
    sizes = []
    for layer in model.stages:
        h = layer(h)
        sizes.append(h.shape[-1])
    assert sizes == [36] * 5 + [18] * 5 + [9] * 5
    # TensorFlow 'same' with stride 2: no padding at the top/left, so output (0, 0) sees input rows/columns 0..2
    conv = model.stages[5].conv2
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[:, :, 0, 0] = 1.0 / conv.conv.in_channels
        image = torch.zeros(1, conv.conv.in_channels, 36, 36)
        image[..., 0, 0] = 1.0
        assert float(conv(image)[0, 0, 0, 0]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the configs, trained for an epoch


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
def test_google_configs_are_the_release(dataset):
    for mode, path in GOOGLE[dataset].items():
        cfg = load_config(path)
        assert cfg.dataset.name == f"{dataset}_tfrecord" and cfg.model.name == "resnet32_keras"
        assert (cfg.train.batch_size, cfg.data.drop_last, cfg.train.nesterov, cfg.train.momentum) == (128, True, True, 0.9)
        assert (cfg.train.weight_decay, cfg.train.norm_weight_decay) == (2e-4, 0.0)  # Keras l2(1e-4): gradient 2e-4 w
        assert (cfg.data.mean, cfg.data.std, cfg.data.crop, cfg.data.flip) == ([0.5] * 3, [1.0] * 3, True, True)
        assert cfg.eval.test_every_epoch and cfg.train.select == "last"
        assert (cfg.loss.name, cfg.eval.posthoc) == {"baseline": ("ce", "none"), "posthoc": ("ce", "la"), "loss": ("la", "none")}[mode]
        assert cfg.loss.tau == 1.0 and cfg.eval.tau == 1.0


@pytest.fixture(scope="module")
def google_runs(tmp_path_factory):
    """One epoch of each google mode on generated release files: mode -> (run dir, metrics)."""
    base = tmp_path_factory.mktemp("google")
    root = write_fake_release(base / "data", "cifar10", COUNTS, test_per_class=3)
    out = {}
    for mode, path in GOOGLE["cifar10_lt"].items():
        cfg = load_config(path, _overrides(root, "train.epochs=1", "train.batch_size=32", "eval.batch_size=64"))
        out[mode] = (base / mode, fit(cfg, base / mode))
    return out


@pytest.mark.parametrize("mode", ["baseline", "posthoc", "loss"])
def test_one_epoch_of_each_google_mode_on_generated_files(mode, google_runs):
    run, metrics = google_runs[mode]
    rows = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_top1"] == pytest.approx(metrics["raw"]["top1"] if mode == "posthoc" else metrics["top1"])
    assert ("test_la_top1" in rows[0]) == (mode == "posthoc")
    if mode == "posthoc":
        assert rows[0]["test_la_top1"] == pytest.approx(metrics["top1"])
    assert metrics["class_counts"] == COUNTS and metrics["num_images"] == 30
    assert metrics["selected_by"] == "last_epoch" and not metrics.get("selected_on_test")


def test_report_table_1_and_figure_1_from_the_google_runs(google_runs, tmp_path):
    from longtail.report import write_report

    report = write_report([run for run, _ in google_runs.values()], tmp_path / "report")
    (table,) = report.tables
    assert table.dataset == "cifar10_lt_tfrecord" and table.columns == ["IF 24"]  # the file's own imbalance, 24 / 1
    final = {label: [e.metrics["top1"] for e in cell["IF 24"]] for label, cell in table.rows.items()}
    assert final == {"CE": [google_runs["baseline"][1]["top1"]], "CE + post-hoc LA (τ=1)": [google_runs["posthoc"][1]["top1"]],
                     "LA loss": [google_runs["loss"][1]["top1"]]}
    figures = {p.name for p in report.files if p.suffix == ".png"}
    assert {"effective_cifar10_lt_tfrecord_if_24.png", "training_cifar10_lt_tfrecord_if_24.png"} <= figures


def test_inspect_reads_the_release_files(tmp_path):
    from longtail.diagnostics import dataset_diagnostics

    root = write_fake_release(tmp_path, "cifar10", COUNTS, test_per_class=4)
    result, _ = dataset_diagnostics(load_config(GOOGLE["cifar10_lt"]["baseline"], _overrides(root)))
    assert result["class_counts"] == COUNTS and result["splits"] == {"train": 66, "val": 0, "test": 40}
    assert result["test_per_class"] == [4] * 10


def test_predict_and_export_see_32_pixel_images_normalised_as_trained(google_runs):
    from longtail.checkpoint import load_checkpoint
    from longtail.config import from_dict
    from longtail.deployment import preprocessing

    run, _ = google_runs["loss"]
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    prep = preprocessing(from_dict(ckpt["config"]), ckpt)
    spec = prep.spec
    assert (spec.size, spec.eval_resize_size(), spec.mean, spec.std) == (32, 32, (0.5,) * 3, (1.0,) * 3)  # no centre crop
