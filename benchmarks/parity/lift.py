"""LIFT side by side: the released code (Shi et al., ICML 2024, "Long-tail learning with foundation model: heavy
fine-tuning hurts", github.com/shijxcs/LIFT) and longtail on the same random CLIP ViT and the same images, float32.

    python benchmarks/parity/lift.py --release DIR              # DIR: a local copy of the release (never committed)
    python benchmarks/parity/lift.py --release DIR --write      # also record the release's numbers as the fixture

No pretrained weights can be downloaded here, so a small random CLIP (vision width 64, 2 blocks, patch 8, 32 px;
text width 64, 1 block; embedding 32; OpenAI's 49,408-token vocabulary and 77-token context) is made from a seed
as an OpenAI-format state dict. The release builds it with its own `clip.model.build_model(state_dict)` and
`models.PeftModelFromCLIP`; longtail loads the same file through `model.pretrained` into its `clip/` backbone
(open_clip). One line per comparison, max |a - b| / max |b| (relative to the release's values); the exit code is
1 when any exceeds 1e-5.

Compared on the CLIP ViT: pre-projection features; AdaptFormer outputs (equal adapter weights); cosine-head
logits (scale 25); the text-feature head initialisation (through proj.t()); the LA loss; the trained tensors after
3 SGD steps of the released recipe (AdaptFormer; bias tuning against longtail's block_bias; LoRA on q and v against
lora_qv); LoRA logits with equal LoRA weights; test-time-ensembled logits (fivecrop and tencrop, the release's
transform, on images whose short side is already resolution + expand, so neither side resizes); zero-shot logits;
the evaluation resize (the release's resolution * 8 // 7 against floor(S / data.crop_pct), by hand). On a small
random timm ViT (the IN21K-ViT path, `PeftModelFromViT`): features, AdaptFormer + cosine logits, the class-mean
head initialisation, the trained tensors after 3 SGD steps.

The release's metrics (sklearn, scipy) and its linear-probe initialisation are not compared; `yacs`, `sklearn`
and `scipy` are replaced by stand-ins while its modules are imported, so it needs no install beyond longtail's
test extra (ftfy, regex, timm).

`longtail_outputs()` computes longtail's side alone; tests/test_lift_parity.py checks it against the recorded
fixture tests/fixtures/lift_parity.json, so the suite needs no copy of the release.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "lift_parity.json"
TOLERANCE = 1e-5
RELEASE_COMMIT = "661ead9b78368f05ba79abe4672d63154467f823"  # the release the fixture was recorded from

SEED = 0
MODEL = "lift-parity-tiny"  # open_clip config registered below
DIMS = {"embed": 32, "image": 32, "patch": 8, "width": 64, "layers": 2, "text_width": 64, "text_layers": 1,
        "context": 77, "vocab": 49408}
CLASSES = ["maple_tree", "aquarium_fish", "lion", "sunflower", "pickup_truck"]  # '_' becomes a space in prompts
COUNTS = [60, 24, 10, 4, 2]  # training counts: the LA prior
BATCH = 6
ADAPTER_DIM = 4
EXPAND = 8  # TTE: the images' short side is image + EXPAND, so both resizes are the identity
TTE_SHAPE = (DIMS["image"] + EXPAND, DIMS["image"] + 2 * EXPAND)  # (H, W) of the TTE images, not square
RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "scale": 25.0, "epochs": 10, "steps": 3}
RESOLUTIONS = (224, 336, 384, 32)  # evaluation resize compared at these sizes


# ----------------------------------------------------------------------------- inputs (no release needed)


def open_clip_config() -> dict[str, Any]:
    d = DIMS
    return {"embed_dim": d["embed"], "quick_gelu": True,
            "vision_cfg": {"image_size": d["image"], "layers": d["layers"], "width": d["width"], "patch_size": d["patch"],
                           "head_width": 64},
            "text_cfg": {"context_length": d["context"], "vocab_size": d["vocab"], "width": d["text_width"], "heads": 1,
                         "layers": d["text_layers"]}}


def register_model(folder: Path) -> None:
    import open_clip

    path = folder / f"{MODEL}.json"
    path.write_text(json.dumps(open_clip_config()))
    open_clip.add_model_config(path)


def clip_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The random CLIP as an OpenAI-format state dict (open_clip's key layout for the architecture). Values are
    rounded to float16 first: both loaders pass the weights through float16 (OpenAI's `convert_weights`), which
    is then lossless. LayerNorms get weights 1 + 0.1 n and biases 0.1 n, so no bias is zero."""
    import open_clip

    cfg = open_clip_config()
    shapes = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True).state_dict()
    return _random_like(shapes, seed)


def _random_like(shapes: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in shapes.items():
        n = torch.randn(ref.shape, generator=g)
        leaf = key.rsplit(".", 1)[-1]
        if key == "logit_scale":
            value = torch.tensor(math.log(1 / 0.07))
        elif ("ln_" in key or "norm" in key) and leaf == "weight":
            value = 1 + 0.1 * n
        elif leaf == "bias" or key.endswith("in_proj_bias"):
            value = 0.1 * n
        elif key.endswith(("class_embedding", "positional_embedding", "token_embedding.weight", "cls_token", "pos_embed")):
            value = 0.5 * n
        else:
            fan_in = ref.shape[0] if key.endswith(("proj", "text_projection")) else int(np.prod(ref.shape[1:]))
            value = n / math.sqrt(fan_in)
        out[key] = value.half().float()
    return out


VIT_NAME = "lift_parity_vit32"  # a small timm ViT for the IN21K-ViT path (timm's VisionTransformer, registered below)


def register_vit() -> None:
    """timm's VisionTransformer at 32 px, patch 8, width 64, 2 blocks, 1 head, as `timm/lift_parity_vit32`."""
    import timm

    def lift_parity_vit32(pretrained: bool = False, **kwargs: Any) -> Any:
        from timm.models.vision_transformer import VisionTransformer

        kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
        return VisionTransformer(**{**dict(img_size=DIMS["image"], patch_size=DIMS["patch"], embed_dim=DIMS["width"],
                                           depth=DIMS["layers"], num_heads=1), **kwargs})

    if not timm.is_model(VIT_NAME):
        timm.models.register_model(lift_parity_vit32)


def vit_state_dict(seed: int = SEED + 6) -> dict[str, torch.Tensor]:
    """The random timm ViT's weights (no classification head), drawn as clip_state_dict draws CLIP's."""
    import timm

    register_vit()
    shapes = timm.create_model(VIT_NAME, num_classes=0).state_dict()
    return _random_like(shapes, seed)


def images(seed: int = SEED + 1) -> torch.Tensor:
    """(BATCH, 3, 32, 32) normalised-space inputs."""
    return torch.randn(BATCH, 3, DIMS["image"], DIMS["image"], generator=torch.Generator().manual_seed(seed))


def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 4, 0][:BATCH])


def tte_images(seed: int = SEED + 2) -> torch.Tensor:
    """(BATCH, 3, H, W) uint8 images whose short side H is image + EXPAND."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, 3, *TTE_SHAPE), generator=g, dtype=torch.uint8)


def adapter_weights(seed: int = SEED + 3) -> list[dict[str, torch.Tensor]]:
    """Random AdaptFormer weights per block (up non-zero, so the branch shows), for the forward comparison."""
    g = torch.Generator().manual_seed(seed)
    w, d = DIMS["width"], ADAPTER_DIM
    return [{"ln.weight": 1 + 0.1 * torch.randn(w, generator=g), "ln.bias": 0.1 * torch.randn(w, generator=g),
             "down.weight": torch.randn(d, w, generator=g) / 8, "down.bias": 0.1 * torch.randn(d, generator=g),
             "up.weight": torch.randn(w, d, generator=g) / 2, "up.bias": 0.1 * torch.randn(w, generator=g),
             "scale": torch.tensor([0.7])} for _ in range(DIMS["layers"])]


def lora_weights(seed: int = SEED + 7, init: bool = False) -> list[dict[str, torch.Tensor]]:
    """LoRA (q, v) weights per block: random A and B (the forward comparison), or (init) the release's start, A
    kaiming-uniform with a = sqrt 5 on a (D x r) tensor (bound 1 / sqrt r) and B zero."""
    g = torch.Generator().manual_seed(seed)
    w, r = DIMS["width"], ADAPTER_DIM
    blocks = []
    for _ in range(DIMS["layers"]):
        a = {k: (2 * torch.rand(w, r, generator=g) - 1) / math.sqrt(r) for k in ("A_q", "A_v")}
        b = {k: torch.zeros(r, w) if init else 0.2 * torch.randn(r, w, generator=g) for k in ("B_q", "B_v")}
        blocks.append({**a, **b})
    return blocks


LORA_KEYS = ("A_q", "B_q", "A_v", "B_v")


def lora_params(block: Any, side: str) -> list[torch.Tensor]:
    """A block's LoRA tensors in LORA_KEYS order: longtail's QVLoRA or the release's {'q': LoRA, 'v': LoRA}."""
    if side == "longtail":
        return [getattr(block, f"lora_{k}") for k in LORA_KEYS]
    return [getattr(block[k[-1]], f"lora_{k[0]}") for k in LORA_KEYS]


def set_lora(blocks: list[Any], side: str, weights: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for block, w in zip(blocks, weights):
            for param, key in zip(lora_params(block, side), LORA_KEYS):
                param.copy_(w[key])


def lora_tensors(blocks: list[Any], side: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for b in blocks for p in lora_params(b, side)])


def _qv_loras(model: Any) -> list[Any]:
    from longtail.models.lora import QVLoRA

    return [m for m in model.modules() if isinstance(m, QVLoRA)]


def head_weight(seed: int = SEED + 4) -> torch.Tensor:
    return torch.randn(len(CLASSES), DIMS["width"], generator=torch.Generator().manual_seed(seed))


def recipe_adapter_init(seed: int = SEED + 5) -> list[dict[str, torch.Tensor]]:
    """The released AdaptFormer initialisation (down: kaiming normal, a = sqrt 5; up and biases zero; scale 1;
    LayerNorm 1, 0), drawn here so both sides start the SGD comparison from the same numbers."""
    g = torch.Generator().manual_seed(seed)
    w, d = DIMS["width"], ADAPTER_DIM
    std = math.sqrt(2.0 / (1 + 5)) / math.sqrt(w)
    return [{"ln.weight": torch.ones(w), "ln.bias": torch.zeros(w), "down.weight": std * torch.randn(d, w, generator=g),
             "down.bias": torch.zeros(d), "up.weight": torch.zeros(w, d), "up.bias": torch.zeros(w),
             "scale": torch.ones(1)} for _ in range(DIMS["layers"])]


# ----------------------------------------------------------------------------- longtail's side


def _longtail_model(weights: Path, finetune: str, **extra: Any):
    from longtail.config import ModelConfig
    from longtail.models import create_model

    cfg = ModelConfig(name=f"clip/{MODEL}", pretrained=str(weights), finetune=finetune, classifier="cosine",
                      scale=RECIPE["scale"], adapter_dim=ADAPTER_DIM, **extra)
    return create_model(cfg, len(CLASSES), 3).eval(), cfg


ADAPTER_KEYS = ("ln.weight", "ln.bias", "down.weight", "down.bias", "up.weight", "up.bias", "scale")
LAYER_NAMES = {"longtail": {"ln": "norm", "down": "down", "up": "up"},  # models/adapter.py's AdaptFormer
               "release": {"ln": "ln", "down": "down_proj", "up": "up_proj"}}  # the release's models/peft_modules.py


def adapter_params(adapter: Any, side: str) -> list[torch.Tensor]:
    """An AdaptFormer's tensors in ADAPTER_KEYS order, for either side's layer names."""
    names = LAYER_NAMES[side]
    out = []
    for key in ADAPTER_KEYS:
        layer, _, leaf = key.partition(".")
        out.append(getattr(getattr(adapter, names[layer]), leaf) if leaf else getattr(adapter, key))
    return out


def set_adapters(adapters: list[Any], side: str, blocks: list[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for adapter, w in zip(adapters, blocks):
            for param, key in zip(adapter_params(adapter, side), ADAPTER_KEYS):
                param.copy_(w[key])


def adapter_tensors(adapters: list[Any], side: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for a in adapters for p in adapter_params(a, side)])


def _adapters(model: Any) -> list[Any]:
    from longtail.models.adapter import ParallelAdapter

    return [m.adapter for m in model.modules() if isinstance(m, ParallelAdapter)]


def _block_biases(model: Any) -> torch.Tensor:
    """Every bias of the image tower's transformer blocks (the release's `bias_tuned` list), by name."""
    return _biases_by_name(model.backbone.transformer.resblocks)


def _biases_by_name(blocks: Any) -> torch.Tensor:
    """The biases of a ModuleList of CLIP blocks, sorted by name (open_clip registers a block's layers in
    another order than OpenAI's code; the names are the same)."""
    return torch.cat([p.detach().flatten() for name, p in sorted(blocks.named_parameters()) if name.endswith("bias")])


def _sgd_steps(model: Any, model_cfg: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    """3 steps of longtail's training step parts: freeze, SGD from train.*, the schedule, the LA loss."""
    from longtail.config import LossConfig, TrainConfig
    from longtail.losses import create_loss
    from longtail.models import finetune
    from longtail.optim import build_optimizer, build_scheduler

    train = TrainConfig(epochs=RECIPE["epochs"], lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                        weight_decay=RECIPE["weight_decay"], schedule="cosine", schedule_per="epoch")
    finetune.freeze(model, model_cfg)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch=RECIPE["steps"])
    loss_fn = create_loss(LossConfig(name="la", tau=1.0), COUNTS)
    for _ in range(RECIPE["steps"]):
        loss = loss_fn(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _longtail_vit(folder: Path, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The IN21K-ViT path on the random timm ViT: features, AdaptFormer + cosine logits, class-mean head, 3 SGD steps."""
    from longtail.config import ModelConfig
    from longtail.models import create_model
    from longtail.models.head_init import initialise_head

    register_vit()
    weights = folder / "vit.pt"
    torch.save(vit_state_dict(), weights)
    cfg = ModelConfig(name=f"timm/{VIT_NAME}", pretrained=str(weights), finetune="adapter", classifier="cosine",
                      scale=RECIPE["scale"], adapter_dim=ADAPTER_DIM, head_init="class_means")
    out = {}
    model = create_model(cfg, len(CLASSES), 3).eval()
    with torch.no_grad():
        out["vit_features"] = model(x)["features"]
        set_adapters(_adapters(model), "longtail", adapter_weights())
        model.classifier.weight.copy_(head_weight())
        out["vit_adapter_logits"] = model(x)["logits"]
    model = create_model(cfg, len(CLASSES), 3).eval()
    initialise_head(model, "class_means", {"batches": lambda: [(x, y)], "num_classes": len(CLASSES), "device": torch.device("cpu")})
    out["vit_class_mean_head"] = model.classifier.weight.detach().clone()
    set_adapters(_adapters(model), "longtail", recipe_adapter_init())
    _sgd_steps(model, cfg, x, y)
    out["vit_sgd_adapter"] = adapter_tensors(_adapters(model), "longtail")
    out["vit_sgd_head"] = model.classifier.weight.detach().clone()
    return out


def longtail_outputs(folder: Path) -> dict[str, torch.Tensor]:
    """Every compared quantity, computed by longtail alone (float32, CPU)."""
    from longtail import tte
    from longtail.config import Config, EvalConfig, LossConfig
    from longtail.distributed import Runtime
    from longtail.inference import predict
    from longtail.losses import create_loss
    from longtail.models.head_init import initialise_head

    torch.manual_seed(SEED)
    register_model(folder)
    weights = folder / "clip.pt"
    torch.save(clip_state_dict(), weights)
    x, y = images(), labels()
    ctx = {"class_names": CLASSES, "device": torch.device("cpu"), "num_classes": len(CLASSES)}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        plain, _ = _longtail_model(weights, "linear")
        out["features"] = plain(x)["features"]
        model, cfg = _longtail_model(weights, "adapter")
        set_adapters(_adapters(model), "longtail", adapter_weights())
        out["adapter_features"] = model(x)["features"]
        model.classifier.weight.copy_(head_weight())
        out["cosine_logits"] = model(x)["logits"]
        out["la_loss"] = create_loss(LossConfig(name="la", tau=1.0), COUNTS)(out["cosine_logits"], y).reshape(1)
    initialise_head(model, "text", ctx)
    out["text_head"] = model.classifier.weight.detach().clone()

    trained, cfg = _longtail_model(weights, "adapter", head_init="text")
    initialise_head(trained, "text", ctx)
    set_adapters(_adapters(trained), "longtail", recipe_adapter_init())
    _sgd_steps(trained, cfg, x, y)
    out["sgd_adapter"] = adapter_tensors(_adapters(trained), "longtail")
    out["sgd_adapter_head"] = trained.classifier.weight.detach().clone()

    biased, cfg = _longtail_model(weights, "block_bias", head_init="text")
    initialise_head(biased, "text", ctx)
    _sgd_steps(biased, cfg, x, y)
    out["sgd_bias"] = _block_biases(biased)
    out["sgd_bias_head"] = biased.classifier.weight.detach().clone()

    lq, cfg = _longtail_model(weights, "lora_qv", lora_rank=ADAPTER_DIM, head_init="text")
    initialise_head(lq, "text", ctx)
    set_lora(_qv_loras(lq), "longtail", lora_weights())
    with torch.no_grad():
        out["lora_logits"] = lq(x)["logits"]
    set_lora(_qv_loras(lq), "longtail", lora_weights(init=True))
    _sgd_steps(lq, cfg, x, y)
    out["sgd_lora"] = lora_tensors(_qv_loras(lq), "longtail")
    out["sgd_lora_head"] = lq.classifier.weight.detach().clone()

    # test-time ensembling: longtail predict's views of each uint8 image, through inference.predict
    from longtail.deployment import Preprocessing
    from longtail.input_spec import InputSpec
    from longtail.models import backbone_preprocessing

    pre = backbone_preprocessing(cfg)
    prep = Preprocessing(InputSpec(3, DIMS["image"], pre.mean, pre.std, crop_pct=1.0, interpolation=pre.interpolation))
    runtime = Runtime(torch.device("cpu"))
    for mode in ("fivecrop", "tencrop"):
        run_cfg = Config(eval=EvalConfig(tte=mode, tte_expand=EXPAND))
        run_cfg.train.amp, run_cfg.train.channels_last = False, False
        views = torch.stack([tte.preprocessing(prep, run_cfg)(image) for image in tte_images()])
        out[f"tte_{mode}"] = predict(model, [(views, y)], run_cfg, runtime)["logits"]

    out.update(_longtail_vit(folder, x, y))

    zero, _ = _longtail_model(weights, "zero_shot")
    initialise_head(zero, "text", ctx)
    with torch.no_grad():
        out["zero_shot_logits"] = zero(x)["logits"]
    out["eval_resize"] = torch.tensor([math.floor(s / 0.875) for s in RESOLUTIONS], dtype=torch.float32)
    return {k: v.detach().float() for k, v in out.items()}


# ----------------------------------------------------------------------------- the release's side


class _Node(dict):
    """A stand-in for yacs' CfgNode: a dict read and written as attributes (all the release's code needs)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _import_release(release: Path) -> types.SimpleNamespace:
    """The release's modules, DIR first on sys.path; yacs, sklearn and scipy as stand-ins (see the docstring)."""
    def stub(name: str, **attrs: Any) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules.setdefault(name, module)

    unused = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not used by the parity harness"))  # noqa: E731
    stub("yacs"), stub("yacs.config", CfgNode=_Node)
    stub("sklearn"), stub("sklearn.linear_model", LogisticRegression=unused)
    stub("sklearn.metrics", f1_score=unused, confusion_matrix=unused)
    stub("scipy"), stub("scipy.sparse", coo_matrix=unused), stub("scipy.stats", hmean=unused, gmean=unused)
    sys.path.insert(0, str(release))
    import importlib

    names = ("clip.clip", "clip.model", "models", "utils.config", "utils.losses", "trainer", "datasets")
    return types.SimpleNamespace(**{n.replace(".", "_"): importlib.import_module(n) for n in names})


def _release_cfg(lift: Any, release: Path, model: str = "clip_vit_b16", **overrides: Any) -> _Node:
    """The release's defaults (utils/config.py), then configs/model/<model>.yaml, then the overrides, as main.py
    merges them."""
    import yaml

    cfg = _Node(lift.utils_config._C)
    for key, value in yaml.safe_load((release / "configs" / "model" / f"{model}.yaml").read_text()).items():
        cfg[key] = _literal(value)
    cfg.update({"resolution": DIMS["image"], "num_workers": 0, "adapter_dim": ADAPTER_DIM, "prec": "fp32", "gpu": None,
                "dataset": "ParityImages", "root": ""})
    cfg.update(overrides)
    return cfg


def _literal(value: Any) -> Any:
    """A YAML string read as a Python literal where it is one, as yacs decodes values ("5e-4" -> 0.0005)."""
    import ast

    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _release_trainer(lift: Any, cfg: _Node, clip_model: Any) -> Any:
    """A Trainer of the release with its data and model parts set here (no download, no dataset files)."""
    from PIL import Image

    class ParityImages(torch.utils.data.Dataset):
        num_classes, cls_num_list, classnames = len(CLASSES), COUNTS, CLASSES

        def __init__(self, root: str, train: bool = True, transform: Any = None):
            self.transform = transform
            self.items = [(Image.fromarray(im.permute(1, 2, 0).numpy()), int(t)) for im, t in zip(tte_images(), labels())]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            image, label = self.items[i]
            return self.transform(image), label

    setattr(lift.datasets, "ParityImages", ParityImages)
    trainer = lift.trainer.Trainer.__new__(lift.trainer.Trainer)
    trainer.cfg, trainer.device, trainer._writer = cfg, torch.device("cpu"), None
    lift.trainer.Trainer.build_data_loader(trainer)
    trainer.classnames, trainer.num_classes = CLASSES, len(CLASSES)
    if cfg.zero_shot:
        trainer.model = lift.models.ZeroShotCLIP(clip_model)
        trainer.tuner = trainer.head = None
    elif cfg.backbone.startswith("IN21K-ViT"):  # clip_model is then a timm ViT
        trainer.model = lift.models.PeftModelFromViT(cfg, clip_model, len(CLASSES))
        trainer.tuner, trainer.head = trainer.model.tuner, trainer.model.head
    else:
        trainer.model = lift.models.PeftModelFromCLIP(cfg, clip_model, len(CLASSES))
        trainer.tuner, trainer.head = trainer.model.tuner, trainer.model.head
    return trainer


def _release_clip(lift: Any) -> Any:
    return lift.clip_model.build_model(clip_state_dict()).float()


def _release_sgd(lift: Any, trainer: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    """The release's own optimizer, scheduler and criterion (Trainer.build_optimizer / build_criterion), and 3
    steps of its float32 training step (trainer.py `train`, prec fp32, one micro-batch per step)."""
    lift.trainer.Trainer.build_optimizer(trainer)
    lift.trainer.Trainer.build_criterion(trainer)
    for _ in range(RECIPE["steps"]):
        loss = trainer.criterion(trainer.model(x), y)
        loss.backward()
        trainer.optim.step()
        trainer.optim.zero_grad()


class _Collect:
    """Stands in for the release's Evaluator in Trainer.test: keeps the (ensembled) outputs it is given."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def reset(self) -> None:
        self.outputs = []

    def process(self, output: torch.Tensor, label: torch.Tensor) -> None:
        self.outputs.append(output.detach())

    def evaluate(self) -> dict:
        return {"acc": 0.0}


def _release_vit(lift: Any, release: Path, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The release's IN21K-ViT path (PeftModelFromViT, configs/model/in21k_vit_b16.yaml) on the same timm ViT."""
    import timm

    def vit() -> Any:
        model = timm.create_model(VIT_NAME, num_classes=0)
        model.load_state_dict(vit_state_dict())
        return model.eval()

    cfg = _release_cfg(lift, release, "in21k_vit_b16", adaptformer=True)
    out = {}
    trainer = _release_trainer(lift, cfg, vit())
    with torch.no_grad():
        out["vit_features"] = trainer.model(x, use_tuner=False, return_feature=True)
        set_adapters(trainer.tuner.adaptformer_list, "release", adapter_weights())
        trainer.head.weight.copy_(head_weight())
        out["vit_adapter_logits"] = trainer.model(x)
    trainer = _release_trainer(lift, cfg, vit())
    trainer.train_init_loader = [(x, y)]  # the same normalised images as longtail's class means see
    lift.trainer.Trainer.init_head_class_mean(trainer)
    out["vit_class_mean_head"] = trainer.head.weight.detach().clone()
    set_adapters(trainer.tuner.adaptformer_list, "release", recipe_adapter_init())
    _release_sgd(lift, trainer, x, y)
    out["vit_sgd_adapter"] = adapter_tensors(trainer.tuner.adaptformer_list, "release")
    out["vit_sgd_head"] = trainer.head.weight.detach().clone()
    return out


def release_outputs(release: Path) -> dict[str, torch.Tensor]:
    lift = _import_release(release)
    torch.manual_seed(SEED)
    x, y = images(), labels()
    out: dict[str, torch.Tensor] = {}
    T = lift.trainer.Trainer
    with torch.no_grad():
        trainer = _release_trainer(lift, _release_cfg(lift, release, adaptformer=True), _release_clip(lift))
        model = trainer.model.eval()
        out["features"] = model(x, use_tuner=False, return_feature=True)
        set_adapters(trainer.tuner.adaptformer_list, "release", adapter_weights())
        out["adapter_features"] = model(x, return_feature=True)
        trainer.head.weight.copy_(head_weight())
        out["cosine_logits"] = model(x)
        criterion = lift.utils_losses.LogitAdjustedLoss(cls_num_list=torch.tensor(COUNTS, dtype=torch.float32))
        out["la_loss"] = criterion(out["cosine_logits"], y).reshape(1)
        T.init_head_text_feat(trainer)
        out["text_head"] = trainer.head.weight.detach().clone()

    trainer = _release_trainer(lift, _release_cfg(lift, release, adaptformer=True), _release_clip(lift))
    T.init_head_text_feat(trainer)
    set_adapters(trainer.tuner.adaptformer_list, "release", recipe_adapter_init())
    _release_sgd(lift, trainer, x, y)
    out["sgd_adapter"] = adapter_tensors(trainer.tuner.adaptformer_list, "release")
    out["sgd_adapter_head"] = trainer.head.weight.detach().clone()

    trainer = _release_trainer(lift, _release_cfg(lift, release, bias_tuning=True), _release_clip(lift))
    T.init_head_text_feat(trainer)
    _release_sgd(lift, trainer, x, y)
    out["sgd_bias"] = _biases_by_name(trainer.model.image_encoder.blocks)
    out["sgd_bias_head"] = trainer.head.weight.detach().clone()

    trainer = _release_trainer(lift, _release_cfg(lift, release, lora=True), _release_clip(lift))
    T.init_head_text_feat(trainer)
    set_lora(trainer.tuner.lora_list, "release", lora_weights())
    with torch.no_grad():
        out["lora_logits"] = trainer.model(x)
    set_lora(trainer.tuner.lora_list, "release", lora_weights(init=True))
    _release_sgd(lift, trainer, x, y)
    out["sgd_lora"] = lora_tensors(trainer.tuner.lora_list, "release")
    out["sgd_lora_head"] = trainer.head.weight.detach().clone()

    # test-time ensembling: the release's transform_test (tte True, expand) and Trainer.test's averaging
    for mode in ("fivecrop", "tencrop"):
        trainer = _release_trainer(lift, _release_cfg(lift, release, adaptformer=True, tte=True, tte_mode=mode, expand=EXPAND),
                                   _release_clip(lift))
        set_adapters(trainer.tuner.adaptformer_list, "release", adapter_weights())
        with torch.no_grad():
            trainer.head.weight.copy_(head_weight())
            T.init_head_text_feat(trainer)
        trainer.evaluator = _Collect()
        T.test(trainer)
        out[f"tte_{mode}"] = torch.cat(trainer.evaluator.outputs)

    out.update(_release_vit(lift, release, x, y))

    trainer = _release_trainer(lift, _release_cfg(lift, release, zero_shot=True), _release_clip(lift))
    trainer.model.init_text_features(T.get_tokenized_prompts(trainer, CLASSES, "a photo of a {}."))
    with torch.no_grad():
        out["zero_shot_logits"] = trainer.model(x)
    out["eval_resize"] = torch.tensor([s * 8 // 7 for s in RESOLUTIONS], dtype=torch.float32)  # Resize(resolution * 8 // 7)
    return {k: v.detach().float() for k, v in out.items()}


# ----------------------------------------------------------------------------- comparison


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if ours.shape != theirs.shape:
        return math.inf
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[tuple[str, float, tuple[int, ...]]]:
    return [(key, relative(ours[key], theirs[key]), tuple(theirs[key].shape)) for key in theirs]


def fixture_payload(theirs: dict[str, torch.Tensor], commit: str) -> dict[str, Any]:
    return {"release": "shijxcs/LIFT", "commit": commit, "seed": SEED, "dims": DIMS, "classes": CLASSES, "counts": COUNTS,
            "batch": BATCH, "adapter_dim": ADAPTER_DIM, "expand": EXPAND, "tte_shape": list(TTE_SHAPE), "recipe": RECIPE,
            "resolutions": list(RESOLUTIONS), "tolerance": TOLERANCE,
            "outputs": {k: {"shape": list(v.shape), "values": v.flatten().tolist()} for k, v in theirs.items()}}


def load_fixture(path: Path = FIXTURE) -> dict[str, torch.Tensor]:
    data = json.loads(path.read_text())
    return {k: torch.tensor(v["values"], dtype=torch.float32).reshape(v["shape"]) for k, v in data["outputs"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, type=Path, help="a local copy of github.com/shijxcs/LIFT")
    parser.add_argument("--commit", default=RELEASE_COMMIT, help="the release's commit, recorded in the fixture")
    parser.add_argument("--write", action="store_true", help=f"record the release's outputs in {FIXTURE.relative_to(ROOT)}")
    args = parser.parse_args()
    if not (args.release / "clip" / "model.py").is_file():
        print(f"--release {args.release}: not a copy of the LIFT release (no clip/model.py)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ours = longtail_outputs(Path(tmp))
    theirs = release_outputs(args.release.resolve())
    worst = 0.0
    for key, rel, shape in compare(ours, theirs):
        worst = max(worst, rel)
        print(f"{key:18s} {str(shape):14s} max relative difference {rel:.2e}  {'ok' if rel <= TOLERANCE else 'DIFFERS'}")
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(fixture_payload(theirs, args.commit)) + "\n")
        print(f"wrote {FIXTURE.relative_to(ROOT)}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
