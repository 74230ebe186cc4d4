"""Run examples/logit_adjustment.ipynb with nbclient and store its outputs in the notebook file.

    OMP_NUM_THREADS=1 python examples/execute.py            # full size (writes benchmarks/results/notebook_logit_adjustment/)
    LONGTAIL_NOTEBOOK_TINY=1 python examples/execute.py     # tiny (a minute)
    python examples/execute.py OUT.ipynb                    # the executed notebook to OUT.ipynb instead of in place
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).with_name("logit_adjustment.ipynb")


def execute(path: Path = NOTEBOOK, out: Path | None = None, timeout: int | None = None) -> nbformat.NotebookNode:
    """Execute the notebook (cells run in examples/) and write it, with its outputs, to `out` (default: in place)."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, out or path)
    return nb


if __name__ == "__main__":
    execute(out=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
