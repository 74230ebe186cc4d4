"""Config schema: defaults < YAML < command line, and one clear line for every mistake."""

import pytest

from longtail.config import dump_yaml, from_dict, load_config, to_dict
from longtail.errors import LongtailError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 7\n  lr: 0.2\n")
    cfg = load_config(path, ["train.lr=0.05", "dataset.imbalance_factor=10"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.05
    assert cfg.dataset.imbalance_factor == 10.0 and cfg.train.batch_size == 128


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(LongtailError, match=r"unknown config key 'train.epoch'.*'train.epochs'"):
        load_config(write(tmp_path, "train:\n  epoch: 3\n"))
    with pytest.raises(LongtailError, match=r"'dataset.imbalance_factor'"):
        load_config(None, ["dataset.imbalance_factr=10"])


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(LongtailError, match=r"'train.epochs' expects int, got str"):
        load_config(write(tmp_path, "train:\n  epochs: many\n"))
    with pytest.raises(LongtailError, match=r"'train.resume' expects bool"):
        load_config(None, ["train.resume=3"])


def test_bad_choice_and_range_are_errors():
    with pytest.raises(LongtailError, match="one of auto, cpu, cuda"):
        load_config(None, ["device=tpu"])
    with pytest.raises(LongtailError, match="at least 1"):
        load_config(None, ["train.epochs=0"])


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(LongtailError, match=r"not valid YAML at line \d"):
        load_config(write(tmp_path, "train:\n  epochs: [1\n"))
    with pytest.raises(LongtailError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(LongtailError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_syntax_error():
    with pytest.raises(LongtailError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


def test_resolved_config_round_trips():
    cfg = load_config(None, ["train.milestones=[3, 4]", "dataset.root=/x"])
    assert from_dict(to_dict(cfg)) == cfg
    assert "milestones:\n  - 3\n  - 4" in dump_yaml(cfg) or "milestones:\n- 3\n- 4" in dump_yaml(cfg)

