"""Calibration: how far a model's probabilities of class 1 are from the observed frequencies.

Training with ``pos_weight = n_neg / n_pos`` (``--class-weight auto``) weights each positive
patient's loss by that factor, which shifts the minimiser of the loss on the log-odds scale by
``log(pos_weight)``: the network's logits estimate ``logit(p) + log(pos_weight)``, so its raw
probabilities are biased towards class 0 whenever class 1 is the larger one. `undo_class_weight`
removes exactly that shift; the balanced decision rule the weighting was chosen for (a raw
logit of 0) then becomes a threshold on the calibrated probability at the training share of
class 1 (`balanced_threshold`). Chosen over Platt scaling on the validation folds by Brier score
(docs/results.md, "Calibrated probabilities").
"""

from __future__ import annotations

import math

import numpy as np

N_BINS = 10  # equal-width bins of the reliability diagram and the ECE


def logit_offset(n_pos: int, n_neg: int, class_weight: str) -> float:
    """What to add to a raw logit to undo the class weighting of training: -log(pos_weight)
    with ``class_weight="auto"`` (pos_weight = n_neg / n_pos), 0 otherwise."""
    if class_weight != "auto" or n_pos <= 0 or n_neg <= 0:
        return 0.0
    return -math.log(n_neg / n_pos)


def undo_class_weight(logits: np.ndarray, offset: float) -> np.ndarray:
    """Calibrated probabilities of class 1 from raw logits (float64)."""
    z = np.asarray(logits, dtype=np.float64) + offset
    return 1.0 / (1.0 + np.exp(-z))


def balanced_threshold(offset: float) -> float:
    """The calibrated probability at which the raw logit is 0: class 1 is predicted at and above
    it, as the class-weighted training intended (the training share of class 1 with
    ``class_weight="auto"``, 0.5 without weighting)."""
    return 1.0 / (1.0 + math.exp(-offset))


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between the probability of class 1 and the label (0 is perfect)."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def reliability(
    labels: np.ndarray, probs: np.ndarray, bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of probability: the patients in it, their mean probability and the
    observed share of class 1 (NaN for an empty bin). A probability of 1 falls in the last bin."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, weights=p, minlength=bins) / count
        observed = np.bincount(which, weights=y, minlength=bins) / count
    return count, mean_p, observed


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = N_BINS) -> float:
    """Expected calibration error: the patient-weighted mean over the bins of
    |mean probability - observed share of class 1|."""
    count, mean_p, observed = reliability(labels, probs, bins)
    if count.sum() == 0:
        return math.nan
    full = count > 0
    return float(np.sum(count[full] * np.abs(mean_p[full] - observed[full])) / count.sum())
