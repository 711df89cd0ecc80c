"""Slabs as pictures: every slice of a slab tiled into one image, cropped to the head.

Used by the figures of `smri show` (the montage) and `smri explain` (images and saliency).
"""

from __future__ import annotations

import math

import numpy as np


def mosaic(slab: np.ndarray, columns: int) -> np.ndarray:
    """Tile an (S, H, W) slab row-major into one (rows*H, columns*W) image (blank tiles at 0)."""
    s, h, w = slab.shape
    rows = math.ceil(s / columns)
    out = np.zeros((rows * h, columns * w), dtype=np.float32)
    for k in range(s):
        r, c = divmod(k, columns)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = slab[k]
    return out


def content_box(slab: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """(H, W) slices around the non-zero voxels of an (M, S, H, W) slab (all of it if empty)."""
    any_hw = (slab != 0).any(axis=(0, 1))
    rows, cols = np.flatnonzero(any_hw.any(axis=1)), np.flatnonzero(any_hw.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = any_hw.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)),
    )
