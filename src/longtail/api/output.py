"""What the API may print: nothing unless `progress=True` (the command line passes True)."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Iterator

from ..errors import LongtailError


def say(progress: bool) -> Callable[[str], None]:
    """`print` for a call with progress=True in the process that reports (rank 0 under torchrun), else a no-op."""
    return print if progress and int(os.environ.get("RANK", "0")) == 0 else (lambda line: None)


@contextlib.contextmanager
def quiet(progress: bool) -> Iterator[None]:
    """Silence stdout and stderr (log lines, progress bars, library warnings) of code that prints, unless progress."""
    if progress:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def pandas_module():
    """pandas, imported on first use (`import longtail` stays light)."""
    try:
        import pandas
    except ImportError:
        raise LongtailError("this returns a pandas DataFrame and needs pandas: pip install pandas") from None
    return pandas
