"""Metrics against hand-counted confusion matrices."""

import torch

from longtail.metrics import confusion_matrix, evaluate_predictions, shot_groups


def test_shot_group_boundaries_are_100_and_20():
    groups = shot_groups([101, 100, 20, 19, 500, 1])
    assert groups == {"many": [0, 4], "medium": [1, 2], "few": [3, 5]}


def test_hand_computed_metrics():
    # class 0 (many, 200 train): 3/4 right; class 1 (medium, 50): 1/2; class 2 (few, 5): 0/2
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0])
    m = evaluate_predictions(preds, targets, [200, 50, 5])
    assert m["top1"] == 100 * 4 / 8
    assert m["per_class"] == [75.0, 50.0, 0.0]
    assert abs(m["mean_class_acc"] - 125 / 3) < 1e-9
    assert (m["many"], m["medium"], m["few"]) == (75.0, 50.0, 0.0)


def test_empty_shot_group_is_none_not_zero():
    m = evaluate_predictions(torch.tensor([0, 1]), torch.tensor([0, 1]), [500, 300])
    assert m["medium"] is None and m["few"] is None and m["many"] == 100.0


def test_class_without_test_images_is_none_and_excluded_from_means():
    m = evaluate_predictions(torch.tensor([0, 0]), torch.tensor([0, 0]), [500, 10])
    assert m["per_class"] == [100.0, None]
    assert m["mean_class_acc"] == 100.0 and m["few"] is None


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]), 2)
    assert cm.tolist() == [[0, 1], [1, 1]]
