"""torchvision backbones by config name, pretrained weights (files, torchvision, offline), frozen-backbone
training, and the global-batch BatchNorm's single-process behaviour."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from longtail.config import ModelConfig, TrainConfig
from longtail.errors import LongtailError
from longtail.catalog import names
from longtail.models import create_model
from longtail.models.freeze import freeze_backbone, train_mode
from longtail.models.pretrained import load_pretrained
from longtail.models.sync_batchnorm import GlobalBatchNorm, convert_sync_batchnorm
from longtail.optim import build_optimizer

TORCHVISION_NAMES = ["resnet50", "resnext50_32x4d", "resnet152"]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_model_contract(name):
    assert name in names("model")
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name), 7, 3)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 2048
    assert model.classifier.out_features == 7
    out = model(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 7) and out["features"].shape == (2, 2048)
    assert torch.allclose(out["logits"], model.classifier(out["features"]))
    out["logits"].sum().backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    # names match torchvision's, except the head
    reference = set(getattr(tvm, name)(weights=None).state_dict())
    ours = set(model.state_dict())
    assert ours - reference == {"classifier.weight", "classifier.bias"}
    assert reference - ours == {"fc.weight", "fc.bias"}


def test_torchvision_state_dict_file_loads_backbone_and_optionally_head(tmp_path):
    torch.manual_seed(1)
    source = tvm.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    fresh = create_model(ModelConfig(name="resnet50"), 1000, 3)
    torch.manual_seed(2)
    model = create_model(ModelConfig(name="resnet50", pretrained=str(path)), 1000, 3)  # applied when built
    head_before = fresh.classifier.weight
    state, reference = model.state_dict(), source.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference if not k.startswith("fc."))
    assert torch.equal(model.classifier.weight, head_before)
    load_pretrained(model, ModelConfig(name="resnet50", pretrained=str(path), pretrained_classifier=True))
    assert torch.equal(model.classifier.weight, source.fc.weight)
    # a longtail checkpoint (dict with 'model') of another architecture fails loudly
    other = create_model(ModelConfig(name="resnet8"), 10, 3)
    ckpt = tmp_path / "resnet8.pt"
    torch.save({"format_version": 1, "model": other.state_dict()}, ckpt)
    with pytest.raises(LongtailError, match="does not fit model 'resnet50'"):
        load_pretrained(model, ModelConfig(name="resnet50", pretrained=str(ckpt)))
    with pytest.raises(LongtailError, match="does not exist"):
        load_pretrained(model, ModelConfig(name="resnet50", pretrained=str(tmp_path / "nope.pth")))


def test_resnet50_weights_do_not_fit_resnext(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(tvm.resnet50(weights=None).state_dict(), path)
    model = create_model(ModelConfig(name="resnext50_32x4d"), 10, 3)
    with pytest.raises(LongtailError, match=r"of another shape, e.g. layer1\.0\.conv1\.weight \(shape"):
        load_pretrained(model, ModelConfig(name="resnext50_32x4d", pretrained=str(path)))


def test_torchvision_weights_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    model = create_model(ModelConfig(name="resnet50"), 10, 3)
    with pytest.raises(LongtailError, match=r"could not fetch torchvision's ResNet50_Weights.IMAGENET1K_V1 from https://.*resnet50-0676ba61.pth \(URLError\); without internet"):
        load_pretrained(model, ModelConfig(name="resnet50", pretrained="torchvision"))
    with pytest.raises(LongtailError, match="no weights 'V3'"):
        load_pretrained(model, ModelConfig(name="resnet50", pretrained="torchvision:V3"))
    small = create_model(ModelConfig(name="resnet8"), 10, 3)
    with pytest.raises(LongtailError, match="model 'resnet8' has no torchvision weights"):
        load_pretrained(small, ModelConfig(name="resnet8", pretrained="torchvision"))


def test_frozen_backbone_trains_only_the_classifier_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="resnet8"), 5, 3)
    trainable = freeze_backbone(model)
    assert trainable == 64 * 5 + 5
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    optimizer = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.0))
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_mode(model)
    assert model.training and model.classifier.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(5, (8,))
    loss = nn.functional.cross_entropy(model(x)["logits"], y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # running stats and num_batches_tracked too


def test_freeze_needs_a_classifier():
    with pytest.raises(LongtailError, match="single linear head `classifier`"):
        freeze_backbone(nn.Sequential(nn.Linear(3, 3)))


def test_global_batchnorm_alone_is_batchnorm():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    converted = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.device("cpu"))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], GlobalBatchNorm)
    assert set(converted.state_dict()) == set(plain.state_dict())  # checkpoints stay interchangeable
    x = torch.randn(6, 3, 8, 8)
    assert torch.allclose(converted(x), plain(x), atol=1e-6)
    assert torch.allclose(converted[1].running_var, plain[1].running_var)


def test_cosine_head_for_torchvision_models():
    model = create_model(ModelConfig(name="resnet50", classifier="cosine", scale=16.0), 6, 3)
    assert not isinstance(model.classifier, nn.Linear)
    logits = model(torch.randn(2, 3, 64, 64))["logits"]
    assert logits.shape == (2, 6) and logits.abs().max() <= 16.0 + 1e-4
