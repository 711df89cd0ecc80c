"""Writing NIfTI files: the demo cohort's volumes and results placed back on a scan's grid."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from smri.atomic import atomic_path


def nifti_bytes(data: np.ndarray, affine: np.ndarray, compress: bool, description: str) -> bytes:
    """A NIfTI-1 file's bytes (millimetres, the affine as both qform and sform with the scanner
    code); gzip (level 1, mtime 0, no name) when `compress`, so the same input gives the same
    bytes.

    zlib, not ISA-L: ISA-L's deflate was 6x faster but not deterministic across processes (the
    same volume compressed in a pytest process and in a joblib worker gave streams of 36,198
    and 36,194 bytes with the same content), which broke "same seed, same bytes". zlib level 1
    is also what nibabel and most tools write, so the demo's streams are like real BraTS files.
    """
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    raw = img.to_bytes()
    if not compress:
        return raw
    return gzip.compress(raw, compresslevel=1, mtime=0)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, description: str) -> Path:
    """Write `data` with `affine` to `path` (``.nii`` or ``.nii.gz``), beside and renamed into
    place; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(nifti_bytes(data, affine, path.name.endswith(".gz"), description))
    return path
