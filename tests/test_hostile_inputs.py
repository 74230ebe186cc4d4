"""Hostile inputs: hand-edited configs, random overrides, foreign or damaged checkpoints, corrupted
Fashion-MNIST IDX files and CIFAR pickles. Every case either works or ends in one LongtailError whose
message is a single line (the CLI prints it without traceback, exit code 2); no file runs code.

Property-based (hypothesis) where the input space is large, explicit lists where a case has a name.
To cover a new format after merging (image lists, another checkpoint), add a strategy or a row to a
case list; `assert_clean` is the property. EXAMPLES counts what was tried (printed at the end with -s).
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, cli_env, idx_bytes, write_fake_cifar
from conftest import setup_and_one_step as _build_like_fit
from longtail.checkpoint import TRAINING_STATE, load_checkpoint, save_atomic
from longtail.cli import main
from longtail.config import SCHEMA, SECTIONS, load_config
from longtail.errors import LongtailError

EXAMPLES: collections.Counter = collections.Counter()  # inputs tried, per test
# Fixed examples by default (CI stays reproducible); LONGTAIL_FUZZ=20 tries 20x as many, freshly random.
FUZZ = int(os.environ.get("LONGTAIL_FUZZ", "1"))


def examples(n: int) -> settings:
    return settings(max_examples=n * FUZZ, deadline=None, database=None, derandomize=FUZZ == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def assert_clean(call, *args, **kwargs):
    """Run `call`: it may succeed or raise LongtailError with a one-line message; anything else fails."""
    try:
        return call(*args, **kwargs)
    except LongtailError as exc:
        text = str(exc)
        assert text and len(text.splitlines()) == 1 and len(text) < 600, repr(text)
        return exc


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nhostile inputs tried: {sum(EXAMPLES.values())} ({', '.join(f'{k} {v}' for k, v in sorted(EXAMPLES.items()))})")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def _fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


# ----------------------------------------------------------------------------- configs

LEAVES = sorted({k.rsplit(".", 1)[-1] for k in SCHEMA})
KEYS = st.sampled_from(sorted(SCHEMA) + sorted(SECTIONS) + LEAVES) | st.text(max_size=12) | st.integers() | st.none()
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=15)
           | st.sampled_from(["cpu", "cuda", "exp", "ce", "resnet8", "cifar10_lt", "1e-3", "yes", "~"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
DOCUMENTS = st.dictionaries(KEYS, VALUES | st.dictionaries(KEYS, VALUES, max_size=5), max_size=6) | VALUES
YAML_SYNTAX = st.text(alphabet=st.sampled_from(list("abtrain.epochs:lr 0123456789-_[]{},:!&*#|>%@`'\"\n\t ?~=")), max_size=120)


@examples(150)
@given(doc=DOCUMENTS)
def test_random_yaml_documents(doc, scratch):
    EXAMPLES["config: yaml documents"] += 1
    path = _fresh(scratch) / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert_clean(load_config, path)


@examples(150)
@given(text=YAML_SYNTAX | st.text(max_size=80), head=st.sampled_from(["", "train:\n  epochs: 3\n", "dataset:\n  name: fmnist_lt\n  "]))
def test_malformed_yaml_text(text, head, scratch):
    EXAMPLES["config: malformed yaml text"] += 1
    path = _fresh(scratch) / "c.yaml"
    path.write_text(head + text)
    assert_clean(load_config, path)


@examples(30)
@given(data=st.binary(max_size=200))
def test_config_files_of_random_bytes(data, scratch):
    EXAMPLES["config: random bytes"] += 1
    path = _fresh(scratch) / "c.yaml"
    path.write_bytes(data)
    assert_clean(load_config, path)


def test_exponent_floats_that_yaml_1_1_reads_as_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    cfg = load_config(path, ["loss.tau=2e0"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.loss.tau) == (0.001, 0.0005, 2.0)
    with pytest.raises(LongtailError, match="'train.epochs' expects int, got str '1e3'"):
        load_config(None, ["train.epochs=1e3"])  # an integer key stays strict
    with pytest.raises(LongtailError, match="must be a finite number, got inf"):
        load_config(None, ["train.lr=1e999"])


HOSTILE_LITERALS = [
    "", "null", "~", "[1, 2", "{a: 1}", "[1, [2, [3]]]", "!!python/object/apply:os.system ['touch /tmp/longtail_yaml_pwned']",
    ".nan", ".inf", "-.inf", "1e400", "-1", "0", "99999999999999999999999", "1.5", "true", "no", "'3'", "&a [*a]",
    "cuda", "cpu", "resnet8", "cifar100_lt", "class_balanced", "step", "test_holdout", "none", "cosine", "last", "=",
]
HOSTILE_VALUES = (st.sampled_from(HOSTILE_LITERALS) | st.integers().map(str) | st.floats().map(str)
                  | VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().replace("\n", " ")))


def _typed_values(key: str) -> st.SearchStrategy[str]:
    """Mostly values of the key's type (small, edge or absurd), so many examples get past validation."""
    from longtail.config import CHOICES

    name = str(SCHEMA[key])
    if key in CHOICES:
        typed = st.sampled_from(CHOICES[key])
    elif "list" in name:
        typed = st.lists(st.integers(-1, 12), max_size=3).map(str)
    elif "bool" in name:
        typed = st.sampled_from(["true", "false"])
    elif "float" in name:
        typed = (st.floats(-1, 12) | st.sampled_from([0.0, 1.0, 1e-8, 1e30, 2.0])).map(repr)
    elif "int" in name:
        typed = (st.integers(-2, 12) | st.integers()).map(str)
    else:
        typed = st.text(max_size=10)
    return typed.map(lambda v: f"{key}={v}")


_TYPED = st.sampled_from(sorted(SCHEMA)).flatmap(_typed_values)
_HOSTILE = st.tuples(st.sampled_from(sorted(SCHEMA) + sorted(SECTIONS)) | st.text(max_size=10), HOSTILE_VALUES).map("=".join)
OVERRIDES = st.one_of(_TYPED, _TYPED, _TYPED, _HOSTILE)  # three typed overrides for one hostile one


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", train_per_class=20, test_per_class=2)
    write_fake_cifar(root, "cifar100", train_per_class=6, test_per_class=1)
    return root


@examples(80)
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=4))
def test_random_overrides_through_setup_and_one_step(overrides, cifar_root):
    """Random `key=value` overrides on a tiny fake CIFAR run: the config is refused with one line, or
    everything up to a training step and an evaluation works (or refuses with one line)."""
    EXAMPLES["config: random overrides (+ setup and one step)"] += 1
    base = ["dataset.name=cifar10_lt", "model.name=resnet8", "train.batch_size=8", "eval.batch_size=64", "dataset.n_max=10",
            "dataset.val_per_class=2", "dataset.imbalance_factor=5"]
    # where the data is and a single process are fixed: workers would only slow the examples down
    fixed = [f"dataset.root={cifar_root}", "dataset.download=false", "data.num_workers=0"]
    cfg = assert_clean(load_config, None, base + overrides + fixed)
    if not isinstance(cfg, LongtailError):
        EXAMPLES["config: random overrides accepted, then set up and trained one step"] += 1
        assert_clean(_build_like_fit, cfg)
    assert not os.path.exists("/tmp/longtail_yaml_pwned")


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    from longtail.config import ModelConfig
    from longtail.models import create_model

    model = create_model(ModelConfig(name="resnet8"), 10, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32))["logits"].sum().backward()
    opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_atomic({"config": {"dataset": {"name": "cifar10_lt"}, "model": {"name": "resnet8"}}, "class_counts": [10] * 10,
                 "num_classes": 10, "in_channels": 3, "input": {"channels": 3, "size": 32, "crop_pct": 1.0, "mean": [0.5] * 3,
                 "std": [0.2] * 3, "interpolation": "bilinear"}, "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": {}, "loss": {},
                 "progress": {"epoch": 1, "best_score": 1.0, "best_epoch": 1, "history": [{"epoch": 1}]}}, path)
    return path


@examples(40)
@given(data=st.binary(max_size=400))
def test_checkpoints_of_random_bytes(data, scratch):
    EXAMPLES["checkpoint: random bytes"] += 1
    path = _fresh(scratch) / "x.pt"
    path.write_bytes(data)
    assert isinstance(assert_clean(load_checkpoint, path), LongtailError)


@examples(60)
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_truncated_or_damaged_checkpoints(cut, flips, good_checkpoint, scratch):
    EXAMPLES["checkpoint: truncated / bytes changed"] += 1
    data = bytearray(good_checkpoint.read_bytes())
    path = _fresh(scratch) / "x.pt"
    if flips:
        for where, value in flips:
            data[int(where * len(data))] = value
    else:
        data = data[: int(cut * len(data))]
    path.write_bytes(bytes(data))
    result = assert_clean(load_checkpoint, path, require=tuple(TRAINING_STATE))
    if not flips:
        assert isinstance(result, LongtailError)  # a truncated file is never accepted


def _wrong_structures():
    model = {"w": torch.zeros(2)}
    base = {"format_version": 1, "model": model, "config": {}, "num_classes": 10, "in_channels": 3,
            "class_counts": [1] * 10, "mean": [0.5], "std": [0.5]}
    yield "a list", [1, 2, 3]
    yield "a tensor", torch.zeros(3)
    yield "no format_version", {"model": model}
    yield "no model", {"format_version": 1}
    yield "model not tensors", {**base, "model": {"w": [1.0, 2.0]}}
    yield "model a tensor", {**base, "model": torch.zeros(3)}
    yield "config a list", {**base, "config": ["train"]}
    yield "no config", {k: v for k, v in base.items() if k != "config"}
    yield "num_classes a string", {**base, "num_classes": "10"}
    yield "num_classes zero", {**base, "num_classes": 0}
    yield "format_version a string", {**base, "format_version": "1"}
    yield "format from the future", {**base, "format_version": 99}
    yield "class_counts floats", {**base, "class_counts": [1.5] * 10}
    yield "mean a string", {**base, "mean": "0.5"}
    spec = {"channels": 3, "size": 32, "crop_pct": None, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    current = {**{k: v for k, v in base.items() if k not in ("mean", "std")}, "format_version": 2, "input": spec}
    yield "input spec a list", {**current, "input": [1, 2]}
    yield "input spec without size", {**current, "input": {k: v for k, v in spec.items() if k != "size"}}
    yield "input spec with 2 means for 3 channels", {**current, "input": {**spec, "mean": [0.5, 0.5]}}
    yield "input spec with crop_pct 2", {**current, "input": {**spec, "crop_pct": 2.0}}
    yield "format 1 with a resize no longtail wrote", {**base, "config": {"dataset": {"name": "folder"}}, "input": {
        "channels": 3, "image_size": 32, "resize": 50, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}}
    yield "config with unknown keys", {**base, "config": {"train": {"epochz": 3}}}
    yield "config with wrong types", {**base, "config": {"train": {"epochs": "many"}}}
    yield "config with a non-string key", {**base, "config": {1: 2}}


WRONG_STRUCTURES = list(_wrong_structures())


@pytest.mark.parametrize("name,obj", WRONG_STRUCTURES, ids=[n for n, _ in WRONG_STRUCTURES])
def test_valid_torch_files_with_the_wrong_structure(name, obj, tmp_path, capsys):
    EXAMPLES["checkpoint: wrong structure (explicit)"] += 1
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    # through the CLI: one line, exit 2 (load_checkpoint, or reading the config it carries)
    assert main(["evaluate", str(path), "dataset.download=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longtail: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_foreign_files_posing_as_checkpoints(tmp_path, good_checkpoint):
    cases = {"empty": b"", "text": b"hello\n", "a zip that is not a checkpoint": None, "a gzip": gzip.compress(b"x" * 100)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.txt", "not a checkpoint")
    cases["a zip that is not a checkpoint"] = buf.getvalue()
    legacy = io.BytesIO()
    torch.save({"format_version": 1}, legacy, _use_new_zipfile_serialization=False)
    cases["legacy torch file without a model"] = legacy.getvalue()
    for name, data in cases.items():
        EXAMPLES["checkpoint: foreign files (explicit)"] += 1
        (tmp_path / "x.pt").write_bytes(data)
        assert isinstance(assert_clean(load_checkpoint, tmp_path / "x.pt"), LongtailError), name
    # a directory and a missing file
    assert isinstance(assert_clean(load_checkpoint, tmp_path), LongtailError)
    assert isinstance(assert_clean(load_checkpoint, tmp_path / "missing.pt"), LongtailError)
    EXAMPLES["checkpoint: foreign files (explicit)"] += 2


class _RunsCode:
    """Unpickling this calls os.system: the attack a crafted pickle or checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_crafted_checkpoint_is_refused_without_running_code(tmp_path, zip_format, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {"w": torch.zeros(1)}, "config": _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:  # the file really would run the code if loaded unsafely
        assert b"system" in f.read()
    with pytest.raises(LongtailError, match="not plain data and was refused"):
        load_checkpoint(path)
    assert main(["evaluate", str(path)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    EXAMPLES["safe loading: crafted checkpoints"] += 2


def test_a_checkpoint_of_another_model_or_class_count(tmp_path, cifar_root, monkeypatch, capsys):
    """evaluate and resume refuse weights that do not fit, naming why, in one line."""
    import longtail.engine as engine
    from longtail.config import load_config, to_dict
    from longtail.data import build_data
    from longtail.models import create_model

    monkeypatch.setattr(engine, "_set_determinism", lambda cfg, device: None)  # keep this process's torch flags
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    tiny = ["dataset.name=cifar10_lt", f"dataset.root={cifar_root}", "dataset.download=false", "dataset.n_max=10",
            "dataset.val_per_class=2", "dataset.imbalance_factor=5", "model.name=resnet8", "train.epochs=2",
            "train.progress=false", "data.num_workers=0"]
    cfg = load_config(None, tiny)
    bundle = build_data(cfg)
    wide = create_model(cfg.model, 100, 3)  # a CIFAR-100 model
    base = engine.checkpoint_payload(cfg, bundle, wide)  # claims 10 classes, carries 100-class weights
    cases = {
        "100-class weights": {**base},
        "another architecture": {**base, "model": create_model(load_config(None, ["model.name=resnet20"]).model, 10, 3).state_dict()},
        "trained on 100 classes": {**base, "model": create_model(cfg.model, 100, 3).state_dict(), "num_classes": 100},
        "trained on 1-channel images": {**base, "model": create_model(cfg.model, 10, 1).state_dict(), "in_channels": 1},
    }
    for name, payload in cases.items():
        path = tmp_path / name.replace(" ", "_") / "checkpoints" / "last.pt"
        save_atomic({**payload, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "loss": {},
                     "progress": {"epoch": 1, "best_score": 1.0, "best_epoch": 1, "history": [{"epoch": 1}]},
                     "config": to_dict(cfg)}, path)
        assert main(["evaluate", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("do not fit" in err or "trained on" in err), (name, err)
        assert main(["train", str(REPO / "configs/cifar10_lt/ce_imba100.yaml"), *tiny, "--out", str(path.parents[1]), "--resume"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("do not fit" in err or "differs" in err), (name, err)
        EXAMPLES["checkpoint: other model / class count (explicit, evaluate + resume)"] += 2


# ----------------------------------------------------------------------------- Fashion-MNIST IDX files

IDX_FILES = {"train_images": ("train-images-idx3-ubyte.gz", (30, 28, 28)), "train_labels": ("train-labels-idx1-ubyte.gz", (30,)),
             "test_images": ("t10k-images-idx3-ubyte.gz", (20, 28, 28)), "test_labels": ("t10k-labels-idx1-ubyte.gz", (20,))}


def _write_fmnist(root: Path, replace: dict[str, bytes] | None = None, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    for key, (name, shape) in IDX_FILES.items():
        array = np.arange(shape[0]) % 10 if "labels" in key else rng.integers(0, 256, shape)
        raw = (replace or {}).get(key, idx_bytes(array))
        (root / name).write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


IDX_DAMAGE = st.sampled_from(list(IDX_FILES)).flatmap(lambda key: st.tuples(
    st.just(key),
    st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("flip header"), st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), min_size=1, max_size=4)),
        st.tuples(st.just("flip anywhere"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)),
        st.tuples(st.just("gzip damage"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=3)),
        st.tuples(st.just("extra bytes"), st.binary(min_size=1, max_size=20)),
        st.tuples(st.just("labels"), st.lists(st.integers(0, 255), max_size=40)),
        st.tuples(st.just("shape"), st.lists(st.integers(0, 40), min_size=1, max_size=4)),
    ),
))


@examples(150)
@given(damage=IDX_DAMAGE)
def test_corrupted_fashion_mnist_idx_files(damage, scratch):
    from longtail.data.fmnist import load_fmnist

    EXAMPLES["fmnist idx: corrupted"] += 1
    key, (kind, how) = damage
    root = _fresh(scratch)
    name, shape = IDX_FILES[key]
    rng = np.random.default_rng(1)
    good = idx_bytes(np.arange(shape[0]) % 10 if "labels" in key else rng.integers(0, 256, shape))
    raw = bytearray(good)
    if kind == "truncate":
        raw = raw[: int(how * len(raw))]
    elif kind in ("flip header", "flip anywhere"):
        for where, value in how:
            raw[where if kind == "flip header" else int(where * len(raw))] = value
    elif kind == "extra bytes":
        raw += how
    elif kind == "labels":
        raw = bytearray(idx_bytes(np.array(how, dtype=np.uint8)))
    elif kind == "shape":
        raw = bytearray(idx_bytes(np.zeros(how, dtype=np.uint8)))
    _write_fmnist(root, {key: bytes(raw)})
    if kind == "gzip damage":
        data = bytearray((root / name).read_bytes())
        for where, value in how:
            data[int(where * len(data))] = value
        (root / name).write_bytes(bytes(data))
    assert_clean(load_fmnist, str(root), download=False)


def test_named_idx_corruptions(tmp_path):
    """The classic ones, each with its message."""
    from longtail.data.fmnist import load_fmnist

    labels = np.arange(30) % 10
    cases = {
        "wrong magic": ({"train_labels": b"\x08\x03\x00\x00" + b"\x00" * 40}, "not an IDX file"),
        "wrong type code (int32)": ({"train_labels": idx_bytes(labels, type_code=0x0C)}, "not an IDX file"),
        "wrong dims": ({"train_images": idx_bytes(np.zeros((30, 32, 32)))}, r"expected \(N, 28, 28\)"),
        "labels as images": ({"train_labels": idx_bytes(np.zeros((30, 28, 28)))}, r"expected \(N, 28, 28\) and \(N,\)"),
        "label out of range": ({"train_labels": idx_bytes(np.r_[labels[:-1], 10])}, "beyond class 9"),
        "fewer labels than images": ({"train_labels": idx_bytes(labels[:20])}, "differ in length"),
        "truncated data": ({"train_images": idx_bytes(np.zeros((30, 28, 28)))[:-5]}, "header says 23520"),
        "truncated header": ({"train_images": idx_bytes(np.zeros((30, 28, 28)))[:9]}, "truncated inside its header"),
        "extra data": ({"test_labels": idx_bytes(np.arange(20) % 10) + b"\x00"}, "more than 20 bytes"),
        "zero dimensions": ({"train_labels": b"\x00\x00\x08\x00\x05"}, "1 to 4 dimensions"),
        "empty": ({"train_labels": idx_bytes(np.zeros(0))}, "differ in length or are empty"),
        "huge header": ({"train_images": b"\x00\x00\x08\x03" + b"\xff" * 12 + b"\x00" * 100}, "header says"),
    }
    for name, (replace, message) in cases.items():
        EXAMPLES["fmnist idx: named corruptions (explicit)"] += 1
        root = tmp_path / name.replace(" ", "_")
        root.mkdir()
        _write_fmnist(root, replace)
        with pytest.raises(LongtailError, match=message):
            load_fmnist(str(root), download=False)
    root = tmp_path / "bad_gzip"
    root.mkdir()
    _write_fmnist(root)
    data = bytearray((root / IDX_FILES["train_images"][0]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage inside the deflate stream
    (root / IDX_FILES["train_images"][0]).write_bytes(bytes(data))
    with pytest.raises(LongtailError, match="cannot read IDX file"):
        load_fmnist(str(root), download=False)
    EXAMPLES["fmnist idx: named corruptions (explicit)"] += 1


# ----------------------------------------------------------------------------- CIFAR pickles

ARRAYS = st.builds(
    lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
    st.sampled_from([np.uint8, np.int64, np.float32, np.int8, bool]),
    st.sampled_from([(0,), (4,), (4, 3072), (2, 3072), (4, 3, 32, 32), (4, 3071), (3072,)]),
    st.integers(0, 255),
)
BATCH_VALUES = st.recursive(
    st.none() | st.integers() | st.floats() | st.binary(max_size=8) | st.text(max_size=8) | ARRAYS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=4) | st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
BATCH_KEYS = st.sampled_from([b"data", b"labels", "data", "labels", b"batch_label", b"fine_labels", b"filenames"]) | st.binary(max_size=5)
BATCHES = st.dictionaries(BATCH_KEYS, BATCH_VALUES, max_size=5) | BATCH_VALUES


@examples(150)
@given(batch=BATCHES, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_cifar_batches_of_random_structure(batch, protocol, cifar_root, scratch):
    from longtail.data.cifar import load_cifar

    EXAMPLES["cifar pickle: random structure"] += 1
    root = _fresh(scratch)
    shutil.copytree(cifar_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    assert_clean(load_cifar, "cifar10", str(root), download=False)


@examples(80)
@given(cut=st.floats(0, 1, exclude_max=True), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=5))
def test_truncated_or_damaged_cifar_pickles(cut, flips, cifar_root, scratch):
    from longtail.data.cifar import load_cifar

    EXAMPLES["cifar pickle: truncated / bytes changed"] += 1
    root = _fresh(scratch)
    shutil.copytree(cifar_root / "cifar-100-python", root / "cifar-100-python")
    path = root / "cifar-100-python" / "test"
    data = bytearray(path.read_bytes())
    if flips:
        for where, value in flips:
            data[int(where * len(data))] = value
    else:
        data = data[: int(cut * len(data))]
    path.write_bytes(bytes(data))
    result = assert_clean(load_cifar, "cifar100", str(root), download=False)
    if not flips:
        assert isinstance(result, LongtailError)


def _named_cifar_batches():
    good = {b"batch_label": b"x", b"labels": [0, 1, 2, 3], b"data": np.zeros((4, 3072), np.uint8)}
    yield "missing data", {k: v for k, v in good.items() if k != b"data"}, "no 'data' entry"
    yield "missing labels", {k: v for k, v in good.items() if k != b"labels"}, "no 'labels' entry"
    yield "float data", {**good, b"data": np.zeros((4, 3072), np.float32)}, "expected a \\(N, 3072\\) uint8 array"
    yield "data as a list", {**good, b"data": [[0] * 3072] * 4}, "of type list"
    yield "wrong width", {**good, b"data": np.zeros((4, 1024), np.uint8)}, "expected a \\(N, 3072\\)"
    yield "label out of range", {**good, b"labels": [0, 1, 2, 10]}, "outside 0..9"
    yield "negative label", {**good, b"labels": [0, 1, 2, -1]}, "outside 0..9"
    yield "fewer labels", {**good, b"labels": [0, 1]}, "do not match its images"
    yield "string labels", {**good, b"labels": ["a", "b", "c", "d"]}, "not a flat list of integer labels"
    yield "float labels", {**good, b"labels": [0.5, 1.0, 2.0, 3.0]}, "not a flat list of integer labels"
    yield "ragged labels", {**good, b"labels": [[0], [1, 2], 3, 4]}, "not a flat list of integer labels"
    yield "huge labels", {**good, b"labels": [2**80] * 4}, "not a flat list of integer labels"
    yield "not a dict", [1, 2, 3], "is not a dict"


NAMED_CIFAR = list(_named_cifar_batches())


@pytest.mark.parametrize("name,batch,message", NAMED_CIFAR, ids=[n for n, _, _ in NAMED_CIFAR])
def test_named_cifar_corruptions(name, batch, message, cifar_root, tmp_path):
    from longtail.data.cifar import load_cifar

    EXAMPLES["cifar pickle: named corruptions (explicit)"] += 1
    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(LongtailError, match=message):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_a_batch_re_saved_with_protocol_5_still_loads(cifar_root, tmp_path):
    from longtail.data.cifar import load_cifar

    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    path.write_bytes(pickle.dumps(batch, protocol=5))
    assert len(load_cifar("cifar10", str(tmp_path), download=False).test) == 20


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


class _Popen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("attack", [_RunsCode, _Eval, _Popen], ids=["os.system", "eval", "subprocess.Popen"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_crafted_cifar_pickles_are_refused_without_running_code(attack, protocol, cifar_root, tmp_path):
    from longtail.data.cifar import load_cifar

    EXAMPLES["safe loading: crafted cifar pickles"] += 1
    marker = tmp_path / "pwned"
    shutil.copytree(cifar_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [attack(marker)]}  # hidden one level down
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(LongtailError, match="refusing to load"):
        load_cifar("cifar10", str(tmp_path), download=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------- output folder, disk, CLI


@pytest.mark.parametrize("out", ["/dev/null/run", "FILE/run"], ids=["under /dev/null", "parent is a file"])
def test_an_unwritable_run_directory_is_refused_before_anything_loads(out, tmp_path, capsys, monkeypatch):
    import longtail.engine as engine

    monkeypatch.setattr(engine, "load_data", lambda cfg, ckpt=None: pytest.fail("data were loaded"))
    (tmp_path / "FILE").write_text("a file, not a folder")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    assert main(["train", str(REPO / "configs/fmnist_lt/ce_imba100.yaml"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"cannot write to the run directory '{out}'" in err and "--out with a writable folder" in err


def test_a_full_disk_is_refused_before_training(tmp_path, cifar_root, monkeypatch, capsys):
    import longtail.engine as engine

    monkeypatch.setattr(engine, "_set_determinism", lambda cfg, device: None)
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    args = ["train", str(REPO / "configs/cifar10_lt/ce_imba100.yaml"), f"dataset.root={cifar_root}", "dataset.download=false",
            "dataset.n_max=10", "dataset.val_per_class=2", "dataset.imbalance_factor=5", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"only 1 MiB free under '{tmp_path / 'run'}'" in err and "free some space or use --out elsewhere" in err


def test_a_disk_that_fills_up_during_a_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(1)}}, path)
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(LongtailError, match=r"No space left on device\); the previous checkpoint is intact: free some space"):
        save_atomic({"model": {"w": torch.zeros(1)}}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_debug_shows_the_traceback_and_plain_mode_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "longtail", *a], cwd=REPO, env=cli_env(),  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    plain, debug = run("train", str(bad)), run("--debug", "train", str(bad))
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        "longtail: error: unknown config key 'train.epochz'; did you mean 'train.epochs'?"]
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "longtail.errors.LongtailError: unknown config key 'train.epochz'" in debug.stderr
