"""`longtail.sweep(...)` and `longtail.report(...)` are API functions whose names are also subpackages. Importing a
subpackage sets it as an attribute of its parent (`longtail.sweep` becomes the package), which would hide a
function of that name; so the packages themselves are made callable, calling the API function (Python's
documented way: assigning a ModuleType subclass to the module's `__class__`). `from longtail.sweep import ...`
and `longtail.sweep.load_sweep` keep working as before."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call is the API function named by its `__api__` ("module:function")."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, name = self.__api__.split(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(package: str, module: str, function: str) -> None:
    """Make the (already imported) `package` callable as `module.function`, imported at the first call."""
    target = sys.modules[package]
    target.__api__ = f"{module}:{function}"
    target.__class__ = CallableModule
