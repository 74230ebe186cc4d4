"""examples/logit_adjustment.ipynb runs, tiny (LONGTAIL_NOTEBOOK_TINY=1), with nbclient: its Table 1 holds the three
methods with the numbers of the runs it trained, and it draws Figure 1."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from conftest import REPO, SRC

pytest.importorskip("nbclient", reason="nbclient is in the 'test' extra: pip install longtail[test]")
pytest.importorskip("ipykernel", reason="ipykernel is in the 'test' extra: pip install longtail[test]")

NOTEBOOK = REPO / "examples" / "logit_adjustment.ipynb"
METHODS = ["CE", "post-hoc LA", "LA loss"]


def _execute():
    spec = importlib.util.spec_from_file_location("execute_notebook", REPO / "examples" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.execute


def test_the_notebook_runs_tiny_and_tabulates_the_three_methods(tmp_path, monkeypatch, small_fmnist_root):
    root = small_fmnist_root  # 120 training images per class: room for the tiny run's 100 + 10 for validation
    for name, value in {"LONGTAIL_NOTEBOOK_TINY": "1", "LONGTAIL_NOTEBOOK_RUNS": str(tmp_path / "runs"),
                        "LONGTAIL_NOTEBOOK_DATASET_ROOT": str(root), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits them
    notebook = _execute()(NOTEBOOK, out=tmp_path / "executed.ipynb", timeout=600)

    table = pd.read_csv(tmp_path / "runs" / "results" / "table1.csv").set_index("method")
    assert list(table.index) == METHODS
    import longtail

    ce, la = longtail.load_run(tmp_path / "runs" / "ce"), longtail.load_run(tmp_path / "runs" / "la_loss")
    assert table.loc["CE", "balanced error (%)"] == round(100 - ce.metrics["mean_class_acc"], 2)  # CE's rule is the argmax
    assert table.loc["LA loss", "top-1 (%)"] == round(la.metrics["top1"], 2)  # the file holds 2 decimals
    assert table.loc["post-hoc LA", "top-1 (%)"] == round(ce.evaluate(posthoc="la", tau=1.0)["top1"], 2)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    shown = [o["data"]["text/plain"] for o in outputs if "data" in o and "balanced error (%)" in o["data"].get("text/plain", "")]
    assert len(shown) == 1 and all(method in shown[0] for method in METHODS)  # Table 1 as displayed
    assert any("image/png" in o.get("data", {}) for o in outputs)  # Figure 1
    assert not any(o.output_type == "error" for o in outputs)
