"""How the classifier heads start, as the released codes start them: cosine heads with unit-norm class
vectors (LDAM-DRW's NormedLinear, every LGLA expert), the CIFAR ResNets' linear head at PyTorch's default
nn.Linear draw. Both change training: the first sets a cosine head's effective learning rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.config import ModelConfig
from longtail.models import create_model
from longtail.models.cosine import CosineClassifier


def cosine_heads(model: torch.nn.Module) -> list[CosineClassifier]:
    return [m for m in model.modules() if isinstance(m, CosineClassifier)]


# ----------------------------------------------------------------------------- cosine heads


@pytest.mark.parametrize("in_features", [2, 64, 2048])
def test_cosine_class_vectors_start_at_unit_norm(in_features):
    torch.manual_seed(0)
    head = CosineClassifier(in_features, 10)
    norms = head.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10), rtol=0, atol=1e-5)
    # still a random draw, not one fixed direction for every class
    assert head.weight.detach().std(0).min() > 0


@pytest.mark.parametrize("cfg", [ModelConfig(name="resnet8", classifier="cosine"), ModelConfig(name="resnet8_experts")],
                         ids=["resnet8-cosine", "resnet8_experts"])
def test_models_keep_the_unit_norm_of_their_cosine_heads(cfg):
    """The models' own initialisation (Kaiming for convolutions) must leave the cosine rows alone."""
    torch.manual_seed(0)
    heads = cosine_heads(create_model(cfg, 7, 3))
    assert len(heads) == (3 if cfg.name.endswith("_experts") else 1)
    for head in heads:
        torch.testing.assert_close(head.weight.detach().norm(dim=1), torch.ones(7), rtol=0, atol=1e-5)


class UnitNormReference(torch.nn.Module):
    """A cosine head written out by hand, as the released one starts: class vectors drawn uniform in
    [-1, 1], each divided by its Euclidean length; logits s * <f / |f|, w_c / |w_c|>."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        draw = torch.empty(num_classes, in_features).uniform_(-1, 1)
        lengths = draw.pow(2).sum(1, keepdim=True).sqrt()
        self.weight = torch.nn.Parameter(draw / lengths)
        self.scale = scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f_unit = f / f.pow(2).sum(1, keepdim=True).sqrt()
        w_unit = self.weight / self.weight.pow(2).sum(1, keepdim=True).sqrt()
        return self.scale * f_unit @ w_unit.t()


def logit_change_after_one_sgd_step(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    before = head(features).detach()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    F.cross_entropy(head(features), labels).backward()
    optimizer.step()
    return head(features).detach() - before


@pytest.mark.parametrize("in_features", [64, 512])
def test_one_sgd_step_moves_the_logits_as_far_as_a_unit_norm_head(in_features):
    """Same seed, so both heads start from the same directions and give the same logits; a head whose rows
    are longer than 1 would move its logits about |w|^2 times less (D / 3: 21x at 64 inputs)."""
    torch.manual_seed(0)
    features, labels = torch.randn(32, in_features), torch.randint(0, 10, (32,))
    torch.manual_seed(1)
    ours = CosineClassifier(in_features, 10)
    torch.manual_seed(1)
    reference = UnitNormReference(in_features, 10)
    torch.testing.assert_close(ours(features), reference(features), rtol=1e-5, atol=1e-4)

    moved, expected = (logit_change_after_one_sgd_step(h, features, labels) for h in (ours, reference))
    assert expected.abs().mean() > 0.01  # the step is large enough for the comparison to mean something
    torch.testing.assert_close(moved, expected, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------- linear head of the CIFAR ResNets


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet32"])
def test_cifar_linear_head_has_pytorchs_default_initialisation(name):
    """nn.Linear's default: weight and bias uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], so weight std
    1/sqrt(3 fan_in) = 0.0722 at 64 inputs; Kaiming normal would give std sqrt(2 / 64) = 0.177 and values
    beyond the bound."""
    torch.manual_seed(0)
    head = create_model(ModelConfig(name=name), 100, 3).classifier
    fan_in = 64
    bound = 1 / math.sqrt(fan_in)  # 0.125
    default_std, kaiming_std = 1 / math.sqrt(3 * fan_in), math.sqrt(2 / fan_in)
    assert (default_std, kaiming_std) == (pytest.approx(0.07217, abs=1e-5), pytest.approx(0.17678, abs=1e-5))
    weight, bias = head.weight.detach(), head.bias.detach()
    assert weight.shape == (100, fan_in)
    # 6400 draws: the sample std of a uniform lies within ~0.0006 of its std
    assert abs(float(weight.std()) - default_std) < 0.004
    assert float(weight.abs().max()) <= bound
    assert float(bias.abs().max()) <= bound and float(bias.std()) > bound / 4  # drawn, not zeros
