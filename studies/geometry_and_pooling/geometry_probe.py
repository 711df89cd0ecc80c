"""What global pooling keeps of an untrained CNN's features as the in-plane geometry grows.

For each store given (the same phantoms at two geometries, e.g. 40x40 and 120x120), the
untrained CNN2 backbone (width 0.5, BatchNorm in training mode over batches of 8 patients, as
in training) embeds every modality volume, and the last block's map is reduced three ways:
global average (CNN2's embedding), global max, and flattened (every position kept, what CNN1's
FC layer reads). Reported per reduction: the cross-validated AUC of a logistic regression on
the features (5 stratified folds, standardised, L2 with C = 0.01 and 1), and for the average
the median over channels of its spread across patients relative to its mean (std / |mean|).

    python -m studies.geometry_and_pooling.geometry_probe STORE [STORE ...] [--seeds 2]

Results: studies/geometry_and_pooling/README.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from smri.config import ModelConfig
from smri.networks import build_model
from smri.store import StoreReader

BATCH = 8  # patients per forward pass (x 4 modalities), as the CPU demo's BatchNorm sees them


def features(path: str, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(patients, modalities, C, s, h, w) last-block maps of an untrained CNN2, the labels and
    the volume shape (S, H, W)."""
    with StoreReader(path) as reader:
        labels, (m, *shape) = reader.labels, reader.info.volume_shape
        n = len(reader)
        torch.manual_seed(seed)
        cfg = ModelConfig(name="cnn2", volume_shape=tuple(shape), width=0.5)
        backbone = build_model(cfg).cnn.backbone.train()
        maps = []
        with torch.no_grad():
            for i in range(0, n, BATCH):
                rows = range(i, min(i + BATCH, n))
                x = torch.from_numpy(reader.read_many(rows).astype(np.float32))
                out = backbone(x.reshape(-1, 1, *shape))
                maps.append(out.reshape(x.shape[0], m, *out.shape[1:]).numpy())
    return np.concatenate(maps), labels, tuple(shape)


def probe_auc(x: np.ndarray, y: np.ndarray, c: float) -> float:
    """Mean 5-fold AUC of a standardised L2 logistic regression on `x`."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="roc_auc").mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="preprocessed stores (smri preprocess)")
    parser.add_argument("--seeds", type=int, default=2, help="untrained networks per store")
    args = parser.parse_args()
    print("| store | in-plane | seed | positions pooled | spread of the average (median std/mean) "
          "| AUC average (C=0.01 / 1) | AUC max | AUC flattened |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for path in args.stores:
        for seed in range(args.seeds):
            maps, y, shape = features(path, seed)
            n = len(y)
            avg = maps.mean(axis=(3, 4, 5))  # (n, modalities, C)
            spread = np.median(avg.std(axis=0) / (np.abs(avg.mean(axis=0)) + 1e-8))
            sets = {
                "avg": avg.reshape(n, -1),
                "max": maps.max(axis=(3, 4, 5)).reshape(n, -1),
                "flat": maps.reshape(n, -1),
            }
            auc = {k: [probe_auc(x, y, c) for c in (0.01, 1.0)] for k, x in sets.items()}
            cells = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in auc.values())
            d, h, w = maps.shape[3:]
            print(f"| {path} | {shape[1]}×{shape[2]} | {seed} | {d * h * w} ({d}×{h}×{w}) "
                  f"| {spread:.3f} | {cells} |")  # fmt: skip


if __name__ == "__main__":
    main()
