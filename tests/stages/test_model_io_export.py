"""`smri export`: the folder it writes, the model card, and exported models in evaluate/predict.

An exported model must give the same predictions as its checkpoint, bit for bit on CPU; a
damaged or hostile export is a one-line error (exit 1) that loads nothing it should not.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from smri.errors import SmriError
from smri.model_io import export_run, load_checkpoint, load_model, model_from_checkpoint
from smri.networks import ModelConfig
from smri.training import TrainConfig, train
from tests.helpers.cli import invoke, sole_error_line
from tests.helpers.hostile import Payload
from tests.helpers.nifti import write_nifti, write_patient
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

SMALL = ModelConfig(width=0.25)
FAST = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram")
GEOMETRY = (32, 32, 20)  # raw (X, Y, Z) that preprocesses to the store's (16, 32, 32)


STORE_LABELS = [0, 1] * 6  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(store, SMALL, FAST, out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def cv(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cv"
    train(store, SMALL, TrainConfig(**{**FAST.__dict__, "folds": 2}), out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "glioma-cnn2"
    export_run(run, out)
    return out


# ------------------------------------------------------------------------------- round trip
def test_export_writes_the_hugging_face_layout(run, tmp_path):
    out = tmp_path / "m"
    result = invoke("export", run, out, "--license", "mit")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(out / n) for n in ("model.safetensors", "config.json", "README.md")
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    weights, ckpt = load_file(out / "model.safetensors"), load_checkpoint(run / "best.pt")
    assert weights.keys() == ckpt["model"].keys()
    assert all(torch.equal(weights[k], ckpt["model"][k]) for k in weights)
    config = json.loads((out / "config.json").read_text())
    assert (config["format"], config["version"], config["library_name"]) == (
        "smri-model",
        1,
        "smri",
    )
    assert config["store"] == {
        "modalities": ["flair", "t1", "t1ce", "t2"],
        "slices": 16,
        "volume_shape": [4, 16, 32, 32],
        "classes": {"LGG": 0, "HGG": 1},
    }
    assert str(run) not in (out / "config.json").read_text()  # no path of the training machine
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: smri\nlicense: mit\ntags:\n- smri\n")
    for heading in (
        "# m",
        "## Model",
        "## Data",
        "## Split",
        "## Metrics",
        "## Intended use",
        "## Limitations",
        "## How to use",
    ):
        assert f"\n{heading}\n" in card
    assert "**Research use only; not for clinical use.**" in card
    assert "preprocessed into `s.h5`: 12 patients (LGG 6, HGG 6), 0 left out" in card
    assert "One split, stratified by label, seed 0, validation fraction 0.2: 10 training" in card
    assert "| AUC | " in card and "| not computed |" in card


def test_an_exported_model_predicts_exactly_as_its_checkpoint(run, exported, store, tmp_path):
    a = model_from_checkpoint(load_checkpoint(run / "best.pt"), torch.device("cpu"))
    b = model_from_checkpoint(load_model(exported), torch.device("cpu"))
    x = torch.rand(3, 4, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    c = model_from_checkpoint(load_model(exported / "model.safetensors"), torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
    ev = {}
    for name, model in (("ckpt", run / "best.pt"), ("export", exported)):
        result = invoke(
            "evaluate", model, store, "--out", tmp_path / name, "--cache", "ram", "--device", "cpu"
        )
        assert result.exit_code == 0, result.output
        ev[name] = (tmp_path / name / "predictions.csv").read_text()
    assert ev["ckpt"] == ev["export"] and len(ev["ckpt"].splitlines()) == 13


def test_predict_with_an_export_and_raw_folders_of_every_layout(run, exported, tmp_path):
    vols = write_patient(tmp_path / "P1", "P1", 7, shape=GEOMETRY)
    for m, alias in {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}.items():
        pid = "BraTS-GLI-00007-000"
        write_nifti(tmp_path / pid / f"{pid}-{alias}.nii.gz", vols[m])
    for m, suffix in {"flair": "FLAIR", "t1": "T1w", "t1ce": "ce-gd_T1w", "t2": "T2w"}.items():
        write_nifti(tmp_path / "sub-07" / "anat" / f"sub-07_{suffix}.nii.gz", vols[m])
    folders = [tmp_path / "P1", tmp_path / "BraTS-GLI-00007-000", tmp_path / "sub-07"]
    out = {}
    for name, model in (("ckpt", run / "best.pt"), ("export", exported)):
        result = invoke("predict", model, *folders, "--device", "cpu")
        assert result.exit_code == 0, result.output
        out[name] = result.stdout
    assert out["ckpt"] == out["export"]
    rows = [line.split() for line in out["ckpt"].splitlines()[1:]]
    assert [r[0] for r in rows] == ["P1", "BraTS-GLI-00007-000", "sub-07"]
    assert rows[0][1] == rows[1][1] == rows[2][1]  # the same volumes in three layouts


# ------------------------------------------------------------------------------ model card
def test_the_card_prints_recorded_intervals(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["ci95"] = {"auc": [0.4123, 0.9], "balanced_accuracy": [0.25, 0.75]}
    (copy / "summary.json").write_text(json.dumps(summary))
    export_run(copy, tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"| AUC | {summary['best']['auc']:.3f} | [0.412, 0.900] |" in card
    assert "| balanced accuracy | 0.500 | [0.250, 0.750] |" in card
    assert "| accuracy | 0.500 |  |" in card
    assert "license:" not in card


def test_a_k_fold_run_exports_one_fold(cv, tmp_path):
    result = invoke("export", cv, tmp_path / "m")
    line = sole_error_line(result, code=2)
    aucs = [
        json.loads((cv / f"fold{k}" / "summary.json").read_text())["best"]["auc"] for k in (0, 1)
    ]
    assert line == (
        f"Error: Invalid value for '--fold': {cv} is a 2-fold cross-validation run: one model "
        f"per fold; choose one with --fold K: fold 0 (AUC {aucs[0]:.3f}), fold 1 (AUC "
        f"{aucs[1]:.3f})"
    )
    assert "there is no fold 2:" in sole_error_line(
        invoke("export", cv, tmp_path / "m", "--fold", "2"), 2
    )
    assert not (tmp_path / "m").exists()
    top = json.loads((cv / "summary.json").read_text())
    top["ci95"] = {"auc": [0.3, 0.8]}
    copy = tmp_path / "cv"
    shutil.copytree(cv, copy)
    (copy / "summary.json").write_text(json.dumps(top))
    result = invoke("export", copy, tmp_path / "m", "--fold", "1")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Fold 1 of a 2-fold cross-validation, stratified by label, seed 0: 6 training" in card
    assert "the other folds' models are not in this folder" in card
    assert (
        f"Across the run's 2 folds (mean ± std): AUC {top['mean']['auc']:.3f} ± "
        f"{top['std']['auc']:.3f} (95% interval [0.300, 0.800]); balanced accuracy "
        f"{top['mean']['balanced_accuracy']:.3f} ± {top['std']['balanced_accuracy']:.3f} "
        "(95% interval not computed)."
    ) in card
    weights = load_file(tmp_path / "m" / "model.safetensors")
    fold1 = load_checkpoint(cv / "fold1" / "best.pt")["model"]
    assert all(torch.equal(weights[k], fold1[k]) for k in fold1)


def test_fold_of_a_single_split_run_and_unfinished_runs(run, tmp_path):
    line = sole_error_line(invoke("export", run, tmp_path / "m", "--fold", "0"), code=2)
    assert line.endswith(f"{run} is a single-split run, not K folds; drop --fold")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    assert sole_error_line(invoke("export", copy, tmp_path / "m")) == (
        f"Error: {copy}: no summary.json: the run has not finished; finish it with "
        f"`smri train --resume {copy}` before exporting"
    )
    (copy / "config.json").unlink()
    assert sole_error_line(invoke("export", copy, tmp_path / "m")) == (
        f"Error: {copy}: not an smri run folder (no config.json)"
    )


# ---------------------------------------------------------------------------------- OUT_DIR
def test_out_dir_is_never_overwritten_silently(run, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert invoke("export", run, out).exit_code == 0
    (out / "README.md").write_text("my edits")
    line = sole_error_line(invoke("export", run, out), code=2)
    assert line == (
        f"Error: Invalid value for 'OUT_DIR': {out} already holds model.safetensors, "
        "config.json, README.md; choose another OUT_DIR or pass --overwrite"
    )
    assert (out / "README.md").read_text() == "my edits"
    assert invoke("export", run, out, "--overwrite").exit_code == 0
    assert (out / "README.md").read_text().startswith("---\n")
    assert (out / ".gitattributes").exists()  # other files are kept
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".gitattributes"]


def test_out_dir_may_not_be_the_run_folder(run):
    before = (run / "config.json").read_text()
    for args in ([], ["--overwrite"]):
        line = sole_error_line(invoke("export", run, run, *args), code=2)
        assert line.startswith(f"Error: Invalid value for 'OUT_DIR': {run} is an smri run folder")
    assert (run / "config.json").read_text() == before
    result = invoke("export", run, run / "export")  # a new subfolder of the run is fine
    assert result.exit_code == 0, result.output
    shutil.rmtree(run / "export")


def test_export_files_share_one_mode(run, tmp_path):
    """safetensors' save_file made model.safetensors 0600 beside 0644 siblings: every file of
    an export now has the mode the umask gives a new file."""
    old = os.umask(0o022)
    try:
        export_run(run, tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "README.md": 0o644}


def test_safetensors_missing_says_how_to_install(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(SmriError) as err:
        export_run(run, tmp_path / "m")
    assert str(err.value) == (
        "exported models are safetensors files: pip install 'smri[export]' (or safetensors)"
    )
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------- broken/hostile exports
def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for dotted, value in changes.items():
        *keys, last = dotted.split("__")
        target = config
        for key in keys:
            target = target[key]
        target[last] = value
    (folder / "config.json").write_text(json.dumps(config))


def _weights(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    save_file(change(tensors), folder / "model.safetensors")


BROKEN_EXPORTS = [
    ("not-json", lambda f: (f / "config.json").write_text("{"), "config.json: cannot read ("),
    ("other-format", lambda f: _config(f, format="hf"),
     "config.json: not an smri exported model (written by `smri export`)"),
    ("newer", lambda f: _config(f, version=9), "config.json: export version 9 is newer than"),
    ("unknown-model", lambda f: _config(f, model__name="cnn9"),
     "config.json: damaged export: bad model (unknown model 'cnn9'; choose one of cnn1, cnn2"),
    ("huge-input", lambda f: _config(f, store__volume_shape=[4, 16, 10**6, 32],
                                     model__volume_shape=[16, 10**6, 32]),
     "config.json: input 4x16x1000000x32 is out of range (at most 64 modalities and 4096 per"),
    ("huge-width", lambda f: _config(f, model__width=10**6),  # refused before its weights
     "config.json: damaged export: bad model (cnn2 at width 1e+06 on volumes of 16x32x32 would "
     "have 2.9e+17 parameters"),
    ("small-width", lambda f: _config(f, model__width=2),
     "model.safetensors: the weights do not fit the cnn2 model (width 2, input 16x32x32) "
     "that config.json describes: cnn.backbone.blocks.0.conv.weight is F32 [4, 1, 3, 3, 3], "
     "the model's F32 [32, 1, 3, 3, 3] (and 24 more)"),
    ("shapes-disagree", lambda f: _config(f, store__slices=8),
     "config.json: damaged export: volume_shape [4, 16, 32, 32], 4 modalities, 8 slices and"),
    ("no-store", lambda f: _config(f, store=None),
     "config.json: damaged export: 'store.modalities' is missing or malformed"),
    ("extra-tensor", lambda f: _weights(f, lambda t: {**t, "evil": torch.zeros(3)}),
     "the weights do not fit the cnn2 model (width 0.25, input 16x32x32) that config.json "
     "describes: unexpected evil"),
    ("half-precision", lambda f: _weights(f, lambda t: {k: v.half() if v.is_floating_point()
                                                        else v for k, v in t.items()}),
     "describes: cnn.backbone.blocks.0.conv.weight is F16 [4, 1, 3, 3, 3], the model's F32 [4,"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(),
     "model.safetensors: no such file; an exported model holds its weights there"),
    ("random-bytes", lambda f: (f / "model.safetensors").write_bytes(b"\x07" * 300),
     "model.safetensors: not a readable safetensors file ("),
    ("pickle", lambda f: (f / "model.safetensors").write_bytes(
        pickle.dumps(Payload(f.parent / "pwned"))),
     "model.safetensors: not a readable safetensors file ("),
    ("no-config", lambda f: (f / "config.json").unlink(),
     "no config.json; expected a folder written by `smri export`"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"), [c[1:] for c in BROKEN_EXPORTS], ids=[c[0] for c in BROKEN_EXPORTS]
)
def test_broken_export_in_evaluate_and_predict(exported, store, tmp_path, make, message):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    make(folder)
    patient = tmp_path / "P1"
    write_patient(patient, "P1", 1, shape=GEOMETRY)
    line = sole_error_line(
        invoke("evaluate", folder, store, "--out", tmp_path / "ev", "--cache", "ram")
    )
    assert line.startswith(f"Error: {folder}") and message in line, line
    line = sole_error_line(invoke("predict", folder, patient))
    assert line.startswith(f"Error: {folder}") and message in line, line
    assert not (tmp_path / "ev").exists() and not (tmp_path / "pwned").exists()


def test_a_run_folder_is_not_an_export(run, store, tmp_path):
    line = sole_error_line(invoke("predict", run, tmp_path))
    assert line == (
        f"Error: {run} is a run folder, not an exported model; give its best.pt, or export it "
        f"with `smri export {run} OUT_DIR`"
    )
    # evaluate takes a run folder (every training of it), but never on patients it trained on
    line = sole_error_line(invoke("evaluate", run, store, "--out", tmp_path / "ev"))
    assert "not untouched test patients" in line and not (tmp_path / "ev").exists()


def test_export_of_weights_saved_channels_last(run, tmp_path):
    # runs trained on CUDA save channels_last_3d weights; safetensors needs contiguous tensors
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = torch.load(copy / "best.pt", weights_only=True)
    conv = "cnn.backbone.blocks.1.conv.weight"
    ckpt["model"][conv] = ckpt["model"][conv].to(memory_format=torch.channels_last_3d)
    assert not ckpt["model"][conv].is_contiguous()
    torch.save(ckpt, copy / "best.pt")
    export_run(copy, tmp_path / "m")
    assert torch.equal(load_file(tmp_path / "m" / "model.safetensors")[conv], ckpt["model"][conv])
