"""The input spec (input_spec.py): the evaluation box of each crop_pct against hand computation, how the spec is
built from the dataset, the backbone and the config, that mean and std are applied by one function only, the
package's import graph (data never imports models), and checkpoints of both formats read back.

The fixtures tests/fixtures/checkpoint_format{1,2}.pt are best.pt of the same one-epoch run (fmnist_lt,
configs/fmnist_lt/ce_imba100.yaml with conftest.TINY_FMNIST_40, train.amp=false, eval.posthoc=la, on
write_fake_fmnist(root, 60, 20)), format 1 trained by longtail at commit e16fb91 (before the input spec), format 2
after it; their weights were cast to float16 to keep the files small (150 KB). tiny_fmnist_eval.json is what
`longtail evaluate` of e16fb91 printed for the format-1 file (--json, without checkpoint_path).
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import longtail
from conftest import REPO, SRC, cli_env, import_graph, write_fake_fmnist
from longtail.checkpoint import FORMAT_VERSION, load_checkpoint
from longtail.config import load_config
from longtail.errors import LongtailError
from longtail.input_spec import BackboneInput, DatasetInput, InputSpec, Overrides, build_input_spec, eval_resize

FIXTURES = Path(__file__).parent / "fixtures"
FMNIST_SPEC = {"channels": 1, "size": 28, "crop_pct": 1.0, "mean": [0.286], "std": [0.353], "interpolation": "bilinear"}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP = BackboneInput(224, "bicubic", CLIP_MEAN, CLIP_STD, 1.0)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# ----------------------------------------------------------------------------- the evaluation box


# A 500 x 375 photo at S = 224, worked by hand as torchvision does it: Resize(R) makes the short side R and the long
# side int(R * 500 / 375); CenterCrop(224) starts at int(round((side - 224) / 2)) (round: halves to even).
#   crop_pct 1.0    R = 224: 375 -> 224, 500 -> int(298.67) = 298; left = round(74 / 2) = 37, top = 0
#   crop_pct 0.875  R = floor(224 / 0.875) = 256: 500 -> int(341.33) = 341; left = round(117 / 2) = round(58.5) = 58,
#                   top = round(32 / 2) = 16
#   LIFT's Resize(224 * 8 // 7) = Resize(1792 // 7) = Resize(256): the same as 0.875
# The box in original pixels scales those by 500 / new width and 375 / new height.
@pytest.mark.parametrize("crop_pct,resize,new_w,left,top", [
    (1.0, 224, 298, 37, 0),
    (0.875, 256, 341, 58, 16),
    (7 / 8, 224 * 8 // 7, 341, 58, 16),  # LIFT's released evaluation
])
def test_the_evaluation_box_of_each_crop_pct_matches_hand_computation(crop_pct, resize, new_w, left, top):
    spec = InputSpec(3, 224, *IMAGENET, crop_pct=crop_pct)
    assert spec.eval_resize_size() == resize
    box = spec.eval_box(500, 375)
    want = (left * 500 / new_w, top * 375 / resize, 224 * 500 / new_w, 224 * 375 / resize)
    assert box == pytest.approx(want, abs=1e-9)


def test_lift_cifar_keeps_the_centre_28_pixels_of_a_32_pixel_image():
    """LIFT's CIFAR evaluation: the 32 px image resized to 256, centre 224 kept: 16 of 256 px trimmed each side, i.e.
    16 * 32 / 256 = 2 original pixels, a box of 28 x 28 at (2, 2)."""
    spec = InputSpec(3, 224, CLIP_MEAN, CLIP_STD, crop_pct=0.875, interpolation="bicubic")
    assert spec.eval_box(32, 32) == pytest.approx((2.0, 2.0, 28.0, 28.0))
    assert tuple(spec.resize_for_eval(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape) == (2, 3, 224, 224)


@pytest.mark.parametrize("size", [24, 32, 96, 112, 160, 224, 256, 384])
def test_crop_pct_0875_is_lifts_8_over_7_and_none_is_longtails_256_over_224(size):
    assert eval_resize(size, 0.875) == size * 8 // 7  # 0.875 = 7/8 exactly: floor(8S/7)
    assert eval_resize(size, None) == round(size * 256 / 224)  # 32 -> 37 (36.57 rounded), 224 -> 256
    assert eval_resize(size, 1.0) == size


def test_an_image_at_the_networks_size_with_crop_pct_1_is_used_as_it_is():
    spec = InputSpec(1, 28, (0.5,), (0.25,), crop_pct=1.0)
    x = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert spec.keeps(28, 28) and spec.resize_for_eval(x) is x
    assert not InputSpec(1, 28, (0.5,), (0.25,), crop_pct=None).keeps(28, 28)  # 28 -> 32, then the centre crop


# ----------------------------------------------------------------------------- building it once


def built(dataset: DatasetInput, backbone=None, **overrides) -> InputSpec:
    return build_input_spec(dataset, backbone, Overrides(**{"image_size": 224, "model": "clip/ViT-B-16", **overrides})).spec


FILES = DatasetInput("imagenet_lt", 3, *IMAGENET)
CIFAR = DatasetInput("cifar100_lt", 3, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), native_size=32)
GREY = DatasetInput("fmnist_lt", 1, (0.286,), (0.353,), native_size=28)


def test_image_files_default_to_longtails_rule_without_a_backbone_and_to_the_backbones_crop_pct_with_one():
    assert built(FILES) == InputSpec(3, 224, *IMAGENET, crop_pct=None, interpolation="bilinear")
    clip = built(FILES, CLIP)
    assert clip == InputSpec(3, 224, CLIP_MEAN, CLIP_STD, crop_pct=1.0, interpolation="bicubic")
    assert built(FILES, CLIP, crop_pct=0.875).eval_resize_size() == 256  # data.crop_pct wins
    timm = BackboneInput(None, "bilinear", *IMAGENET, 0.95)  # any size: data.image_size
    assert built(FILES, timm, image_size=160).eval_resize_size() == math.floor(160 / 0.95) == 168


def test_in_memory_images_keep_their_size_or_take_the_backbones_whole():
    assert built(GREY) == InputSpec(1, 28, (0.286,), (0.353,), crop_pct=1.0)
    result = build_input_spec(CIFAR, CLIP, Overrides(224, model="clip/ViT-B-16"))
    assert result.spec.size == 224 and result.spec.crop_pct == 1.0 and result.spec.mean == CLIP_MEAN
    assert result.notes == ("images are resized from 32 to 224 px, clip/ViT-B-16's input size",)
    assert built(CIFAR, CLIP, crop_pct=0.875).eval_resize_size() == 256  # LIFT's CIFAR evaluation
    assert built(GREY, CLIP).mean == (0.286,)  # a 3-channel backbone's statistics do not fit grey images


def test_overrides_replace_the_statistics_and_are_checked():
    spec = built(CIFAR, CLIP, mean=[0.5] * 3, std=[1.0] * 3)
    assert (spec.mean, spec.std, spec.interpolation) == ((0.5,) * 3, (1.0,) * 3, "bicubic")
    with pytest.raises(LongtailError, match=r"'data.mean' has 2 values but 'cifar100_lt' images have 3 channels"):
        built(CIFAR, mean=[0.5, 0.5])


def test_the_lift_configs_evaluate_as_lifts_released_code():
    """Resize(S * 8 // 7) + CenterCrop(S): 224 * 8 // 7 = 256 = floor(224 / 0.875)."""
    configs = sorted(REPO.glob("configs/*/lift_clip_vit_b16*.yaml"))
    assert len(configs) == 4
    for path in configs:
        cfg = load_config(path)
        assert cfg.data.crop_pct == 0.875, path
        native = 32 if cfg.dataset.name == "cifar100_lt" else None
        spec = build_input_spec(DatasetInput(cfg.dataset.name, 3, *IMAGENET, native), CLIP, Overrides(
            cfg.data.image_size, cfg.data.mean, cfg.data.std, cfg.data.crop_pct)).spec
        assert spec.eval_resize_size() == spec.size * 8 // 7 == 256, path


def test_the_spec_round_trips_as_json_and_a_damaged_one_is_one_line():
    spec = InputSpec(3, 224, CLIP_MEAN, CLIP_STD, crop_pct=0.875, interpolation="bicubic")
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for damaged in ({**spec.to_dict(), "std": [0.1, 0.0, 0.1]}, {**spec.to_dict(), "crop_pct": 0.0}, {"size": 3}):
        with pytest.raises(LongtailError, match="damaged") as info:
            InputSpec.from_dict(damaged)
        assert "\n" not in str(info.value)


def test_data_crop_pct_is_range_checked():
    with pytest.raises(LongtailError, match=r"'data.crop_pct' must be above 0 and at most 1"):
        load_config(None, ["data.crop_pct=1.2"])
    assert load_config(None, ["data.crop_pct=1"]).data.crop_pct == 1.0


def test_the_spec_imports_without_torch():
    code = "import sys, longtail.input_spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=cli_env(), timeout=60).returncode == 0


# ----------------------------------------------------------------------------- one normalisation


STATS = ("mean", "std")


def _stat_name(node: ast.AST) -> bool:
    """`mean`, `std`, `x.mean`, `self.std`, `mean_t` ... (not a call like x.mean())."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return any(name == s or name.startswith(s + "_") or name.endswith("_" + s) for s in STATS)


def normalising_functions() -> set[str]:
    """Every function of the package that subtracts a mean or divides by a std (as an operator or sub/div and their
    in-place forms), or uses a Normalize transform."""
    found = set()
    for path in sorted((SRC / "longtail").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                binop = isinstance(node, ast.BinOp) and (
                    (isinstance(node.op, ast.Sub) and _stat_name(node.right) and "mean" in ast.unparse(node.right))
                    or (isinstance(node.op, ast.Div) and _stat_name(node.right) and "std" in ast.unparse(node.right)))
                method = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                          and node.func.attr in ("sub", "sub_", "div", "div_") and node.args and _stat_name(node.args[0]))
                transform = isinstance(node, (ast.Name, ast.Attribute)) and (
                    getattr(node, "id", None) == "Normalize" or getattr(node, "attr", None) == "Normalize"
                ) and not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store))
                if binop or method or (transform and func.name != "__init__"):
                    found.add(f"{module}.{func.name}")
    return found


def test_mean_and_std_are_applied_in_exactly_one_function():
    assert normalising_functions() == {"longtail.input_spec.normalize"}


def test_the_one_normalisation_is_torchvisions_to_the_bit():
    from torchvision.transforms import v2

    from longtail.input_spec import normalize, stats_tensor

    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    want = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(x))
    got = normalize(x, stats_tensor(mean, "cpu"), stats_tensor(std, "cpu"))
    assert torch.equal(got, want)
    assert torch.allclose(got[0, 1, 0, 0], (x[0, 1, 0, 0] / 255 - 0.48) / 0.24)  # the formula itself


# ----------------------------------------------------------------------------- layering


def test_the_data_package_imports_nothing_from_models():
    """Anywhere, not only at module level (import cycles: test_target_prior.test_no_import_cycles)."""
    wrong = sorted(f"{m} -> {t}" for m, edges in import_graph().items() if m.startswith("longtail.data")
                   for t in edges if t.startswith("longtail.models"))
    assert wrong == []


def test_the_import_graph_sees_a_data_to_models_import(tmp_path):
    """The walker resolves relative imports: `from ..models import x` inside a function of data/ is found."""
    fake = tmp_path / "longtail"
    for rel in ("__init__.py", "data/__init__.py", "models/__init__.py", "models/x.py"):
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text("")
    (fake / "data" / "loader.py").write_text("def f():\n    from ..models import x\n\n\nfrom . import loader\n")
    assert import_graph(tmp_path)["longtail.data.loader"] == {"longtail.models.x"}


# ----------------------------------------------------------------------------- checkpoints of both formats


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory) -> Path:
    return write_fake_fmnist(tmp_path_factory.mktemp("fixture_fmnist"), train_per_class=60, test_per_class=20)


@pytest.mark.parametrize("name", ["checkpoint_format1.pt", "checkpoint_format2.pt"])
def test_stored_checkpoints_of_both_formats_load_and_evaluate_as_when_written(name, fixture_data):
    from longtail.evaluation import evaluate_checkpoint

    path = FIXTURES / name
    assert path.stat().st_size < 300_000
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION == 2 and "mean" not in ckpt and "std" not in ckpt
    assert ckpt["input"] == FMNIST_SPEC
    metrics = evaluate_checkpoint(path, overrides=[f"dataset.root={fixture_data}"])
    want = json.loads((FIXTURES / "tiny_fmnist_eval.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "checkpoint_path"} == want


def test_a_format_1_checkpoint_converts_in_one_place(tmp_path):
    raw = torch.load(FIXTURES / "checkpoint_format1.pt", weights_only=True)
    assert raw["format_version"] == 1 and raw["mean"] == [0.286] and "longtail_version" not in raw
    oldest = {k: v for k, v in raw.items() if k != "input"}  # written before the input contract: from the config
    torch.save(oldest, tmp_path / "oldest.pt")
    assert load_checkpoint(tmp_path / "oldest.pt")["input"] == FMNIST_SPEC
    # an image-file run of format 1: R = round(S * 256 / 224) is longtail's rule (crop_pct None), R = S is crop_pct 1
    files = {**raw, "config": {**raw["config"], "dataset": {**raw["config"]["dataset"], "name": "folder"}}}
    for resize, crop_pct in ((256, None), (224, 1.0)):
        contract = {"channels": 1, "image_size": 224, "resize": resize, "mean": [0.286], "std": [0.353], "interpolation": "bicubic"}
        torch.save({**files, "input": contract}, tmp_path / "files.pt")
        spec = InputSpec.from_dict(load_checkpoint(tmp_path / "files.pt")["input"])
        assert (spec.crop_pct, spec.eval_resize_size(), spec.interpolation) == (crop_pct, resize, "bicubic")
    torch.save({k: v for k, v in files.items() if k != "input"}, tmp_path / "oldest_files.pt")  # data.image_size
    assert load_checkpoint(tmp_path / "oldest_files.pt")["input"]["size"] == raw["config"]["data"]["image_size"] == 224


def test_a_newer_format_is_refused_naming_both_versions(tmp_path):
    raw = torch.load(FIXTURES / "checkpoint_format2.pt", weights_only=True)
    torch.save({**raw, "format_version": FORMAT_VERSION + 1, "longtail_version": "9.0.0"}, tmp_path / "new.pt")
    with pytest.raises(LongtailError) as info:
        load_checkpoint(tmp_path / "new.pt")
    text = str(info.value)
    assert "\n" not in text and f"format {FORMAT_VERSION + 1}" in text and "9.0.0" in text and longtail.__version__ in text
    assert "upgrade longtail" in text


def test_a_saved_run_keeps_its_stored_spec_and_refuses_changing_it(tmp_path, fixture_data):
    from longtail.run import input_spec_of, load_run

    path = FIXTURES / "checkpoint_format2.pt"
    cfg, ckpt, _ = load_run(path, [f"dataset.root={fixture_data}", "data.crop_pct=0.875"])
    assert input_spec_of(cfg, ckpt).eval_resize_size() == 32  # floor(28 / 0.875): an evaluation-time change
    with pytest.raises(LongtailError, match="data.mean cannot change after training"):
        load_run(path, ["data.mean=[0.5]"])
