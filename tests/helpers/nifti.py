"""Tiny NIfTI trees: patients with the four modalities, BraTS cohorts, and the seed's method in
numpy to check a store against (`expected_images`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
SHAPE = (20, 24, 40)  # (X, Y, Z): tiny, non-square so axis mix-ups show


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save `data` as a NIfTI-1 file (.nii or .nii.gz by the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def patient_volumes(
    seed: int, shape: tuple[int, int, int] = SHAPE, dtype: type = np.int16
) -> dict[str, np.ndarray]:
    """Random volumes per modality with distinct ranges, so normalisation is not a no-op."""
    rng = np.random.default_rng(seed)
    vols = {}
    for k, m in enumerate(MODALITIES):
        lo = int(rng.integers(-50, 50))
        vols[m] = rng.integers(lo, lo + 500 * (k + 1), size=shape).astype(dtype)
    return vols


def write_patient(
    folder: Path,
    pid: str,
    seed: int,
    ext: str = ".nii.gz",
    shape: tuple[int, int, int] = SHAPE,
    seg: bool = True,
    affine: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A patient folder with the four modalities (and a segmentation), all with `affine`
    (default: identity); returns the arrays."""
    vols = patient_volumes(seed, shape)
    for m, data in vols.items():
        write_nifti(folder / f"{pid}_{m}{ext}", data, affine)
    if seg:
        write_nifti(folder / f"{pid}_seg{ext}", np.zeros(shape, dtype=np.uint8), affine)
    return vols


def write_cohort(root: Path) -> Path:
    """A three-patient BraTS 2019 tree (2 HGG, 1 LGG) under `root`."""
    for cls, n in (("HGG", 2), ("LGG", 1)):
        for i in range(n):
            pid = f"BraTS19_{cls}_{i:03d}_1"
            write_patient(root / cls / pid, pid, i + (10 if cls == "LGG" else 0))
    return root


def expected_images(
    vols: dict[str, np.ndarray], slices: int = 16, dtype: str = "float16"
) -> np.ndarray:
    """The seed's method, directly in numpy: min–max in float32, central slab, (M, S, H, W)."""
    out = []
    for m in MODALITIES:
        v = vols[m].astype(np.float32)
        v = (v - v.min()) / (v.max() - v.min() + 1e-8)
        start = (v.shape[2] - slices) // 2
        out.append(v[:, :, start : start + slices].T)
    return np.stack(out).astype(dtype)
