"""Hostile files cost bounded memory and time, and each is one line naming it.

- A FIFO, a device or a socket named like an input (a modality file, a store, a checkpoint, a
  labels CSV) is refused without being opened: reading a FIFO blocked forever, /dev/zero never
  ended. Every case runs in a subprocess with a deadline, so a hang fails instead of hanging.
- A small .nii.gz that inflates to gigabytes (a scaled header, whose path reads the volume
  whole, or a plain one) is refused after the voxels its header declares: peak memory of the
  whole `smri preprocess` process is measured and capped.
- A single-file .nii whose voxel offset lies inside its header is refused (its header bytes
  were read as voxels), and nibabel's own complaint is folded into smri's line, said once.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers.cli import ENV, error_line, leftovers, run_smri
from tests.helpers.nifti import write_cohort, write_nifti

PID = "BraTS19_HGG_000_1"
MEMORY_CAP_MIB = 700  # the whole process, torch included (about 250 MiB here); was 4.4 GB


@pytest.fixture
def cohort(tmp_path) -> Path:
    return write_cohort(tmp_path / "in")


def _replace(path: Path, make) -> Path:
    path.unlink()
    make(path)
    return path


SPECIAL = {
    "fifo": lambda p: os.mkfifo(p),
    "dev-zero": lambda p: p.symlink_to("/dev/zero"),
    "dev-null": lambda p: p.symlink_to("/dev/null"),
}
KIND = {
    "fifo": "is a FIFO (named pipe), not a regular file",
    "dev-zero": "is a character device, not a regular file",
    "dev-null": "is a character device, not a regular file",
}


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_modality_file_skips_the_patient(cohort, tmp_path, kind):
    scan = _replace(cohort / "HGG" / PID / f"{PID}_t1ce.nii.gz", SPECIAL[kind])
    res = run_smri("preprocess", cohort, tmp_path / "s.h5", "--slices", "16", timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"skipping patient {PID}: {scan}: {KIND[kind]}" in res.stderr
    assert "Traceback" not in res.stderr and leftovers(tmp_path) == []
    res = run_smri("show", cohort / "HGG" / PID, "--out", tmp_path / "p.png", timeout=120)
    assert error_line(res) == (
        f"Error: {scan}: {KIND[kind]}; smri reads only regular files (or links to them)"
    )


@pytest.mark.parametrize(
    ("args", "target"),
    [
        (["info", "{x}"], "x.h5"),
        (["train", "{x}", "--epochs", "1"], "x.h5"),
        (["evaluate", "{x}", "{x}"], "x.pt"),
        (["predict", "{x}", "{cohort}/HGG/" + PID], "x.pt"),
    ],
    ids=["info-store", "train-store", "evaluate-checkpoint", "predict-checkpoint"],
)
def test_a_fifo_store_or_checkpoint_is_named_not_opened(cohort, tmp_path, args, target):
    fifo = tmp_path / target
    os.mkfifo(fifo)
    res = run_smri(*(a.format(x=fifo, cohort=cohort) for a in args), timeout=120)
    assert error_line(res) == (
        f"Error: {fifo}: is a FIFO (named pipe), not a regular file; smri reads only regular "
        "files (or links to them)"
    )


def test_a_fifo_labels_csv_is_a_usage_error(cohort, tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    res = run_smri("preprocess", cohort, tmp_path / "s.h5", "--labels", tmp_path / "labels.csv")
    assert error_line(res, code=2).endswith(
        "labels.csv: is a FIFO (named pipe), not a regular file"
    )


# ---------------------------------------------------------------- files that inflate too far
def _member(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=9)


def _header(shape: tuple[int, int, int], slope: bool) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"], hdr["magic"] = 352, b"n+1"
    if slope:
        hdr.set_slope_inter(2.0, 1.0)
    return hdr.binaryblock + bytes(4)


def _bomb(path: Path, slope: bool, gib: int) -> None:
    """A valid little volume, then `gib` GiB of zeros: gzip members of 16 MiB each (~16 KB)."""
    shape = (20, 24, 40)
    data = (np.arange(np.prod(shape)) % 900).astype(np.int16).tobytes()
    zeros = _member(bytes(1 << 24))
    with open(path, "wb") as f:
        f.write(_member(_header(shape, slope) + data))
        f.write(zeros * (64 * gib))


def _sparse_tail(path: Path) -> None:
    """An uncompressed .nii followed by 2 GiB of (sparse: no disk used) zeros."""
    raw = write_nifti(path, np.ones((20, 24, 40), np.int16)).read_bytes()
    with open(path, "wb") as f:
        f.write(raw)
        f.truncate(len(raw) + (2 << 30))


def _too_many_voxels(path: Path) -> None:
    """A scaled header declaring 2^27 + 2^20 voxels, and the data to fill them (zeros)."""
    shape = (512, 512, 516)
    head = _header(shape, slope=True)
    with open(path, "wb") as f:
        f.write(_member(head))
        f.write(_member(bytes(1 << 24)) * (2 * 512 * 512 * 516 // (1 << 24) + 1))


def _peak(cmd: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd` under a wrapper process; its result and its peak RSS in MiB."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True,"
        " text=True); sys.stderr.write(r.stderr); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
    )
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                         env=ENV, timeout=300)  # fmt: skip
    code, mib = (int(v) for v in res.stdout.split())
    return subprocess.CompletedProcess(cmd, code, "", res.stderr), mib


@pytest.mark.parametrize(
    ("make", "name", "message"),
    [
        (lambda p: _bomb(p, True, 2), "t1.nii.gz", "more data follow the voxels its header"),
        (lambda p: _bomb(p, False, 2), "t1.nii.gz", "more data follow the voxels its header"),
        (_sparse_tail, "t1.nii", "more data follow the voxels its header"),
        (_too_many_voxels, "t1.nii.gz", "more than smri loads whole (134,217,728"),
    ],
    ids=["scaled-gzip-2GiB", "plain-gzip-2GiB", "nii-2GiB-tail", "scaled-2^27-voxels"],
)
def test_a_file_that_inflates_too_far_is_refused_in_bounded_memory(cohort, tmp_path, make,
                                                                   name, message):  # fmt: skip
    folder = cohort / "HGG" / PID
    for old in folder.glob(f"{PID}_t1.nii*"):
        old.unlink()
    bad = folder / f"{PID}_{name}"
    make(bad)
    assert bad.stat().st_size < 3 << 20 or name.endswith(".nii")  # small on disk
    cmd = [sys.executable, "-m", "smri", "preprocess", str(cohort), str(tmp_path / "s.h5"),
           "--slices", "16", "-j", "1"]  # fmt: skip
    res, mib = _peak(cmd)
    assert res.returncode == 0, res.stderr
    assert f"skipping patient {PID}: {bad}: " in res.stderr and message in res.stderr
    assert mib < MEMORY_CAP_MIB, f"peak {mib} MiB"


# ------------------------------------------------------------------------ headers read wrong
def _offset_in_header(path: Path, offset: float) -> None:
    raw = bytearray(write_nifti(path, np.ones((20, 24, 40), np.int16)).read_bytes())
    struct.pack_into("<f", raw, 108, offset)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset", [0.0, 100.0, 348.0])
def test_a_voxel_offset_inside_the_header_is_refused(cohort, tmp_path, offset):
    folder = cohort / "HGG" / PID
    (folder / f"{PID}_t1.nii.gz").unlink()
    bad = folder / f"{PID}_t1.nii"
    _offset_in_header(bad, offset)
    res = run_smri("preprocess", cohort, tmp_path / "s.h5", "--slices", "16")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stderr.splitlines() if x.startswith(f"skipping patient {PID}"))
    assert line.startswith(f"skipping patient {PID}: {bad}: not a readable NIfTI volume (")
    assert "offset" in line


def test_nibabels_complaint_is_folded_into_the_one_line_once(cohort, tmp_path):
    scan = cohort / "HGG" / PID / f"{PID}_t1.nii.gz"
    raw = bytearray(gzip.decompress(scan.read_bytes()))
    struct.pack_into("<h", raw, 70, 0)  # datatype 0: nibabel logs "data code 0 not supported"
    scan.write_bytes(gzip.compress(bytes(raw)))
    res = run_smri("preprocess", cohort, tmp_path / "s.h5", "--slices", "16")
    assert res.returncode == 0, res.stderr
    mentions = [x for x in res.stderr.splitlines() if "data code 0" in x]
    assert mentions == [
        f"skipping patient {PID}: {scan}: not a readable NIfTI volume (data code 0 not supported)"
    ]


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_given_as_checkpoint_is_named_not_missing(cohort, device):
    res = run_smri("predict", device, cohort / "HGG" / PID, timeout=120)
    assert error_line(res) == (
        f"Error: {device}: is a character device, not a regular file; smri reads only regular "
        "files (or links to them)"
    )
