"""Metrics: numbers from labels, probabilities and arrays; no file, no store, no torch.

`classification` scores a binary classifier (accuracy, AUC, sensitivity, ...); `stats` gives
their uncertainty (intervals across folds, patient bootstraps, paired comparisons); `baseline`
is the intensity logistic regression a CNN must beat (features of a slab, fit and predict).
"""

from smri.metrics.baseline import FEATURES_PER_MODALITY, fit_predict, intensity_features
from smri.metrics.classification import METRIC_NAMES, binary_metrics, roc_auc, roc_curve
from smri.metrics.stats import fold_interval

__all__ = [
    "FEATURES_PER_MODALITY",
    "METRIC_NAMES",
    "binary_metrics",
    "fit_predict",
    "fold_interval",
    "intensity_features",
    "roc_auc",
    "roc_curve",
]
