"""The bad-input catalogue for `train`, `evaluate` and `predict`, end to end through the CLI.

Each case asserts the exit code, that the message names the offending file, option or value,
that no traceback is printed, and that nothing half-made is left (no run folder, no --out, no
CSV; a resumed run folder unchanged).

Already covered in tests/cli/test_training_commands.py (not repeated here): batch larger than the
training split, more folds than patients of a class, --device cuda without CUDA (train), a text file
as the store, evaluate on a store of another volume shape, a text file as the checkpoint, predict on
an empty folder, an existing --out without --overwrite, new settings given with --resume.
The preprocess/info side is in tests/robustness/test_bad_inputs_preprocess.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from smri.atomic import OutputLock
from smri.cli import main
from smri.networks import ModelConfig, build_model
from smri.training import TrainConfig, train
from tests.helpers.bad_values import cases
from tests.helpers.cli import invoke, sole_error_line
from tests.helpers.nifti import write_patient
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

SMALL = ModelConfig(width=0.25)
GEOMETRY = (32, 32, 20)  # raw (X, Y, Z) that preprocesses to the store's (16, 32, 32)
SPLIT = ("val-fraction", "fold-without-folds", "fold-out-of-range")  # checked against the store
FAST = ["--width", "0.25", "--batch-size", "2", "--epochs", "1", "--cache", "ram", "--workers", "0"]


def error_line_of(result) -> str:
    """The last line of a failed predict (after its `skipped:` lines)."""
    assert result.exit_code == 1
    return result.stderr.splitlines()[-1]


STORE_LABELS = [0, 1] * 6  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram")
    train(store, SMALL, cfg, out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def good(run) -> dict:
    return torch.load(run / "best.pt", weights_only=True)


# ---------------------------------------------------------------------- broken checkpoints
def _random_bytes(path: Path, good: dict) -> None:
    path.write_bytes(np.random.default_rng(len(str(path))).bytes(5000))


def _truncated(path: Path, good: dict) -> None:
    torch.save(good, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path, good: dict) -> None:
    path.write_bytes(b"")


def _cnn1_weights_claiming_cnn2(path: Path, good: dict) -> None:
    cfg = ModelConfig(name="cnn1", width=0.25, volume_shape=(16, 32, 32))
    torch.save({**good, "model": build_model(cfg).state_dict()}, path)


def _other_width(path: Path, good: dict) -> None:
    cfg = ModelConfig(name="cnn2", width=0.5, volume_shape=(16, 32, 32))
    torch.save({**good, "model": build_model(cfg).state_dict()}, path)


def _unknown_model(path: Path, good: dict) -> None:
    torch.save({**good, "model_config": {**good["model_config"], "name": "cnn9"}}, path)


def _newer_version(path: Path, good: dict) -> None:
    torch.save({**good, "version": 9}, path)


def _no_weights(path: Path, good: dict) -> None:
    torch.save({k: v for k, v in good.items() if k != "model"}, path)


def _plain_torch(path: Path, good: dict) -> None:
    torch.save(good["model"], path)  # a bare state_dict, as other tools save it


BROKEN_CHECKPOINTS = [
    ("random-bytes", _random_bytes, "not a readable torch checkpoint (not a torch zip file)"),
    ("truncated", _truncated, "not a readable torch checkpoint (truncated or corrupt"),
    ("empty", _empty, "empty file (0 bytes), expected an smri checkpoint"),
    (
        "cnn1-weights-claiming-cnn2",
        _cnn1_weights_claiming_cnn2,
        "the weights do not fit the cnn2 model (width 0.25, input 16x32x32) the checkpoint "
        'describes: Unexpected key(s) in state_dict: "cnn.head.1.weight"',
    ),
    (
        "other-width",
        _other_width,
        "the weights do not fit the cnn2 model (width 0.25, input 16x32x32) the checkpoint "
        "describes: size mismatch for cnn.backbone.blocks.0.conv.weight: copying a param with "
        "shape torch.Size([8, 1, 3, 3, 3]) from checkpoint, the shape in current model is "
        "torch.Size([4, 1, 3, 3, 3])",
    ),
    ("unknown-model", _unknown_model, "damaged smri checkpoint: bad model_config (unknown model"),
    ("newer-version", _newer_version, "checkpoint version 9 is newer than this smri reads"),
    ("no-weights", _no_weights, "damaged smri checkpoint: 'model' is missing or not a dict"),
    ("bare-state-dict", _plain_torch, "not an smri checkpoint (written by `smri train`)"),
]


@pytest.mark.parametrize(
    ("make", "message"), [c[1:] for c in BROKEN_CHECKPOINTS], ids=[c[0] for c in BROKEN_CHECKPOINTS]
)
def test_broken_checkpoint_in_evaluate_and_predict(store, good, tmp_path, make, message):
    path = tmp_path / "model.pt"
    make(path, good)
    patient = tmp_path / "P1"
    write_patient(patient, "P1", 1, shape=GEOMETRY)
    line = sole_error_line(
        invoke("evaluate", path, store, "--out", tmp_path / "ev", "--cache", "ram")
    )
    assert line.startswith(f"Error: {path}: ") and message in line
    line = sole_error_line(invoke("predict", path, patient, "--csv", tmp_path / "p.csv"))
    assert line.startswith(f"Error: {path}: ") and message in line
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------------------- predict inputs
def test_predict_skips_a_folder_missing_a_modality(run, tmp_path):
    write_patient(tmp_path / "ok", "ok", 1, shape=GEOMETRY)
    write_patient(tmp_path / "P2", "P2", 2, shape=GEOMETRY)
    (tmp_path / "P2" / "P2_t1ce.nii.gz").unlink()
    result = invoke("predict", run / "best.pt", tmp_path / "ok", tmp_path / "P2")
    assert result.exit_code == 0, result.output
    assert f"skipped: patient P2: no t1ce file in {tmp_path / 'P2'}" in result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["patient_id", "ok"]


def test_predict_names_the_broken_file(run, tmp_path):
    write_patient(tmp_path / "P3", "P3", 3, shape=GEOMETRY)
    bad = tmp_path / "P3" / "P3_flair.nii.gz"
    bad.write_bytes(bad.read_bytes()[:500])
    result = invoke("predict", run / "best.pt", tmp_path / "P3", "--csv", tmp_path / "p.csv")
    assert f"skipped: patient P3: {bad}: corrupt gzip stream" in result.stderr
    assert "Error: no patient folder could be used" in error_line_of(result)
    assert not (tmp_path / "p.csv").exists()


def test_predict_on_volumes_of_another_geometry(run, tmp_path):
    write_patient(tmp_path / "P4", "P4", 4, shape=(32, 40, 20))
    result = invoke("predict", run / "best.pt", tmp_path / "P4")
    assert (
        "skipped: patient P4: preprocessed shape (4, 16, 40, 32) differs from the model's "
        "(4, 16, 32, 32)"
    ) in result.stderr
    assert "Error: no patient folder could be used" in error_line_of(result)


def test_predict_on_volumes_with_too_few_slices(run, tmp_path):
    write_patient(tmp_path / "P5", "P5", 5, shape=(32, 32, 10))
    result = invoke("predict", run / "best.pt", tmp_path / "P5")
    assert "skipped: patient P5: " in result.stderr and "fewer than the 16" in result.stderr
    assert result.exit_code == 1


# --------------------------------------------------------------------------- evaluate inputs
def test_evaluate_on_a_store_of_other_modalities(run, tmp_path):
    other = make_store(tmp_path / "o.h5", labels=[0, 1], modalities=("flair", "t1", "t2", "pd"))
    line = sole_error_line(invoke("evaluate", run / "best.pt", other, "--out", tmp_path / "ev"))
    assert line == (
        f"Error: {other} does not match {run / 'best.pt'}: modalities ['flair', 't1', 't2', 'pd'] "
        "(checkpoint: ['flair', 't1', 't1ce', 't2'])"
    )
    assert not (tmp_path / "ev").exists()


def test_evaluate_on_a_store_of_other_slices(run, tmp_path):
    other = make_store(tmp_path / "o.h5", labels=[0, 1], shape=(4, 20, 32, 32))
    line = sole_error_line(invoke("evaluate", run / "best.pt", other, "--out", tmp_path / "ev"))
    assert "slices 20 (checkpoint: 16); volume_shape [4, 20, 32, 32]" in line
    assert not (tmp_path / "ev").exists()


def test_evaluate_on_a_foreign_hdf5(run, tmp_path):
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = [1, 2, 3]
    line = sole_error_line(invoke("evaluate", run / "best.pt", foreign, "--out", tmp_path / "ev"))
    assert line.startswith(f"Error: {foreign}: not an smri store")
    assert not (tmp_path / "ev").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_device_cuda_without_cuda(run, store, tmp_path):
    result = invoke("evaluate", run / "best.pt", store, "--device", "cuda", "--out", tmp_path / "e")
    assert "Invalid value for '--device': CUDA was asked for but torch sees no GPU" in (
        sole_error_line(result, code=2)
    )
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------ train stores
def _truncated_store(path: Path, store: Path) -> None:
    path.write_bytes(store.read_bytes()[:3000])


def _newer_schema(path: Path, store: Path) -> None:
    shutil.copy(store, path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99


def _foreign(path: Path, store: Path) -> None:
    with h5py.File(path, "w") as f:
        f["images"] = [0.0]


def _no_labels(path: Path, store: Path) -> None:
    shutil.copy(store, path)
    with h5py.File(path, "a") as f:
        del f["labels"]


def _one_class(path: Path, store: Path) -> None:
    make_store(path, labels=[1, 1, 1, 1])


def _lone_patient(path: Path, store: Path) -> None:
    make_store(path, labels=[0, 1, 1, 1])


def _a_folder(path: Path, store: Path) -> None:
    path.mkdir()


BROKEN_STORES = [
    ("truncated", _truncated_store, "not a readable HDF5 file (file is truncated)"),
    ("newer-schema", _newer_schema, "store schema version 99 is newer than this smri"),
    ("foreign-hdf5", _foreign, "not an smri store (no format='smri-store' attribute)"),
    ("no-labels", _no_labels, "store is missing the 'labels' dataset; re-run `smri preprocess`"),
    (
        "one-class",
        _one_class,
        "training needs labelled patients of both classes; the store has LGG=0, HGG=4",
    ),
    (
        "one-patient-class",
        _lone_patient,
        "class LGG has 1 labelled patient; a split needs at least 2",
    ),
    ("missing", lambda p, s: None, "no such store"),
    ("a-folder", _a_folder, "is a folder, expected an .h5 store"),
]


@pytest.mark.parametrize(
    ("make", "message"), [c[1:] for c in BROKEN_STORES], ids=[c[0] for c in BROKEN_STORES]
)
def test_train_on_a_broken_store(store, tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path, store)
    result = invoke("train", path, *FAST, "--out", tmp_path / "run")
    if make is _a_folder:  # click's dir_okay=False catches it first: a usage error
        assert f"'{path}' is a directory" in sole_error_line(result, code=2)
    else:
        line = sole_error_line(result)
        assert message in line
        if make not in (_one_class, _lone_patient):  # these name the class counts, not the file
            assert str(path) in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "option", "message"), [c for c in cases("train") if c.id in SPLIT]
)  # tests/helpers/bad_values.py
def test_train_bad_split_options(store, tmp_path, args, option, message):
    result = invoke("train", store, *FAST, *args, "--out", tmp_path / "run")
    assert f"Invalid value for '{option}': {message}" in sole_error_line(result, code=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "option", "message"), [c for c in cases("train") if c.id not in SPLIT]
)  # the table the API's tests share (tests/helpers/bad_values.py)
def test_train_numbers_that_are_not_finite_or_out_of_range(store, tmp_path, args, option, message):
    # nan passes every range comparison: without a check these reached torch as tracebacks,
    # after the run folder had been started
    result = invoke("train", store, *FAST, *args, "--out", tmp_path / "run")
    assert f"Invalid value for '{option}': {message}" in sole_error_line(result, code=2)
    assert not (tmp_path / "run").exists()


def test_models_width_not_finite():
    result = invoke("models", "--width", "nan")
    assert "Invalid value for '--width': expected a finite number, got nan." in sole_error_line(
        result, code=2
    )


def test_train_out_is_a_file(store, tmp_path):
    (tmp_path / "run").write_text("mine")
    result = invoke("train", store, *FAST, "--out", tmp_path / "run")
    assert f"'{tmp_path / 'run'}' is a file" in sole_error_line(result, code=2)
    assert (tmp_path / "run").read_text() == "mine"


# ------------------------------------------------------------------------------- --resume
@pytest.fixture
def cut(run, tmp_path) -> Path:
    """A copy of the finished run, to break."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "config.json"}


def test_resume_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    result = invoke("train", "--resume", tmp_path / "notes")
    assert "not an smri run folder (no config.json)" in sole_error_line(result, code=2)
    assert list((tmp_path / "notes").iterdir()) == []


def test_resume_a_run_another_process_has_just_started(tmp_path):
    # Between taking its lock and writing config.json, a starting run's folder is empty: a
    # second `--resume` is told of the other process, not that the folder is not a run.
    run = tmp_path / "run"
    run.mkdir()
    with OutputLock(run):  # flock: held against any other open of the lock file, even ours
        result = invoke("train", "--resume", run)
    assert "another smri process" in sole_error_line(result, code=1)
    assert list(run.iterdir()) == []


def test_resume_with_a_truncated_last_pt(cut):
    last = cut / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = _snapshot(cut)
    line = sole_error_line(invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0"))
    assert line.startswith(f"Error: {last}: not a readable torch checkpoint (truncated")
    assert _snapshot(cut) == before


def test_resume_when_the_store_changed_geometry(cut, tmp_path):
    config = json.loads((cut / "config.json").read_text())
    moved = tmp_path / "other.h5"
    make_store(moved, labels=[0, 1] * 6, shape=(4, 16, 32, 48))
    before = _snapshot(cut)
    result = invoke("train", moved, "--resume", cut, "--cache", "ram", "--workers", "0")
    line = sole_error_line(result)
    assert line == (
        f"Error: the store differs from the one {cut} was trained on: volume_shape "
        f"(4, 16, 32, 48) vs {config['store']['volume_shape']}"
    )
    assert _snapshot(cut) == before


def test_resume_when_the_store_is_gone(cut, tmp_path):
    config = json.loads((cut / "config.json").read_text())
    config["store"]["path"] = str(tmp_path / "gone.h5")
    (cut / "config.json").write_text(json.dumps(config))
    before = _snapshot(cut)
    line = sole_error_line(invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0"))
    assert line == (
        f"Error: {tmp_path / 'gone.h5'}: no such store (the one {cut / 'config.json'} records); "
        f"if it moved, give it: smri train STORE --resume {cut}"
    )
    assert _snapshot(cut) == before


def test_resume_with_a_damaged_config_json(cut):
    (cut / "config.json").write_text('{"store": {"path": ')
    result = CliRunner().invoke(main, ["train", "--resume", str(cut)])
    assert result.exit_code in (1, 2)
    assert "config.json" in result.output and "Traceback" not in result.output


def test_resume_with_a_last_pt_of_another_model(cut, good):
    other = build_model(ModelConfig(name="cnn2", width=0.5, volume_shape=(16, 32, 32)))
    last = torch.load(cut / "last.pt", weights_only=True)
    torch.save({**last, "model": other.state_dict()}, cut / "last.pt")
    result = CliRunner().invoke(main, ["train", "--resume", str(cut), "--cache", "ram"])
    assert result.exit_code == 1
    assert f"{cut / 'last.pt'}" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["deleted", "cut"])
def test_resume_restores_a_lost_or_cut_metrics_csv_from_last_pt(cut, damage):
    metrics = cut / "metrics.csv"
    before = metrics.read_text()
    if damage == "deleted":
        metrics.unlink()
    else:
        metrics.write_text(before[: len(before) - 40])  # the last row cut short
    result = invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert metrics.read_text() == before


def test_resume_without_last_pt_leaves_the_run_as_it_is(cut):
    # metrics.csv is written after last.pt: a recorded epoch means last.pt was lost, and
    # starting over would replace best.pt with a fresh epoch 1
    (cut / "last.pt").unlink()
    before = _snapshot(cut)
    line = sole_error_line(invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0"))
    assert line == (
        f"Error: {cut / 'last.pt'}: missing, but metrics.csv records finished epoch 1; --resume "
        "continues from last.pt, so the run is left as it is (start a new run with --out)"
    )
    assert _snapshot(cut) == before


def _older_last_pt(cut: Path) -> None:
    """last.pt as smri wrote it before it carried the metrics history."""
    last = torch.load(cut / "last.pt", weights_only=True)
    torch.save({k: v for k, v in last.items() if k != "metrics"}, cut / "last.pt")


def test_resume_of_an_older_last_pt_without_metrics_csv(cut):
    _older_last_pt(cut)
    (cut / "metrics.csv").unlink()
    before = _snapshot(cut)
    line = sole_error_line(invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0"))
    assert line == (
        f"Error: {cut / 'metrics.csv'}: missing, but {cut / 'last.pt'} has finished epoch 1; the "
        "run's history is incomplete, so it cannot be continued (start a new run with --out)"
    )
    assert _snapshot(cut) == before


def test_resume_of_an_older_last_pt_with_a_damaged_metrics_csv(cut):
    _older_last_pt(cut)
    text = (cut / "metrics.csv").read_text()
    (cut / "metrics.csv").write_text(text[: len(text) - 40])
    before = _snapshot(cut)
    line = sole_error_line(invoke("train", "--resume", cut, "--cache", "ram", "--workers", "0"))
    assert line.startswith(f"Error: {cut / 'metrics.csv'}: damaged metrics file (")
    assert _snapshot(cut) == before


# ---------------------------------------------------------------------------------- plot
def test_plot_of_a_run_with_a_cut_metrics_csv(cut, tmp_path):
    text = (cut / "metrics.csv").read_text()
    (cut / "metrics.csv").write_text(text[: len(text) - 40])
    line = sole_error_line(invoke("plot", cut, "--out", tmp_path / "figs"))
    assert line.startswith(f"Error: {cut / 'metrics.csv'}: damaged metrics file (TypeError: ")
    assert not (tmp_path / "figs").exists()


# ------------------------------------------------------------------- existing results kept
def test_predict_keeps_an_existing_csv_without_overwrite(run, tmp_path):
    # --csv labels.csv by mistake used to replace the file, after all the work
    write_patient(tmp_path / "P1", "P1", 1, shape=GEOMETRY)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nP1,HGG\n")
    result = invoke("predict", run / "best.pt", tmp_path / "P1", "--csv", labels)
    assert (
        sole_error_line(result, code=2) == f"Error: {labels} exists; pass --overwrite to replace it"
    )
    assert labels.read_text() == "patient_id,label\nP1,HGG\n"
    result = invoke("predict", run / "best.pt", tmp_path / "P1", "--csv", labels, "--overwrite")
    assert result.exit_code == 0, result.output
    assert labels.read_text().startswith("patient_id,probability,predicted\nP1,")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_predict_csv_in_a_missing_folder_is_refused_before_the_work(run, tmp_path):
    write_patient(tmp_path / "P1", "P1", 1, shape=GEOMETRY)
    result = invoke("predict", run / "best.pt", tmp_path / "P1", "--csv", tmp_path / "no" / "p.csv")
    line = sole_error_line(result)
    assert line == f"Error: {tmp_path / 'no' / 'p.csv'}: folder {tmp_path / 'no'} does not exist"
    assert result.stdout == ""  # refused before any prediction


def test_evaluate_of_last_pt_keeps_the_results_of_best_pt(cut, store):
    # both default to RUN/eval-<store>: the second used to replace the first's results
    args = ["--cache", "ram", "--workers", "0"]
    assert invoke("evaluate", cut / "best.pt", store, *args).exit_code == 0
    out = cut / f"eval-{store.stem}"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = invoke("evaluate", cut / "last.pt", store, *args)
    assert f"Invalid value for '--out': {out} already holds evaluation results (metrics.json, " \
        "predictions.csv, roc.png); choose another --out, or pass --overwrite to replace them" \
        in sole_error_line(result, code=2)  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert invoke("evaluate", cut / "last.pt", store, *args, "--overwrite").exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(cut / "last.pt")
