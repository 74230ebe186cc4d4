"""Overrides as the API takes them: `"key=value"` strings or `{key: value}` dicts."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence, Union

from ..config import parse_override
from ..errors import LongtailError

Overrides = Union[str, Mapping[str, Any]]


def override_strings(overrides: Sequence[Overrides]) -> list[str]:
    """`"key=value"` strings and `{key: value}` dicts as `key=value` strings (a dict's values written as JSON,
    which the config reads as YAML: the value itself, never re-interpreted)."""
    texts: list[str] = []
    for item in overrides:
        if isinstance(item, str):
            parse_override(item)  # a text without '=' fails here, with the CLI's message
            texts.append(item)
        elif isinstance(item, Mapping):
            texts += [f"{key}={json.dumps(value)}" for key, value in item.items()]
        else:
            raise LongtailError(f"an override is a 'key=value' string or a dict, got {type(item).__name__}; "
                                "e.g. longtail.train(config, 'train.epochs=5') or longtail.train(config, {'train.epochs': 5})")
    return texts
