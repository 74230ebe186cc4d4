"""Starting weights from `model.pretrained`: a longtail checkpoint (e.g. the CE run of a decoupled
recipe's first stage), a plain state_dict such as torchvision's ImageNet .pth files, or 'torchvision'.
Like every model, a single-head model takes `model.pretrained` when it is built (`with_pretrained` wraps
its MODELS entry); a resumed run or a re-evaluated checkpoint builds it with `pretrained` unset.

Every backbone tensor of the model must be found with its shape (a checkpoint of another architecture
fails loudly instead of loading nothing). The classifier is re-initialised (classifier re-training,
Kang et al. 2020) unless `model.pretrained_classifier` asks to keep it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import LongtailError
from .torchvision_resnets import torchvision_state_dict

HEAD = "classifier."


def read_state_dict(path_text: str) -> dict[str, torch.Tensor]:
    """Tensors by name from a longtail checkpoint ('model'), a {'state_dict': ...} file, or a plain state_dict;
    DistributedDataParallel's 'module.' prefix and torchvision's 'fc.' head name are normalised."""
    return _longtail_names(read_tensors(path_text))


def read_tensors(path_text: str) -> dict[str, torch.Tensor]:
    """read_state_dict's tensors under the names the file gives them."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise LongtailError(
            f"model.pretrained '{path}' does not exist; give a longtail checkpoint, a state_dict file, or 'torchvision'"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LongtailError(f"model.pretrained '{path}' holds objects that are not plain tensors and was refused") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LongtailError(f"model.pretrained '{path}' is corrupt or not a torch file ({type(exc).__name__})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LongtailError(f"model.pretrained '{path}' holds no state_dict of tensors")
    return obj


def _longtail_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without DistributedDataParallel's 'module.' prefix, and torchvision's head 'fc.' named 'classifier.'."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        renamed[HEAD + key[3:] if key.startswith("fc.") else key] = value
    return renamed


def pretrained_state(spec: str, arch: str) -> dict[str, torch.Tensor]:
    """The tensors `model.pretrained` names, under longtail's names: 'torchvision[:weights]' for
    torchvision's ImageNet weights of `arch`, else a file (read_state_dict)."""
    if spec.split(":", 1)[0] == "torchvision":
        return _longtail_names(torchvision_state_dict(arch, spec))
    return read_state_dict(spec)


def load_pretrained(model: nn.Module, cfg: ModelConfig, state: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Copy the backbone (and with `pretrained_classifier` the classifier) into `model`, from `state`
    (tensors under longtail's names) or else from what `model.pretrained` names."""
    spec = cfg.pretrained
    assert spec is not None
    state = pretrained_state(spec, cfg.name) if state is None else state
    target = model.state_dict()
    wanted = [k for k in target if cfg.pretrained_classifier or not k.startswith(HEAD)]
    # old torchvision files predate BatchNorm's step counter; the model keeps its own then
    absent = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    reshaped = [k for k in wanted if k in state and state[k].shape != target[k].shape]
    if absent or reshaped:
        bad = absent + reshaped
        example = bad[0] + (f" (shape {tuple(state[bad[0]].shape)} vs {tuple(target[bad[0]].shape)})" if bad[0] in reshaped else "")
        raise LongtailError(
            f"model.pretrained '{spec}' does not fit model '{cfg.name}': {len(absent)} tensors missing and {len(reshaped)} "
            f"of another shape, e.g. {example}; it was saved for another architecture or class count"
            + ("" if not cfg.pretrained_classifier else " (model.pretrained_classifier=true also needs the classifier)")
        )
    loaded = {k: state[k] for k in wanted if k in state}
    model.load_state_dict({**target, **loaded})


def with_pretrained(build: Callable[[ModelConfig, int, int], nn.Module]) -> Callable[[ModelConfig, int, int], nn.Module]:
    """A MODELS entry for a single-head model: build it, then apply model.pretrained (when set)."""

    def make(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
        model = build(cfg, num_classes, in_channels)
        if cfg.pretrained is not None:
            load_pretrained(model, cfg)
        return model

    return make
