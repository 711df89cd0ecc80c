"""How hard is the synth cohort for a classifier that sees only global intensity statistics?

Generates phantoms in memory (no files), applies the preprocessing (min–max over the volume,
central 32-slice slab), computes per-modality mean/std/max/percentiles and reports the
cross-validated AUC of a logistic regression on them. Target: <= 0.75 (the CNNs must have to
look at spatial structure).

    python benchmarks/bench_synth_difficulty.py [N [X Y Z [SEED [HGG_FRACTION]]]]

Defaults: 80 patients, 96x96x155 (BraTS depth, so the slab spans the same 32 mm), seed 0, 0.5.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from joblib import Parallel, delayed

from smri.phantoms import SynthConfig, cohort, phantom_features, stats_only_auc


def measure(
    n: int, shape: tuple[int, int, int], seed: int, fraction: float = 0.5, jobs: int = -1
) -> dict[str, float]:
    """Stats-only AUC and timing for an `n`-patient cohort of `shape`."""
    cfg = SynthConfig(patients=n, shape=shape, seed=seed, hgg_fraction=fraction)
    specs = cohort(cfg)
    t0 = time.perf_counter()
    feats = Parallel(n_jobs=jobs)(
        delayed(phantom_features)(seed, s.index, s.grade, shape) for s in specs
    )
    seconds = time.perf_counter() - t0
    labels = np.array([s.label for s in specs])
    return {
        "auc": stats_only_auc(np.array(feats), labels, seed),
        "seconds": seconds,
        "n_hgg": int(labels.sum()),
        "n": n,
    }


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 80
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else (96, 96, 155)
    seed = int(argv[4]) if len(argv) >= 5 else 0
    fraction = float(argv[5]) if len(argv) >= 6 else 0.5
    r = measure(n, shape, seed, fraction)
    print("| cohort | shape | seed | stats-only LR AUC (5-fold x4) | generation s |")
    print("|---|---|---|---|---|")
    print(
        f"| {r['n']} ({r['n_hgg']} HGG) | {'x'.join(map(str, shape))} | {seed} "
        f"| {r['auc']:.3f} | {r['seconds']:.1f} |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
