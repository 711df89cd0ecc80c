"""Shared fixtures: tiny NIfTI trees in every input layout, and tiny stores."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

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
) -> dict[str, np.ndarray]:
    """A patient folder with the four modalities (and a segmentation); returns the arrays."""
    vols = patient_volumes(seed, shape)
    for m, data in vols.items():
        write_nifti(folder / f"{pid}_{m}{ext}", data)
    if seg:
        write_nifti(folder / f"{pid}_seg{ext}", np.zeros(shape, dtype=np.uint8))
    return vols


def write_cohort(root: Path) -> Path:
    """A three-patient BraTS 2019 tree (2 HGG, 1 LGG) under `root`."""
    for cls, n in (("HGG", 2), ("LGG", 1)):
        for i in range(n):
            pid = f"BraTS19_{cls}_{i:03d}_1"
            write_patient(root / cls / pid, pid, i + (10 if cls == "LGG" else 0))
    return root


@pytest.fixture
def brats2019(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, tuple[int, dict]]]]:
    """Factory: a BraTS 2018/2019 tree ``ROOT/{HGG,LGG}/<pid>/``; returns root and truth."""

    def make(
        n_hgg: int = 3,
        n_lgg: int = 2,
        ext: str = ".nii.gz",
        shape: tuple[int, int, int] = SHAPE,
        name: str = "brats19",
    ):
        root = tmp_path / name
        truth = {}
        for cls, label, n in (("HGG", 1, n_hgg), ("LGG", 0, n_lgg)):
            for i in range(n):
                pid = f"BraTS19_{cls}_{i:03d}_1"
                seed = 100 * label + i
                truth[pid] = (label, write_patient(root / cls / pid, pid, seed, ext, shape))
        return root, truth

    return make


@pytest.fixture
def brats2020(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, tuple[int, dict]]]]:
    """Factory: a BraTS 2020 tree (flat folders + name_mapping.csv); returns root and truth."""

    def make(n: int = 5, ext: str = ".nii.gz", shape: tuple[int, int, int] = SHAPE):
        root = tmp_path / "brats20"
        truth = {}
        rows = []
        for i in range(n):
            pid = f"BraTS20_Training_{i + 1:03d}"
            label = int(i % 3 != 0)
            truth[pid] = (label, write_patient(root / pid, pid, 1000 + i, ext, shape))
            rows.append(
                {
                    "Grade": "HGG" if label else "LGG",
                    "BraTS_2017_subject_ID": "NA",
                    "BraTS_2018_subject_ID": "NA",
                    "TCGA_TCIA_subject_ID": "NA",
                    "BraTS_2019_subject_ID": "NA",
                    "BraTS_2020_subject_ID": pid,
                }
            )
        with open(root / "name_mapping.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return root, truth

    return make


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


def direct_io_works(directory: Path) -> bool:
    """Whether files in `directory` can be opened with O_DIRECT (the store's chunk writes)."""
    probe = directory / ".o_direct_probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()


def placed(path: Path) -> bool:
    """Whether a store's image chunks were allocated up front (the O_DIRECT layout)."""
    with h5py.File(path) as f:
        return f["images"].id.get_create_plist().get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
