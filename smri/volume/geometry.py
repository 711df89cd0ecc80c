"""Where a stored slab lies in its scan: affines between the store's axes and the scan's.

The store keeps each volume as its central slab in the axis order (slice, y, x), that is NIfTI
voxel axes (k, j, i) with k counted from the slab's start (`slab.central_slab`). A voxel index
``(s, y, x)`` of the slab is the scan's voxel ``(i, j, k) = (x, y, s + start)``, so the slab's
own affine is the scan's affine times that index map; the map inverts exactly, which is how a
result computed on the slab (a saliency map) is put back on the scan's grid.
"""

from __future__ import annotations

import numpy as np


def slab_to_scan(start: int) -> np.ndarray:
    """The 4x4 map from a slab voxel index ``(s, y, x, 1)`` to the scan's ``(i, j, k, 1)``."""
    return np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, start], [0, 0, 0, 1]], dtype=np.float64)


def stored_affine(scan_affine: np.ndarray, start: int) -> np.ndarray:
    """The affine of the stored slab's voxel indices (slice, y, x) to scanner millimetres,
    from its scan's NIfTI affine and the slab's first slice `start`."""
    return np.asarray(scan_affine, dtype=np.float64) @ slab_to_scan(start)


def scan_affine(stored: np.ndarray, start: int) -> np.ndarray:
    """The scan's NIfTI affine back from a stored slab's (`stored_affine`'s inverse)."""
    return np.asarray(stored, dtype=np.float64) @ np.linalg.inv(slab_to_scan(start))


def to_scan_grid(values: np.ndarray, start: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-modality slab values ``(M, S, H, W)`` placed on the scan's voxel grid: a
    ``(X, Y, Z, M)`` float32 array (NIfTI's axes, then one volume per modality), zero outside
    the slab. ValueError when the slab does not fit the scan's `shape`."""
    m, s, h, w = values.shape
    x, y, z = shape
    if (w, h) != (x, y) or not 0 <= start <= z - s:
        raise ValueError(
            f"a {s}x{h}x{w} slab from slice {start} does not fit a scan of shape {tuple(shape)}"
        )
    out = np.zeros((x, y, z, m), dtype=np.float32)
    for k in range(m):
        out[:, :, start : start + s, k] = values[k].T  # (S, Y, X) -> (X, Y, S)
    return out
