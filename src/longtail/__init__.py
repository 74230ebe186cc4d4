"""longtail: train and evaluate image classifiers on long-tailed data.

The decorators that register components (see longtail/catalog.py) are importable without torch; `Loss`, the base
class of losses, is loaded on first use."""

__version__ = "0.1.0"

from .catalog import (Param, register_dataset, register_finetune, register_head_init, register_loss, register_model,
                      register_posthoc)
from .errors import LongtailError


def __getattr__(name: str):
    if name == "Loss":
        from .losses.base import Loss

        return Loss
    if name == "PosthocInputs":
        from .posthoc import PosthocInputs

        return PosthocInputs
    raise AttributeError(f"module 'longtail' has no attribute '{name}'")


__all__ = ["LongtailError", "__version__", "Loss", "Param", "PosthocInputs", "register_loss", "register_model",
           "register_dataset", "register_posthoc", "register_finetune", "register_head_init"]
