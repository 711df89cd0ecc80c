"""Every reader refuses a store that breaks its contract, instead of reading it silently wrong:
labels other than -1/0/1, duplicate or empty patient ids, attributes that contradict the
datasets. Each case goes through `smri info`, `train`, `evaluate`, `show` and the
`smri.StoreDataset` API, which all open stores through `StoreReader`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

import smri
from smri.cli import main
from smri.errors import DataError
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)


def _labels(f: h5py.File, value: int) -> None:
    labels = f["labels"][:]
    labels[4] = value
    f["labels"][:] = labels


def _duplicate_id(f: h5py.File) -> None:
    ids = f["patient_id"].asstr()[:]
    ids[7] = ids[2]
    f["patient_id"][:] = ids


def _empty_id(f: h5py.File) -> None:
    ids = f["patient_id"].asstr()[:]
    ids[1] = ""
    f["patient_id"][:] = ids


def _attr(name: str, value: object):
    def change(f: h5py.File) -> None:
        f.attrs[name] = value

    return change


def _config(**changes):
    def change(f: h5py.File) -> None:
        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})

    return change


CASES = [
    ("label-2", lambda f: _labels(f, 2), "patient P004 has label 2, expected -1, 0 or 1"),
    ("label-minus-7", lambda f: _labels(f, -7), "patient P004 has label -7, expected -1, 0 or 1"),
    ("duplicate-id", _duplicate_id, "patient id 'P002' twice (rows 2 and 7)"),
    ("empty-id", _empty_id, "an empty patient id (row 1)"),
    ("modalities", _attr("modalities", json.dumps(["flair", "t1"])),
     "attributes contradict its datasets (2 modalities named for images of 4;"),
    ("slices", _attr("slices", 32), "slices 32 for images of 16"),
    ("classes", _attr("classes", json.dumps({"LGG": 0, "HGG": 0})),
     "classes {'LGG': 0, 'HGG': 0} are not one name for 0 and one for 1"),
    ("axis-order", _attr("axis_order", "x,y,slice,modality"), "axis order 'x,y,slice,modality'"),
    ("config-dtype", _config(dtype="float32"), "config dtype float32 for images of float16"),
    ("config-slices", _config(slices=8), "config slices 8 for images of 16"),
]  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("contract")
    return tiny_run(tmp)


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_reader_refuses_a_store_that_breaks_its_contract(good, tmp_path, make, message):
    store, run = good
    bad = Path(shutil.copy(store, tmp_path / "bad.h5"))
    with h5py.File(bad, "r+") as f:
        make(f)
    for args in (
        ["info", bad],
        ["train", bad, "--width", "0.25", "--epochs", "1", "--out", tmp_path / "r"],
        ["evaluate", run / "best.pt", bad, "--out", tmp_path / "ev"],
        ["show", bad, "P000", "--out", tmp_path / "p.png"],
    ):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 1, (args[0], res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: damaged smri store: ")
        assert message in lines[0], lines[0]
    with pytest.raises(DataError, match="damaged smri store"):
        smri.StoreDataset(bad)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p.png").exists()
