"""The Python API: the `longtail` commands as functions and objects, for notebooks and scripts.

`longtail.train`, `longtail.load_run` and the `Run` they return, `longtail.sweep` and `longtail.report`
live here; `longtail/__init__.py` exports them lazily, so `import longtail` loads no torch. The command
line (cli.py) parses its arguments, calls these and prints: one implementation behind both.

    >>> import longtail
    >>> run = longtail.train("configs/fmnist_lt/ce_imba100.yaml", "train.epochs=1", out="runs/ce")
    >>> run.evaluate(posthoc="la")["top1"]

Conventions: user mistakes raise `longtail.LongtailError` with the command line's one-line message;
nothing calls `sys.exit`; nothing is printed unless `progress=True`.
"""

from .reports import Report, report
from .runs import Run, load_run
from .sweeps import Sweep, sweep
from .training import train

__all__ = ["Report", "Run", "Sweep", "load_run", "report", "sweep", "train"]
