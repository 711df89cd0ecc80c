"""The intensity baseline: a logistic regression on global intensity statistics of the slabs.

A CNN that cannot beat a linear model of a few per-modality statistics has not shown that it
uses spatial structure. The same features and model calibrate the demo cohort's difficulty
(`smri.synth.stats_only_auc`) and sit beside the CNNs in `smri plot` (fitted on each fold's
training patients, scored on its validation patients). scikit-learn does the fitting. Arrays
in, arrays out: reading a store's slabs is `smri.comparison.store_features`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 75, 90, 95, 99, 99.9)
FEATURES_PER_MODALITY = 3 + len(PERCENTILES)


def intensity_features(slab: np.ndarray) -> np.ndarray:
    """(M, S, H, W) normalised slab -> (M * 9,): per modality the mean, std, max and the
    50/75/90/95/99/99.9th percentiles over the whole slab."""
    flat = slab.reshape(slab.shape[0], -1).astype(np.float32)
    pct = np.percentile(flat, PERCENTILES, axis=1).T
    stats = np.stack([flat.mean(1), flat.std(1), flat.max(1)], axis=1)
    return np.concatenate([stats, pct], axis=1).ravel()


def fit_predict(
    features: np.ndarray, labels: np.ndarray, train: Sequence[int], test: Sequence[int]
) -> np.ndarray:
    """Probability of class 1 for the `test` rows of a standardised logistic regression fitted
    on the `train` rows only (C = 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = np.asarray(train), np.asarray(test)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(features[train], labels[train])
    return model.predict_proba(features[test])[:, 1]
