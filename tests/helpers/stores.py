"""Tiny stores: learnable ones written directly (`make_store`, class 1 patients carry a bright
blob), preprocessing run in-process (`preprocessing_runner`), a version-1 store, and checks on
how a store was written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from smri.preprocessing import PreprocessConfig, run_preprocess
from smri.store import StoreWriter
from tests.helpers.cli import quiet

SHAPE = (4, 16, 32, 32)  # (M, S, H, W): the smallest volume the four poolings accept
CONFIG = {
    "modalities": ["flair", "t1", "t1ce", "t2"],
    "slices": 16,
    "dtype": "float16",
    "compression": "none",
    "canonical": False,
    "classes": {"LGG": 0, "HGG": 1},
}


def make_store(
    path: Path,
    labels: list[int] | None = None,
    shape: tuple[int, int, int, int] = SHAPE,
    seed: int = 0,
    modalities: tuple[str, ...] = ("flair", "t1", "t1ce", "t2"),
    masks: bool = False,
) -> Path:
    """A store of noise volumes; class-1 patients get a bright cube, so the task is learnable.

    With `masks`, every patient has a mask: the cube (label 1) for class 1, none for class 0.
    """
    labels = [0, 1] * 8 if labels is None else labels
    rng = np.random.default_rng(seed)
    _, s, h, w = shape
    with StoreWriter(
        path,
        n_patients=len(labels),
        volume_shape=shape,
        dtype="float16",
        compression=None,
        modalities=modalities,
        classes={"LGG": 0, "HGG": 1},
        config={**CONFIG, "modalities": list(modalities), "slices": s},
    ) as writer:
        for i, label in enumerate(labels):
            images = rng.random(shape, dtype=np.float32) * 0.5
            mask = np.zeros(shape[1:], dtype=np.uint8)
            if label == 1:
                z, y, x = rng.integers(0, [s - 6, h - 10, w - 10])
                images[:, z : z + 6, y : y + 10, x : x + 10] += 0.5
                mask[z : z + 6, y : y + 10, x : x + 10] = 1
            n = int(mask.sum())
            meta = {"has_mask": True, "tumour_voxels": n, "tumour_voxels_in_slab": n}
            writer.write(i, images=images, label=label, patient_id=f"P{i:03d}",
                         meta=meta if masks else None, mask=mask if masks else None)  # fmt: skip
    return path


def preprocessing_runner(cfg: PreprocessConfig, *, keep_lines: bool = False) -> Callable[..., Any]:
    """`run(root, out, cfg=cfg, **kw)`: `run_preprocess` in-process with one job (unless `jobs=`),
    no progress bar and its lines swallowed; it returns the summary, or with `keep_lines` the
    summary and the lines it printed."""

    def run(root: Path, out: Path, cfg: PreprocessConfig = cfg, **kw: Any) -> Any:
        kw.setdefault("jobs", 1)
        lines: list[str] = []
        echo = lines.append if keep_lines else quiet
        summary = run_preprocess(root, out, cfg, echo=echo, progress=False, **kw)
        return (summary, lines) if keep_lines else summary

    return run


def to_version_2(path):
    """Rewrite a store as smri wrote schema version 2: no affine or slab start, spacing in
    NIfTI order (x, y, z)."""
    with h5py.File(path, "a") as f:
        del f["meta/affine"], f["meta/slab_start"]
        f["meta/spacing"][...] = f["meta/spacing"][:][:, :, ::-1]
        f.attrs["schema_version"] = 2
    return path


def to_version_1(path):
    """Rewrite a store as smri wrote schema version 1: without the keys versions 2 and 3 added."""
    to_version_2(path)
    with h5py.File(path, "a") as f:
        del f["masks"]
        for key in ("has_mask", "tumour_voxels", "tumour_voxels_in_slab", "axis_codes"):
            del f["meta"][key]
        f.attrs["schema_version"] = 1
    return path


def same_store(a: Path, b: Path) -> None:
    """Two stores hold the same images, labels and patient ids, byte for byte."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa["images"][:].tobytes() == fb["images"][:].tobytes()
        assert fa["labels"][:].tobytes() == fb["labels"][:].tobytes()
        assert list(fa["patient_id"].asstr()[:]) == list(fb["patient_id"].asstr()[:])


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
