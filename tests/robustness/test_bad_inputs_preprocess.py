"""The bad-input catalogue, end to end through the CLI.

Each case asserts the exit code, that the message names the patient, file, option or value,
that no traceback is printed, and that nothing half-made or replaced is left behind.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from smri.store import StoreReader
from tests.helpers.cli import invoke
from tests.helpers.nifti import write_nifti, write_patient

PID = "BraTS19_HGG_000_1"


def preprocess(root: Path, out: Path, *extra: str):
    return invoke("preprocess", root, out, "--slices", "16", "-j", "2", *extra)


@pytest.fixture
def tree(brats2019):
    root, _ = brats2019(n_hgg=2, n_lgg=1)
    return root


def target(root: Path, modality: str = "t1", ext: str = ".nii.gz") -> Path:
    path = root / "HGG" / PID / f"{PID}_{modality}{ext}"
    for old in path.parent.glob(f"{PID}_{modality}.nii*"):
        old.unlink()
    return path


def _absurd_header(path: Path) -> None:
    write_nifti(path, np.ones((4, 4, 20), np.int16))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, -4, 70, 30000, 1, 1, 1, 1)  # dim[1] = -4
    path.write_bytes(bytes(raw))


def _nan(path: Path) -> None:
    data = np.ones((20, 24, 40), np.float32)
    data[3, 4, 20] = np.nan
    write_nifti(path, data)


def _inf(path: Path) -> None:
    data = np.ones((20, 24, 40), np.float32)
    data[:2, 0, 0] = np.inf
    write_nifti(path, data)


def _truncated(path: Path) -> None:
    write_nifti(path, np.random.default_rng(0).integers(0, 900, (20, 24, 40)).astype(np.int16))
    path.write_bytes(path.read_bytes()[:3000])


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)


def _unreadable(path: Path) -> None:
    # A name that looks like a volume but cannot be read as a file (root ignores chmod 000).
    path.mkdir()


BROKEN_FILES = [
    ("truncated-gz", _truncated, ".nii.gz", "corrupt gzip stream"),
    ("random-bytes", lambda p: p.write_bytes(os.urandom(4000)), ".nii", "not a readable NIfTI"),
    ("zero-bytes", lambda p: p.write_bytes(b""), ".nii.gz", "empty file (0 bytes)"),
    (
        "gzip-of-text",
        lambda p: p.write_bytes(gzip.compress(b"not nifti" * 90)),
        ".nii.gz",
        "not a readable NIfTI volume",
    ),
    ("absurd-dims", _absurd_header, ".nii", "not a readable NIfTI volume"),
    (
        "2d",
        lambda p: write_nifti(p, np.ones((20, 24), np.int16)),
        ".nii",
        "expected a 3D volume, got 2D",
    ),
    (
        "4d",
        lambda p: write_nifti(p, np.ones((20, 24, 40, 3), np.int16)),
        ".nii",
        "expected a 3D volume, got 4D",
    ),
    (
        "few-slices",
        lambda p: write_nifti(p, np.ones((20, 24, 9), np.int16)),
        ".nii.gz",
        "9 slices along the third axis, fewer than the 16 asked for",
    ),
    (
        "inplane-mismatch",
        lambda p: write_nifti(p, np.ones((20, 25, 40), np.int16)),
        ".nii.gz",
        "disagrees with",
    ),
    ("nan", _nan, ".nii", "1 voxel is NaN or Inf"),
    ("inf", _inf, ".nii", "2 voxels are NaN or Inf"),
    ("symlink-loop", _symlink_loop, ".nii.gz", "cannot read"),
    ("unreadable", _unreadable, ".nii.gz", "cannot read"),
]


@pytest.mark.parametrize(
    ("make", "ext", "message"), [c[1:] for c in BROKEN_FILES], ids=[c[0] for c in BROKEN_FILES]
)
def test_broken_file_skips_the_patient_and_strict_fails(tree, tmp_path, make, ext, message):
    path = target(tree, "t1", ext)
    make(path)
    out = tmp_path / "s.h5"
    res = preprocess(tree, out)
    assert res.exit_code == 0, res.output
    skip_line = next(line for line in res.stderr.splitlines() if line.startswith("skipping"))
    assert skip_line.startswith(f"skipping patient {PID}: ")
    assert message in skip_line
    assert path.name in skip_line
    assert "skipped 1;" in res.stdout
    assert PID not in StoreReader(out).patient_ids
    strict_out = tmp_path / "strict.h5"
    res = preprocess(tree, strict_out, "--strict")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: patient {PID}: ") and message in res.stderr
    assert not strict_out.exists()
    assert not list(tmp_path.glob(".strict*"))


def test_constant_volume_is_a_warning_not_an_error(tree, tmp_path):
    write_nifti(target(tree, "t2"), np.full((20, 24, 40), 5, np.int16))
    res = preprocess(tree, tmp_path / "s.h5")
    assert res.exit_code == 0
    assert f"warning: patient {PID}: {PID}_t2.nii.gz is constant (5); normalised to zeros" in (
        res.stderr
    )
    with StoreReader(tmp_path / "s.h5") as r:
        assert not r.read(r.index_of(PID))[3].any()


def test_missing_and_doubled_modalities(tree, tmp_path):
    target(tree, "flair")  # deletes it
    other = "BraTS19_HGG_001_1"
    write_nifti(tree / "HGG" / other / f"{other}_T1.nii", np.ones((20, 24, 40), np.int16))
    res = preprocess(tree, tmp_path / "s.h5")
    assert res.exit_code == 0
    assert f"skipping patient {PID}: no flair file in {tree / 'HGG' / PID}" in res.stderr
    assert (
        f"skipping patient {other}: modality t1 present 2 times: {other}_T1.nii, {other}_t1.nii.gz"
    ) in res.stderr


def test_spaces_and_non_ascii_in_patient_names(tmp_path):
    for cls, pid in (("HGG", "Müller patient 1"), ("LGG", "患者 2")):
        write_patient(tmp_path / "in" / cls / pid, pid, len(pid))
    res = preprocess(tmp_path / "in", tmp_path / "s.h5")
    assert res.exit_code == 0, res.output
    assert StoreReader(tmp_path / "s.h5").patient_ids == ["Müller patient 1", "患者 2"]


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("subject,grade_x\na,1\n", "labels CSV needs a patient id column"),
        ("patient_id,label\nBraTS19_HGG_000_1,GBM\n", "has label 'GBM'; expected 0, 1"),
        (
            "patient_id,label\nBraTS19_HGG_000_1,1\nBraTS19_HGG_000_1,0\n",
            "patient BraTS19_HGG_000_1 listed twice with different labels",
        ),
        ("patient_id,label\n", "labels CSV has no rows"),
    ],
    ids=["missing-columns", "unknown-class", "duplicate-ids", "empty"],
)
def test_bad_labels_csv(tree, tmp_path, csv_text, message):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(csv_text)
    res = preprocess(tree, tmp_path / "s.h5", "--labels", csv_path)
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {csv_path}")
    assert message in res.stderr
    assert not (tmp_path / "s.h5").exists()


def test_labels_given_a_folder_says_so(tree, tmp_path):
    res = preprocess(tree, tmp_path / "s.h5", "--labels", tree)  # it used to say "no such file"
    assert res.exit_code == 2
    assert f"Invalid value for '--labels': {tree}: is a folder; expected a CSV file" in res.stderr
    assert not (tmp_path / "s.h5").exists()


def test_labels_csv_patient_absent_from_tree(tree, tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"patient_id,label\n{PID},1\nghost,0\n")
    res = preprocess(tree, tmp_path / "s.h5", "--labels", csv_path)
    assert res.exit_code == 0
    assert "skipping patient ghost: listed in labels.csv but no folder" in res.stderr


def test_input_problems(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    res = preprocess(tmp_path / "file.txt", tmp_path / "s.h5")
    assert res.exit_code == 1 and "file.txt: is a file; expected a folder" in res.stderr
    res = preprocess(tmp_path / "missing", tmp_path / "s.h5")
    assert res.exit_code == 1 and "missing: input folder does not exist" in res.stderr


def test_output_problems(tree, tmp_path):
    res = preprocess(tree, tmp_path / "no" / "s.h5")
    assert res.exit_code == 1 and f"folder {tmp_path / 'no'} does not exist" in res.stderr
    res = preprocess(tree, "/proc/s.h5")  # a folder where no file can be created
    assert res.exit_code == 1 and "folder /proc is not writable" in res.stderr
    existing = tmp_path / "s.h5"
    existing.write_bytes(b"keep me")
    res = preprocess(tree, existing)
    assert res.exit_code == 2 and "s.h5 exists; pass --overwrite to replace it" in res.stderr
    assert existing.read_bytes() == b"keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_output_in_read_only_folder(tree, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    res = preprocess(tree, ro / "s.h5")
    assert res.exit_code == 1 and f"folder {ro} is not writable" in res.stderr


def _store(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "good.h5"
    assert preprocess(tree, out).exit_code == 0
    return out


def test_info_refuses_what_is_not_a_store(tree, tmp_path):
    good = _store(tree, tmp_path)
    cases = {}
    (tmp_path / "text.h5").write_bytes(b"just text")
    cases["text.h5"] = "not a readable HDF5 file"
    (tmp_path / "trunc.h5").write_bytes(good.read_bytes()[:4000])
    cases["trunc.h5"] = "not a readable HDF5 file"
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    cases["foreign.h5"] = "not an smri store"
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = 99
    cases["newer.h5"] = "store schema version 99 is newer than this smri"
    for name, message in cases.items():
        res = invoke("info", tmp_path / name)
        assert res.exit_code == 1, name
        assert res.stderr.startswith(f"Error: {tmp_path / name}: ") and message in res.stderr


def test_concurrent_writer_is_refused(tree, tmp_path):
    out = tmp_path / "s.h5"
    partial = tmp_path / ".s.h5.partial"
    code = (
        "import h5py, sys, time; f = h5py.File(sys.argv[1], 'w'); print('open', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(partial)], stdout=subprocess.PIPE)
    try:  # another process is writing this output right now
        assert holder.stdout.readline().strip() == b"open"
        res = preprocess(tree, out)
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 1
    assert "another smri preprocess is writing this output" in res.stderr
    assert not out.exists()


def test_patient_ids_never_escape_the_output_folder(tmp_path):
    # A patient folder cannot be named '../x', but a labels CSV can say so: it is not a folder
    # under INPUT, so it is reported, never followed.
    write_patient(tmp_path / "in" / "a", "a", 1)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("patient_id,label\na,1\n../../x,0\n")
    res = preprocess(tmp_path / "in", tmp_path / "s.h5", "--labels", csv_path)
    assert res.exit_code == 0
    assert "skipping patient ../../x: listed in labels.csv but no folder" in res.stderr
    assert StoreReader(tmp_path / "s.h5").patient_ids == ["a"]


@pytest.mark.parametrize(
    "args",
    [
        ["preprocess", "{root}", "{tmp}/out/"],
        ["show", "{root}", "-o", "{tmp}/pics/"],
        ["predict", "{ckpt}", "{root}", "--csv", "{tmp}/p/"],
    ],
    ids=["preprocess-OUTPUT", "show-out", "predict-csv"],
)
def test_an_output_file_written_as_a_folder_is_refused(tree, tmp_path, args):
    # pathlib drops the trailing slash: `out/` had become a file named `out`
    outs = tmp_path / "outs"
    outs.mkdir()
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    values = {"root": tree, "tmp": outs, "ckpt": ckpt}
    result = invoke(*(a.format(**values) for a in args))
    assert result.exit_code == 2
    assert "names a folder (it ends in /); expected a file" in result.output
    assert not any(outs.iterdir())
