"""A file that changes while smri reads it is never stored as a mixture of two versions.

The streamed reader takes a volume's header first and its voxels later; the whole-volume reader
reads the bytes once. Each read goes through one open file whose state (inode, size,
modification and change time) is compared with the header's and again after the voxels: a
file replaced (int16 <-> float32), truncated or written in between skips its patient with the
reason; the other patients are stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import smri
import smri.preprocessing.patient as patient_module
import smri.volume.nifti as nifti
from smri.errors import DataError
from smri.volume import load_volume, open_volume
from tests.helpers.nifti import MODALITIES, SHAPE, write_cohort, write_nifti

CHANGED = "changed while smri read it"


def volume(path: Path, dtype: type, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        data = rng.random(SHAPE).astype(dtype) * 100
    else:
        data = rng.integers(-32768, 32767, SHAPE).astype(dtype)
    return write_nifti(path, data)


def slab_of(src) -> np.ndarray:
    out = np.empty((16, SHAPE[1], SHAPE[0]), np.float32)
    src.normalized_slab_into(16, out)
    return out


@pytest.mark.parametrize(("first", "then"), [(np.int16, np.float32), (np.float32, np.int16)])
def test_a_file_replaced_between_header_and_voxels_is_refused(tmp_path, first, then):
    path = volume(tmp_path / "t1.nii.gz", first)
    other = volume(tmp_path / "other.nii.gz", then, seed=1)
    src = open_volume(path)  # the header of the first version
    os.replace(other, path)  # what a copy tool or a re-export does
    with pytest.raises(DataError, match=f"{path}: {CHANGED}"):
        slab_of(src)


def test_a_file_truncated_after_its_header_was_read_is_refused(tmp_path):
    path = volume(tmp_path / "t1.nii", np.int16)  # uncompressed: truncated in place
    src = open_volume(path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError, match=f"{path}: {CHANGED}"):
        slab_of(src)


def test_a_file_written_in_place_counts_as_changed(tmp_path):
    path = volume(tmp_path / "t1.nii.gz", np.int16)
    src = open_volume(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError, match=CHANGED):
        slab_of(src)


def test_a_file_changing_during_a_whole_read_is_refused(tmp_path, monkeypatch):
    """The whole-volume reader (scaled, reoriented volumes, `smri show`) reads through one
    open file and compares its state after the read."""
    path = volume(tmp_path / "t1.nii.gz", np.int16)
    read = nifti._inflated_bytes

    def then_touch(*args):
        data = read(*args)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return data

    monkeypatch.setattr(nifti, "_inflated_bytes", then_touch)
    with pytest.raises(DataError, match=f"{path}: {CHANGED}"):
        load_volume(path, canonical=True)


def test_an_unchanged_file_reads_as_before(tmp_path):
    path = volume(tmp_path / "t1.nii.gz", np.float32)
    expected = nib.load(path).get_fdata(dtype=np.float32)
    got = slab_of(open_volume(path))
    v = (expected - expected.min()) / (expected.max() - expected.min() + 1e-8)
    np.testing.assert_allclose(got, v[:, :, 12:28].T, rtol=0, atol=1e-7)


def test_preprocess_skips_only_the_patient_whose_file_changed(tmp_path, monkeypatch):
    root = write_cohort(tmp_path / "in")
    victim = root / "HGG" / "BraTS19_HGG_001_1" / "BraTS19_HGG_001_1_t1.nii.gz"
    other = volume(tmp_path / "float.nii.gz", np.float32, seed=3)
    opened = patient_module.open_volume

    def swap_after_header(path, **kw):
        src = opened(path, **kw)
        if Path(path) == victim:
            os.replace(other, victim)  # the int16 file becomes a float32 one
        return src

    monkeypatch.setattr(patient_module, "open_volume", swap_after_header)
    lines = []
    summary = smri.preprocess(root, tmp_path / "s.h5", jobs=1, log=lines.append)
    assert summary.n_written == 2
    (skipped,) = summary.skipped
    assert skipped["patient_id"] == "BraTS19_HGG_001_1"
    assert CHANGED in skipped["reason"]
    with smri.store.StoreReader(tmp_path / "s.h5") as reader:
        assert reader.patient_ids == ["BraTS19_HGG_000_1", "BraTS19_LGG_000_1"]
        assert len(reader.meta(0)["intensity_min"]) == len(MODALITIES)
