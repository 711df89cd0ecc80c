"""Uncertainty on an untouched test set: intervals that resample both the test patients and
the trained models, and paired comparisons of models on the same patients.

A model is a set of trained *members* — one per fold, and per seed with repeated training —
each scoring the same test patients. A metric's point estimate is the mean over the members of
each member's metric: what one training run of the model achieves on average. Its interval is
a two-level bootstrap: a draw takes the test patients with replacement, stratified by class,
and the members with replacement, and its value is the mean over the drawn members of their
metric on the drawn patients. Resampling the members puts the variation from one training run
to the next into the interval; with the members held fixed (`resample_members=False`) it is
the plain patient bootstrap, which conditions on the trained networks.

Paired comparisons score both models on each draw's same patients. Members are drawn by index
— member k of both, the same fold and seed, trained on the same patients — when the two models
have the same members, and independently otherwise. The p-value tests "no difference": twice
the smaller share of draws on either side of 0, each share (count + 1) / (draws + 1), so it is
never below 2 / (draws + 1), the resolution of the test (reported with the count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smri.metrics.stats import auc

N_BOOTSTRAP = 2000
LEVEL = 0.95
METRICS = ("auc", "balanced_accuracy")


@dataclass(frozen=True)
class Members:
    """One model's trained members on the test patients, in the patients' order.

    `probs` (members, patients): calibrated probabilities of class 1; `decisions` (members,
    patients): each member's class-1 decision (its own threshold applied)."""

    names: tuple[str, ...]
    probs: np.ndarray
    decisions: np.ndarray

    def __post_init__(self) -> None:
        if self.probs.shape != self.decisions.shape or self.probs.shape[0] != len(self.names):
            raise ValueError(
                f"members: {len(self.names)} names, probabilities {self.probs.shape}, "
                f"decisions {self.decisions.shape}"
            )


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate (mean over members) and its 95 % interval."""

    point: float
    ci95: tuple[float, float] | None


@dataclass(frozen=True)
class Difference:
    """metric(b) - metric(a) on the same test patients: estimate, interval, p-value, and how
    many of the draws fell on the far side of 0 (the p-value's floor shows when it is 0)."""

    difference: float
    ci95: tuple[float, float]
    p_value: float
    draws: int
    beyond_zero: int


def _counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n): how often each of n items is taken by a draw of n with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def member_points(labels: np.ndarray, m: Members, metric: str) -> np.ndarray:
    """Each member's metric on all the test patients."""
    y = np.asarray(labels) == 1
    if not _computable(labels):  # one class: no AUC, no sensitivity or no specificity
        return np.full(len(m.names), np.nan)
    if metric == "auc":
        return np.array([auc(y.astype(int), p) for p in m.probs])
    sens = m.decisions[:, y].mean(axis=1)
    spec = (~m.decisions[:, ~y]).mean(axis=1)
    return 0.5 * (sens + spec)


def _member_draws(
    labels: np.ndarray, m: Members, metric: str, cp: np.ndarray, cn: np.ndarray
) -> np.ndarray:
    """(draws, members): each member's metric on each draw of patients, given the draws'
    counts of the positive (`cp`) and negative (`cn`) patients: the count-weighted
    Mann–Whitney statistic for AUC (ties one half), the count-weighted mean of sensitivity and
    specificity for balanced accuracy."""
    y = np.asarray(labels) == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if metric == "balanced_accuracy":
        sens = cp @ m.decisions[:, y].T.astype(np.float64) / n_pos
        spec = cn @ (~m.decisions[:, ~y]).T.astype(np.float64) / n_neg
        return 0.5 * (sens + spec)
    out = np.empty((cp.shape[0], len(m.names)))
    for k, p in enumerate(m.probs):
        pos, neg = p[y], p[~y]
        kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        out[:, k] = np.einsum("bj,bj->b", cp @ kernel, cn) / (n_pos * n_neg)
    return out


def _patient_draws(labels: np.ndarray, n: int, rng: np.random.Generator):
    y = np.asarray(labels) == 1
    return _counts(int(y.sum()), n, rng), _counts(int((~y).sum()), n, rng)


def _mean_over_members(values: np.ndarray, picks: np.ndarray | None) -> np.ndarray:
    """Each draw's mean over its drawn members (`picks`: (draws, members) counts), or over all
    members when `picks` is None."""
    if picks is None:
        return values.mean(axis=1)
    return np.einsum("bk,bk->b", values, picks) / picks.sum(axis=1)


def _computable(labels: np.ndarray) -> bool:
    return np.unique(np.asarray(labels)).size == 2


def _percentile(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def interval(
    labels: np.ndarray,
    m: Members,
    metric: str,
    *,
    n: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
    resample_members: bool = True,
) -> Estimate:
    """The mean over members of `metric` and its two-level bootstrap interval (patients and
    members resampled; `resample_members=False`: patients only). No interval with one class."""
    point = float(np.mean(member_points(labels, m, metric)))
    if not _computable(labels):
        return Estimate(point, None)
    rng = np.random.default_rng([seed, 0x7E57])
    cp, cn = _patient_draws(labels, n, rng)
    picks = _counts(len(m.names), n, rng) if resample_members else None
    draws = _mean_over_members(_member_draws(labels, m, metric, cp, cn), picks)
    return Estimate(point, _percentile(draws, level))


def paired_difference(
    labels: np.ndarray,
    a: Members,
    b: Members,
    metric: str = "auc",
    *,
    n: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference | None:
    """metric(b) - metric(a), both means over members, on the same test patients, with the
    two-level bootstrap's interval and p-value; None with one class."""
    if not _computable(labels):
        return None
    rng = np.random.default_rng([seed, 0x7E57, 1])
    cp, cn = _patient_draws(labels, n, rng)
    pick_a = _counts(len(a.names), n, rng)
    pick_b = pick_a if a.names == b.names else _counts(len(b.names), n, rng)
    va = _mean_over_members(_member_draws(labels, a, metric, cp, cn), pick_a)
    vb = _mean_over_members(_member_draws(labels, b, metric, cp, cn), pick_b)
    samples = vb - va
    observed = float(
        np.mean(member_points(labels, b, metric)) - np.mean(member_points(labels, a, metric))
    )
    below, above = int(np.sum(samples <= 0)), int(np.sum(samples >= 0))
    p = min(1.0, 2 * (min(below, above) + 1) / (n + 1))
    return Difference(observed, _percentile(samples, level), p, n, min(below, above))


def ensemble_auc(labels: np.ndarray, m: Members) -> float:
    """AUC of the members' mean probability: the fold models used together as one."""
    return auc(np.asarray(labels), m.probs.mean(axis=0))


def p_floor(draws: int) -> float:
    """The smallest p-value `paired_difference` can give with `draws` draws."""
    return 2 / (draws + 1)
