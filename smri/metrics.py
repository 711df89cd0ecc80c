"""Binary classification metrics from labels and probabilities of class 1."""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied ranks averaged); NaN with one class."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(probs, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = (last_of_run + 1) - tp
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(tp.size + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(fp.size + 1, np.nan)
    return fpr, tpr


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC, sensitivity (class 1) and specificity (class 0).

    A patient is predicted class 1 when its probability is >= threshold. Rates with an empty
    denominator (e.g. sensitivity without positives) are NaN.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    pred = p >= threshold
    pos = y == 1
    tp = int((pred & pos).sum())
    tn = int((~pred & ~pos).sum())
    sens = _ratio(tp, int(pos.sum()))
    spec = _ratio(tn, int((~pos).sum()))
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "balanced_accuracy": (sens + spec) / 2.0,
        "auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
    }
