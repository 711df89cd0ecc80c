"""A store is untrusted input: what smri reads from one comes from that file, in sizes the file
can hold, of the types the schema gives, with the values it promises.

Each hostile store is a copy of a good one with one thing changed, opened through `smri info`,
`train`, `evaluate` or `smri.StoreDataset` (all open stores through `StoreReader`): one
`Error:` line naming the store and what is wrong, no traceback, no hang, bounded memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import smri
from smri.cli import main
from smri.errors import DataError
from smri.store import StoreReader
from tests.helpers.cli import ENV, error_line, smri_cmd
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    """A 12-patient store and a one-epoch run trained on it."""
    return tiny_run(tmp_path_factory.mktemp("untrusted-store"))


def copy_of(store: Path, folder: Path, name: str = "bad.h5") -> Path:
    return Path(shutil.copy(store, folder / name))


def one_error(*args: object) -> str:
    """The one `Error:` line of a refused command (exit 1), run in this process."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def _replace_images(store: Path, **create) -> None:
    with h5py.File(store, "r+") as f:
        shape, dtype = f["images"].shape, f["images"].dtype
        del f["images"]
        f.create_dataset("images", shape=shape, dtype=dtype, **create)


# ------------------------------------------------------------------- data from other files
def test_an_external_link_is_refused_not_followed(good, tmp_path):
    store, _ = good
    other = copy_of(store, tmp_path, "other.h5")
    bad = copy_of(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        del f["images"]
        f["images"] = h5py.ExternalLink(str(other), "/images")
    line = one_error("info", bad)
    assert line == (
        f"Error: {bad}: damaged smri store: 'images' is a link to {other}:/images; smri reads "
        "only what the store file itself holds"
    )
    with pytest.raises(DataError, match="'images' is a link to"):
        smri.StoreDataset(bad)


def test_a_soft_link_to_a_meta_field_or_labels_is_refused(good, tmp_path):
    store, _ = good
    for key in ("labels", "meta/spacing"):
        bad = copy_of(store, tmp_path, f"{key.replace('/', '_')}.h5")
        with h5py.File(bad, "r+") as f:
            f.move(key, "hidden")
            f[key] = h5py.SoftLink("/hidden")
        assert f"'{key}' is a link to /hidden" in one_error("info", bad)


def test_a_virtual_dataset_is_refused(good, tmp_path):
    store, _ = good
    other = copy_of(store, tmp_path, "other.h5")
    bad = copy_of(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        shape, dtype = f["images"].shape, f["images"].dtype
        del f["images"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(other), "images", shape=shape)
        f.create_virtual_dataset("images", layout)
    assert "'images' is a virtual dataset (its data are in other files)" in one_error("info", bad)


def test_external_raw_storage_is_refused_before_a_byte_is_read(good, tmp_path):
    """HDF5 external storage: the images' bytes in /etc/passwd (or any file) are never read."""
    store, run = good
    bad = copy_of(store, tmp_path)
    _replace_images(bad, external=[("/etc/passwd", 0, h5py.h5f.UNLIMITED)])
    message = "'images' keeps its data in another file (/etc/passwd)"
    assert message in one_error("evaluate", run / "best.pt", bad, "--out", tmp_path / "ev")
    assert message in one_error("info", bad)
    assert not (tmp_path / "ev").exists()


def test_external_storage_in_a_fifo_does_not_hang(good, tmp_path):
    store, run = good
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    bad = copy_of(store, tmp_path)
    _replace_images(bad, external=[(str(fifo), 0, h5py.h5f.UNLIMITED)])
    for args in (["info", bad], ["evaluate", run / "best.pt", bad, "--device", "cpu"]):
        res = subprocess.run(smri_cmd(*args), capture_output=True, text=True, timeout=120,
                             env=ENV)  # fmt: skip
        assert f"keeps its data in another file ({fifo})" in error_line(res)


# ------------------------------------------------------------------------- declared sizes
def test_three_hundred_million_patients_in_a_small_file_are_not_allocated(good, tmp_path):
    """Every dataset resized to 3e8 rows: the file stays small (no chunk is written), and
    `smri info` refuses it in bounded memory instead of allocating gigabytes for it."""
    store, _ = good
    bad = copy_of(store, tmp_path)
    n = 300_000_000
    with h5py.File(bad, "r+") as f:
        m, s, h, w = f["images"].shape[1:]
        del f["images"]  # its chunks were allocated early: a resize would allocate them all
        f.create_dataset("images", shape=(n, m, s, h, w), maxshape=(None, m, s, h, w),
                         chunks=(1, 1, s, h, w), dtype="float16")  # fmt: skip
        for ds in [f["labels"], f["patient_id"], f["masks"], *f["meta"].values()]:
            ds.resize(n, axis=0)
    assert bad.stat().st_size < 5_000_000
    res, mib = peak_memory(smri_cmd("info", bad))
    assert "damaged smri store: 'images' declares 300,000,000 patients" in error_line(res)
    assert mib < 400, f"peak {mib} MiB"  # its labels alone would take 286 MiB, its ids GBs


def peak_memory(cmd: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd` under a small wrapper process; its result and its peak RSS in MiB (a child
    forked from this test process would count this process's memory as its own)."""
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True,"
        " text=True); sys.stderr.write(r.stderr); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
    )
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                         env=ENV, timeout=300)  # fmt: skip
    code, mib = (int(v) for v in res.stdout.split())
    return subprocess.CompletedProcess(cmd, code, "", res.stderr), mib


def test_a_chunk_holding_many_patients_is_refused(good, tmp_path):
    store, _ = good
    bad = copy_of(store, tmp_path)
    with h5py.File(bad) as f:
        shape = f["images"].shape
    _replace_images(bad, chunks=shape)
    assert f"'images' chunks {shape} hold more than one patient" in one_error("info", bad)


# ------------------------------------------------------------------------- types
def _attr(name: str, value: object):
    def change(f: h5py.File) -> None:
        f.attrs[name] = value

    return change


def _meta_as_text(f: h5py.File) -> None:
    shape = f["meta/spacing"].shape
    del f["meta/spacing"]
    f["meta"].create_dataset("spacing", data=np.full(shape, "x", dtype=h5py.string_dtype()))


TYPES = [
    ("classes-list", _attr("classes", json.dumps(["LGG", "HGG"])),
     "attribute 'classes' is ['LGG', 'HGG'], expected a JSON object of class names"),
    ("classes-null", _attr("classes", "null"), "attribute 'classes' is None, expected a JSON"),
    ("classes-escape", _attr("classes", json.dumps({"L\x1b[2J": 0, "H": 1})),
     "attribute 'classes' is"),
    ("modalities-ints", _attr("modalities", json.dumps([1, 2, 3, 4])),
     "attribute 'modalities' is [1, 2, 3, 4], expected a JSON list of modality names"),
    ("slices-text", _attr("slices", "16"), "attribute 'slices' is '16', expected an integer"),
    ("config-not-json", _attr("config", "{"), "attribute 'config' is '{', expected JSON text"),
    ("config-deep", _attr("config", "[" * 100_000 + "]" * 100_000), "expected JSON text"),
    ("skipped-numbers", _attr("skipped", "[1]"), "attribute 'skipped' is [1], expected"),
    ("created-array", _attr("created", np.arange(3)), "attribute 'created' is"),
    ("meta-text", _meta_as_text, "'meta/spacing' is object, expected floats"),
    ("labels-float", lambda f: _retype(f, "labels", np.float32), "'labels' is float32, "
     "expected integers"),
    ("labels-wide", lambda f: _retype(f, "labels", np.int16, {4: 257}),
     "patient P004 has label 257, expected -1, 0 or 1"),  # not read as int8's 1
]  # fmt: skip


def _retype(f: h5py.File, key: str, dtype: type, rows: dict[int, int] | None = None) -> None:
    data = f[key][:].astype(dtype)
    for row, value in (rows or {}).items():
        data[row] = value
    del f[key]
    f.create_dataset(key, data=data, maxshape=(None,))


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in TYPES], ids=[c[0] for c in TYPES])
def test_every_attribute_and_meta_field_is_checked_by_type(good, tmp_path, make, message):
    store, run = good
    bad = copy_of(store, tmp_path)
    with h5py.File(bad, "r+") as f:
        make(f)
    for args in (["info", bad], ["evaluate", run / "best.pt", bad, "--out", tmp_path / "ev"]):
        line = one_error(*args)
        assert line.startswith(f"Error: {bad}: damaged smri store: "), line
        assert message in line, line
        assert "\x1b" not in line


# ------------------------------------------------------------------- values against [0, 1]
def _poison(store: Path, folder: Path, row: int, value: float) -> Path:
    bad = copy_of(store, folder, f"v{row}.h5")
    with h5py.File(bad, "r+") as f:
        images = f["images"][row]
        images.reshape(-1)[7] = value
        f["images"][row] = images
    return bad


@pytest.mark.parametrize(("value", "cache"), [(2.0, "none"), (-0.5, "ram"), (44640.0, "none")])
def test_values_outside_zero_one_are_never_scored(good, tmp_path, value, cache):
    store, run = good
    bad = _poison(store, tmp_path, 3, value)
    line = one_error("evaluate", run / "best.pt", bad, "--out", tmp_path / "ev", "--cache",
                     cache, "--workers", "0", "--device", "cpu")  # fmt: skip
    assert line.startswith(f"Error: {bad}: patient P003 holds values from ")
    assert "outside the [0, 1] that preprocessing writes" in line
    assert not (tmp_path / "ev").exists()


def test_values_outside_zero_one_stop_training_and_the_dataset(good, tmp_path):
    store, _ = good
    bad = _poison(store, tmp_path, 5, 1.5)
    line = one_error("train", bad, "--width", "0.25", "--epochs", "1", "--batch-size", "4",
                     "--cache", "ram", "--workers", "0", "--device", "cpu", "--no-tensorboard",
                     "--out", tmp_path / "r")  # fmt: skip
    assert re.search(r"patient P005 holds values from [0-9.e-]+ to 1\.5, outside the \[0, 1\]",
                     line), line  # fmt: skip
    ds = smri.StoreDataset(bad)
    ds[4]  # a good patient reads
    with pytest.raises(DataError, match=r"patient P005 holds values from .* to 1\.5, outside"):
        ds[5]


def test_a_good_store_reads_unchanged(good):
    """Checked reads return what is stored: the checks only refuse."""
    store, _ = good
    with h5py.File(store) as f:
        raw = f["images"][:]
    with StoreReader(store) as reader:
        np.testing.assert_array_equal(reader.read_many(list(range(len(reader)))), raw)
        assert reader.patient_ids == [f"P{i:03d}" for i in range(12)]


def test_ids_and_meta_strings_read_printable(tmp_path):
    """Ids holding ESC or a newline are data: they come back escaped, never raw."""
    store = make_store(
        tmp_path / "s.h5", labels=[0, 1, 0, 1], shape=(1, 8, 16, 16), modalities=("flair",)
    )
    with h5py.File(store, "r+") as f:
        f["patient_id"][:] = ["a\x1b[2J", "b\nError: forged", "c", "d"]
        f["meta/axis_codes"][0] = ["\x1b]0;x\x07"]
    with StoreReader(store) as reader:
        assert reader.patient_ids == ["a\\x1b[2J", "b\\nError: forged", "c", "d"]
        assert reader.meta(0)["axis_codes"] == ["\\x1b]0;x\\x07"]
    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\nError: forged" not in res.output
