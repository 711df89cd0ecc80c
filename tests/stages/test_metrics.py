"""Metrics against direct computations and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from smri.metrics import binary_metrics, roc_auc, roc_curve


def test_hand_computed_confusion():
    labels = np.array([1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.4, 0.7])
    m = binary_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["auc"] == pytest.approx(3 / 6)  # pairs ranked right: (.9,.4) (.9,.7) (.6,.4)


def test_threshold_is_inclusive():
    assert binary_metrics(np.array([1, 0]), np.array([0.5, 0.49]))["accuracy"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_roc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    p = np.round(rng.random(40), 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    fpr, tpr = roc_curve(y, p)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_one_class_gives_nan_auc_and_sensitivity():
    m = binary_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.7, 0.3]))
    assert math.isnan(m["auc"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == 0.75


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"labels \(2,\) and probabilities \(3,\) differ"):
        binary_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_one_class_roc_has_the_present_class_rate_and_nan_for_the_other():
    fpr, tpr = roc_curve(np.zeros(3, int), np.array([0.2, 0.7, 0.7]))
    np.testing.assert_allclose(fpr, [0, 2 / 3, 1])
    assert np.isnan(tpr).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_probability_that_is_not_finite_is_never_counted_as_a_class(bad):
    from smri.errors import DataError

    with pytest.raises(DataError, match="1 of 3 probabilities are not finite"):
        binary_metrics(np.array([0, 1, 1]), np.array([0.1, bad, 0.9]))
