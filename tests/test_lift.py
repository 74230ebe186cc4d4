"""LIFT's pieces checked against hand computations: test-time ensembling (eval.tte: the crop boxes, the mean of the
logits), zero-shot CLIP (model.finetune=zero_shot, `evaluate CONFIG.yaml`), the prompt key, block_bias, the
per-epoch schedule, and the LIFT configs' recipe."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from longtail import tte
from longtail.config import Config, EvalConfig, load_config
from longtail.distributed import Runtime
from longtail.errors import LongtailError
from longtail.inference import predict
from longtail.input_spec import InputSpec

from conftest import write_fake_cifar

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- eval.tte


def test_fivecrop_boxes_are_torchvisions_by_hand():
    # 40 x 48 image, 32 px crops: corners at rows 0 / 8 and columns 0 / 16, centre at (round(8/2), round(16/2))
    assert tte.five_crop_offsets(40, 48, 32) == [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)]
    # odd margins: round((41 - 32) / 2) = round(4.5) = 4 (Python rounds half to even, as torchvision's CenterCrop)
    assert tte.five_crop_offsets(41, 32, 32)[4] == (4, 0)
    image = torch.arange(2 * 40 * 48, dtype=torch.float32).view(1, 2, 40, 48)
    five = tte.views(image, 32, "fivecrop")
    assert five.shape == (1, 5, 2, 32, 32)
    assert torch.equal(five[0, 1], image[0, :, 0:32, 16:48]) and torch.equal(five[0, 4], image[0, :, 4:36, 8:40])
    ten = tte.views(image, 32, "tencrop")
    # the last five are the crops of the mirrored image: its top-left crop is the mirror of the top-right one
    assert torch.equal(ten[0, 5], image[0, :, 0:32, 16:48].flip(-1))
    assert torch.equal(tte.views(image[..., :32, :32], 32, "flip")[0, 1], image[0, :, :32, :32].flip(-1))
    with pytest.raises(LongtailError, match="do not fit"):
        tte.five_crop_offsets(30, 48, 32)


class PixelSum(nn.Module):
    """logits_c = (c + 1) * mean(x) - c: different per view, so the mean over views is testable by hand."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = x.mean(dim=(1, 2, 3))[:, None]
        c = torch.arange(3, dtype=torch.float32)
        return {"logits": (c + 1) * m - c, "features": x.flatten(1)}


def test_the_ensemble_is_the_mean_of_the_views_logits():
    cfg = Config(eval=EvalConfig(tte="fivecrop"))
    cfg.train.amp, cfg.train.channels_last = False, False
    x = torch.rand(2, 5, 3, 4, 4) * torch.arange(0.0, 10.0, 2.0).view(1, 5, 1, 1, 1)  # views far apart
    out = predict(PixelSum(), [(x, torch.zeros(2, dtype=torch.long))], cfg, Runtime(torch.device("cpu")))
    means = x.mean(dim=(2, 3, 4))  # (2, 5): each view's pixel mean
    expected = torch.stack([((c + 1) * means - c).mean(1) for c in range(3)], dim=1)  # mean of logits, not of softmax
    assert torch.allclose(out["logits"], expected, atol=1e-6)
    softmax_mean = torch.stack([(c + 1) * means - c for c in range(3)], dim=2).softmax(2).mean(1)
    assert not torch.allclose(out["logits"].softmax(1), softmax_mean, atol=1e-3)


def test_in_memory_tte_batches_resize_then_crop(tmp_path):
    from torchvision.transforms import v2

    cfg = Config(eval=EvalConfig(tte="fivecrop", tte_expand=4, batch_size=10))
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)

    class Split:
        pass

    split = Split()
    split.images, split.labels = images, torch.arange(3)

    class Bundle:  # an in-memory bundle: 8 px images, no backbone resize
        in_memory, spec, train = True, InputSpec(3, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_pct=1.0), split

    batches = list(tte.eval_batches(split, Bundle, cfg, Runtime(torch.device("cpu"))))
    assert [x.shape for x, _ in batches] == [(2, 5, 3, 8, 8), (1, 5, 3, 8, 8)]  # 10 views a batch: 2 images
    big = v2.functional.resize(images, [12, 12], antialias=True)
    reference = torch.stack(v2.functional.five_crop(big, [8, 8]), dim=1).float() / 255
    assert torch.allclose(torch.cat([x for x, _ in batches]), reference, atol=1e-6)


def test_image_files_give_the_crops_of_the_decoded_image(tmp_path):
    import numpy as np
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")

    class Files:  # the ImageList surface ImageViews reads
        targets = [2]

        def __len__(self):
            return 1

        def read(self, index, reader):
            return reader(str(tmp_path / "a.png"))

    views, label = tte.ImageViews(Files(), InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3), "fivecrop", 8)[0]  # short side 40 = 32 + 8: no resize
    image = torch.from_numpy(array).permute(2, 0, 1)
    assert label == 2 and views.shape == (5, 3, 32, 32)
    for view, (top, left) in zip(views, [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)]):
        assert torch.equal(view, image[:, top : top + 32, left : left + 32])


def test_tte_keys_are_checked_and_export_refuses_it():
    with pytest.raises(LongtailError, match="eval.tte' must be one of none, flip, fivecrop, tencrop"):
        load_config(None, ["eval.tte=sevencrop"])
    from longtail.config import CHOICES

    assert CHOICES["eval.tte"] == tte.MODES  # the config checks the modes tte.py implements, no more, no fewer
    with pytest.raises(LongtailError, match="eval.tte_expand"):
        load_config(None, ["eval.tte_expand=-1"])
    with pytest.raises(LongtailError, match="export with the override eval.tte=none"):
        tte.refuse_export(load_config(None, ["eval.tte=tencrop"]))
    tte.refuse_export(load_config(None, []))


# ----------------------------------------------------------------------------- zero-shot CLIP, prompts, block_bias


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory) -> Path:
    """The parity harness's random CLIP (a registered open_clip config, 32 px) saved as an OpenAI-format file."""
    pytest.importorskip("open_clip")
    import importlib.util

    spec = importlib.util.spec_from_file_location("lift_parity_harness", REPO / "benchmarks" / "parity" / "lift.py")
    harness = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = harness  # timm's register_model looks its module up there
    spec.loader.exec_module(harness)
    folder = tmp_path_factory.mktemp("lift_clip")
    harness.register_model(folder)
    torch.save(harness.clip_state_dict(), folder / "clip.pt")
    return folder / "clip.pt"


def _clip_reference(weights: Path):
    import open_clip

    return open_clip.create_model("lift-parity-tiny", pretrained=str(weights)).eval(), open_clip.get_tokenizer("lift-parity-tiny")


def test_zero_shot_logits_are_clips_by_hand(tiny_clip_file):
    from longtail.config import ModelConfig
    from longtail.models import create_model
    from longtail.models.head_init import initialise_head

    names = ["maple_tree", "lion", "pickup_truck"]
    cfg = ModelConfig(name="clip/lift-parity-tiny", pretrained=str(tiny_clip_file), finetune="zero_shot", prompt="itap of a {}")
    model = create_model(cfg, len(names), 3).eval()
    initialise_head(model, "text", {"class_names": names, "device": torch.device("cpu")})
    clip, tokenizer = _clip_reference(tiny_clip_file)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        image = nn.functional.normalize(clip.encode_image(x), dim=-1)
        text = nn.functional.normalize(clip.encode_text(tokenizer(["itap of a maple tree", "itap of a lion", "itap of a pickup truck"])), dim=-1)
        expected = clip.logit_scale.exp() * image @ text.t()
        assert torch.allclose(model(x)["logits"], expected, atol=1e-5)
    assert math.isclose(model.classifier.scale, 1 / 0.07, rel_tol=1e-3)  # log(1 / 0.07) stored in float16
    with pytest.raises(LongtailError, match="zero_shot trains nothing"):
        from longtail.models import finetune
        finetune.freeze(model, cfg)
    with pytest.raises(LongtailError, match="model.prompt' must hold one"):
        load_config(None, ["model.prompt=a photo"])


def test_fine_tuned_clip_vit_head_sees_pre_projection_features(tiny_clip_file):
    from longtail.config import ModelConfig
    from longtail.models import create_model

    cfg = ModelConfig(name="clip/lift-parity-tiny", pretrained=str(tiny_clip_file), finetune="adapter", classifier="cosine")
    model = create_model(cfg, 3, 3).eval()
    clip, _ = _clip_reference(tiny_clip_file)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model(x)["features"]
        assert features.shape == (2, 64)  # the tower's width, not its 32-wide embedding
        assert torch.allclose(features @ model.text_tower.image_proj, clip.encode_image(x), atol=1e-5)


def test_block_bias_trains_the_blocks_biases_and_bias_every_bias(tiny_clip_file):
    from longtail.config import ModelConfig
    from longtail.models import create_model, finetune

    trained = {}
    for mode in ("bias", "block_bias"):
        cfg = ModelConfig(name="clip/lift-parity-tiny", pretrained=str(tiny_clip_file), finetune=mode)
        model = create_model(cfg, 3, 3)
        finetune.freeze(model, cfg)
        trained[mode] = {n for n, p in model.named_parameters() if p.requires_grad}
    blocks = {f"backbone.transformer.resblocks.{i}.{leaf}" for i in range(2) for leaf in
              ("attn.in_proj_bias", "attn.out_proj.bias", "ln_1.bias", "mlp.c_fc.bias", "mlp.c_proj.bias", "ln_2.bias")}
    assert trained["block_bias"] == blocks | {"classifier.weight", "classifier.bias"}
    assert trained["bias"] == trained["block_bias"] | {"backbone.ln_pre.bias", "backbone.ln_post.bias"}


def test_lora_qv_changes_queries_and_values_only_and_merges_for_export(tiny_clip_file):
    from longtail.config import ModelConfig
    from longtail.models import create_model
    from longtail.models.lora import QVLoRA, merge_lora

    cfg = ModelConfig(name="clip/lift-parity-tiny", pretrained=str(tiny_clip_file), finetune="lora_qv", lora_rank=2)
    model = create_model(cfg, 3, 3).eval()
    lora = next(m for m in model.modules() if isinstance(m, QVLoRA))
    attn = model.backbone.transformer.resblocks[0].attn
    base = attn.parametrizations.in_proj_weight.original.detach().clone()
    with torch.no_grad():
        lora.lora_B_q.normal_(), lora.lora_B_v.normal_()
        delta = attn.in_proj_weight - base  # rows: q (64), k (64), v (64)
        by_hand_q = (lora.lora_A_q @ lora.lora_B_q).t() / 2  # x A B / r as a weight: (A B)^T / r
        assert torch.allclose(delta[:64], by_hand_q, atol=1e-6) and not delta[64:128].any()
        assert torch.allclose(delta[128:], (lora.lora_A_v @ lora.lora_B_v).t() / 2, atol=1e-6)
        x = torch.randn(2, 3, 32, 32)
        before = model(x)["logits"]
        assert merge_lora(model) == 2 and not any(isinstance(m, QVLoRA) for m in model.modules())
        assert torch.allclose(model(x)["logits"], before, atol=1e-6)


@pytest.fixture(scope="module")
def zero_shot_config(tiny_clip_file, tmp_path_factory) -> Path:
    """A zero-shot config of the random CLIP on a generated CIFAR-10-LT (4 training, 3 test images per class)."""
    tmp_path = tmp_path_factory.mktemp("zero_shot")
    root = write_fake_cifar(tmp_path / "data", "cifar10", train_per_class=4, test_per_class=3)
    config = tmp_path / "zs.yaml"
    config.write_text(
        "dataset:\n  name: cifar10_lt\n  download: false\n  n_max: 4\n  imbalance_factor: 2\n  val_source: none\n"
        f"  root: {root}\ndata:\n  num_workers: 0\n  pipeline: loader\n"
        f"model:\n  name: clip/lift-parity-tiny\n  pretrained: {tiny_clip_file}\n  finetune: zero_shot\n"
        "train:\n  amp: false\n  channels_last: false\neval:\n  batch_size: 8\ndevice: cpu\n")
    return config


def test_evaluate_a_zero_shot_config_gives_the_zero_shot_row(zero_shot_config, tiny_clip_file):
    from longtail.evaluation import evaluate_checkpoint

    config = zero_shot_config
    metrics = evaluate_checkpoint(config)
    # by hand: CLIP's zero-shot argmax on the same normalised test images
    from longtail.run import load_data

    cfg = load_config(config)
    bundle = load_data(cfg)
    clip, tokenizer = _clip_reference(tiny_clip_file)
    mean, std = torch.tensor(bundle.spec.mean).view(1, 3, 1, 1), torch.tensor(bundle.spec.std).view(1, 3, 1, 1)
    x = (bundle.test.images.float() / 255 - mean) / std
    with torch.no_grad():
        text = nn.functional.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in bundle.class_names])), dim=-1)
        predicted = (nn.functional.normalize(clip.encode_image(x), dim=-1) @ text.t()).argmax(1)
    assert metrics["top1"] == pytest.approx(100.0 * (predicted == bundle.test.labels).float().mean().item())
    with pytest.raises(LongtailError, match="model.finetune=zero_shot"):
        evaluate_checkpoint(config, overrides=["model.finetune=adapter"])
    # eval.tte=flip through evaluate: the argmax of the mean of the image's and its mirror's logits
    from longtail.evaluation import load_outputs
    from longtail.run import run_directory

    with pytest.raises(LongtailError, match="evaluate --json FILE"):
        run_directory(config)

    flipped = load_outputs(config, ["eval.tte=flip"], splits=("test",)).split("test")["logits"]
    with torch.no_grad():
        cosines = [nn.functional.normalize(clip.encode_image(v), dim=-1) @ text.t() for v in (x, x.flip(-1))]
    assert torch.allclose(flipped, clip.logit_scale.exp() * (cosines[0] + cosines[1]) / 2, atol=1e-4)
    assert not torch.allclose(flipped, clip.logit_scale.exp() * cosines[0], atol=1e-3)


def test_predict_averages_the_fivecrop_logits_of_an_image_file(zero_shot_config, tiny_clip_file, tmp_path):
    import json

    import numpy as np
    import open_clip
    from PIL import Image

    from longtail.predict import predict_paths

    array = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # short side 32 + 8: no resize
    Image.fromarray(array).save(tmp_path / "a.png")
    predict_paths(zero_shot_config, [tmp_path / "a.png"], out=tmp_path / "p.json", top_k=10, progress=False,
                  overrides=["eval.tte=fivecrop", "eval.tte_expand=8"])
    row = json.loads((tmp_path / "p.json").read_text())["predictions"][0]
    probs = torch.tensor([t["probability"] for t in sorted(row["top_k"], key=lambda t: t["index"])])
    clip, tokenizer = _clip_reference(tiny_clip_file)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    crops = torch.stack([image[:, t : t + 32, l : l + 32] for t, l in [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)]])
    with torch.no_grad():
        text = nn.functional.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        logits = clip.logit_scale.exp() * nn.functional.normalize(clip.encode_image((crops - mean) / std), dim=-1) @ text.t()
    assert torch.allclose(probs, logits.mean(0).softmax(0), atol=1e-5)


# ----------------------------------------------------------------------------- schedule and configs


def test_schedule_per_epoch_holds_the_lr_within_an_epoch():
    from longtail.config import TrainConfig
    from longtail.optim import build_optimizer, build_scheduler

    cfg = TrainConfig(epochs=4, lr=0.1, schedule="cosine", schedule_per="epoch")
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    by_hand = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in (0, 0, 0, 1, 1, 1, 2, 2, 2)]
    assert lrs == pytest.approx(by_hand, rel=1e-12)


def test_lift_configs_carry_the_released_evaluation():
    for path in ("imagenet_lt/lift_clip_vit_b16.yaml", "places_lt/lift_clip_vit_b16.yaml", "inat2018/lift_clip_vit_b16.yaml",
                 "cifar100_lt/lift_clip_vit_b16_imba100.yaml"):
        cfg = load_config(REPO / "configs" / path)
        assert (cfg.eval.tte, cfg.eval.tte_expand, cfg.data.crop_pct) == ("fivecrop", 24, 0.875)
        assert (cfg.train.schedule_per, cfg.train.momentum, cfg.model.prompt) == ("epoch", 0.9, "a photo of a {}.")
        assert "shijxcs/LIFT" in (REPO / "configs" / path).read_text()
    cfg = load_config(REPO / "configs" / "cifar100_lt" / "lift_in21k_vit_b16_imba100.yaml")
    assert (cfg.model.name, cfg.data.mean, cfg.data.std) == ("timm/vit_base_patch16_224.augreg_in21k", [0.5] * 3, [0.5] * 3)
    assert (cfg.model.head_init, cfg.model.finetune, cfg.model.scale) == ("class_means", "adapter", 25.0)
