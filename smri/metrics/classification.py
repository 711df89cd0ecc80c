"""Binary classification metrics from labels and probabilities of class 1 (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np

from smri.errors import DataError
from smri.metrics.stats import auc as roc_auc

METRIC_NAMES = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
__all__ = ["METRIC_NAMES", "binary_metrics", "roc_auc", "roc_curve"]


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int) and probabilities (float64) as flat arrays of one length, every
    probability finite: a NaN is no class, and must never be counted as one."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    bad = int(np.count_nonzero(~np.isfinite(p)))
    if bad:
        raise DataError(f"{bad} of {p.size} probabilities are not finite numbers (NaN or inf)")
    return y, p


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1);
    NaN rates for a class that is absent."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, p = _checked(labels, probs)
    n_pos = int(y.sum())
    if 0 < n_pos < y.size:
        fpr, tpr, _ = sk_roc_curve(y, p, drop_intermediate=False)
        return fpr, tpr
    # one class only: its rate at each distinct threshold; the other's is undefined
    thresholds = np.unique(p)[::-1]
    rate = np.r_[0.0, [(p >= t).mean() for t in thresholds]] if p.size else np.zeros(1)
    nan = np.full(rate.size, np.nan)
    return (nan, rate) if n_pos == y.size else (rate, nan)


def _rate(num: int, den: int) -> float:
    return num / den if den else math.nan


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC, sensitivity (class 1) and specificity (class 0).

    A patient is predicted class 1 when its probability is >= threshold. Rates with an empty
    denominator (e.g. sensitivity without positives) are NaN; so is balanced accuracy then.
    """
    from sklearn.metrics import confusion_matrix

    y, p = _checked(labels, probs)
    tn, fp, fn, tp = confusion_matrix(y, p >= threshold, labels=[0, 1]).ravel().tolist()
    sens, spec = _rate(tp, tp + fn), _rate(tn, tn + fp)
    return {
        "accuracy": _rate(tp + tn, y.size),
        "balanced_accuracy": (sens + spec) / 2.0,
        "auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
    }
