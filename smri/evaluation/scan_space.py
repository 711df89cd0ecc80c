"""A patient's saliency written back onto its scan's voxel grid, as a NIfTI file.

The store records where each slab lies in its scan (schema version 3: each volume's affine and
the slab's start), so the slab's values can be placed back: one 4-D NIfTI per patient, the
scan's three axes and then one volume per modality in the store's order, with the scan's
affine and zeros outside the slab. It overlays the patient's own files in ITK-SNAP or 3D
Slicer (on the grid the store was made from: the reoriented RAS grid after `--canonical`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smri.errors import DataError
from smri.store import StoreReader
from smri.volume import scan_affine, to_scan_grid, write_nifti

SUFFIX = "_saliency.nii.gz"


def check_placements(reader: StoreReader) -> None:
    """DataError when the store cannot say where its slabs lie (before schema version 3)."""
    if reader.version < 3:
        raise DataError(
            f"{reader.path}: a schema v{reader.version} store records no affine or slab start, "
            "so saliency cannot be put back on the scans; make it again with `smri preprocess` "
            "(or leave out --nifti)"
        )


def write_saliency_nifti(reader: StoreReader, row: int, values: np.ndarray, path: Path) -> Path:
    """Write `values` ``(M, S, H, W)`` (a patient's saliency, in the store's layout) on the
    scan's grid to `path`; DataError saying why it cannot be placed (unknown or differing
    geometry of the patient's volumes)."""
    meta = reader.meta(row)
    pid = reader.patient_ids[row]
    affines = np.asarray(meta["affine"], dtype=np.float64)
    starts, shapes = meta["slab_start"], [tuple(s) for s in meta["original_shape"]]
    place = reader.placement(row)
    if not place.known:
        raise DataError(f"patient {pid}: the store records no usable affine for its scan")
    if len(set(shapes)) > 1 or len(set(starts)) > 1 or not np.allclose(affines, affines[0]):
        raise DataError(
            f"patient {pid}: its volumes lie on different grids (shapes {shapes}), so their "
            "saliency does not fit one 4-D NIfTI"
        )
    try:
        data = to_scan_grid(values.astype(np.float32), place.slab_start, shapes[0])
    except ValueError as exc:
        raise DataError(f"patient {pid}: {exc}") from None
    return write_nifti(
        path, data, scan_affine(place.affine, place.slab_start), "smri explain saliency"
    )
