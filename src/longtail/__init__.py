"""longtail: train and evaluate image classifiers on long-tailed data."""

__version__ = "0.2.0"

from .errors import LongtailError

__all__ = ["LongtailError", "__version__"]
