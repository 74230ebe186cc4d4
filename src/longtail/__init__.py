"""longtail: train and evaluate image classifiers on long-tailed data.

The Python API mirrors the commands (longtail.api):

    >>> import longtail
    >>> run = longtail.train("configs/fmnist_lt/ce_imba100.yaml", "train.epochs=1", out="runs/ce")
    >>> run.evaluate(posthoc="la")["top1"]
    >>> longtail.load_run("runs/ce").predict(["shirt.png"])

Its names are imported on first use (module `__getattr__`), so `import longtail` loads no torch and a config
mistake fails in well under a second. The decorators that register components (`register_loss`, ...; see
longtail/catalog.py) need no torch and are imported at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

from .catalog import (Param, register_dataset, register_finetune, register_head_init, register_loss, register_model,
                      register_posthoc)
from .errors import LongtailError

# public name -> the module that defines it, imported when the name is first used
_LAZY = {
    "train": "longtail.api.training",
    "load_run": "longtail.api.runs",
    "Run": "longtail.api.runs",
    "Sweep": "longtail.api.sweeps",
    "Report": "longtail.api.reports",
    # the base class of losses and what a post-hoc rule receives (torch); the registration decorators above need none
    "Loss": "longtail.losses.base",
    "PosthocInputs": "longtail.posthoc",
}
# `longtail.sweep(...)` and `longtail.report(...)`: the subpackages of those names, callable as the API functions
# (longtail/_callable.py says why they cannot simply be functions here)
_CALLABLE_PACKAGES = ("sweep", "report")

__all__ = ["LongtailError", "Report", "Run", "Sweep", "__version__", "load_run", "report", "sweep", "train",
           "Loss", "Param", "PosthocInputs", "register_loss", "register_model", "register_dataset", "register_posthoc",
           "register_finetune", "register_head_init"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _CALLABLE_PACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'longtail' has no attribute {name!r}")
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:  # what a notebook completes after `longtail.`: the public names
    return sorted(__all__)
