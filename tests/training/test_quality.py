"""The weak-run verdict: chance, the margin over it, constant predictions, and the edges."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tlserve.training.quality import assess, summary_line


def test_balanced_two_classes_at_chance_is_weak() -> None:
    q = assess([[10, 10], [10, 10]], ["cat", "dog"])
    assert q["weak"] and not q["constant_predictions"]
    assert q["accuracy"] == q["chance_accuracy"] == 0.5 and q["val_images"] == 40
    assert q["margin"] == pytest.approx(2 * (0.25 / 40) ** 0.5)
    assert q["reasons"] == [
        "val accuracy 0.500 is not clearly above chance 0.500 (needs > 0.658 with 40 images)"
    ]
    json.dumps(q)  # goes into run.json as it is


def test_clearly_above_chance_is_not_weak() -> None:
    q = assess([[18, 2], [3, 17]], ["cat", "dog"])
    assert q == {
        "weak": False,
        "reasons": [],
        "accuracy": 0.875,
        "chance_accuracy": 0.5,
        "margin": pytest.approx(0.158, abs=1e-3),
        "constant_predictions": False,
        "predicted_classes": 2,
        "val_images": 40,
    }
    assert summary_line(q) == ""


def test_constant_predictions_are_weak_and_named() -> None:
    q = assess([[0, 5, 0], [0, 5, 0], [0, 5, 0]], ["bird", "cat", "dog"])
    assert q["weak"] and q["constant_predictions"] and q["predicted_classes"] == 1
    assert "every validation image is predicted as 'cat'" in q["reasons"]
    assert q["reasons"][0].startswith("val accuracy 0.333 is not clearly above chance 0.333")


def test_always_majority_on_imbalanced_data_looks_good_but_is_weak() -> None:
    q = assess([[90, 0], [10, 0]], ["ok", "defect"])
    assert q["accuracy"] == 0.9 and q["chance_accuracy"] == 0.9
    assert q["weak"] and q["constant_predictions"]
    assert q["reasons"] == [
        "val accuracy 0.900 is not clearly above chance 0.900 (needs > 0.960 with 100 images)",
        "every validation image is predicted as 'ok'",
    ]


def test_imbalanced_data_above_its_own_chance_passes() -> None:
    q = assess([[89, 1], [1, 9]])  # 0.98 > 0.9 + 0.06
    assert not q["weak"] and q["chance_accuracy"] == 0.9


def test_a_tiny_validation_set_needs_a_wide_margin() -> None:
    q = assess([[2, 0], [1, 1]])  # 3 of 4 right is 0.75, but two standard errors of 4 images are 0.5
    assert q["accuracy"] == 0.75 and q["margin"] == 0.5 and q["weak"]
    assert q["reasons"] == [
        "val accuracy 0.750 is not clearly above chance 0.500 (needs > 1.000 with 4 images)"
    ]
    assert not assess([[20, 0], [0, 20]])["weak"]


def test_large_validation_sets_pass_small_margins_but_not_below_five_points() -> None:
    passes = assess([[2900, 2100], [2000, 3000]])  # 0.59 on 10000 images; 2 SE would be 0.01
    assert passes["margin"] == 0.05 and not passes["weak"]
    fails = assess([[2700, 2300], [2200, 2800]])  # 0.55: not more than 0.5 + 0.05
    assert fails["weak"]
    three = assess([[400, 300, 300], [300, 400, 300], [300, 300, 400]])  # 0.4 vs 1/3 on 3000 images
    assert not three["weak"] and three["margin"] == 0.05


def test_no_validation_images_is_weak_without_dividing_by_zero() -> None:
    for confusion in ([], [[0, 0], [0, 0]]):
        q = assess(confusion, ["a", "b"] if confusion else None)
        assert q["weak"] and q["val_images"] == 0 and q["accuracy"] == 0.0
        assert q["reasons"] == ["there are no validation images, so the accuracy cannot be checked"]
        assert not q["constant_predictions"]


def test_a_single_class_validation_set_is_weak() -> None:
    q = assess([[0, 0], [0, 6]], ["a", "b"])
    assert q["weak"] and not q["constant_predictions"]
    assert q["reasons"] == ["every validation image is of class 'b', so the accuracy says nothing"]


def test_summary_line_names_the_reasons_and_the_way_out() -> None:
    line = summary_line(assess([[9, 1], [9, 1]], ["cat", "dog"]))
    assert line.startswith("warning: weak model: val accuracy 0.500 is not clearly above chance 0.500")
    assert "--mode scratch" in line and "--allow-weak" in line and "\n" not in line
    # 2 of 4 right cannot be told from chance, nor could 4 of 4: more validation images is the way out
    tiny = summary_line(assess([[1, 1], [1, 1]], ["cat", "dog"]))
    assert "too small to tell" in tiny and "--val-data" in tiny and "--mode scratch" not in tiny


@pytest.mark.parametrize(
    "bad", [[[1, 2, 3], [4, 5, 6]], [[1, 2], [3]], [[1, -1], [0, 1]], [[1.5, 0], [0, 1]], "x"]
)
def test_not_a_confusion_matrix_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="square table of counts"):
        assess(bad)  # type: ignore[arg-type]


def test_class_names_must_match_the_matrix() -> None:
    with pytest.raises(ValueError, match="3 class names for a 2x2"):
        assess([[1, 0], [0, 1]], ["a", "b", "c"])


def test_importable_without_tensorflow() -> None:
    code = "import sys, tlserve.training.quality; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
