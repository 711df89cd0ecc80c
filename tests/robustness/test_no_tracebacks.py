"""Where README promises one line, one line: cases that were tracebacks (or hangs).

A folder or file name that is not UTF-8 (the patient is skipped), an HDF5 store whose metadata
or chunks are damaged (info, train, evaluate, in a DataLoader worker too; damage that sends
libhdf5 into an endless loop or a crash), too little /dev/shm for streaming, a phantom shape
that cannot fit in memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import smri.data.slots
import smri.store.probe
from smri.errors import DataError
from smri.store import StoreReader, StoreWriter
from tests.helpers.cli import error_line, invoke
from tests.helpers.nifti import write_patient
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

TRAIN = ["--model", "cnn2", "--width", "0.25", "--batch-size", "4", "--epochs", "1",
         "--device", "cpu", "--no-tensorboard"]  # fmt: skip


# ------------------------------------------------------------------------- names not UTF-8
def test_a_name_that_is_not_utf8_skips_only_that_patient(tmp_path):
    root = tmp_path / "in"
    for i, pid in enumerate(["A_1", "B_1", "C_1"]):
        write_patient(root / "HGG" / pid, pid, i)
    write_patient(root / "LGG" / "D_1", "D_1", 9)
    os.rename(os.fsencode(root / "HGG" / "B_1"), os.fsencode(root / "HGG") + b"/B\xff\xfe")
    c1 = os.fsencode(root / "HGG" / "C_1")
    os.rename(c1 + b"/C_1_t2.nii.gz", c1 + b"/C_\xe9_t2.nii.gz")
    res = invoke("preprocess", root, tmp_path / "s.h5", "--slices", "16")
    assert res.exit_code == 0, res.output
    assert "skipping patient B\\xff\\xfe: folder name 'B\\xff\\xfe' is not valid UTF-8" in (
        res.stderr
    )
    assert "skipping patient C_1: file name 'C_\\xe9_t2.nii.gz' is not valid UTF-8" in res.stderr
    assert StoreReader(tmp_path / "s.h5").patient_ids == ["A_1", "D_1"]


# -------------------------------------------------------------------------- damaged stores
STORE_LABELS = [0, 1] * 6  # the patients of conftest's `store`


def _flip_metadata(src: Path, dst: Path, seed: int) -> None:
    """`src` with bytes flipped in its HDF5 metadata (heaps, object headers, B-trees):
    anywhere outside the image chunks, as a writer killed mid-write or a second writer
    leaves it."""
    raw = bytearray(src.read_bytes())
    data = np.zeros(len(raw), bool)  # bytes of image chunks: not metadata
    with h5py.File(src) as f:
        ds = f["images"].id
        for k in range(ds.get_num_chunks()):
            info = ds.get_chunk_info(k)
            data[info.byte_offset : info.byte_offset + info.size] = True
    rng = np.random.default_rng(seed)
    meta = np.flatnonzero(~data)
    for i in rng.choice(meta, 40, replace=False):
        raw[i] ^= 0xFF
    dst.write_bytes(bytes(raw))


@pytest.mark.parametrize("seed", range(8))
def test_damaged_hdf5_metadata_is_one_line(store, tmp_path, seed, monkeypatch):
    monkeypatch.setattr(smri.store.probe, "PROBE_SECONDS", 10.0)  # seed 5 loops libhdf5 (h5py 3.15)
    bad = tmp_path / "bad.h5"
    _flip_metadata(store, bad, seed)
    for args in (["info", bad], ["train", bad, *TRAIN, "--out", tmp_path / "run"]):
        res = invoke(*args)
        if res.exit_code == 0:  # the flips missed everything the command reads
            continue
        assert error_line(res).startswith(f"Error: {bad}: "), res.stderr


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("body", "expected"),
    [("sleep 30", "reading its HDF5 metadata did not finish in 2 s (libhdf5 loops on a "
                  "damaged heap or index)"),
     ("kill -SEGV $$", "reading its HDF5 metadata crashes libhdf5 (SIGSEGV)")],
    ids=["hang", "crash"],
)  # fmt: skip
def test_metadata_that_hangs_or_crashes_libhdf5_is_refused(
    store, tmp_path, monkeypatch, body, expected
):
    """The child that reads the metadata first stands in for libhdf5 looping or crashing."""
    copy = tmp_path / "s.h5"
    shutil.copy(store, copy)  # a file version no other test has probed in this process
    monkeypatch.setattr(smri.store.probe, "PROBE_SECONDS", 2.0)
    monkeypatch.setattr(smri.store.probe.sys, "executable", _fake_python(tmp_path, body))
    line = error_line(invoke("info", copy))
    assert line == f"Error: {copy}: {expected}; the store is damaged: make it again with " + (
        "`smri preprocess`"
    )


def test_each_file_version_is_probed_once(store, tmp_path, monkeypatch):
    copy = tmp_path / "s.h5"
    shutil.copy(store, copy)
    calls = []
    run = smri.store.probe.subprocess.run
    monkeypatch.setattr(
        smri.store.probe.subprocess, "run", lambda *a, **k: calls.append(a) or run(*a, **k)
    )
    for _ in range(3):
        StoreReader(copy).close()
    assert len(calls) == 1
    os.utime(copy, ns=(1, 1))  # replaced in place: probed again
    StoreReader(copy).close()
    assert len(calls) == 2


def _compressed_with_a_bad_chunk(src: Path, dst: Path, row: int) -> None:
    """A gzip-compressed copy of `src` whose image chunk of patient `row` is garbage."""
    with StoreReader(src) as r, StoreWriter(
        dst, n_patients=len(r), volume_shape=r.info.volume_shape, dtype=r.info.dtype,
        compression="gzip-1", modalities=r.info.modalities, classes=r.info.classes,
        config={**r.info.config, "compression": "gzip-1"},
    ) as w:  # fmt: skip
        for i in range(len(r)):
            w.copy_row(r, i)
    with h5py.File(dst, "r+") as f:
        ds = f["images"]
        mask, chunk = ds.id.read_direct_chunk((row, 0, 0, 0, 0))
        ds.id.write_direct_chunk((row, 0, 0, 0, 0), b"\x00garbage" * (len(chunk) // 8), mask)


@pytest.mark.parametrize(
    "cache", [["--cache", "ram"], ["--cache", "none", "--workers", "2"]], ids=["ram", "stream"]
)
def test_a_damaged_chunk_names_the_store_and_patient(store, tmp_path, cache):
    bad = tmp_path / "bad.h5"
    _compressed_with_a_bad_chunk(store, bad, 3)
    line = error_line(invoke("train", bad, *TRAIN, *cache, "--out", tmp_path / "run"))
    assert line.startswith(f"Error: {bad}: cannot read patient P003 (row 3): ")
    assert line.endswith("the store is damaged: make it again with `smri preprocess`")


# -------------------------------------------------------------------------- /dev/shm, memory
def test_too_little_shared_memory_for_streaming_says_what_to_do(store, tmp_path, monkeypatch):
    monkeypatch.setattr(smri.data.slots, "shm_free_bytes", lambda: 64 * 10**6)  # Docker's default
    big = make_store(tmp_path / "big.h5", shape=(4, 32, 96, 96))
    line = error_line(invoke("train", big, *TRAIN, "--batch-size", "8", "--cache", "none",
                        "--workers", "4", "--out", tmp_path / "run"), code=2)  # fmt: skip
    assert line.startswith("Error: Invalid value for '--cache': streaming (--cache none) passes")
    assert "/dev/shm has 61 MiB free" in line and "Use --cache ram" in line
    assert "docker run --shm-size=" in line
    assert invoke("train", big, *TRAIN, "--cache", "ram", "--out", tmp_path / "ok").exit_code == 0


def test_a_phantom_shape_that_cannot_fit_in_memory_is_refused(tmp_path):
    line = error_line(invoke("synth", tmp_path / "c", "--shape", "1024", "1024", "1024"), code=2)
    assert line.startswith("Error: Invalid value for '--shape': too large for this machine: a "
                           "phantom of 1024x1024x1024 voxels takes about 64.0 GiB")  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_out_of_memory_anywhere_is_one_line(store, tmp_path, monkeypatch):
    import smri.training.fit

    def allocate(*_a, **_k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 123456789012 bytes."
        )

    monkeypatch.setattr(smri.training.fit, "train_one_epoch", allocate)  # where fit calls it
    line = error_line(invoke("train", store, *TRAIN, "--cache", "ram", "--out", tmp_path / "run"))
    assert line.startswith("Error: out of memory ([enforce fail at alloc_cpu.cpp:117] data. ")
    assert line.endswith("fewer --jobs or --workers, or a machine with more memory")


def test_store_read_errors_are_data_errors(store, tmp_path):
    bad = tmp_path / "bad.h5"
    _compressed_with_a_bad_chunk(store, bad, 5)
    with StoreReader(bad) as r, pytest.raises(DataError, match=r"cannot read patient P005"):
        r.read_many([4, 5])
    shutil.copy(store, tmp_path / "ok.h5")
