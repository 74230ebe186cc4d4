"""Long-tailed counts and seeded subsets against the reference numbers of methods.md."""

import math

import numpy as np
import pytest

from longtail.data import holdout_split, long_tailed_counts, long_tailed_split
from longtail.errors import LongtailError
from longtail.metrics import shot_groups


def test_cifar10_lt_if100_counts_match_reference():
    counts = long_tailed_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_cifar100_lt_if100_sum_and_ends():
    counts = long_tailed_counts(500, 100, 100)
    assert sum(counts) == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_cifar100_lt_if100_shot_groups_are_35_35_30():
    groups = shot_groups(long_tailed_counts(500, 100, 100))
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [35, 35, 30]


def test_imbalance_factor_one_is_balanced_and_formula_uses_floor():
    assert long_tailed_counts(500, 100, 1) == [500] * 100
    # class 1 of CIFAR-10-LT IF100: 5000 * 0.01 ** (1/9) = 2997.4 -> 2997 (int, not ceil)
    assert long_tailed_counts(5000, 10, 100)[1] == math.floor(5000 * 0.01 ** (1 / 9))


def test_step_profile_halves():
    assert long_tailed_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tailed_counts(500, 100, 10, "step") == [500] * 50 + [50] * 50


@pytest.mark.parametrize("factor", [0.5, float("nan"), float("inf"), -3])
def test_bad_imbalance_factor_is_a_clear_error(factor):
    with pytest.raises(LongtailError, match="imbalance factor"):
        long_tailed_counts(500, 100, factor)


def test_profile_leaving_an_empty_class_is_an_error():
    with pytest.raises(LongtailError, match="0 images"):
        long_tailed_counts(50, 10, 100)
    with pytest.raises(LongtailError, match="unknown imbalance profile"):
        long_tailed_counts(50, 10, 10, "linear")


def _labels(per_class=40, classes=5):
    rng = np.random.default_rng(123)
    return rng.permutation(np.repeat(np.arange(classes), per_class))


def test_seeded_subset_is_identical_across_calls_and_differs_across_seeds():
    labels, counts = _labels(), [30, 20, 10, 5, 2]
    a = long_tailed_split(labels, counts, seed=7, val_per_class=5)
    b = long_tailed_split(labels.copy(), counts, seed=7, val_per_class=5)
    c = long_tailed_split(labels, counts, seed=8, val_per_class=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_subset_has_exact_counts_and_disjoint_balanced_validation():
    labels, counts = _labels(), [30, 20, 10, 5, 2]
    train, val = long_tailed_split(labels, counts, seed=0, val_per_class=5)
    assert np.bincount(labels[train]).tolist() == counts
    assert np.bincount(labels[val]).tolist() == [5] * 5
    assert not set(train) & set(val)


def test_a_class_subset_does_not_depend_on_other_classes():
    labels = _labels()
    a, _ = long_tailed_split(labels, [30, 20, 10, 5, 2], seed=3)
    b, _ = long_tailed_split(labels, [30, 1, 1, 1, 1], seed=3)
    class0 = lambda idx: sorted(i for i in idx if labels[i] == 0)
    assert class0(a) == class0(b)


def test_too_few_images_for_validation_names_the_fix():
    with pytest.raises(LongtailError, match="val_source"):
        long_tailed_split(_labels(), [40, 20, 10, 5, 2], seed=0, val_per_class=5)


def test_holdout_split_is_balanced_and_disjoint():
    labels = _labels(per_class=20)
    rest, held = holdout_split(labels, 4, seed=1)
    assert np.bincount(labels[held]).tolist() == [4] * 5
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(labels)))
