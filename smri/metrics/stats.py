"""Uncertainty of validation metrics: confidence intervals and paired model comparisons.

Two sources of uncertainty, kept apart because they answer different questions:

* **Across folds** (K-fold cross-validation): the spread of a metric over the K folds, which
  holds both the patients each fold validates on and the model each fold trained. The 95 %
  interval is Student's t over the K fold values (`fold_interval`).
* **Across patients** (one split, and every paired comparison): a patient-level bootstrap of
  the validation predictions, stratified by class and by fold (as pROC does for AUC). It holds
  the trained models fixed and asks how much the metric depends on which patients happened to
  be validated on (`bootstrap_interval`, `paired_difference`).

Point estimates come from scikit-learn. A bootstrap draw is a count per patient (how often the
draw took it), and the metric of a draw is the count-weighted metric: for AUC the weighted
Mann–Whitney statistic over (positive, negative) pairs, ties counted one half, which is what
`roc_auc_score` computes when every count is 1 (tested). Two thousand draws then cost one
matrix product per fold instead of two thousand scikit-learn calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

N_BOOTSTRAP = 2000
LEVEL = 0.95
THRESHOLD = 0.5
METRIC_NAMES = ("auc", "balanced_accuracy")


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (scikit-learn); NaN when the patients hold one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, probs))


def balanced_accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Mean of sensitivity and specificity at `threshold` (scikit-learn); NaN with one class."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(balanced_accuracy_score(y, np.asarray(probs) >= threshold))


POINT = {"auc": auc, "balanced_accuracy": balanced_accuracy}


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student's t interval of the mean of per-fold values (sample SD, ddof 1), unclipped.

    None for fewer than two values or any that is not finite.
    """
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)):
        return None
    half = float(t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    mean = float(v.mean())
    return mean - half, mean + half


def fold_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """`t_interval` clipped to [0, 1], where the metrics live (`t_interval` tells whether it
    was clipped)."""
    ci = t_interval(values, level)
    return None if ci is None else (max(0.0, ci[0]), min(1.0, ci[1]))


@dataclass(frozen=True)
class TTest:
    """A mean difference over paired resamples, its 95 % interval and two-sided p-value."""

    difference: float
    ci95: tuple[float, float]
    p_value: float
    resamples: int


def corrected_resampled_t(
    differences: Sequence[float], test_train_ratio: float, level: float = LEVEL
) -> TTest | None:
    """Nadeau and Bengio's corrected resampled t-test of per-resample differences (e.g. the
    AUC of model b minus model a in each fold, and each seed of repeated training).

    Resamples share training patients, so their differences are correlated and the plain
    paired t-test is too confident; the correction inflates the variance of the mean from
    s^2 / J to (1 / J + n_test / n_train) * s^2 (Machine Learning 52, 2003). It includes how
    much a model varies from one training run to the next, which a bootstrap of one run's
    patients does not. None for fewer than two finite differences.
    """
    from scipy.stats import t

    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return None
    mean, var = float(d.mean()), float(d.var(ddof=1))
    se = math.sqrt((1.0 / d.size + test_train_ratio) * var)
    half = float(t.ppf(0.5 + level / 2, d.size - 1)) * se
    if se == 0.0:  # every resample gave the same difference
        return TTest(mean, (mean, mean), 1.0 if mean == 0.0 else 0.0, int(d.size))
    p = float(2 * t.sf(abs(mean) / se, d.size - 1))
    return TTest(mean, (mean - half, mean + half), min(1.0, p), int(d.size))


@dataclass(frozen=True)
class Group:
    """The validation patients of one fold (or of the one split): their labels and each
    model's probability of class 1, patient by patient in the same order, and each model's
    decision threshold (class 1 at and above it; THRESHOLD when not given)."""

    labels: np.ndarray
    probs: dict[str, np.ndarray]
    thresholds: dict[str, float] = field(default_factory=dict)

    def threshold(self, model: str) -> float:
        return self.thresholds.get(model, THRESHOLD)

    def point(self, model: str, metric: str) -> float:
        if metric == "balanced_accuracy":
            return balanced_accuracy(self.labels, self.probs[model], self.threshold(model))
        return POINT[metric](self.labels, self.probs[model])


def _counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) times each of n patients is taken by a draw of n with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def _draw_values(g: Group, model: str, metric: str, cp: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """The metric of `model` on each draw, given per-patient counts of positives `cp` and
    negatives `cn` (rows are draws)."""
    y = g.labels == 1
    pos, neg = g.probs[model][y], g.probs[model][~y]
    if metric == "auc":  # weighted Mann–Whitney: P(score of a positive > a negative's)
        kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return np.einsum("bi,ij,bj->b", cp, kernel, cn) / (pos.size * neg.size)
    t = g.threshold(model)
    sens = cp @ (pos >= t) / pos.size
    spec = cn @ (neg < t) / neg.size
    return 0.5 * (sens + spec)


def _bootstrap(
    groups: Sequence[Group], models: Sequence[str], metric: str, n: int, seed: int
) -> dict[str, np.ndarray]:
    """Mean over groups of the metric for each model, on the same n stratified draws."""
    rng = np.random.default_rng([seed, 0xB007])
    total = {m: np.zeros(n) for m in models}
    for g in groups:
        y = g.labels == 1
        cp, cn = _counts(int(y.sum()), n, rng), _counts(int((~y).sum()), n, rng)
        for m in models:
            total[m] += _draw_values(g, m, metric, cp, cn)
    return {m: v / len(groups) for m, v in total.items()}


def _computable(groups: Sequence[Group]) -> bool:
    return bool(groups) and all(np.unique(g.labels).size == 2 for g in groups)


def _percentile(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def mean_point(groups: Sequence[Group], model: str, metric: str) -> float:
    """Mean over groups (folds) of the metric's point estimate."""
    return float(np.mean([g.point(model, metric) for g in groups]))


def bootstrap_interval(
    groups: Sequence[Group],
    model: str,
    metric: str,
    *,
    n: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile interval of the mean over groups of `metric` under a patient bootstrap
    stratified by group and class; None when a group holds one class only."""
    if not _computable(groups):
        return None
    return _percentile(_bootstrap(groups, [model], metric, n, seed)[model], level)


@dataclass(frozen=True)
class Difference:
    """metric(b) - metric(a) on the same patients, its interval and two-sided p-value."""

    difference: float
    ci95: tuple[float, float]
    p_value: float


def paired_difference(
    groups: Sequence[Group],
    a: str,
    b: str,
    metric: str = "auc",
    *,
    n: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference | None:
    """Paired patient bootstrap of (mean over groups of metric(b)) - (same of metric(a)).

    Both models are scored on each draw's same patients, so what they share (hard and easy
    patients) cancels. The p-value tests "no difference": twice the smaller share of draws on
    either side of 0 (a Monte-Carlo p-value, +1 in numerator and denominator), capped at 1.
    None when a group holds one class only.
    """
    if not _computable(groups):
        return None
    observed = mean_point(groups, b, metric) - mean_point(groups, a, metric)
    draws = _bootstrap(groups, [a, b], metric, n, seed)
    samples = draws[b] - draws[a]
    below = (np.sum(samples <= 0) + 1) / (n + 1)
    above = (np.sum(samples >= 0) + 1) / (n + 1)
    p = float(min(1.0, 2 * min(below, above)))
    return Difference(float(observed), _percentile(samples, level), p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the given order."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]
