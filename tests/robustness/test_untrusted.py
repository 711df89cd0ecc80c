"""Untrusted files: checkpoints that would run code, stores with pickled payloads, hostile ids.

A checkpoint is loaded with ``torch.load(weights_only=True)``, a store is read through its known
keys only, and a patient id is data, never a path: each test plants a payload that would create
a marker file if it ever ran (or a file outside the output folder) and asserts it did not.
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from smri.cli import main
from smri.errors import DataError
from smri.model_io import load_checkpoint
from smri.networks import ModelConfig
from smri.store import StoreReader
from smri.training import TrainConfig, train
from tests.helpers.cli import invoke, sole_error_line
from tests.helpers.hostile import Payload
from tests.helpers.nifti import write_patient
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

FAST = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram")
SMALL = ModelConfig(width=0.25)


STORE_LABELS = [0, 1] * 6  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(store, SMALL, FAST, out, log=lambda _: None)
    return out


def evil_checkpoints(folder: Path, marker: Path, real: Path) -> dict[str, Path]:
    """Checkpoints that run `exec` when unpickled: top level, hidden in the weights, legacy."""
    folder.mkdir(parents=True, exist_ok=True)
    good = torch.load(real, weights_only=True)
    paths = {name: folder / f"{name}.pt" for name in ("top", "nested", "legacy")}
    torch.save({**good, "note": Payload(marker)}, paths["top"])
    torch.save({**good, "model": {**good["model"], "extra": Payload(marker)}}, paths["nested"])
    paths["legacy"].write_bytes(pickle.dumps({**good, "note": Payload(marker)}))
    return paths


def test_the_payload_is_real(run, tmp_path):
    # Control: loading the file the unsafe way does run the code, so the refusals below matter.
    marker = tmp_path / "control.marker"
    path = evil_checkpoints(tmp_path / "ck", marker, run / "best.pt")["top"]
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["top", "nested", "legacy"])
def test_evaluate_and_predict_refuse_a_checkpoint_that_runs_code(run, store, tmp_path, kind):
    marker = tmp_path / "pwned.marker"
    path = evil_checkpoints(tmp_path / "ck", marker, run / "best.pt")[kind]
    patient = tmp_path / "P1"
    write_patient(patient, "P1", 1, shape=(32, 32, 20))
    for args in (
        ["evaluate", path, store, "--out", tmp_path / "ev", "--cache", "ram"],
        ["predict", path, patient, "--csv", tmp_path / "p.csv"],
    ):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        line = sole_error_line(result)
        assert line.startswith(f"Error: {path}: ")
        if kind == "legacy":  # not a torch zip file: refused as unreadable before any object
            assert "not a readable torch checkpoint" in line
        else:
            assert re.search(r"refused: the file holds a Python object \(\S*exec\)", line)
            assert "may be malicious. Not loaded" in line
        assert "weights_only=False" not in line  # torch's own advice would run the payload
        assert not marker.exists()
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.csv").exists()


def test_resume_refuses_a_last_pt_that_runs_code(run, tmp_path):
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    marker = tmp_path / "pwned.marker"
    evil = evil_checkpoints(tmp_path / "ck", marker, run / "last.pt")["top"]
    shutil.copy(evil, cut / "last.pt")
    metrics = (cut / "metrics.csv").read_text()
    result = invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0")
    assert result.exit_code == 1, result.output
    line = sole_error_line(result)
    assert line.startswith(f"Error: {cut / 'last.pt'}: refused: the file holds a Python object")
    assert not marker.exists()
    assert (cut / "metrics.csv").read_text() == metrics
    assert (cut / "last.pt").read_bytes() == evil.read_bytes()  # left for the user to inspect


def test_library_load_refuses_too(run, tmp_path):
    marker = tmp_path / "pwned.marker"
    path = evil_checkpoints(tmp_path / "ck", marker, run / "best.pt")["nested"]
    with pytest.raises(DataError, match=r"refused: the file holds a Python object \(\S*exec\)"):
        load_checkpoint(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------- stores
def _plant(path: Path, marker: Path) -> bytes:
    """Pickled payloads in an opaque attribute, a bytes attribute, a dataset and a meta field."""
    payload = pickle.dumps(Payload(marker))
    with h5py.File(path, "a") as f:
        f.attrs["evil_opaque"] = np.void(payload)
        f.attrs["evil_bytes"] = np.bytes_(payload)
        f["evil"] = np.frombuffer(payload, dtype=np.uint8)
        f["meta"]["evil"] = np.void(payload)
    return payload


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any use of pickle while the test runs fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the store reader unpickled something")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)


def test_reading_a_store_never_unpickles(store, tmp_path, no_unpickling):
    path = tmp_path / "s.h5"
    shutil.copy(store, path)
    marker = tmp_path / "pwned.marker"
    _plant(path, marker)
    with StoreReader(path) as reader:  # unknown keys are ignored, known ones read as plain data
        assert reader.info.modalities == ("flair", "t1", "t1ce", "t2")
        assert reader.read(0).shape == (4, 16, 32, 32)
        assert set(reader.meta(0)) == {
            "original_shape", "spacing", "intensity_min", "intensity_max", "source_files",
            "has_mask", "tumour_voxels", "tumour_voxels_in_slab", "axis_codes", "affine",
            "slab_start",
        }  # fmt: skip
    for args in (
        ["info", path],
        ["info", path, "--json"],
        ["show", path, "P000", "-o", tmp_path / "p.png"],
        ["train", path, "--width", "0.25", "--batch-size", "4", "--dry-run"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert not marker.exists()


def test_store_attributes_are_plain_types(store):
    with h5py.File(store) as f:
        for name, value in f.attrs.items():
            assert isinstance(value, str | np.integer | np.floating | int | float), name


@pytest.mark.parametrize("key", ["config", "classes", "modalities"])
def test_a_known_attribute_holding_a_pickle_is_a_damaged_store(store, tmp_path, key):
    path = tmp_path / "s.h5"
    shutil.copy(store, path)
    marker = tmp_path / "pwned.marker"
    with h5py.File(path, "a") as f:
        f.attrs[key] = np.void(pickle.dumps(Payload(marker)))
    result = CliRunner().invoke(main, ["info", str(path)])
    assert not marker.exists()
    assert result.exit_code == 1
    assert f"{path}: damaged smri store" in result.output


def test_a_known_attribute_holding_pickled_bytes_is_a_damaged_store(store, tmp_path):
    path = tmp_path / "s.h5"
    shutil.copy(store, path)
    marker = tmp_path / "pwned.marker"
    with h5py.File(path, "a") as f:
        f.attrs["config"] = np.bytes_(pickle.dumps(Payload(marker)))
    result = invoke("info", path)
    assert result.exit_code == 1
    assert sole_error_line(result).startswith(f"Error: {path}: damaged smri store")
    assert not marker.exists()


# -------------------------------------------------------------------------- hostile ids
HOSTILE = ["../../x", "/tmp/smri-escape", "a/../../b", "..", "fold0/../../c"]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> Path:
    path = make_store(tmp_path_factory.mktemp("hostile") / "h.h5", labels=[0, 1] * 5)
    with h5py.File(path, "a") as f:
        ids = f["patient_id"]
        for i, pid in enumerate(HOSTILE):
            ids[i] = pid
    return path


def test_store_ids_are_data_not_paths_in_runs_folds_and_evaluate(hostile_store, tmp_path):
    work = tmp_path / "work"
    (work / "deep" / "er").mkdir(parents=True)
    out = work / "deep" / "er" / "cv"
    before = _files(tmp_path)
    args = ["--width", "0.25", "--batch-size", "2", "--epochs", "1", "--cache", "ram"]
    result = invoke("train", hostile_store, *args, "--workers", "0", "--folds", "2", "--out", out)
    assert result.exit_code == 0, result.output
    ev = out / "ev"
    result = invoke("evaluate", out / "fold0" / "best.pt", hostile_store, "--out", ev)
    assert result.exit_code == 0, result.output
    result = invoke("show", hostile_store, "../../x", "-o", out / "x.png")
    assert result.exit_code == 0, result.output
    new = _files(tmp_path) - before
    assert new and all(out in p.parents for p in new), sorted(new - set(out.rglob("*")))
    assert not Path("/tmp/smri-escape").exists()
    for csv_path in (out / "predictions.csv", ev / "predictions.csv"):
        ids = {line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]}
        assert set(HOSTILE) <= ids  # written verbatim as CSV values


def test_show_of_an_unknown_hostile_id_names_it(hostile_store, tmp_path):
    result = invoke("show", hostile_store, "../../nobody", "-o", tmp_path / "x.png")
    assert result.exit_code == 1
    assert "no patient '../../nobody' in the store" in sole_error_line(result)
    assert not (tmp_path / "x.png").exists()


def test_show_does_not_follow_an_id_out_of_the_cohort(tmp_path):
    write_patient(tmp_path / "cohort" / "HGG" / "P1", "P1", 1, shape=(32, 32, 40))
    write_patient(tmp_path / "outside", "outside", 2, shape=(32, 32, 40))
    result = CliRunner().invoke(
        main, ["show", str(tmp_path / "cohort"), "../outside", "-o", str(tmp_path / "x.png")]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "x.png").exists()


def test_predict_ids_are_folder_names_and_only_the_csv_is_written(run, tmp_path):
    # A patient id in `predict` is the last component of a folder path: it cannot hold a
    # separator, and a path with '..' in it is resolved by the OS, not turned into a file name.
    folder = tmp_path / "cohort" / "HGG" / "P1"
    write_patient(folder, "P1", 1, shape=(32, 32, 20))
    before = _files(tmp_path)
    result = invoke("predict", run / "best.pt", folder / ".." / "P1", "--csv", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) - before == {tmp_path / "p.csv"}
    assert (tmp_path / "p.csv").read_text().splitlines()[1].startswith("P1,")


# Covered elsewhere: labels-CSV ids such as '../../x' are reported, never followed
# (tests/robustness/test_bad_inputs_preprocess.py::test_patient_ids_never_escape_the_output_folder);
# synth makes its own ids (BraTS19_SYN_0000_1, ...) and --overwrite deletes only what it wrote
# (tests/stages/test_phantoms.py); K-fold folders are fold<k> and run folders
# <model>-<date>-<time>.
