"""How hard a cohort is without a CNN: the intensity baseline's features of a phantom after
the preprocessing, and that baseline's cross-validated ROC AUC (docs/demo-data.md)."""

from __future__ import annotations

import numpy as np

from smri.phantoms.anatomy import MODALITIES, SLAB, make_phantom


def phantom_features(seed: int, index: int, grade: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Intensity-baseline features of one phantom after the preprocessing (min–max, central
    slab): `smri.metrics.baseline.intensity_features`."""
    from threadpoolctl import threadpool_limits

    from smri.metrics import intensity_features
    from smri.volume import central_slab, minmax_normalize

    with threadpool_limits(limits=1):
        ph = make_phantom(seed, index, grade, shape)
    slab = np.stack([central_slab(minmax_normalize(ph.volumes[m]), SLAB) for m in MODALITIES])
    return intensity_features(slab)


def stats_only_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of the intensity baseline (`smri.metrics.baseline`; 5 folds,
    4 repeats)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from smri.metrics import fit_predict

    aucs = []
    for rep in range(4):
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed + rep)
        scores = np.zeros(len(labels))
        for train, test in folds.split(features, labels):
            scores[test] = fit_predict(features, labels, train, test)
        aucs.append(roc_auc_score(labels, scores))
    return float(np.mean(aucs))
