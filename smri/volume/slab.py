"""The study's array operations on a volume: min–max, central slab, cast (pure functions).

Arrays in, arrays out, shapes in the docstrings. The seed's method, which the tests check
against a direct numpy computation::

    v = vol.astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min() + 1e-8)
    start = (D - S) // 2
    out = v[:, :, start:start + S].T          # (S, H, W) = NIfTI axes (k, j, i)

`normalized_slab` gives the same bits while doing the float maths on the slab only (min and
max are taken on the raw array: rounding to float32 is monotonic, so they agree).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8
CAST_CHUNK = 32768  # elements per float16 conversion: torch runs a copy this small inline


def label_slab(seg: np.ndarray, slices: int) -> tuple[np.ndarray, int, int]:
    """A segmentation's central slab as stored beside the images, and its tumour voxel counts.

    `seg` is ``(X, Y, Z)`` labels (any integer or float type holding whole numbers 0..255).
    Returns the ``(S, Y, X)`` uint8 slab (`central_slab`'s crop and axis order, labels
    unchanged) and the voxels with label > 0 in the whole volume and in the slab. ValueError
    naming the values when a label is not a whole number in 0..255.
    """
    slab = central_slab(seg, slices)
    if seg.dtype != np.uint8:
        bad = (slab < 0) | (slab > 255) | (slab != np.round(slab))
        if bad.any():
            raise ValueError(
                f"labels must be whole numbers 0..255; found {float(slab[bad].ravel()[0]):g} "
                "in the slab"
            )
    total = np.count_nonzero(seg) if seg.dtype.kind == "u" else np.count_nonzero(seg > 0)
    out = np.ascontiguousarray(slab, dtype=np.uint8)
    return out, int(total), int(np.count_nonzero(out))


def slab_start(depth: int, slices: int) -> int:
    """First slice of the central `slices`-slice slab of a depth-`depth` axis (the seed's rule)."""
    return (depth - slices) // 2


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1] over the whole array, in float32: ``(x - min) / (max - min + 1e-8)``."""
    v = np.asarray(x, dtype=np.float32)
    return (v - v.min()) / (v.max() - v.min() + EPS)


def flat_note(lo: float, hi: float) -> str | None:
    """What to warn of a volume whose intensities `lo`..`hi` the min-max flattens (None: it
    does not): a constant volume, one whose values float32 cannot tell apart, or one whose
    range is below the 1e-8 added to it (a float32 volume spanning 1e-30 becomes zeros just
    as a constant one does, and is warned of alike)."""
    if hi == lo:
        return f"is constant ({lo:g}); normalised to zeros"
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if hi32 == lo32:
        return (
            f"is constant in float32 ({lo:.9g} to {hi:.9g}, closer than float32 tells apart); "
            "normalised to zeros"
        )
    top = float((hi32 - lo32) / (hi32 - lo32 + np.float32(EPS)))
    if top < 0.5:
        return (
            f"spans only {hi - lo:.3g} ({lo:g} to {hi:g}), less than the min-max's +{EPS:g}; "
            f"normalised to nearly zeros (at most {top:.2g})"
        )
    return None


def central_slab(vol: np.ndarray, slices: int) -> np.ndarray:
    """The central `slices` slices of the third axis, transposed: ``(X, Y, Z) -> (S, Y, X)``."""
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    depth = vol.shape[2]
    if depth < slices:
        raise ValueError(f"volume has {depth} slices, fewer than the {slices} asked for")
    start = slab_start(depth, slices)
    return vol[:, :, start : start + slices].T


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with numpy's rounding (to nearest, ties to even).

    float32 -> float16, the store's default, goes through torch's vectorised conversion:
    bit-identical to numpy's (tested) and many times faster than numpy's scalar loop (gain in
    benchmarks/RESULTS.md). It runs in pieces of CAST_CHUNK elements, each below torch's
    parallel grain (32768), so it stays on the calling thread: a whole-slab copy wakes torch's
    OpenMP pool, whose threads then spin on the cores the other preprocessing workers need.
    """
    if (
        dst.dtype == np.float16
        and src.dtype == np.float32
        and dst.shape == src.shape
        and dst.flags.c_contiguous
        and src.flags.c_contiguous
    ):
        import torch  # only float16 stores need it; imported once, on first use

        pieces = zip(
            torch.from_numpy(dst.reshape(-1)).split(CAST_CHUNK),
            torch.from_numpy(src.reshape(-1)).split(CAST_CHUNK),
            strict=True,
        )
        for d, s in pieces:
            d.copy_(s)
    else:
        dst[...] = src


def normalized_slab(
    vol: np.ndarray, slices: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """`central_slab(minmax_normalize(vol), slices)` bit for bit, with float maths on the slab only.

    Returns the ``(S, Y, X)`` float32 slab (written into `out` when given) and the min and max
    of the whole volume.
    """
    lo, hi = vol.min(), vol.max()
    slab = central_slab(vol, slices)
    if out is None:
        out = np.empty(slab.shape, dtype=np.float32)
    normalize_into(out, slab, lo, hi)
    return out, float(lo), float(hi)


def normalize_into(out: np.ndarray, x: np.ndarray, lo: object, hi: object) -> None:
    """``out = (float32(x) - float32(lo)) / (float32(hi) - float32(lo) + 1e-8)`` in float32.

    The seed's min-max with the volume's `lo` and `hi` (taken on the raw values: rounding to
    float32 is monotonic, so they agree with the seed's min and max of the float32 volume).
    `out` is float32 with `x`'s shape.
    """
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if x is not out:
        out[...] = x  # the seed's astype(float32); a plain cast, 3x faster than a casting ufunc
    np.subtract(out, lo32, out=out)
    np.divide(out, hi32 - lo32 + np.float32(EPS), out=out)
