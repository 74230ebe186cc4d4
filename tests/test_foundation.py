"""Pretrained backbones fine-tuned the long-tail way: model.finetune (full, linear, bias, LoRA through peft, the
AdaptFormer adapter), model.head_init (class_means, text), checkpoints of partial fine-tuning, merged export,
and the one-line errors of bad input. Tiny models built here (a 300k-parameter ViT registered in timm's
registry, shaped as timm's `test_vit` but fixed at 32 px so its graph exports; a tiny random open_clip
config), saved to disk: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import write_fake_cifar
from longtail.checkpoint import load_checkpoint
from longtail.config import ModelConfig, TrainConfig, load_config
from longtail.engine import fit
from longtail.errors import LongtailError
from longtail.evaluation import load_run, restore_model
from longtail.models import backbone_preprocessing, create_model, is_known_model
from longtail.models.finetune import freeze
from longtail.models.head_init import class_mean_features, initialise_head
from longtail.models.lora import merge_lora
from longtail.optim import build_optimizer

timm = pytest.importorskip("timm")
pytest.importorskip("peft")

TINY_VIT = "lt_tiny_vit32"
D, L, HIDDEN, C = 64, 6, 192, 10  # width, blocks, MLP width, classes


def _tiny_vit(pretrained: bool = False, **kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return VisionTransformer(**{**dict(img_size=32, patch_size=16, embed_dim=D, depth=L, num_heads=2, mlp_ratio=HIDDEN / D), **kwargs})


_tiny_vit.__name__ = TINY_VIT
if not timm.is_model(TINY_VIT):
    timm.models.register_model(_tiny_vit)
VIT = f"timm/{TINY_VIT}"
# float32, no channels_last: comparisons at 1e-4 and bit-identity on any CPU
TINY_CIFAR = [
    "dataset.name=cifar10_lt", "dataset.download=false", "dataset.n_max=25", "dataset.imbalance_factor=10",
    "dataset.val_source=test_holdout", "dataset.val_per_class=2", "data.num_workers=0", "data.pipeline=loader",
    "train.epochs=2", "train.batch_size=16", "train.lr=0.05", "train.milestones=[5]", "train.progress=false",
    "train.amp=false", "train.channels_last=false", "eval.batch_size=64", "device=cpu", f"model.name={VIT}",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A fake CIFAR-10 tree and the weights of a (random) test_vit with its 1000-class timm head, as timm saves them."""
    tmp = tmp_path_factory.mktemp("foundation")
    torch.manual_seed(0)
    weights = tmp / "test_vit.pth"
    torch.save(timm.create_model(TINY_VIT, pretrained=False).state_dict(), weights)
    return {"cifar": write_fake_cifar(tmp / "cifar", "cifar10", train_per_class=25, test_per_class=6), "weights": weights}


def cfg_of(files: dict[str, Path], *extra: str):
    return load_config(None, [*TINY_CIFAR, f"dataset.root={files['cifar']}", f"model.pretrained={files['weights']}", *extra])


def base_name(key: str) -> str:
    """The timm file's name of a model tensor: without longtail's 'backbone.', peft's '.base_layer' and the
    adapter's move of a block's norm2/mlp into its ParallelAdapter."""
    key = key.removeprefix("backbone.").replace(".base_layer", "")
    return key.replace(".mlp.norm.", ".norm2.").replace(".mlp.mlp.", ".mlp.")


# hand-computed trainable parameters of test_vit + a linear head for 10 classes (rank 2, adapter width 4)
HEAD = D * C + C
EXPECTED = {
    "linear": HEAD,
    # patch embedding bias, per block: norm1, qkv, proj, norm2, fc1, fc2 biases; final norm bias
    "bias": HEAD + D + L * (D + 3 * D + D + D + HIDDEN + D) + D,
    # per block: qkv (A: r x D, B: 3D x r), proj (r x D, D x r), fc1 (r x D, HIDDEN x r), fc2 (r x HIDDEN, D x r)
    "lora": HEAD + L * 2 * (3 * D + D + D + D + HIDDEN + D + HIDDEN + D),
    # per block: LayerNorm (2D), down (D x 4 + 4), up (4 x D + D), scale (1)
    "adapter": HEAD + L * (2 * D + D * 4 + 4 + 4 * D + D + 1),
}
SETTINGS = {"lora": ["model.lora_rank=2"], "adapter": ["model.adapter_dim=4"], "bias": [], "linear": []}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_frozen_tensors_keep_the_files_values_and_trained_ones_move(files, mode):
    cfg = cfg_of(files, f"model.finetune={mode}", *SETTINGS[mode])
    torch.manual_seed(0)
    model = create_model(cfg.model, C, 3)
    trained, total = freeze(model, cfg.model)
    assert trained == EXPECTED[mode]
    assert total == sum(p.numel() for p in model.parameters())
    source = torch.load(files["weights"], weights_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(before[k], source[base_name(k)]) for k in frozen)
    optimizer = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=5e-4))
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == EXPECTED[mode]
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % C
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    assert all(model.get_parameter(k).grad is None for k in frozen)
    moved = [k for k, p in model.named_parameters() if p.requires_grad and not torch.equal(after[k], before[k])]
    # every trained tensor moved, except LoRA's A matrices in the first step's shadow (B starts at zero, so A's
    # gradient is zero until B moves: after three steps both have)
    assert moved == [k for k, p in model.named_parameters() if p.requires_grad]


def test_lora_and_adapter_start_as_the_pretrained_network(files):
    """B = 0 and W_up = 0 at the start: the features are the plain backbone's."""
    x = torch.randn(3, 3, 32, 32)
    plain = create_model(cfg_of(files).model, C, 3).eval()
    for mode in ("lora", "adapter"):
        model = create_model(cfg_of(files, f"model.finetune={mode}").model, C, 3).eval()
        assert torch.allclose(model(x)["features"], plain(x)["features"], atol=1e-5), mode


def test_lora_needs_attention_and_mlp_projections():
    with pytest.raises(LongtailError, match="model.finetune=lora found no attention or MLP projections .* in 'resnet8'"):
        create_model(ModelConfig(name="resnet8", finetune="lora"), 4, 3)
    with pytest.raises(LongtailError, match="model.finetune=adapter found no transformer blocks .* in 'resnet8'"):
        create_model(ModelConfig(name="resnet8", finetune="adapter"), 4, 3)


@pytest.fixture(scope="module")
def lora_run(files, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "lora"
    fit(cfg_of(files, "model.finetune=lora", "model.lora_rank=2", "loss.name=la", "model.head_init=class_means"), run)
    return run


def test_a_lora_checkpoint_holds_the_trained_tensors_and_the_base_identity(files, lora_run, capsys):
    import hashlib

    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(lora_run / "checkpoints" / name)
        assert ckpt["base"] == {"name": VIT, "pretrained": str(files["weights"]),
                                "sha256": hashlib.sha256(files["weights"].read_bytes()).hexdigest()}
        assert sum(v.numel() for v in ckpt["model"].values()) == EXPECTED["lora"]
        assert all(".lora_" in k or k.startswith("classifier.") for k in ckpt["model"])
    # evaluating it rebuilds the base from the file: the same scores as the model the run tested, which it could
    # not be if training had moved a frozen tensor (the checkpoint does not hold them)
    cfg, ckpt, path = load_run(lora_run)
    model = restore_model(cfg, ckpt, torch.device("cpu"), path)
    restored = model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in ckpt["model"].items())
    from longtail.evaluation import load_outputs
    from longtail.metrics import evaluate_predictions

    test = load_outputs(lora_run, splits=("test",)).split("test")
    tested = json.loads((lora_run / "metrics.json").read_text())
    assert evaluate_predictions(test["logits"].argmax(1), test["labels"], ckpt["class_counts"])["top1"] == tested["top1"]
    from longtail.calibration import nll as mean_nll

    nll = mean_nll(test["logits"].double().softmax(-1), test["labels"])
    assert nll == pytest.approx(tested["calibration"]["before"]["nll"], rel=1e-9, abs=1e-12)  # every logit, not just argmax


def test_the_start_line_counts_the_trained_parameters(files, tmp_path, capsys):
    fit(cfg_of(files, "model.finetune=adapter", "model.adapter_dim=4", "train.epochs=1"), tmp_path / "run")
    total = sum(p.numel() for p in timm.create_model(TINY_VIT, num_classes=0).parameters()) + EXPECTED["adapter"]
    line = f"training {EXPECTED['adapter']:,} of {total:,} parameters ({100 * EXPECTED['adapter'] / total:.2f}%, model.finetune=adapter)"
    assert line in capsys.readouterr().out


def test_missing_or_other_base_weights_are_one_line(files, lora_run, tmp_path):
    from longtail.cli import main

    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(files["weights"].read_bytes())
    other = tmp_path / "other.pth"
    torch.save(timm.create_model(TINY_VIT, pretrained=False).state_dict(), other)  # another random draw
    missing = str(tmp_path / "gone.pth")
    with pytest.raises(LongtailError, match=r"base weights .* are missing .* put the file back, or pass model.pretrained=PATH"):
        load_outputs_with(lora_run, f"model.pretrained={missing}")
    with pytest.raises(LongtailError, match="is not the file checkpoint .* was trained from"):
        load_outputs_with(lora_run, f"model.pretrained={other}")
    load_outputs_with(lora_run, f"model.pretrained={moved}")  # the same bytes elsewhere are fine
    assert main(["evaluate", str(lora_run), f"model.pretrained={missing}"]) != 0


def load_outputs_with(run: Path, override: str):
    from longtail.evaluation import load_outputs

    return load_outputs(run, [override], splits=("test",))


def test_merged_export_equals_the_unmerged_forward(files, lora_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from longtail.export import export_run

    cfg, ckpt, path = load_run(lora_run)
    model = restore_model(cfg, ckpt, torch.device("cpu"), path).eval()
    merged = restore_model(cfg, ckpt, torch.device("cpu"), path).eval()
    assert merge_lora(merged) == L * 4
    assert not any("lora" in k for k in merged.state_dict())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert float((merged(x)["logits"] - model(x)["logits"]).abs().max()) < 1e-4
    result = export_run(lora_run, "onnx", tmp_path / "model.onnx", posthoc="none")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = torch.from_numpy(session.run(["scores"], {"images": x.numpy()})[0])
    with torch.no_grad():
        assert float((onnx_scores - model(x)["logits"]).abs().max()) < 1e-4  # against the unmerged network
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert not any("lora" in t.name for t in graph.initializer)  # merged: no LoRA matrices in the graph
    scripted = export_run(lora_run, "torchscript", tmp_path / "model.pt", posthoc="none")
    assert scripted.max_abs_diff is not None and scripted.max_abs_diff < 1e-4


class Interrupted(Exception):
    pass


def test_a_lora_run_killed_mid_epoch_resumes_bit_identically(files, tmp_path, monkeypatch):
    import longtail.engine as engine

    overrides = ["model.finetune=lora", "model.lora_rank=2", "train.epochs=3"]
    fit(cfg_of(files, *overrides), tmp_path / "whole")
    original = engine.train_one_epoch

    def dies_in_epoch_two(model, criterion, batches, optimizer, scheduler, cfg, runtime, epoch, show):
        if epoch != 1:
            return original(model, criterion, batches, optimizer, scheduler, cfg, runtime, epoch, show)
        for step, (x, y) in enumerate(batches):  # a few steps of epoch 2, then the process dies
            loss = criterion(model(x)["logits"], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == 1:
                raise Interrupted

    monkeypatch.setattr(engine, "train_one_epoch", dies_in_epoch_two)
    with pytest.raises(Interrupted):
        fit(cfg_of(files, *overrides), tmp_path / "killed")
    monkeypatch.setattr(engine, "train_one_epoch", original)
    fit(cfg_of(files, *overrides, "train.resume=true"), tmp_path / "killed")
    whole, resumed = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("whole", "killed"))
    assert whole["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert [entry["start_epoch"] for entry in resumed["progress"]["launches"]] == [0, 1]  # resumed, not restarted
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("whole", "killed")]
    assert metrics[0]["top1"] == metrics[1]["top1"]


@pytest.mark.parametrize("loss", [
    ["loss.name=la"], ["loss.name=balanced_softmax"],
    ["loss.name=ldam_drw", "loss.drw_epoch=1", "model.classifier=cosine"],
])
def test_every_loss_trains_an_adapter_run_and_posthoc_rules_apply(files, tmp_path, loss):
    metrics = fit(cfg_of(files, "model.finetune=adapter", "eval.posthoc=la", *loss), tmp_path / "run")
    assert 0.0 <= metrics["top1"] <= 100.0 and "raw" in metrics


# ----------------------------------------------------------------------------- head initialisation


class Flatten(nn.Module):
    """features = the flattened image: class means are then means of pixels, computable by hand."""

    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = x.flatten(1)
        return {"logits": self.classifier(features), "features": features}


def test_class_means_are_the_normalised_mean_feature_of_each_class():
    torch.manual_seed(0)
    x = torch.randn(12, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 2, 1, 0, 2])
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    model = Flatten(3, 4)
    means = class_mean_features(model, batches, 3, torch.device("cpu"))
    by_hand = torch.stack([x[y == c].flatten(1).mean(0) for c in range(3)]).double()
    assert torch.allclose(means, by_hand, atol=1e-12)
    initialise_head(model, "class_means", {"batches": lambda: batches, "num_classes": 3, "device": torch.device("cpu")})
    assert torch.allclose(model.classifier.weight, (by_hand / by_hand.norm(dim=1, keepdim=True)).float(), atol=1e-6)
    assert torch.equal(model.classifier.bias, torch.zeros(3))
    with pytest.raises(LongtailError, match=r"needs a training image of every class; classes \[2\]"):
        class_mean_features(model, [(x[:2], y[:2])], 3, torch.device("cpu"))


def test_a_run_starts_from_the_class_means(files, tmp_path, monkeypatch):
    """The engine applies head_init before the first step: with a vanishing learning rate the classifier
    ends where class_means put it."""
    captured = {}
    import longtail.engine as engine

    original = engine.initialise_head

    def spy(model, name, context):
        original(model, name, context)
        captured["rows"] = model.classifier.weight.detach().clone()
        captured["means"] = class_mean_features(model, context["batches"](), context["num_classes"], context["device"])

    monkeypatch.setattr(engine, "initialise_head", spy)
    run = tmp_path / "run"
    fit(cfg_of(files, "model.finetune=linear", "model.head_init=class_means", "train.epochs=1"), run)
    means = captured["means"]
    assert torch.allclose(captured["rows"], (means / means.norm(dim=1, keepdim=True)).float(), atol=1e-6)


# ----------------------------------------------------------------------------- CLIP through open_clip

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict[str, Path]:
    open_clip = pytest.importorskip("open_clip")
    tmp = tmp_path_factory.mktemp("clip")
    (tmp / "lt-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp / "lt-tiny-clip.json")
    wide = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 48}}  # takes 48 px: CIFAR is resized
    (tmp / "lt-tiny-clip48.json").write_text(json.dumps(wide))
    open_clip.add_model_config(tmp / "lt-tiny-clip48.json")
    torch.manual_seed(0)
    weights = tmp / "tiny_clip.pt"
    torch.save(open_clip.create_model("lt-tiny-clip").state_dict(), weights)
    return {"weights": weights, "dir": tmp}


def test_text_init_is_the_normalised_text_embedding_of_the_prompts(tiny_clip):
    import open_clip

    names = ["cat", "dog", "traffic light"]
    cfg = ModelConfig(name="clip/lt-tiny-clip", pretrained=str(tiny_clip["weights"]), classifier="cosine", head_init="text")
    model = create_model(cfg, 3, 3)
    initialise_head(model, "text", {"class_names": names, "device": torch.device("cpu")})
    reference = open_clip.create_model("lt-tiny-clip", pretrained=str(tiny_clip["weights"])).eval()
    tokens = open_clip.get_tokenizer("lt-tiny-clip")([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        text = reference.encode_text(tokens)
    # the head sees the ViT's pre-projection features (as LIFT's): rows are the unit text embeddings mapped back
    # through the image projection P (t P^T), normalised again
    proj = reference.visual.proj.detach()
    rows = text / text.norm(dim=1, keepdim=True) @ proj.t()
    assert torch.allclose(model.classifier.weight, rows / rows.norm(dim=1, keepdim=True), atol=1e-6)
    # the image tower is CLIP's: its features, projected, are open_clip's encode_image
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x)["features"] @ proj, reference.encode_image(x), atol=1e-5)
    assert not any(k.startswith("text") or "token_embedding" in k for k in model.state_dict())


def test_clip_lora_and_adapter_train_only_their_layers(tiny_clip):
    for mode, extra in (("lora", {"lora_rank": 2}), ("adapter", {"adapter_dim": 4})):
        cfg = ModelConfig(name="clip/lt-tiny-clip", pretrained=str(tiny_clip["weights"]), finetune=mode, **extra)
        model = create_model(cfg, 3, 3)
        trained, _ = freeze(model, cfg)
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        assert names and all(k.startswith("classifier.") or (".lora_" in k if mode == "lora" else ".adapter." in k) for k in names)
        x = torch.randn(2, 3, 32, 32)
        model(x)["logits"].sum().backward()
        assert all(model.get_parameter(k).grad is not None for k in names), mode


def test_clip_preprocessing_reaches_the_data(tiny_clip):
    import open_clip

    pre = backbone_preprocessing(ModelConfig(name="clip/lt-tiny-clip", pretrained="openai"))
    assert pre.image_size == 32 and pre.interpolation == "bicubic" and pre.crop_pct == 1.0  # open_clip: short side to S
    assert pre.mean == tuple(open_clip.OPENAI_DATASET_MEAN) and pre.std == tuple(open_clip.OPENAI_DATASET_STD)
    vit = backbone_preprocessing(ModelConfig(name="timm/test_vit", pretrained="hub"))  # read from timm's config only
    assert vit.image_size == 160 and vit.mean == (0.5, 0.5, 0.5) and vit.interpolation == "bicubic"
    assert vit.crop_pct == 0.95  # timm's pretrained_cfg of test_vit: evaluation resizes 160 to floor(160 / 0.95) = 168
    assert backbone_preprocessing(ModelConfig(name="timm/test_vit")) is None  # from scratch: the dataset's statistics


def test_a_run_uses_the_backbones_mean_and_std(files):
    from longtail.run import load_data

    bundle = load_data(cfg_of(files, "model.name=timm/test_vit"))
    spec = bundle.spec
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5) and spec.interpolation == "bicubic"


# ----------------------------------------------------------------------------- bad input, one line each


def test_bad_input_is_one_line(files, tiny_clip, monkeypatch):
    cases = [
        (ModelConfig(name="timm/vit_tiny_patch16_22"), "timm has no model 'vit_tiny_patch16_22'; did you mean vit_tiny_patch16_224"),
        (ModelConfig(name="clip/ViT-B-61"), "open_clip has no model 'ViT-B-61'; did you mean ViT-B-16"),
        (ModelConfig(name="clip/lt-tiny-clip", pretrained=str(files["weights"])), "does not fit clip/lt-tiny-clip"),
        (ModelConfig(name=VIT, pretrained=str(tiny_clip["weights"])), f"does not fit model '{VIT}'"),
        (ModelConfig(name="clip/lt-tiny-clip", pretrained="nonsense"), "is neither a file nor an open_clip tag"),
    ]
    for cfg, message in cases:
        with pytest.raises(LongtailError) as info:
            create_model(cfg, 3, 3)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert is_known_model("timm/test_vit") and is_known_model("clip/ViT-B-16") and is_known_model("resnet32")
    assert not is_known_model("timm/no_such_net") and not is_known_model("clip/nope") and not is_known_model("resnet9")


def test_hub_offline_says_how_to_pass_a_file(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "download_cached_file", offline, raising=False)
    with pytest.raises(LongtailError, match=r"could not fetch timm's pretrained weights for 'test_vit' .* pass model.pretrained=FILE"):
        create_model(ModelConfig(name="timm/test_vit", pretrained="hub"), 3, 3)


def test_text_init_needs_a_text_tower_and_class_names(files, tiny_clip):
    model = create_model(cfg_of(files).model, C, 3)
    with pytest.raises(LongtailError, match="needs a text tower"):
        initialise_head(model, "text", {"class_names": ["a"] * C, "device": torch.device("cpu")})
    clip = create_model(ModelConfig(name="clip/lt-tiny-clip", pretrained=str(tiny_clip["weights"])), 3, 3)
    with pytest.raises(LongtailError, match="needs class names, and this dataset gives only class indices"):
        initialise_head(clip, "text", {"class_names": None, "device": torch.device("cpu")})


def test_config_keys_are_checked():
    with pytest.raises(LongtailError, match="model.finetune' must be one of full, linear, bias, block_bias, lora, lora_qv, adapter, zero_shot"):
        load_config(None, ["model.finetune=prompt"])
    with pytest.raises(LongtailError, match="model.head_init' must be one of random, class_means, text"):
        load_config(None, ["model.head_init=zero"])
    with pytest.raises(LongtailError, match="model.lora_rank' must be at least 1"):
        load_config(None, ["model.lora_rank=0"])
    with pytest.raises(LongtailError, match="contradicts model.finetune=lora"):
        load_config(None, ["model.freeze_backbone=true", "model.finetune=lora"])


def test_cifar100_class_names_come_from_its_meta_file(tmp_path):
    import pickle

    from longtail.data.cifar import load_cifar

    root = write_fake_cifar(tmp_path, "cifar100", train_per_class=2, test_per_class=1)
    assert load_cifar("cifar100", str(root), download=False).class_names is None  # no meta file: indices
    names = [f"class_{i}".encode() for i in range(99)] + [b"maple_tree"]
    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}, protocol=2))
    assert load_cifar("cifar100", str(root), download=False).class_names == [n.decode() for n in names]
    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": names[:5]}, protocol=2))
    with pytest.raises(LongtailError, match="has no list of 100 'fine_label_names'"):
        load_cifar("cifar100", str(root), download=False)


def test_text_prompts_read_underscores_as_spaces():
    from longtail.models.head_init import text_features

    seen = []

    class Tower:
        def __call__(self, prompts, device):
            seen.extend(prompts)
            return torch.eye(len(prompts))

        def to_head_space(self, text):
            return text

    class Model(nn.Module):
        text_tower = Tower()

    text_features(Model(), ["maple_tree", "cat"], torch.device("cpu"))
    assert seen == ["a photo of a maple tree.", "a photo of a cat."]


def test_list_datasets_take_class_names_from_a_file_or_inat_categories(tmp_path):
    from longtail.data.image_list import Problems, read_class_names, read_inat_json

    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\n\ngreat white shark\n", encoding="utf-8")
    assert read_class_names(str(names), 3) == ["tench", "goldfish", "great white shark"]
    with pytest.raises(LongtailError, match="has 3 names for 4 classes"):
        read_class_names(str(names), 4)
    inat = tmp_path / "train2018.json"
    inat.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 0}],
        "categories": [{"id": 1, "name": "Aves"}, {"id": 0, "name": "Plantae"}],
    }))
    assert read_inat_json(inat, Problems()).category_names == ["Plantae", "Aves"]


def test_a_clip_run_on_cifar_resizes_to_the_towers_size_and_predict_feeds_the_same_input(files, tiny_clip, tmp_path):
    import open_clip

    from longtail.data.pipeline import eval_batches
    from longtail.deployment import load_deployment
    from longtail.distributed import Runtime
    from longtail.run import load_data

    weights = tmp_path / "clip48.pt"
    torch.save(open_clip.create_model("lt-tiny-clip48").state_dict(), weights)
    run = tmp_path / "run"
    overrides = ["model.name=clip/lt-tiny-clip48", f"model.pretrained={weights}", "model.finetune=adapter",
                 "model.head_init=text", "model.classifier=cosine", "model.scale=25", "train.epochs=1"]
    cfg = load_config(None, [*TINY_CIFAR, f"dataset.root={files['cifar']}", *overrides])
    metrics = fit(cfg, run)
    assert 0.0 <= metrics["top1"] <= 100.0
    bundle = load_data(cfg)
    assert bundle.spec.size == bundle.train_resize() == 48 and bundle.spec.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    x, _ = next(eval_batches(bundle.test, bundle, cfg, Runtime(torch.device("cpu"))))
    assert x.shape[-2:] == (48, 48)
    deployment = load_deployment(run)
    assert torch.allclose(deployment.preprocessing(bundle.test.images[0]), x[0], atol=1e-6)


def test_lift_configs_follow_the_released_recipe():
    from longtail.models.adapter import lift_adapter_dim

    repo = Path(__file__).resolve().parents[1]
    for path, classes, epochs in (("imagenet_lt/lift_clip_vit_b16.yaml", 1000, 10), ("places_lt/lift_clip_vit_b16.yaml", 365, 10),
                                  ("inat2018/lift_clip_vit_b16.yaml", 8142, 20), ("cifar100_lt/lift_clip_vit_b16_imba100.yaml", 100, 10)):
        cfg = load_config(repo / "configs" / path)
        m, t = cfg.model, cfg.train
        assert (m.name, m.pretrained, m.finetune, m.head_init, m.classifier, m.scale) == ("clip/ViT-B-16", "openai", "adapter", "text", "cosine", 25.0)
        assert (cfg.loss.name, t.epochs, t.batch_size, t.lr, t.weight_decay, t.schedule) == ("la", epochs, 128, 0.01, 5e-4, "cosine")
        assert "published, not reproduced here" in (repo / "configs" / path).read_text()
        assert m.adapter_dim is None and lift_adapter_dim(classes, 12) == {1000: 32, 365: 8, 8142: 256, 100: 4}[classes]


def test_is_known_model_says_when_the_library_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` now raises ImportError
    with pytest.raises(LongtailError, match=r'model.name clip/... needs open_clip: pip install "longtail\[clip\]"'):
        is_known_model("clip/ViT-B-16")


def test_tune_shift_and_predict_work_on_a_lora_run(lora_run, tmp_path):
    """The commands downstream of training rebuild the LoRA model on its base file (the run has a validation
    split: dataset.val_source=test_holdout)."""
    from PIL import Image

    from longtail.cli import main

    assert main(["tune", str(lora_run), "--posthoc", "la", "--grid", "0:1:0.5"]) == 0
    assert main(["shift", str(lora_run), "--priors", "uniform,forward-2"]) == 0
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(lora_run), str(image), "--out", str(out)]) == 0
    assert "photo.png" in out.read_text()


def test_head_init_needs_a_single_head():
    experts = create_model(ModelConfig(name="resnet8_experts"), 4, 3)
    with pytest.raises(LongtailError, match="model.head_init=class_means needs a model with a single head"):
        initialise_head(experts, "class_means", {})
