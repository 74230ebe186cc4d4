"""Optional model libraries (timm, open_clip, peft): importing one, and naming a model it does not know."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterable

from ..errors import LongtailError


class MissingExtra(LongtailError):
    """An optional library is not installed (the message names the extra that installs it)."""


def optional_import(module: str, needed_for: str, extra: str) -> Any:
    """`import module`, or one line saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f'{needed_for} needs {module}: pip install "longtail[{extra}]"') from None


def unknown_model(library: str, name: str, known: Iterable[str], listing: str) -> LongtailError:
    """'<library> has no model NAME; did you mean ...?' with the closest known names (difflib)."""
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else f"; see {listing}"
    return LongtailError(f"{library} has no model '{name}'{hint}")
