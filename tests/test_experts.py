"""Multi-expert networks (models/experts.py), per-expert evaluation, and the LGLA configs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

from longtail.config import ModelConfig, load_config
from longtail.data import long_tailed_counts
from longtail.errors import LongtailError
from longtail.losses import create_loss
from longtail.metrics import expert_metrics, format_table
from longtail.catalog import names
from longtail.models import create_model
from longtail.models.experts import CosineClassifier, torchvision_resnet_experts

from conftest import REPO, TINY_RUN, fit_here, make_small_fmnist, run_cli, write_fake_cifar

EXPERT_MODELS = sorted(name for name in names("model") if name.endswith("_experts"))
TORCHVISION_EXPERTS = ["resnet50_experts", "resnext50_experts", "resnet152_experts"]


def build(name: str, num_classes: int = 5, in_channels: int = 3, **cfg) -> torch.nn.Module:
    return create_model(ModelConfig(name=name, **cfg), num_classes, in_channels)


# ----------------------------------------------------------------------------- models


def test_every_expert_variant_is_registered():
    assert {"resnet8_experts", "resnet32_experts", *TORCHVISION_EXPERTS} <= set(EXPERT_MODELS)


@pytest.mark.parametrize("name", EXPERT_MODELS)
def test_forward_backward_on_a_tiny_input(name):
    # fewer experts for the torchvision variants keeps the test light (ResNet-152 has 55M parameters
    # per expert); 32 px inputs reach 1x1 after stage 4
    experts = {"resnet152_experts": 1, "resnet50_experts": 2, "resnext50_experts": 2}.get(name, 3)
    torch.manual_seed(0)
    model = build(name, num_experts=experts)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["expert_logits"].shape == (experts, 2, 5)
    assert out["logits"].shape == (2, 5)
    torch.testing.assert_close(out["logits"], out["expert_logits"].mean(0))
    assert out["features"].shape[0] == 2 and out["features"].shape[1] == experts * model.feature_dim
    assert out["expert_logits"].abs().max() <= 30.0 + 1e-4  # cosine classifiers, s = 30
    out["logits"].sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_cosine_classifier_hand_worked():
    head = CosineClassifier(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -5.0], [1.0, 1.0]]))
    z = head(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(z, 30 * torch.tensor([[1.0, 0.0, r], [0.0, -1.0, r]]))


def test_cosine_classifier_stays_float32_under_autocast():
    head = CosineClassifier(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(torch.randn(3, 8).bfloat16())
    assert z.dtype == torch.float32


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("name,experts", [("resnet8_experts", 3), ("resnet50_experts", 2)])
def test_expert_branches_are_independent(name, experts):
    torch.manual_seed(0)
    model = build(name, num_experts=experts).eval()  # eval: batch norm uses its stored statistics
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)["expert_logits"]
        _perturb(model.experts[1])
        after_branch = model(x)["expert_logits"]
        _perturb(model.classifiers[0])
        after_head = model(x)["expert_logits"]
        _perturb(model.trunk)
        after_trunk = model(x)["expert_logits"]
    untouched = [e for e in range(experts) if e != 1]
    torch.testing.assert_close(after_branch[untouched], before[untouched], rtol=0, atol=0)
    assert not torch.allclose(after_branch[1], before[1])
    torch.testing.assert_close(after_head[1:], after_branch[1:], rtol=0, atol=0)
    assert not torch.allclose(after_head[0], after_branch[0])
    for e in range(experts):
        assert not torch.allclose(after_trunk[e], after_head[e])
    # no parameter is shared between branches
    ptrs = [{p.data_ptr() for p in branch.parameters()} for branch in model.experts]
    assert all(not (ptrs[i] & ptrs[j]) for i in range(experts) for j in range(i + 1, experts))


def test_torchvision_experts_start_from_different_draws():
    torch.manual_seed(0)
    model = build("resnet50_experts", num_experts=2)
    a, b = (dict(branch.named_parameters()) for branch in model.experts)
    assert not torch.equal(a["0.0.0.conv1.weight"], b["0.0.0.conv1.weight"])


def test_single_channel_input_without_pretrained_weights():
    model = build("resnet50_experts", in_channels=1, num_experts=2)
    assert model(torch.randn(2, 1, 28, 28))["expert_logits"].shape == (2, 2, 5)


# ----------------------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(1)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_weights_go_to_the_trunk_and_every_expert(resnet50_weights):
    path, state = resnet50_weights
    model = build("resnet50_experts", num_experts=2, pretrained=str(path))
    torch.testing.assert_close(model.trunk[0].weight, state["conv1.weight"])  # stem
    torch.testing.assert_close(model.trunk[5][0].conv2.weight, state["layer2.0.conv2.weight"])
    for branch in model.experts:
        layer3, layer4 = branch[0][0], branch[0][1]
        torch.testing.assert_close(layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
        torch.testing.assert_close(layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def test_pretrained_weights_wrapped_in_a_training_checkpoint(resnet50_weights, tmp_path):
    path, state = resnet50_weights
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    model = torchvision_resnet_experts("resnet50", 5, num_experts=2, pretrained=str(wrapped))
    torch.testing.assert_close(model.experts[1][0][1][0].conv3.weight, state["layer4.0.conv3.weight"])


def test_pretrained_weights_of_another_architecture_are_refused(resnet50_weights):
    path, _ = resnet50_weights
    with pytest.raises(LongtailError, match="does not fit"):
        build("resnext50_experts", num_experts=2, pretrained=str(path))


def test_missing_pretrained_file_is_reported(tmp_path):
    with pytest.raises(LongtailError, match="does not exist"):
        build("resnet152_experts", pretrained=str(tmp_path / "none.pth"))


def test_expert_models_refuse_options_they_do_not_support(resnet50_weights):
    with pytest.raises(LongtailError, match="freeze_backbone"):
        build("resnet32_experts", freeze_backbone=True)
    with pytest.raises(LongtailError, match="pretrained"):
        build("resnet32_experts", pretrained="x.pth")
    with pytest.raises(LongtailError, match="3 input channels"):
        build("resnet50_experts", in_channels=1, pretrained=str(resnet50_weights[0]))


# ----------------------------------------------------------------------------- per-expert metrics


def test_expert_metrics_hand_worked():
    counts = [200, 50, 5]  # one class per shot group: many, medium, few
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    always_zero = torch.tensor([[1.0, 0, 0]]).repeat(6, 1)
    perfect = torch.nn.functional.one_hot(labels, 3).float()
    out = {"logits": perfect, "expert_logits": torch.stack([always_zero, perfect])}
    rows = expert_metrics(out, labels, counts)
    assert len(rows) == 2
    assert rows[0]["top1"] == pytest.approx(100 / 3) and rows[0]["many"] == 100.0
    assert rows[0]["medium"] == 0.0 and rows[0]["few"] == 0.0
    assert rows[1]["top1"] == 100.0 and rows[1]["few"] == 100.0
    assert expert_metrics({"logits": perfect}, labels, counts) == []


def test_table_lists_ensemble_and_experts_only_when_present():
    base = {"top1": 50.0, "mean_class_acc": 40.0, "many": 70.0, "medium": None, "few": 10.0}
    plain = format_table(base, "t")
    assert "ensemble" not in plain and "expert" not in plain and "50.00" in plain
    table = format_table({**base, "experts": [dict(base, top1=11.0), dict(base, top1=22.0)]})
    lines = table.splitlines()
    assert lines[1].startswith("ensemble") and lines[2].startswith("expert 0") and lines[3].startswith("expert 1")
    assert "11.00" in lines[2] and "22.00" in lines[3] and "n/a" in lines[3]


# ----------------------------------------------------------------------------- large-scale configs

LARGE = ["imagenet_lt/lgla_resnet50.yaml", "imagenet_lt/lgla_resnext50.yaml",
         "inat2018/lgla_resnet50.yaml", "places_lt/lgla_resnet152.yaml"]


@pytest.mark.parametrize("path", LARGE)
def test_large_scale_configs_load_and_build(path):
    cfg = load_config(REPO / "configs" / path, ["model.pretrained=null", "model.num_experts=2"])
    assert cfg.loss.name == "lgla" and cfg.loss.num_experts == 2 and cfg.loss.tau > 1
    assert cfg.train.nesterov and cfg.data.image_size == 224
    model = create_model(cfg.model, 7, 3)
    criterion = create_loss(cfg.loss, long_tailed_counts(50, 7, 10))
    with torch.no_grad():  # backward is covered by test_forward_backward_on_a_tiny_input
        out = model(torch.randn(2, 3, 32, 32))
        assert torch.isfinite(criterion(out[criterion.input_key], torch.tensor([0, 6])))


def test_large_scale_recipes_match_the_release():
    get = lambda p: load_config(REPO / "configs" / p)  # noqa: E731
    r50, rx50, inat, places = (get(p) for p in LARGE)
    assert (r50.loss.tau, rx50.loss.tau, inat.loss.tau, places.loss.tau) == (2.8, 3.0, 3.0, 2.4)
    assert (r50.train.epochs, r50.train.batch_size, r50.train.lr, r50.train.weight_decay, r50.train.schedule) == (180, 64, 0.025, 5e-4, "cosine")
    assert (inat.train.epochs, inat.train.batch_size, inat.train.lr, inat.train.weight_decay) == (400, 512, 0.2, 2e-4)
    assert (places.train.epochs, places.train.lr, places.train.milestones, places.model.name) == (30, 0.01, [10, 20], "resnet152_experts")
    assert places.model.pretrained is not None


# ----------------------------------------------------------------------------- CIFAR / FMNIST configs, end to end


@pytest.fixture(scope="module")
def tiny_cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", 100, 5)
    write_fake_cifar(root, "cifar100", 100, 3)
    return root


@pytest.fixture(scope="module")
def tiny_fmnist_root(tmp_path_factory) -> Path:
    """110 training and 5 test images per class (a fast test set)."""
    return make_small_fmnist(tmp_path_factory.mktemp("fmnist"), train_per_class=110, test_per_class=5)


TINY = [*TINY_RUN, "model.name=resnet8_experts", "train.batch_size=64", "eval.batch_size=500", "dataset.download=false"]
# CIFAR-100 at n_max 100 would train on ~2,000 images; 20 images in the largest class and imbalance 10
# (counts 20..2) keep the run to a few seconds on a shared CPU
TINY_DATA = {"cifar10_lt": ["dataset.n_max=100"], "cifar100_lt": ["dataset.n_max=20", "dataset.imbalance_factor=10"],
             "fmnist_lt": ["dataset.n_max=100", "dataset.val_per_class=10"]}


@pytest.fixture
def train(capsys):
    """Train a config in this process. Returns (metrics.json, printed output)."""

    def run(path: str, root: Path, out: Path, *extra: str) -> tuple[dict, str]:
        cfg = load_config(REPO / "configs" / path)
        fit_here(REPO / "configs" / path, [f"dataset.root={root}", *TINY, *TINY_DATA[cfg.dataset.name], *extra], out)
        return _check_run(out, load_config(None, extra).model.num_experts), capsys.readouterr().out

    return run


def _check_run(run: Path, experts: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["experts"]) == experts
    for row in metrics["experts"]:
        assert {"top1", "mean_class_acc", "many", "medium", "few", "per_class"} <= set(row)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert len((run / "epochs.jsonl").read_text().splitlines()) == 1
    return metrics


@pytest.mark.parametrize("path", ["cifar10_lt/lgla_imba50.yaml", "cifar10_lt/lgla_imba100.yaml",
                                  "cifar100_lt/lgla_imba50.yaml", "cifar100_lt/lgla_imba100.yaml"])
def test_cifar_configs_train_end_to_end(path, tiny_cifar_root, tmp_path, train):
    cfg = load_config(REPO / "configs" / path)
    assert cfg.dataset.val_source == "none" and cfg.train.select == "last"
    assert cfg.data.autoaugment and cfg.data.cutout == 16 and cfg.model.name == "resnet32_experts"
    assert cfg.loss.tau == (3.0 if "cifar10_" in path else 2.5)
    metrics, printed = train(path, tiny_cifar_root, tmp_path / "run")
    assert "expert 2" in printed
    assert metrics["selected_by"] == "last_epoch"
    assert metrics["num_images"] == (50 if "cifar10_" in path else 300)


@pytest.mark.parametrize("path", ["fmnist_lt/lgla_imba100.yaml", "fmnist_lt/lgla_imba10.yaml"])
def test_fmnist_configs_train_end_to_end(path, tiny_fmnist_root, tmp_path, train):
    cfg = load_config(REPO / "configs" / path)
    assert cfg.model.name == "resnet32_experts" and cfg.loss.name == "lgla"
    metrics, _ = train(path, tiny_fmnist_root, tmp_path / "run")
    assert metrics["selected_by"] == "val_top1" and metrics["num_images"] == 50


def test_cli_evaluate_prints_every_expert(tiny_cifar_root, tmp_path, train):
    run = tmp_path / "run"
    metrics, _ = train("cifar10_lt/lgla_imba100.yaml", tiny_cifar_root, run, "model.num_experts=2")
    out = run_cli("evaluate", str(run), "--json", str(tmp_path / "eval.json")).stdout
    assert "ensemble" in out and "expert 1" in out and "expert 2" not in out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    scores = ("top1", "mean_class_acc", "many", "medium", "few", "per_class")
    assert {k: evaluated[k] for k in scores} == {k: metrics[k] for k in scores}  # the ensemble
    assert len(evaluated["experts"]) == 2
    for got, want in zip(evaluated["experts"], metrics["experts"]):
        assert {k: got[k] for k in scores} == {k: want[k] for k in scores}
