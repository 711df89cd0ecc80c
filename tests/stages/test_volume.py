"""smri/volume/: the seed's method against direct numpy, and loading errors naming the file."""

from __future__ import annotations

import gzip
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from smri.errors import DataError
from smri.volume import (
    axis_codes,
    cast_into,
    central_slab,
    load_volume,
    minmax_normalize,
    normalized_slab,
    slab_start,
)
from tests.helpers.nifti import write_nifti


def direct(vol: np.ndarray, slices: int) -> np.ndarray:
    v = vol.astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min() + 1e-8)
    start = (v.shape[2] - slices) // 2
    return v[:, :, start : start + slices].T


def test_slab_start_matches_brats_slices_61_to_92():
    assert slab_start(155, 32) == 61
    vol = np.broadcast_to(np.arange(155), (3, 4, 155))
    slab = central_slab(vol, 32)
    assert slab.shape == (32, 4, 3)
    assert slab[:, 0, 0].tolist() == list(range(61, 93))


def test_central_slab_axis_order_is_z_y_x():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    slab = central_slab(vol, 2)
    assert slab.shape == (2, 3, 2)
    assert slab[1, 2, 0] == vol[0, 2, 2]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_normalized_slab_is_bitwise_the_seed_method(dtype, order):
    rng = np.random.default_rng(3)
    vol = np.asarray(rng.uniform(-300, 2000, (21, 17, 45)), order=order).astype(dtype)
    got, lo, hi = normalized_slab(vol, 32)
    want = direct(vol, 32)
    assert got.dtype == np.float32 and got.shape == (32, 17, 21)
    np.testing.assert_array_equal(got, want)
    assert (lo, hi) == (float(vol.min()), float(vol.max()))
    np.testing.assert_array_equal(got, central_slab(minmax_normalize(vol), 32))


def test_cast_into_float16_is_numpys_rounding_bit_for_bit():
    rng = np.random.default_rng(5)
    src = np.concatenate([
        rng.random(50_000, dtype=np.float32),  # what min-max produces
        rng.random(50_000, dtype=np.float32) * np.float32(1e-4),  # float16 subnormals
        np.array([0.0, 1.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 0.99999994, 65504, 65519, 65520,
                  -1e-9, np.inf, -np.inf, np.nan], dtype=np.float32),
    ])  # fmt: skip
    got = np.empty(src.shape, np.float16)
    cast_into(got, src)
    with np.errstate(over="ignore"):  # 65520 rounds to inf, as it should
        want = src.astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    other = np.empty(src.shape, np.float32)  # any other pair: plain assignment
    cast_into(other, src.astype(np.float64))
    np.testing.assert_array_equal(other, src)


def test_cast_into_stays_on_the_calling_thread():
    """No CPU time elsewhere: a cast that woke torch's OpenMP pool left its threads spinning,
    which took a core from the other preprocessing workers (2 cores: CPU time = 2 x wall)."""
    torch = pytest.importorskip("torch")
    if torch.get_num_threads() < 2:
        pytest.skip("torch runs single-threaded here: nothing could spin")
    src = np.random.default_rng(0).random((32, 240, 240), dtype=np.float32)
    dst = np.empty(src.shape, np.float16)
    cast_into(dst, src)  # the first call imports torch
    time.sleep(0.5)  # threads that earlier tests' torch work left spinning go to sleep
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(5):
        cast_into(dst, src)
        t = time.perf_counter()
        while time.perf_counter() - t < 0.01:  # Python work, as the next volume's would be
            pass
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert cpu < 1.4 * wall, f"{cpu / wall:.2f} x wall time in CPU: other threads were busy"


def test_constant_volume_normalises_to_zeros():
    got, lo, hi = normalized_slab(np.full((4, 4, 40), 7, np.int16), 32)
    assert lo == hi == 7
    assert not got.any()


def test_fewer_slices_than_asked_is_an_error():
    with pytest.raises(ValueError, match="10 slices, fewer than the 32"):
        central_slab(np.zeros((4, 4, 10)), 32)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_load_volume_reads_both_formats(tmp_path, ext):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    vol = load_volume(write_nifti(tmp_path / f"a_t1{ext}", data, affine))
    np.testing.assert_array_equal(vol.data, data)
    assert vol.data.dtype == np.int16
    assert vol.spacing == pytest.approx((0.9, 1.1, 2.0))


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_load_volume_holds_the_voxels_once(tmp_path, ext):
    """One buffer, filled in place, is the array: not a copy per step (3x the volume before)."""
    data = np.random.default_rng(1).integers(0, 4000, (120, 120, 80)).astype(np.int16)
    path = write_nifti(tmp_path / f"m_t1{ext}", data)
    tracemalloc.start()
    try:
        vol = load_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(vol.data, data)
    # the volume and the reader's buffers (under 1 MiB); it was 3x the volume
    assert peak < data.nbytes + 2**20, f"peak {peak / data.nbytes:.2f}x the volume"


def test_load_volume_applies_scaling_and_drops_trailing_singleton(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "s.nii"
    nib.save(img, path)
    vol = load_volume(path)
    assert vol.data.shape == (3, 4, 5)
    assert np.all(vol.data == 3.0)


def test_canonical_reorients_to_ras(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    path = write_nifti(tmp_path / "lps.nii", data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    vol = load_volume(path, canonical=True)
    np.testing.assert_array_equal(vol.data, data[::-1, ::-1, :])
    assert np.all(np.diag(vol.affine)[:3] > 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)), "NIfTI"),
        (lambda p: p.write_bytes(gzip.compress(b"hello world" * 100)), "NIfTI"),
    ],
    ids=["zero-bytes", "random-bytes", "gzip-of-text"],
)
def test_unreadable_files_name_the_file(tmp_path, make, message):
    path = tmp_path / "x_t1.nii.gz"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_volume(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_nifti(tmp_path / "x_t1.nii.gz", np.ones((30, 30, 30), np.int16))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"x_t1\.nii\.gz: corrupt gzip stream"):
        load_volume(path)


def test_truncated_nii_names_the_file(tmp_path):
    path = write_nifti(tmp_path / "x_t1.nii", np.ones((30, 30, 30), np.int16))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"x_t1\.nii: not a readable NIfTI volume"):
        load_volume(path)


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 7, 2)])
def test_non_3d_volumes_are_errors(tmp_path, shape):
    path = write_nifti(tmp_path / "v.nii", np.ones(shape, np.int16))
    with pytest.raises(DataError, match=rf"expected a 3D volume, got {len(shape)}D"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_are_errors(tmp_path, bad):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = bad
    path = write_nifti(tmp_path / "v.nii", data)
    with pytest.raises(DataError, match="1 voxel is NaN or Inf"):
        load_volume(path)


def test_big_endian_and_float_files_match_nibabel(tmp_path):
    data = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(">f4")
    header = nib.Nifti1Header(endianness=">")
    path = tmp_path / "be.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4), header), path)
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.data, nib.load(path).get_fdata(dtype=np.float32))


def test_axis_codes_agree_with_nibabel_for_every_affine_asked_twice():
    """The codes are worked out once per affine: each answer, first or repeated, is nibabel's."""
    rng = np.random.default_rng(7)
    affines = []
    for _ in range(40):
        perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0] if rng.random() < 0.5 else np.eye(3)
        affine = np.eye(4)
        affine[:3, :3] = rot @ perm @ np.diag(rng.uniform(0.5, 3.0, size=3))
        affine[:3, 3] = rng.normal(size=3) * 100
        affines.append(affine)
    for affine in affines + affines[::-1]:
        want = "".join(str(c) for c in nib.aff2axcodes(affine))
        assert axis_codes(affine) == want
        assert axis_codes(affine.astype(np.float32)) == "".join(
            str(c) for c in nib.aff2axcodes(affine.astype(np.float32))
        )
    assert len({axis_codes(a) for a in affines}) > 4


@pytest.mark.parametrize("bad", [np.full((4, 4), np.nan), np.diag([np.inf, 1.0, 1.0, 1.0])])
def test_axis_codes_raise_for_an_affine_without_orientation_every_time(bad):
    for _ in range(2):  # an error is not kept as an answer
        with pytest.raises((np.linalg.LinAlgError, ValueError)):
            nib.aff2axcodes(bad)
        with pytest.raises((np.linalg.LinAlgError, ValueError)):
            axis_codes(bad)


# ------------------------------------------- what nibabel says of a header, captured in scope
EXTENSION_WARNING = "Extension size is not a multiple of 16 bytes"
OFFSET_LOG = "vox offset (=372) not divisible by 16, not SPM compatible; leaving at current value"


def odd_extension(path, seed: int = 0):
    """A single-file NIfTI-1 with one 20-byte extension: nibabel warns of its size (a warning)
    and logs that the voxel offset, 372, is not a multiple of 16 (a log line)."""
    data = np.random.default_rng(seed).integers(0, 100, size=(6, 5, 8)).astype(np.int16)
    raw = bytearray(write_nifti(tmp := path.with_suffix(".tmp.nii"), data).read_bytes())
    tmp.unlink()
    raw[108:112] = np.float32(372).tobytes()  # vox_offset
    raw[348] = 1  # "an extension follows"
    extension = np.array([20, 0], np.int32).tobytes() + b"odd-sized!\0\0"
    path.write_bytes(bytes(raw[:352]) + extension + bytes(raw[352:]))
    return path, data


def hooks() -> tuple[object, list[object], list[object]]:
    """What smri must leave as it found: the warnings hook, nibabel's handlers and filters."""
    import logging
    import warnings

    log = logging.getLogger("nibabel.global")
    return warnings.showwarning, list(log.handlers), list(log.filters)


def test_nibabels_warning_and_log_line_become_notes_only_while_smri_reads(tmp_path, capfd):
    import warnings

    from smri.volume import open_volume

    path, data = odd_extension(tmp_path / "odd.nii")
    before = hooks()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        vol = load_volume(path)
        src = open_volume(path)
        assert hooks() == before
        warnings.warn("not nibabel's", UserWarning, stacklevel=1)
    np.testing.assert_array_equal(vol.data, data)
    for notes in (vol.notes, src.notes):
        assert len(notes) == 2 and OFFSET_LOG in notes
        assert any(n.startswith(EXTENSION_WARNING) for n in notes)
    assert [str(w.message) for w in shown] == ["not nibabel's"]  # nibabel's went to the notes
    assert OFFSET_LOG not in capfd.readouterr().err  # not printed by nibabel's own handler
    assert hooks() == before


def test_readings_on_threads_keep_their_own_notes_and_leave_no_hook(tmp_path):
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    paths = [odd_extension(tmp_path / f"odd{i}.nii", i)[0] for i in range(6)]
    paths += [
        write_nifti(tmp_path / f"plain{i}.nii", np.ones((6, 5, 8), np.int16)) for i in range(6)
    ]
    before = hooks()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            vols = list(pool.map(load_volume, paths * 4))
    for path, vol in zip(paths * 4, vols, strict=True):
        assert (OFFSET_LOG in vol.notes) == path.name.startswith("odd"), path
        assert len(vol.notes) == (2 if path.name.startswith("odd") else 0), vol.notes
    assert hooks() == before


def test_importing_smri_volume_and_reading_change_no_global_hook(tmp_path):
    """Run in a fresh interpreter: importing smri.volume, reading a file nibabel complains of and
    failing to read another leave `warnings.showwarning` and nibabel's logger as they were."""
    import subprocess
    import sys

    path, _ = odd_extension(tmp_path / "odd.nii")
    (bad := tmp_path / "bad.nii").write_bytes(b"\0" * 400)
    code = f"""
import logging, warnings
import nibabel
log = logging.getLogger("nibabel.global")
state = lambda: (warnings.showwarning, list(log.handlers), list(log.filters))
before = state()
import smri.volume
from smri.volume import load_volume, open_volume
assert state() == before, "import"
assert load_volume({str(path)!r}).notes and open_volume({str(path)!r}).notes
try:
    load_volume({str(bad)!r})
except smri.DataError:
    pass
assert state() == before, "reading"
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # nibabel's lines were notes, not printed
