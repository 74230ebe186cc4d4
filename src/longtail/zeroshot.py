"""Zero-shot CLIP as a run without training (Radford et al. 2021; LIFT's `ZeroShotCLIP` baseline, Shi et al.
ICML 2024): `longtail evaluate CONFIG.yaml model.finetune=zero_shot` builds the data and the model, sets the head
to the unit text embeddings t_c of `model.prompt` for each class name, and evaluates it as any checkpoint:

    logits_c(x) = exp(logit_scale) * cos(P^T f(x), t_c)

f(x) the image tower's pooled feature, P its projection, logit_scale CLIP's learned temperature (100 for the
OpenAI weights). tune, shift and eval.tte apply to it as to a trained run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .config import Config, load_config
from .errors import LongtailError

CONFIG_SUFFIXES = (".yaml", ".yml")


def is_config_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in CONFIG_SUFFIXES and Path(path).is_file()


def load_run(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, dict, Path]:
    """run.load_run of a run directory or checkpoint; for a config file, the zero-shot classifier it describes.
    evaluate, tune, shift, predict and export read runs through this."""
    from . import run

    return zero_shot_run(path, overrides) if is_config_file(path) else run.load_run(path, overrides)


def zero_shot_run(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, dict, Path]:
    """(config, checkpoint, path) of the zero-shot classifier a config describes, as run.load_run returns a saved run's."""
    from . import run
    from .engine import checkpoint_payload
    from .models import create_model
    from .models.head_init import initialise_head

    cfg = load_config(path, list(overrides))
    if cfg.model.finetune != "zero_shot":
        raise LongtailError(f"'{path}' is a config file; evaluate takes a run directory or checkpoint, or a config with "
                            f"model.finetune=zero_shot (CLIP without training), not model.finetune={cfg.model.finetune}")
    bundle = run.load_data(cfg)
    model = create_model(cfg.model, bundle.num_classes, bundle.in_channels)
    initialise_head(model, "text", {"class_names": bundle.class_names, "device": torch.device("cpu"),
                                    "num_classes": bundle.num_classes})
    return cfg, checkpoint_payload(cfg, bundle, model, epoch=0), Path(path)
