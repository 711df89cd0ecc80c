"""4D NIfTI files (the Medical Segmentation Decathlon's modalities on the fourth axis): each
volume's min-max and central slab against a direct numpy computation, one reading per file,
and 3D files still streamed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import smri.preprocessing.patient as patient_module
import smri.volume.nifti as nifti
from smri.discovery import Patient
from smri.errors import DataError, PatientError
from smri.preprocessing import PreprocessConfig, load_patient
from smri.volume import load_volume, load_volumes, open_volume, open_volumes
from tests.helpers.nifti import write_nifti

SHAPE4 = (20, 24, 40, 4)  # (X, Y, Z, modality), as MSD's imagesTr/BRATS_001.nii.gz


def direct(vol: np.ndarray, slices: int) -> np.ndarray:
    """The seed's method in numpy: min-max in float32, central slab, (S, Y, X)."""
    v = vol.astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min() + 1e-8)
    start = (v.shape[2] - slices) // 2
    return v[:, :, start : start + slices].T


def four_d(seed: int = 0, dtype: type = np.int16) -> np.ndarray:
    """Four volumes of distinct ranges stacked on the fourth axis."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.integers(-100 * k, 300 + 700 * k, size=SHAPE4[:3]) for k in range(4)], axis=-1
    ).astype(dtype)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_each_volume_of_a_4d_file_is_its_own_min_max_and_slab(tmp_path, ext, dtype):
    data = four_d(1, dtype) if dtype != np.uint8 else four_d(1, np.int16).clip(0, 255)
    data = data.astype(dtype)
    affine = np.diag([1.5, 0.75, 2.5, 1.0])
    path = write_nifti(tmp_path / f"BRATS_001{ext}", data, affine)
    volumes = load_volumes(path)
    assert len(volumes) == 4
    for k, vol in enumerate(volumes):
        assert vol.data.shape == SHAPE4[:3] and vol.data.dtype == dtype
        assert np.array_equal(vol.data, data[..., k])
        assert vol.spacing == (1.5, 0.75, 2.5) and np.array_equal(vol.affine, affine)
    for out_dtype in (np.float32, np.float16):
        for k, source in enumerate(open_volumes(path)):
            assert source.shape == SHAPE4[:3] and not source.streamed
            out = np.empty((16, 24, 20), out_dtype)
            lo, hi = source.normalized_slab_into(16, out)
            assert (lo, hi) == (float(data[..., k].min()), float(data[..., k].max()))
            assert np.array_equal(out, direct(data[..., k], 16).astype(out_dtype))


def test_scaled_and_reoriented_4d_files_match_nibabel(tmp_path):
    data = four_d(2)
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS: reoriented by canonical
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    loaded = nib.load(str(path))
    want = np.asanyarray(loaded.dataobj)
    canonical = np.asanyarray(nib.as_closest_canonical(loaded).dataobj)
    for k, (plain, ras) in enumerate(
        zip(load_volumes(path), load_volumes(path, canonical=True), strict=True)
    ):
        assert np.array_equal(plain.data, want[..., k])
        assert np.array_equal(ras.data, canonical[..., k])
        assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")


def test_a_3d_file_is_one_volume_and_still_streamed(tmp_path):
    vol = four_d(3)[..., 0]
    path = write_nifti(tmp_path / "t1.nii.gz", vol)
    (only,) = load_volumes(path)
    assert np.array_equal(only.data, load_volume(path).data)
    assert open_volume(path).streamed  # the streamed reader keeps 3D files
    single = write_nifti(tmp_path / "one.nii.gz", vol[..., None])  # (X, Y, Z, 1)
    assert [v.data.shape for v in load_volumes(single)] == [SHAPE4[:3]]


def test_4d_errors_name_the_file(tmp_path):
    path = write_nifti(tmp_path / "BRATS_002.nii.gz", four_d(4))
    with pytest.raises(DataError, match=r"BRATS_002.nii.gz: expected a 3D volume, got 4D"):
        open_volume(path)  # a 3D reader never takes one volume of a 4D file silently
    five = write_nifti(tmp_path / "five.nii.gz", np.zeros((4, 4, 4, 2, 2), np.int16))
    with pytest.raises(DataError, match=r"five.nii.gz: expected a 3D or 4D volume, got 5D"):
        load_volumes(five)
    bad = four_d(5).astype(np.float32)
    bad[1, 2, 3, 2] = np.nan
    nan = write_nifti(tmp_path / "nan.nii.gz", bad)
    with pytest.raises(DataError, match=r"nan.nii.gz: 1 voxel is NaN or Inf"):
        load_volumes(nan)


def msd_patient(path: Path, channels: tuple[int, ...], seg: tuple[Path, ...] = ()) -> Patient:
    return Patient("BRATS_001", 1, (path,) * len(channels), path.parent, seg, channels)


def test_load_patient_reads_a_4d_file_once_in_the_modalities_order(tmp_path, monkeypatch):
    data = four_d(6)
    path = write_nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz", data)
    seg = np.zeros(SHAPE4[:3], np.uint8)
    seg[5:9, 6:12, 15:25] = 2
    seg_path = write_nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz", seg)
    reads: list[Path] = []
    real = nifti.read_nifti_bytes
    monkeypatch.setattr(nifti, "read_nifti_bytes", lambda p: reads.append(p) or real(p))
    cfg = PreprocessConfig(slices=16, modalities=("t2", "flair", "t1ce"), dtype="float32")
    res = load_patient(msd_patient(path, (3, 0, 2), (seg_path,)), cfg)
    assert reads == [path, seg_path]  # the images once, then the segmentation
    want = np.stack([direct(data[..., k], 16) for k in (3, 0, 2)])
    assert res.images.dtype == np.float32 and np.array_equal(res.images, want)
    assert res.meta["intensity_min"] == [float(data[..., k].min()) for k in (3, 0, 2)]
    assert res.meta["intensity_max"] == [float(data[..., k].max()) for k in (3, 0, 2)]
    assert res.meta["has_mask"] and res.meta["tumour_voxels"] == np.count_nonzero(seg)
    too_far = msd_patient(path, (0, 4))
    with pytest.raises(PatientError, match=r"holds 4 volumes along its fourth axis, no volume 4"):
        load_patient(too_far, PreprocessConfig(slices=16, modalities=("flair", "t1")))


def test_a_3d_patient_never_goes_through_the_whole_volume_reader(tmp_path, monkeypatch):
    files = tuple(
        write_nifti(tmp_path / f"case_{k:04d}.nii.gz", four_d(7)[..., k]) for k in range(4)
    )

    def refuse(*_a, **_k):
        raise AssertionError("a 3D file was loaded whole")

    monkeypatch.setattr(patient_module, "open_volumes", refuse)
    monkeypatch.setattr(nifti, "read_nifti_bytes", refuse)
    res = load_patient(Patient("case", 0, files, tmp_path), PreprocessConfig(slices=16))
    want = np.stack([direct(four_d(7)[..., k], 16) for k in range(4)]).astype(np.float16)
    assert np.array_equal(res.images, want)
