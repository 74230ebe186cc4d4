"""The labels every output of an optimistic protocol carries (plain strings, no torch: the report and the
CLI read them without loading a model).

- SELECTED ON TEST: the reported epoch was chosen by its test accuracy (train.select=best_test; selection.py).
- TUNED ON TEST: tau was chosen on the test set (`longtail tune --on test`; tune.py).
"""

SELECTED_ON_TEST = "SELECTED ON TEST"
TUNED_ON_TEST = "TUNED ON TEST"

__all__ = ["SELECTED_ON_TEST", "TUNED_ON_TEST"]
