"""What an export tells people and programs: config.json's description of the input (as MONAI
bundles' metadata.json gives it), the card's Hub metadata (``datasets``, ``model-index`` with the
validation and the untouched test metrics, read back with huggingface_hub when it is installed)
and what the card says a probability means."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import smri
from smri.errors import ConfigError, DataError
from smri.model_io import export_run
from smri.model_io.metadata import cohort_spacing
from smri.model_io.model_card import model_card
from tests.helpers.cli import invoke, sole_error_line
from tests.helpers.nifti import write_nifti
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

STORE_LABELS = [0, 1] * 8
QUICK = {"epochs": 1, "width": 0.25, "batch_size": 4, "cache": "ram", "workers": 0,
         "device": "cpu", "quiet": True}  # fmt: skip


@pytest.fixture(scope="module")
def tested(store, tmp_path_factory) -> Path:
    """A 2-fold run that never saw 4 held-out patients, scored on them into RUN/test."""
    folder = tmp_path_factory.mktemp("tested")
    held = smri.holdout(store, folder / "holdout.csv", fraction=0.25)
    run = smri.train(store, folds=2, holdout=held, out=folder / "run", **QUICK)
    smri.evaluate(run, store, holdout=held, out=run / "test", cache="ram", workers=0,
                  device="cpu", quiet=True)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def exported(tested, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "glioma-cnn2"
    export_run(tested, out, fold=1, dataset="org/glioma", license="mit")
    return out


def front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# -------------------------------------------------------------------- the input, for programs
def test_config_describes_the_input_as_monai_bundles_do(exported):
    config = json.loads((exported / "config.json").read_text())
    data = config["network_data_format"]
    image = data["inputs"]["image"]
    assert {k: image[k] for k in ("type", "modality", "num_channels", "spatial_shape", "dtype",
                                  "value_range", "is_patch_data", "channel_def")} == {
        "type": "image", "modality": "MR", "num_channels": 4, "spatial_shape": [16, 32, 32],
        "dtype": "float32", "value_range": [0.0, 1.0], "is_patch_data": False,
        "channel_def": {"0": "flair", "1": "t1", "2": "t1ce", "3": "t2"},
    }  # fmt: skip
    assert image["axes"] == ["batch", "modality", "slice", "y", "x"]
    assert image["slab"]["slices"] == 16 and "third axis" in image["slab"]["axis"]
    assert image["normalisation"].startswith("min-max over each whole 3-D volume")
    assert image["orientation"] == "as stored in the NIfTI files (no reorientation)"
    assert image["stored_as"] == "float16"
    assert image["spacing"] is None  # the test store records none
    assert data["outputs"]["pred"]["channel_def"] == {"0": "HGG"}
    assert config["dataset"] == "org/glioma"
    model = smri.load_model(exported)  # the description and the model agree
    assert list(model.modalities) == list(image["channel_def"].values())
    assert tuple(model.config.volume_shape) == tuple(image["spatial_shape"])


def test_the_cohort_spacing_in_the_images_axis_order(brats2019, tmp_path):
    root, _ = brats2019(n_hgg=2, n_lgg=1)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])  # NIfTI (x, y, z) spacing
    for path in root.rglob("*.nii.gz"):
        import nibabel as nib

        write_nifti(path, np.asarray(nib.load(path).dataobj), affine)
    store = smri.preprocess(root, tmp_path / "s.h5", jobs=1, slices=16, quiet=True).output
    fields = {"modalities": ["flair", "t1", "t1ce", "t2"], "volume_shape": [4, 16, 24, 20]}
    assert cohort_spacing(str(store), fields) == {
        "axes": ["slice", "y", "x"], "unit": "mm", "median": [3.0, 0.8, 0.9],
        "min": [3.0, 0.8, 0.9], "max": [3.0, 0.8, 0.9], "volumes": 12, "resampled": False,
    }  # fmt: skip
    assert cohort_spacing(str(tmp_path / "moved.h5"), fields) is None
    assert cohort_spacing(str(store), {**fields, "modalities": ["t1", "t2"]}) is None
    assert cohort_spacing(None, fields) is None


# ------------------------------------------------------------------- the card's Hub metadata
def test_model_index_holds_validation_and_untouched_test_metrics(tested, exported):
    card = (exported / "README.md").read_text()
    meta = front_matter(card)
    assert meta["datasets"] == ["org/glioma"] and meta["license"] == "mit"
    (entry,) = meta["model-index"]
    assert entry["name"] == "glioma-cnn2"
    validation, test = entry["results"]
    for result in (validation, test):
        assert result["task"] == {"type": "image-classification",
                                  "name": "MRI classification: HGG (1) vs LGG (0)"}  # fmt: skip
        assert result["dataset"]["type"] == "org/glioma"
        assert all(m["verified"] is False for m in result["metrics"])
    assert (validation["dataset"]["split"], test["dataset"]["split"]) == ("validation", "test")
    best = json.loads((tested / "fold1" / "summary.json").read_text())["best"]
    values = {m["name"]: (m["type"], m["value"]) for m in validation["metrics"]}
    chose = "this model; the validation patients also chose its epoch"
    assert values[f"validation AUC ({chose})"] == ("roc_auc", round(best["auc"], 4))
    assert values[f"validation sensitivity ({chose})"] == ("recall", round(best["sensitivity"], 4))
    cv = json.loads((tested / "summary.json").read_text())["mean"]
    assert values["validation AUC (mean of the run's 2 folds)"] == ("roc_auc", round(cv["auc"], 4))
    report = json.loads((tested / "test" / "metrics.json").read_text())
    (own,) = [m for m in report["members"] if m["member"] == "fold1"]
    values = {m["name"]: (m["type"], m["value"]) for m in test["metrics"]}
    expected = {
        "test AUC (this model)": ("roc_auc", own["auc"]),
        "test balanced accuracy (this model)": ("balanced_accuracy", own["balanced_accuracy"]),
        "test AUC (mean of the run's 2 trainings)": ("roc_auc", report["mean"]["auc"]),
        "test AUC (ensemble: the mean probability of the run's 2 trainings)": (
            "roc_auc", report["ensemble_auc"]),
    }  # fmt: skip
    for name, (kind, value) in expected.items():
        if np.isfinite(value):  # the Hub takes numbers only: an undefined AUC is left out
            assert values[name] == (kind, round(value, 4)), name
    assert f"On the {report['n']} untouched test patients of `s.h5`, which no training" in card
    assert "| metric | this model | mean of the run's 2 trainings |" in card
    assert f"| balanced accuracy | {own['balanced_accuracy']:.3f} | " in card


def test_the_hub_reads_the_card(exported):
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(exported / "README.md")  # a bad model-index raises ValueError
    data = card.data
    assert data.library_name == "smri" and data.license == "mit"
    assert data.datasets == ["org/glioma"] and data.model_name == "glioma-cnn2"
    splits = {r.dataset_split for r in data.eval_results}
    assert splits == {"validation", "test"}
    for result in data.eval_results:
        assert result.task_type == "image-classification" and result.dataset_type == "org/glioma"
        assert isinstance(result.metric_value, float) and result.metric_name
    rebuilt = hub.ModelCardData(model_name="glioma-cnn2", eval_results=data.eval_results)
    assert rebuilt.to_dict()["model-index"] == data.to_dict()["model-index"]


def test_without_a_dataset_id_the_cohort_names_the_results(tested, tmp_path):
    export_run(tested, tmp_path / "m", fold=0)
    meta = front_matter((tmp_path / "m" / "README.md").read_text())
    assert "datasets" not in meta and "license" not in meta
    for result in meta["model-index"][0]["results"]:
        assert result["dataset"]["type"] == result["dataset"]["name"]
    assert meta["model-index"][0]["results"][1]["dataset"]["name"] == "s.h5"  # the test store


def test_a_bad_dataset_id_is_refused(tested, tmp_path):
    line = sole_error_line(invoke("export", tested, tmp_path / "m", "--fold", "0", "--dataset",
                                  "my data"), code=2)  # fmt: skip
    assert line == (
        "Error: Invalid value for '--dataset': expected a Hugging Face dataset id such as "
        "brats or org/name, got 'my data'"
    )
    with pytest.raises(ConfigError, match=r"^dataset: expected a Hugging Face dataset id"):
        smri.export(tested, tmp_path / "m", fold=0, dataset="a/b/c")
    assert not (tmp_path / "m").exists()


def test_a_damaged_test_report_is_named(tested, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tested, copy)
    (copy / "test" / "metrics.json").write_text(json.dumps({"mean": {}}))
    with pytest.raises(DataError, match=r"test/metrics.json: not the report of `smri evaluate"):
        export_run(copy, tmp_path / "m", fold=0)
    shutil.rmtree(copy / "test")  # no test folder: validation only
    export_run(copy, tmp_path / "m", fold=0)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "untouched test patients" not in card
    assert [r["dataset"]["split"] for r in front_matter(card)["model-index"][0]["results"]] == [
        "validation"
    ]


# ------------------------------------------------------------------- what a probability means
def test_the_card_says_what_the_probability_and_threshold_mean(exported):
    config = json.loads((exported / "config.json").read_text())
    weighted = {"method": "class weight undone (logit - log(pos_weight))",
                "logit_offset": 1.2528, "threshold": 0.7778}  # fmt: skip
    card = model_card({**config, "calibration": weighted}, {}, "m", None)
    assert (
        "- Output: one logit per patient. The probability `smri predict` and `smri evaluate` "
        "report is calibrated (the class weighting of training undone: `sigmoid(logit + "
        "1.2528)`, the offset being config.json's `calibration.logit_offset`): among patients "
        "like the training cohort, about that share are HGG.\n"
        "- Decision: HGG at and above a probability of 0.778 (config.json's "
        "`calibration.threshold`), the share of HGG among the training patients: the balanced "
        "rule the class weighting aims at, not 0.5.\n"
    ) in card
    equal = {**weighted, "logit_offset": 0.0, "threshold": 0.5}
    card = model_card({**config, "calibration": equal}, {}, "m", None)
    assert "calibrated (offset 0: training weighted both classes alike, so the logit's " in card
    assert "- Decision: HGG at and above a probability of 0.500 (config.json's " in card
    card = model_card({**config, "calibration": None}, {}, "m", None)
    assert "predicted at 0.5 or above (not calibrated: a model from before smri" in card
