"""A fuzz pass over NIfTI loading and patient discovery (hypothesis, bounded, deterministic).

Every input must end in success or a clean `DataError`/`PatientError` (one line, naming the
file): mutated headers (random bytes at random offsets, biased to the fields that steer reading:
sizeof_hdr, dim, datatype, bitpix, pixdim, vox_offset, scl_slope/inter, qform/sform, magic),
truncations, gzip wrapping, and random file and folder names in patient folders. Examples are
tiny (a 4x5x6 volume), so no input can take long; a success must also survive the volume
operations preprocessing applies next.

The default run tries ~200 inputs per test (a few seconds); `-m slow` runs 3000 per test.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smri.discovery import DEFAULT_MODALITIES, discover, modality_of, patient_from_folder
from smri.errors import DataError, PatientError
from smri.preprocessing import PreprocessConfig, load_patient
from smri.volume import load_volume, minmax_normalize, normalized_slab

SHAPE = (4, 5, 6)
SLICES = 4
FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FAST, max_examples=3000)
# Header fields that steer how the voxels are read: (offset, struct format).
FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim1": (80, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "srow_x0": (280, "<f"),
    "magic": (344, "4s"),
}
TALLY: Counter[str] = Counter()  # outcome counts, printed at the end of the module


def nifti_bytes(dtype: str, seed: int) -> bytes:
    """A valid uncompressed NIfTI-1 volume of SHAPE with varied values."""
    data = np.random.default_rng(seed).integers(0, 200, SHAPE).astype(dtype)
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


BASES = {(d, s): nifti_bytes(d, s) for d in ("int16", "uint8", "float32", "float64") for s in (0,)}

special_values = st.sampled_from(
    [0, 1, -1, 2, 3, 4, 7, 8, 16, 64, 255, 348, 352, 540, 32767, -32768, 2**31 - 1]
)
int_or_float = st.one_of(
    special_values,
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@st.composite
def field_edit(draw) -> tuple[int, bytes]:
    """New bytes for one header field, in that field's format (or its raw width)."""
    offset, fmt = FIELDS[draw(st.sampled_from(sorted(FIELDS)))]
    if fmt == "4s":
        return offset, draw(st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"]))
    value = draw(int_or_float)
    try:
        if fmt == "<f":
            return offset, struct.pack(fmt, float(value))
        return offset, struct.pack(fmt, int(value))
    except (struct.error, OverflowError, ValueError):
        return offset, draw(st.binary(min_size=struct.calcsize(fmt), max_size=struct.calcsize(fmt)))


@st.composite
def raw_edit(draw) -> tuple[int, bytes]:
    """Random bytes at a random offset of the header (and a little past it)."""
    return draw(st.integers(0, 360)), draw(st.binary(min_size=1, max_size=8))


@st.composite
def mutated_nifti(draw) -> tuple[bytes, bool]:
    """(file bytes, canonical): a valid base with edits, maybe truncated, maybe gzipped."""
    raw = bytearray(BASES[draw(st.sampled_from(sorted(BASES)))])
    for offset, new in draw(st.lists(st.one_of(field_edit(), raw_edit()), max_size=4)):
        raw[offset : offset + len(new)] = new
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    data = bytes(raw)
    if draw(st.booleans()):
        data = gzip.compress(data, compresslevel=1, mtime=0)
        if draw(st.integers(0, 4)) == 0:  # a truncated gzip stream
            data = data[: draw(st.integers(0, len(data)))]
    return data, draw(st.booleans())


def _one_line(message: str) -> bool:
    return len(message.splitlines()) == 1


def check_usable(volume_data: np.ndarray) -> None:
    """What preprocessing does with a loaded volume must not fail either."""
    assert volume_data.ndim == 3 and min(volume_data.shape) >= 1, volume_data.shape
    assert volume_data.dtype.kind in "iuf"
    v = minmax_normalize(volume_data)
    assert np.isfinite(v).all()
    slices = min(SLICES, volume_data.shape[2])
    slab, lo, hi = normalized_slab(volume_data, slices)
    assert slab.shape == (slices, volume_data.shape[1], volume_data.shape[0])
    assert np.isfinite(slab).all() and np.isfinite([lo, hi]).all()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    yield tmp_path_factory.mktemp("fuzz")
    print(f"\nfuzz outcomes: {dict(sorted(TALLY.items()))}")


def _one_volume(scratch: Path, case: tuple[bytes, bool]) -> None:
    data, canonical = case
    path = scratch / "v_t1.nii.gz"
    path.write_bytes(data)
    try:
        vol = load_volume(path, canonical=canonical)
    except DataError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and _one_line(message), message
        TALLY["volume: DataError"] += 1
        return
    check_usable(np.asarray(vol.data))
    TALLY["volume: loaded"] += 1


@FAST
@given(case=mutated_nifti())
def test_fuzz_load_volume(scratch, case):
    _one_volume(scratch, case)


@pytest.mark.slow
@SLOW
@given(case=mutated_nifti())
def test_fuzz_load_volume_long(scratch, case):
    _one_volume(scratch, case)


# ----------------------------------------------------------------- a patient, end to end
def _one_patient(scratch: Path, case: tuple[bytes, bool], modality: str) -> None:
    data, canonical = case
    folder = Path(tempfile.mkdtemp(dir=scratch)) / "P1"
    folder.mkdir()
    try:
        for m in DEFAULT_MODALITIES:
            raw = data if m == modality else BASES[("int16", 0)]
            (folder / f"P1_{m}.nii.gz").write_bytes(raw)
        cfg = PreprocessConfig(slices=SLICES, canonical=canonical)
        patient = patient_from_folder(folder, DEFAULT_MODALITIES, label=1)
        try:
            result = load_patient(patient, cfg)
        except PatientError as exc:
            assert exc.patient_id == "P1" and _one_line(str(exc)), str(exc)
            TALLY["patient: PatientError"] += 1
            return
        except DataError as exc:
            assert _one_line(str(exc))
            TALLY["patient: DataError"] += 1
            return
        assert result.images.shape[:2] == (4, SLICES)
        assert np.isfinite(result.images).all()
        # the streamed reader gives what loading the whole volume gives, bit for bit
        m = DEFAULT_MODALITIES.index(modality)
        whole = load_volume(folder / f"P1_{modality}.nii.gz", canonical=canonical).data
        want = normalized_slab(whole, SLICES)[0].astype(np.float16)
        np.testing.assert_array_equal(result.images[m].view(np.uint16), want.view(np.uint16))
        TALLY["patient: loaded"] += 1
    finally:
        shutil.rmtree(folder.parent)


@FAST
@given(case=mutated_nifti(), modality=st.sampled_from(DEFAULT_MODALITIES))
def test_fuzz_load_patient(scratch, case, modality):
    _one_patient(scratch, case, modality)


@pytest.mark.slow
@SLOW
@given(case=mutated_nifti(), modality=st.sampled_from(DEFAULT_MODALITIES))
def test_fuzz_load_patient_long(scratch, case, modality):
    _one_patient(scratch, case, modality)


# ------------------------------------------------------------------------ random file names
name_chars = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="/\x00", max_codepoint=0x2FFF
)


@st.composite
def file_name(draw) -> str:
    """Either free text or a near-miss of a modality file name."""
    if draw(st.booleans()):
        name = draw(st.text(name_chars, min_size=1, max_size=24))
    else:
        stem = draw(st.text(name_chars, max_size=8))
        mod = draw(st.sampled_from([*DEFAULT_MODALITIES, "seg", "T1CE", "Flair", "t1c", "t"]))
        sep = draw(st.sampled_from(["_", "-", "", "__", "."]))
        ext = draw(st.sampled_from([".nii", ".nii.gz", ".NII.GZ", ".nii.gz.bak", ".nii.", ".gz"]))
        prefix = draw(st.sampled_from(["", "", ".", "._"]))
        name = f"{prefix}{stem}{sep}{mod}{ext}"
    if name in (".", "..") or len(os.fsencode(name)) > 200:
        return "x_seg.nii"
    return name


@st.composite
def patient_tree(draw) -> list[tuple[str, str, str]]:
    """(class folder, patient folder, file name, content kind) entries of a tiny tree."""
    entries = []
    for cls in draw(st.lists(st.sampled_from(["HGG", "LGG", "hgg", "other"]), max_size=3)):
        for pid in draw(st.lists(file_name(), min_size=1, max_size=2)):
            if draw(st.booleans()):  # a complete patient, names in a random case and extension
                for m in DEFAULT_MODALITIES:
                    ext = draw(st.sampled_from([".nii", ".nii.gz", ".NII.GZ"]))
                    name = f"{pid}_{m.upper() if draw(st.booleans()) else m}{ext}"
                    entries.append((cls, pid, name, "valid"))
            for name in draw(st.lists(file_name(), max_size=6)):
                kind = draw(st.sampled_from(["valid", "valid", "empty", "junk", "folder"]))
                entries.append((cls, pid, name, kind))
    return entries


def _one_tree(scratch: Path, entries: list[tuple[str, str, str, str]]) -> None:
    root = Path(tempfile.mkdtemp(dir=scratch))
    try:
        for cls, pid, name, kind in entries:
            folder = root / cls / pid
            if folder.exists() and not folder.is_dir():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            if path.exists():
                continue
            if kind == "folder":
                path.mkdir()
            else:
                content = {"valid": BASES[("int16", 0)], "empty": b"", "junk": b"\x01" * 400}
                path.write_bytes(content[kind])
        try:
            found = discover(root)
        except DataError as exc:
            assert _one_line(str(exc))
            TALLY["tree: DataError"] += 1
            return
        for patient in found.patients:
            assert [modality_of(f.name) for f in patient.files] == list(DEFAULT_MODALITIES)
            assert all(f.parent == patient.folder for f in patient.files)
            assert root in patient.folder.parents
            try:
                load_patient(patient, PreprocessConfig(slices=SLICES))
                TALLY["tree: patient loaded"] += 1
            except DataError as exc:  # PatientError included
                assert _one_line(str(exc))
                TALLY["tree: patient refused"] += 1
        for skipped in found.skipped:
            assert isinstance(skipped, PatientError) and _one_line(str(skipped))
        TALLY["tree: discovered"] += 1
    finally:
        shutil.rmtree(root)


@FAST
@given(entries=patient_tree())
def test_fuzz_discovery_with_random_names(scratch, entries):
    _one_tree(scratch, entries)


@pytest.mark.slow
@SLOW
@given(entries=patient_tree())
def test_fuzz_discovery_with_random_names_long(scratch, entries):
    _one_tree(scratch, entries)


# ------------------------------------------------------- what the fuzz pass found, pinned down
def test_a_zero_dimension_is_an_empty_volume_error(tmp_path):
    raw = bytearray(BASES[("int16", 0)])
    struct.pack_into("<h", raw, FIELDS["dim1"][0], 0)  # dim[1] = 0: nibabel reads shape (0, 5, 6)
    path = tmp_path / "v.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"v\.nii: empty volume \(shape \(0, 5, 6\)\)"):
        load_volume(path)


def test_a_folder_name_with_a_newline_is_skipped_with_an_escaped_id(tmp_path):
    for pid in ("ok", "evil\nError: forged line"):
        for m in DEFAULT_MODALITIES:
            (tmp_path / "HGG" / pid).mkdir(parents=True, exist_ok=True)
            (tmp_path / "HGG" / pid / f"p_{m}.nii").write_bytes(BASES[("int16", 0)])
    found = discover(tmp_path)
    assert [p.patient_id for p in found.patients] == ["ok"]
    (skipped,) = found.skipped
    assert str(skipped) == (
        "patient evil\\nError: forged line: folder name 'evil\\nError: forged line' holds "
        "control characters; rename it"
    )


def test_a_trailing_newline_is_not_a_nifti_suffix(tmp_path):
    assert modality_of("p_t1.nii\n") is None and modality_of("p_t1.nii.gz") == "t1"
    for m in DEFAULT_MODALITIES:
        (tmp_path / f"p_{m}.nii").write_bytes(b"")
    (tmp_path / "p_t1\r.nii").write_bytes(b"")
    (tmp_path / "x_t1.nii\u2028").write_bytes(b"")
    assert patient_from_folder(tmp_path, DEFAULT_MODALITIES).files[1].name == "p_t1.nii"
    (tmp_path / "q\n_t1.nii").write_bytes(b"")
    with pytest.raises(PatientError, match=r"file name 'q\\n_t1\.nii' holds control characters"):
        patient_from_folder(tmp_path, DEFAULT_MODALITIES)


@pytest.mark.parametrize(
    ("values", "dtype"), [((-6.8e38, 199.0), "float64"), ((-3e38, 3e38), "float32")]
)
def test_intensities_wider_than_float32_are_refused(tmp_path, values, dtype):
    # Found by the long run: a float64 voxel of -6.8e38 became -inf in float32, so min–max
    # normalisation gave NaN images (float32 data spanning +-3e38 overflows the same way).
    data = np.zeros(SHAPE, dtype)
    data[0, 0, 0], data[1, 1, 1] = values
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(DataError, match=r"v\.nii: intensities span .* wider than float32"):
        load_volume(path)
