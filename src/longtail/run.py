"""One home for a trained run: where its checkpoint is, its config, its model, its class names, its input
spec, its prediction rule, its calibration and its training counts. evaluation, tune, shift, predict and
export stand on this module; it builds the data (`load_data`) but runs no model over it.

The input spec (input_spec.InputSpec, stored once as ckpt["input"] by the engine): how an image file becomes the
network's input. It is built once when the data is built (`load_data`: the dataset, the pretrained backbone and
the data.* keys) and read back from the checkpoint for everything a saved run does (`input_spec_of`), so a run is
evaluated, predicted and exported exactly as it was trained and tested, whatever longtail's defaults become.

The calibration (`fit_calibrator`, stored as ckpt["calibrator"] and in metrics.json when training ends, or by
`longtail evaluate RUN --save` / `longtail tune` for older runs): BCTS fitted on the validation split, and the
split's class counts (its prior pi_v), what priors.target_prior_scores needs for a target prior.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import nn

from .calibration import Calibrator, fit_calibration
from .checkpoint import load_checkpoint, save_atomic, write_json_atomic
from .config import Config, flatten, from_flat, parse_override
from .errors import LongtailError
from .input_spec import CONFIG_KEYS, InputSpec
from .models import backbone_preprocessing, create_model, finetune
from .plugins import reload_recorded
from .priors import source_log_prior

if TYPE_CHECKING:
    from .data import DataBundle

DEFAULT_CALIBRATION = "bcts"
# keys of the input spec that a saved run keeps from training (its stored spec); data.crop_pct may change at evaluation
FIXED_INPUT_KEYS = tuple(k for k in CONFIG_KEYS if k != "data.crop_pct")


# ----------------------------------------------------------------------------- finding and loading a run


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory's checkpoints/best.pt (else last.pt), or the checkpoint file given."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise LongtailError(f"'{path}' is not a run directory: it has no checkpoints/best.pt or checkpoints/last.pt")
    if not path.is_file():
        raise LongtailError(f"'{path}' is neither a run directory nor a checkpoint file")
    return path


def run_directory(path: str | Path) -> Path:
    """Where result files of a run go: the run directory, or the folder of a loose checkpoint."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.suffix.lower() in (".yaml", ".yml"):  # a zero-shot config (zeroshot.py) is no run: nowhere to write
        raise LongtailError(f"'{path}' is a zero-shot config, not a run directory, so there is nowhere to write; "
                            "give the output file instead (evaluate --json FILE, export --out FILE)")
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_run(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, dict, Path]:
    """The checkpoint of a run and its config, with `key=value` overrides (e.g. dataset.root) applied."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    reload_recorded(ckpt.get("plugins", ()), ckpt_path)  # the run's components, before its config is read
    try:
        stored = flatten(ckpt["config"])
        from_flat(stored)
    except LongtailError as exc:
        raise LongtailError(f"the config stored in '{ckpt_path}' cannot be read by this longtail ({exc})") from None
    given = dict(parse_override(o) for o in overrides)
    fixed = [k for k in FIXED_INPUT_KEYS if k in given and given[k] != stored.get(k)]
    if fixed:
        raise LongtailError(f"{', '.join(fixed)} cannot change after training: the run's input spec is stored in '{ckpt_path}' "
                            "(data.crop_pct may); leave out the override")
    return from_flat({**stored, **given}), ckpt, ckpt_path


def restore_model(cfg: Config, ckpt: dict, device: torch.device, source: str | Path = "the checkpoint") -> nn.Module:
    """The run's model with the checkpoint's weights, on `device`. A checkpoint with every weight is built
    without model.pretrained (no download, no stage-1 file needed); one holding only the trained tensors of a
    model.finetune run (a 'base' entry) is built on its base weights, read again from model.pretrained after
    checking they are the same file (models/finetune.py)."""
    if "base" in ckpt:
        finetune.check_base(cfg.model, ckpt["base"], source)
        model = create_model(cfg.model, ckpt["num_classes"], ckpt["in_channels"])
    else:
        model = create_model(dataclasses.replace(cfg.model, pretrained=None), ckpt["num_classes"], ckpt["in_channels"])
    finetune.load_model_state(model, ckpt["model"], "base" in ckpt, source)
    return model.to(device)


def check_bundle(bundle, ckpt: dict) -> None:
    """The data built from the run's config fits the checkpoint (classes and channels)."""
    if bundle.num_classes != ckpt["num_classes"]:
        raise LongtailError(
            f"the dataset has {bundle.num_classes} classes but the checkpoint was trained on {ckpt['num_classes']}; "
            "evaluate it on the dataset it was trained on"
        )
    if bundle.in_channels != ckpt["in_channels"]:
        raise LongtailError(
            f"the dataset has {bundle.in_channels}-channel images but the checkpoint was trained on {ckpt['in_channels']}; "
            "evaluate it on the dataset it was trained on"
        )


def training_counts(ckpt: dict) -> list[int]:
    """The training split's images per class (the prior pi of la)."""
    return list(ckpt["class_counts"])


def rule_of(cfg: Config, posthoc: Optional[str] = None, tau: Optional[float] = None) -> tuple[str, float]:
    """The prediction rule (eval.posthoc, eval.tau) the run reports, or the ones given."""
    return (cfg.eval.posthoc if posthoc is None else posthoc), (cfg.eval.tau if tau is None else float(tau))


# ----------------------------------------------------------------------------- the input spec


def load_data(cfg: Config, ckpt: Optional[dict] = None) -> DataBundle:
    """The configured dataset and its input spec: for a saved run (`ckpt`) the stored spec (`input_spec_of`), else
    one built from the dataset, the pretrained backbone's preprocessing and the data.* keys. Models and data meet
    here, above both packages: the data package imports nothing from models."""
    from .data import build_data

    if ckpt is not None:
        return build_data(cfg, spec=input_spec_of(cfg, ckpt))
    return build_data(cfg, backbone=backbone_preprocessing(cfg.model))


def input_spec_of(cfg: Config, ckpt: dict) -> InputSpec:
    """The spec stored with a run (checkpoints of format 1 are converted on load: checkpoint.load_checkpoint), with
    data.crop_pct replaced when the config sets it otherwise than the stored spec (an evaluation override)."""
    spec = InputSpec.from_dict(ckpt["input"])
    if cfg.data.crop_pct is not None and cfg.data.crop_pct != spec.crop_pct:
        spec = dataclasses.replace(spec, crop_pct=float(cfg.data.crop_pct))
    return spec


# ----------------------------------------------------------------------------- calibration


def fit_calibrator(val: dict[str, torch.Tensor], num_classes: int, method: str = DEFAULT_CALIBRATION) -> dict:
    """The "calibrator" block: a calibration fitted on validation outputs ({'logits', 'labels'}) and the
    validation split's class counts, the prior pi_v its posteriors refer to."""
    calibrator = fit_calibration(method, val["logits"], val["labels"])
    counts = torch.bincount(val["labels"].long().cpu(), minlength=num_classes).tolist()
    return {**calibrator.to_dict(), "fitted_on": "val", "val_counts": counts}


def no_validation_error(cfg: Config, purpose: str) -> LongtailError:
    """The one error for a run without a validation split to calibrate on."""
    return LongtailError(
        f"{purpose} needs a validation split to calibrate the posteriors on, and this run has none "
        f"(dataset.val_source={cfg.dataset.val_source}); add the override dataset.val_source=test_holdout "
        "(a labelled hold-out of the test set, e.g. with dataset.val_per_class=20)"
    )


def calibrator_of(cfg: Config, ckpt: dict, ckpt_path: Path, purpose: str = "a target prior") -> tuple[Calibrator, torch.Tensor]:
    """The run's stored calibration and log pi_v (float64), or one line saying how to add it."""
    block = ckpt.get("calibrator")
    if block is None:
        if cfg.dataset.val_source == "none":
            raise no_validation_error(cfg, purpose)
        raise LongtailError(f"the run '{ckpt_path}' stores no calibration ({purpose} needs one; runs trained before "
                            f"longtail stored it lack it); add it with: longtail evaluate {run_directory(ckpt_path)} --save")
    try:
        calibrator, log_source = Calibrator.from_dict(block), source_log_prior(block["val_counts"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        raise LongtailError(f"the calibration stored in '{ckpt_path}' is damaged; refit it with: "
                            f"longtail evaluate {run_directory(ckpt_path)} --save") from None
    if len(log_source) != ckpt["num_classes"] or (calibrator.bias is not None and len(calibrator.bias) != ckpt["num_classes"]):
        raise LongtailError(f"the calibration stored in '{ckpt_path}' does not have {ckpt['num_classes']} classes; refit it with: "
                            f"longtail evaluate {run_directory(ckpt_path)} --save")
    return calibrator, log_source


def run_calibrator(ckpt: dict, val: dict[str, torch.Tensor], method: str = DEFAULT_CALIBRATION) -> dict:
    """The stored calibrator block when it was fitted by `method`, else one fitted now on `val`."""
    stored = ckpt.get("calibrator")
    if stored is not None and stored.get("method") == method:
        return stored
    return fit_calibrator(val, ckpt["num_classes"], method)


def store_fitted(ckpt_path: Path, values: dict) -> bool:
    """Add what was fitted on validation (e.g. {"class_mass": [...]}, {"calibrator": {...}}) to the checkpoint;
    False when it already holds them (nothing written)."""
    ckpt = load_checkpoint(ckpt_path)
    changed = any(ckpt.get(k) != v for k, v in values.items())
    if changed:
        save_atomic({**ckpt, **values}, ckpt_path)  # save_atomic stamps the current format and version
    return changed


def store_calibrator(ckpt_path: Path, block: dict) -> bool:
    """Write the calibrator block into the checkpoint and the run's metrics.json (when it has one);
    False when both already hold it."""
    changed = store_fitted(ckpt_path, {"calibrator": block})
    metrics_path = run_directory(ckpt_path) / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return changed
    if isinstance(metrics, dict) and metrics.get("calibrator") != block:
        metrics["calibrator"] = block
        write_json_atomic(metrics_path, metrics)
        changed = True
    return changed


__all__ = [
    "resolve_checkpoint", "run_directory", "load_run", "restore_model", "check_bundle", "training_counts", "rule_of",
    "load_data", "input_spec_of", "fit_calibrator", "calibrator_of", "run_calibrator", "store_calibrator",
    "no_validation_error", "DEFAULT_CALIBRATION",
]
