"""Shared fixtures: tiny NIfTI trees in the BraTS layouts, and a tiny learnable store. Plain
helper functions are in tests/helpers/."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.nifti import SHAPE, write_patient
from tests.helpers.stores import make_store


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


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny learnable store (`make_store`), made once per test module. The module's
    STORE_LABELS (default: 8 LGG/HGG pairs) and STORE_MASKS (default: no masks) shape it."""
    labels = getattr(request.module, "STORE_LABELS", None)
    masks = getattr(request.module, "STORE_MASKS", False)
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    return make_store(folder / "s.h5", labels=labels, masks=masks)
