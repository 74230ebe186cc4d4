"""The catalog, the registries and the config keys' facts agree: every list of names is read from the
registries, every built-in is declared once in the catalog and registered once in its module, every config
key declares its facts, and no code outside posthoc.py asks a rule by name."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from conftest import REPO, SRC
from longtail import catalog, config


def _import_every_builtin() -> None:
    for module in {e.module for e in catalog.entries() if e.module}:
        importlib.import_module(module)


def test_every_catalog_entry_is_registered_by_its_module_and_nothing_else_is_built_in():
    _import_every_builtin()
    for entry in catalog.entries():
        assert entry.obj is not None, f"{entry.kind} '{entry.name}' is in the catalog but {entry.module} registers nothing"
        # a component registered by longtail's own code without a catalog entry would be recorded as a plugin
        assert entry.source is None or not entry.source.startswith(str(SRC)), f"{entry.kind} '{entry.name}' lacks a catalog entry"


@pytest.mark.parametrize("kind", list(catalog.KINDS))
def test_every_name_list_is_the_registry(kind):
    from longtail.parser import build_parser
    from longtail.report.tables import DISPLAYED_KINDS, _display

    _import_every_builtin()
    registered = {e.name for e in catalog.entries(kind) if e.obj is not None}
    assert set(config.CHOICES[catalog.KINDS[kind]]) - {catalog.NO_RULE} == registered  # config validation
    if kind == "posthoc":  # the CLI's help, and what reports call each rule
        help_text = " ".join(a.help or "" for sub in build_parser()._subparsers._group_actions[0].choices.values()
                             for a in sub._actions if a.dest == "posthoc")
        assert all(name in help_text for name in registered)
    if catalog.KINDS[kind] in DISPLAYED_KINDS:
        assert {_display(catalog.KINDS[kind], n) for n in registered} == {catalog.entry(kind, n).display for n in registered}


def test_builtin_hyperparameters_are_keys_of_their_section():
    for entry in catalog.entries():
        for leaf in entry.uses:
            assert f"{catalog.section(entry.kind)}.{leaf}" in config.SCHEMA, (entry.kind, entry.name, leaf)


def test_every_config_key_declares_its_facts():
    for key, f in config.FIELDS.items():
        assert set(f.metadata) >= {"values", "resume_safe", "method", "loader_only"}, f"config key '{key}' declares no facts"
        values = f.metadata["values"]
        assert values == config.ANY or isinstance(values, (config.Range, config.Names, tuple)), key


def test_facts_replace_the_hand_written_lists():
    from longtail.data.pipeline import device_unsupported
    from longtail.engine import RESUME_SAFE_KEYS
    from longtail.report.tables import NOT_METHOD

    assert RESUME_SAFE_KEYS == {"train.resume", "train.progress", "dataset.root", "dataset.download",
                                "dataset.verify_images", "eval.batch_size"}
    assert {"seed", "dataset.seed", "dataset.name", "device", "train.amp", "plugins"} <= NOT_METHOD
    assert "loss.name" not in NOT_METHOD and "train.lr" not in NOT_METHOD
    cfg = config.load_config(None, ["data.blur=0.5", "data.randaugment=true"])
    assert device_unsupported(cfg) == ["data.randaugment", "data.blur"]


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "'train.epochs' must be at least 1, got 0"),
    ("train.lr=0", "'train.lr' must be positive"),
    ("data.blur=1.5", "'data.blur' must be between 0 and 1"),
    ("data.randaugment_magnitude=31", "between 0 and 30 (torchvision's scale)"),
    ("data.std=[0.5,0]", "'data.std' must be positive"),
    ("model.adapter_dim=0", "'model.adapter_dim' must be at least 1"),
    ("seed=-1", "'seed' must be between 0 and 4294967295"),
])
def test_ranges_come_from_the_declared_facts(override, message):
    with pytest.raises(config.LongtailError, match=re.escape(message)):
        config.load_config(None, [override])
    config.load_config(None, ["model.adapter_dim=null", "train.norm_weight_decay=null"])  # null is not range-checked


def test_no_rule_is_asked_by_name_outside_its_module():
    found = subprocess.run(["grep", "-rn", 'posthoc == "', str(SRC / "longtail")], capture_output=True, text=True).stdout
    assert [line for line in found.splitlines() if not line.startswith(str(SRC / "longtail" / "posthoc.py"))] == []


def test_config_validation_and_the_catalog_need_no_torch():
    code = ("import sys; import longtail.config as c; c.load_config('configs/fmnist_lt/ce_imba100.yaml', ['loss.name=la']);"
            "import longtail.parser; longtail.parser.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "False"


def test_a_plugin_hyperparameter_is_a_key_with_range_and_did_you_mean(isolated_plugins):
    import longtail

    @longtail.register_loss("test_only_loss", params=[longtail.Param("sharpness", 2.0, "test", low=0.0)])
    def make(cfg, counts):
        raise AssertionError("not built here")

    cfg = config.load_config(None, ["loss.name=test_only_loss", "loss.sharpness=3"])
    assert cfg.loss.sharpness == 3.0 and config.flat_dict(cfg)["loss.sharpness"] == 3.0
    assert config.load_config(None, []).loss.sharpness == 2.0  # the declared default
    with pytest.raises(config.LongtailError, match="did you mean 'loss.sharpness'"):
        config.load_config(None, ["loss.sharpnes=3"])
    with pytest.raises(config.LongtailError, match=r"'loss.sharpness' must lie in 0..inf, got -1"):
        config.load_config(None, ["loss.sharpness=-1"])
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_inspect_shows_sample_images_of_a_tfrecord_dataset(tmp_path):
    """samples.png: one row per class of training images, decoded from the dataset's own files (TFRecord here)."""
    import numpy as np
    from PIL import Image

    from fake_tfrecords import write_fake_release
    from longtail.diagnostics import SAMPLE_SIDE, SAMPLES_PER_CLASS, inspect_dataset

    root = write_fake_release(tmp_path, "cifar10", [6, 4, 3, 2, 2, 1, 1, 1, 1, 1], test_per_class=2)
    cfg = config.load_config(REPO / "configs" / "cifar10_lt" / "google_baseline.yaml", [f"dataset.root={root}"])
    inspect_dataset(cfg, tmp_path / "out", log=lambda line: None)
    grid = np.asarray(Image.open(tmp_path / "out" / "samples.png"))
    assert grid.shape == (10 * SAMPLE_SIDE, SAMPLES_PER_CLASS * SAMPLE_SIDE, 3)
    first, last = grid[:SAMPLE_SIDE, :SAMPLE_SIDE].mean(), grid[-SAMPLE_SIDE:, :SAMPLE_SIDE].mean()
    assert last > first + 50  # the generated images of class 9 are brighter than those of class 0
    assert grid[-SAMPLE_SIDE:, SAMPLE_SIDE:].max() == 0 < grid[:SAMPLE_SIDE, -SAMPLE_SIDE:].max()  # class 9: 1 image, class 0: 6


def test_a_loss_declares_the_model_output_it_reads_and_the_config_checks_the_model_gives_it():
    """A loss's catalog `reads` is its Loss.input_key, each model's `outputs` is what its forward returns, and a
    config pairing a loss with a model lacking that output stops in one line before anything is built."""
    import torch

    from longtail.config import LossConfig, ModelConfig, load_config
    from longtail.errors import LongtailError
    from longtail.losses import create_loss
    from longtail.models import create_model

    for name in catalog.names("loss"):
        loss = create_loss(LossConfig(name=name, num_experts=3), [500, 300, 180, 110, 65, 40, 24, 14, 8, 5])
        assert loss.input_key == catalog.entry("loss", name).facts.get("reads", "logits"), name
    for name in ("resnet8", "resnet8_experts"):
        model = create_model(ModelConfig(name=name, num_experts=3), 3, 1).eval()
        with torch.no_grad():
            out = model(torch.zeros(2, 1, 28, 28))
        assert set(out) >= set(catalog.model_outputs(name)), name
    assert "expert_logits" not in catalog.model_outputs("resnet8")
    with pytest.raises(LongtailError, match="reads the model output 'expert_logits', which model.name=resnet8 does not give"):
        load_config(REPO / "configs" / "fmnist_lt" / "ce_imba100.yaml", ["loss.name=lgla", "model.name=resnet8"])
    load_config(REPO / "configs" / "fmnist_lt" / "ce_imba100.yaml", ["loss.name=lgla", "model.name=resnet8_experts"])
