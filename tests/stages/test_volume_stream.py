"""The streamed reader (`open_volume` + `normalized_slab_into`) against the seed's numpy method.

The stream reads each volume once through a small buffer; every case here checks it gives the
seed's bits, that it really streamed (not a silent fallback to `load_volume`), and that what it
cannot stream (and every error) comes out as `load_volume` would have it.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

import smri.volume.nifti as nifti
import smri.volume.stream as slab_stream
from smri.errors import DataError
from smri.volume import load_volume, open_volume
from tests.helpers.nifti import write_nifti


def seed_slab(data: np.ndarray, slices: int, dtype: str = "float16") -> np.ndarray:
    """The seed's preprocessing of one volume, directly in numpy."""
    v = data.astype(np.float32)
    v = (v - v.min()) / (v.max() - v.min() + 1e-8)
    start = (v.shape[2] - slices) // 2
    return v[:, :, start : start + slices].T.astype(dtype)


@pytest.fixture
def whole_loads(monkeypatch):
    """Fail the test if the volume is loaded whole: the stream must not fall back silently."""

    def refuse(path, **kw):
        raise AssertionError(f"{path} was loaded whole instead of streamed")

    monkeypatch.setattr(slab_stream, "load_volume", refuse)


def read(path, slices, dtype="float16", **kw):
    src = open_volume(path, **kw)
    x, y, _ = src.shape
    out = np.empty((slices, y, x), dtype)
    lo, hi = src.normalized_slab_into(slices, out)
    return src, out, lo, hi


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


@pytest.fixture(params=[1001, 4096, 1 << 20], ids=["odd-1001B", "4KiB", "1MiB"])
def chunk(request, monkeypatch):
    """Buffer sizes: an odd one gives pieces of odd voxel counts and puts slab edges mid-piece."""
    monkeypatch.setattr(slab_stream, "STREAM_CHUNK", request.param)
    return request.param


@pytest.fixture(params=["isal", "stdlib"])
def gzip_reader(request, monkeypatch):
    """ISA-L's gzip (smri's), and the standard library's (the plain path it is measured against)."""
    if request.param == "stdlib":
        monkeypatch.setattr(nifti, "GZIP", gzip)
    return request.param


DTYPES = [np.int16, np.uint8, np.int32, np.uint16, np.float32, np.float64]  # big-endian: below


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_streamed_slab_is_the_seeds_bit_for_bit(
    tmp_path, whole_loads, chunk, gzip_reader, ext, dtype
):
    rng = np.random.default_rng(7)
    data = (rng.normal(300, 120, (23, 19, 41)) + 40).clip(0, 255).astype(dtype)
    data[3, 4, 0], data[5, 6, 40] = 0, 250  # min and max in the first and last pieces
    path = write_nifti(tmp_path / f"v_t1{ext}", data)
    src, got, lo, hi = read(path, 9)
    assert src.streamed
    assert src.shape == (23, 19, 41)
    same_bits(got, seed_slab(data, 9))
    assert (lo, hi) == (float(data.min()), float(data.max()))


def test_float32_store_and_whole_depth_slab(tmp_path, whole_loads, chunk):
    data = np.random.default_rng(1).integers(-500, 3000, (17, 13, 12)).astype(np.int16)
    path = write_nifti(tmp_path / "v_t1.nii.gz", data)
    src, got, _, _ = read(path, 12, "float32")  # the slab is the whole volume
    assert src.streamed
    same_bits(got, seed_slab(data, 12, "float32"))


def test_matches_the_whole_volume_path_on_a_brats_size_volume(tmp_path, whole_loads):
    rng = np.random.default_rng(3)
    data = np.zeros((240, 240, 155), np.int16)
    data[40:200, 30:210, 10:140] = rng.integers(0, 4000, (160, 180, 130))
    path = write_nifti(tmp_path / "big_t1.nii.gz", data)
    src, got, lo, hi = read(path, 32)
    assert src.streamed
    same_bits(got, seed_slab(data, 32))
    assert (lo, hi) == (0.0, float(data.max()))


def test_the_whole_volume_is_never_in_memory(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (240, 240, 155)).astype(np.int16)
    path = write_nifti(tmp_path / "big_t1.nii.gz", data)
    out = np.empty((32, 240, 240), np.float16)
    src = open_volume(path)
    tracemalloc.start()
    try:
        src.normalized_slab_into(32, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the raw slab (3.7 MB), its float32 form (7.4 MB) and one buffer; the volume is 17.9 MB
    assert peak < 0.75 * data.nbytes, f"peak {peak / 2**20:.1f} MiB"


def test_trailing_singleton_and_header_extension_stream(tmp_path, whole_loads, chunk):
    data = np.random.default_rng(2).integers(0, 900, (11, 9, 14, 1)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0]))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 2000))
    path = tmp_path / "ext_t1.nii.gz"
    nib.save(img, path)
    src, got, _, _ = read(path, 5)
    assert src.streamed
    assert src.shape == (11, 9, 14)
    assert src.spacing == pytest.approx((0.8, 0.9, 2.5))
    same_bits(got, seed_slab(data[..., 0], 5))


def test_nifti2_streams(tmp_path, whole_loads):
    data = np.random.default_rng(4).integers(0, 900, (10, 8, 12)).astype(np.int16)
    path = tmp_path / "n2_t1.nii.gz"
    nib.save(nib.Nifti2Image(data, np.eye(4)), path)
    src, got, _, _ = read(path, 6)
    assert src.streamed
    same_bits(got, seed_slab(data, 6))


@pytest.mark.parametrize("offset", [352, 352 + 16 * 99], ids=["352", "padded"])
@pytest.mark.parametrize("dtype", ["<i2", ">i2", ">f8"])
def test_byte_order_and_voxel_offset_from_the_header(tmp_path, whole_loads, chunk, dtype, offset):
    """A hand-made file: big-endian headers and data, voxels after padding."""
    data = np.random.default_rng(8).integers(-90, 900, (13, 11, 10)).astype(dtype)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["vox_offset"], hdr["magic"] = offset, b"n+1"
    hdr = hdr.as_byteswapped(dtype[0])
    raw = hdr.binaryblock + bytes(offset - 348) + data.tobytes(order="F")
    path = tmp_path / "be_t1.nii.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    src, got, _, _ = read(path, 4)
    assert src.streamed
    same_bits(got, seed_slab(data, 4))
    same_bits(got, seed_slab(load_volume(path).data, 4))


def test_scaled_and_reoriented_volumes_are_loaded_whole(tmp_path):
    data = np.random.default_rng(5).integers(0, 900, (10, 8, 12)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0]))
    img.header.set_slope_inter(2.0, -3.0)
    path = tmp_path / "s_t1.nii.gz"
    nib.save(img, path)
    src, got, _, _ = read(path, 6)
    assert not src.streamed
    same_bits(got, seed_slab(data * 2.0 - 3.0, 6))
    src, got, _, _ = read(write_nifti(tmp_path / "r_t1.nii", data, img.affine), 6, canonical=True)
    assert not src.streamed
    same_bits(got, seed_slab(data[::-1], 6))


def error_of(fn):
    with pytest.raises(DataError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated: gzip ends early
        lambda raw: raw[:-8],  # no gzip trailer
        lambda raw: raw[:5000] + bytes([raw[5000] ^ 0xFF]) + raw[5001:],  # corrupt data
        lambda raw: raw[:-8] + bytes([raw[-8] ^ 1]) + raw[-7:],  # wrong checksum
    ],
    ids=["half", "no-trailer", "flipped-byte", "bad-crc"],
)
def test_damaged_gzip_gives_load_volumes_error(tmp_path, gzip_reader, damage):
    """Read to the end: a checksum that does not match is found, not skipped."""
    data = np.random.default_rng(6).integers(0, 4000, (64, 64, 40)).astype(np.int16)
    path = write_nifti(tmp_path / "d_t1.nii.gz", data)
    path.write_bytes(damage(path.read_bytes()))
    want = error_of(lambda: load_volume(path))
    assert str(path) in want

    def stream():
        src = open_volume(path)
        src.normalized_slab_into(8, np.empty((8, 64, 64), np.float16))

    assert error_of(stream) == want


def test_truncated_nii_gives_load_volumes_error(tmp_path):
    path = write_nifti(tmp_path / "t_t1.nii", np.ones((30, 30, 30), np.int16))
    path.write_bytes(path.read_bytes()[:20000])

    def stream():
        open_volume(path).normalized_slab_into(8, np.empty((8, 30, 30), np.float16))

    assert error_of(stream) == error_of(lambda: load_volume(path))


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_a_header_promising_more_voxels_than_the_file_holds_is_caught_first(tmp_path, ext):
    """Before anything is allocated for them: 30000 x 30000 x 40 int16 voxels would be 72 GB."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 40))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"], hdr["magic"] = 352, b"n+1"
    raw = hdr.binaryblock + bytes(4) + bytes(5000)
    path = tmp_path / f"huge_t1{ext}"
    path.write_bytes(gzip.compress(raw) if ext.endswith("gz") else raw)
    tracemalloc.start()
    try:
        got = error_of(lambda: open_volume(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == error_of(lambda: load_volume(path))
    assert "expected 72000000000 bytes of voxel data" in got
    assert peak < 2**20


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_gives_load_volumes_error(tmp_path, chunk, bad):
    data = np.ones((12, 10, 9), np.float32)
    data[11, 9, 8] = bad  # the last voxel
    path = write_nifti(tmp_path / "f_t1.nii.gz", data)
    src = open_volume(path)
    got = error_of(lambda: src.normalized_slab_into(3, np.empty((3, 10, 12), np.float16)))
    assert got == error_of(lambda: load_volume(path))
    assert "1 voxel is NaN or Inf" in got


def test_unreadable_headers_give_load_volumes_error(tmp_path):
    for name, raw in [
        ("empty_t1.nii.gz", b""),
        ("text_t1.nii.gz", gzip.compress(b"hello world" * 100)),
        ("short_t1.nii", b"\x5c\x01\x00\x00" + b"\x00" * 100),
    ]:
        path = tmp_path / name
        path.write_bytes(raw)
        assert error_of(lambda p=path: open_volume(p)) == error_of(lambda p=path: load_volume(p))


def test_negative_voxel_offset_gives_load_volumes_error(tmp_path):
    """Found by the fuzz test: the stream must not start reading voxels inside the header."""
    path = write_nifti(tmp_path / "neg_t1.nii", np.ones((6, 5, 4), np.int16))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 108, -1.0)  # vox_offset: nibabel refuses it only for n+1
    raw[344:348] = b"ni1\0"
    path.write_bytes(raw)
    want = error_of(lambda: load_volume(path))

    def stream():
        open_volume(path).normalized_slab_into(2, np.empty((2, 5, 6), np.float16))

    assert error_of(stream) == want


def test_multi_member_gzip_gives_the_seeds_bits(tmp_path):
    """bgzip/pigz-style files: several gzip members; the trailer sizes only the last one, so the
    size check cannot vouch for the file and it is loaded whole, with the same result."""
    data = np.random.default_rng(9).integers(0, 900, (20, 16, 12)).astype(np.int16)
    raw = write_nifti(tmp_path / "one_t1.nii", data).read_bytes()
    path = tmp_path / "multi_t1.nii.gz"
    path.write_bytes(b"".join(gzip.compress(raw[i : i + 1000]) for i in range(0, len(raw), 1000)))
    src, got, _, _ = read(path, 6)
    assert not src.streamed
    same_bits(got, seed_slab(data, 6))
