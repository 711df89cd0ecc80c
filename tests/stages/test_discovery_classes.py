"""Class names come from the data: HGG/LGG only where the layout says so (class folders, a grade
column), a 0/1 label column's own values otherwise, `--classes` always; the store's names then
reach every message, `smri info`, predictions.csv, `smri predict` and the model card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.discovery import BidsOptions, class_counts_text, discover
from smri.store import StoreReader
from tests.helpers.nifti import write_patient
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.stages.test_discovery_layouts import bids_dataset

NEUTRAL = {"0": 0, "1": 1}
GRADES = {"LGG": 0, "HGG": 1}


def flat_folders(root: Path, n: int, shape: tuple[int, int, int] = (20, 24, 40)) -> list[str]:
    """`n` flat patient folders P0..P(n-1) with the four modalities; returns their ids."""
    ids = [f"P{i}" for i in range(n)]
    for i, pid in enumerate(ids):
        write_patient(root / pid, pid, i, ext=".nii", shape=shape, seg=False)
    return ids


@pytest.mark.parametrize(
    ("values", "classes", "expected"),
    [
        (("0", "1", "1"), None, NEUTRAL),
        (("LGG", "HGG", "hgg"), None, GRADES),  # a grade column says HGG/LGG itself
        (("0", "HGG", "1"), None, GRADES),
        (("0", "1", "1"), {"CN": 0, "AD": 1}, {"CN": 0, "AD": 1}),  # --classes always wins
    ],
)
def test_a_labels_csv_gives_its_own_class_names(tmp_path, values, classes, expected):
    ids = flat_folders(tmp_path / "d", 3)
    labels = tmp_path / "l.csv"
    rows = "".join(f"{p},{v}\n" for p, v in zip(ids, values, strict=True))
    labels.write_text("patient_id,label\n" + rows)
    found = discover(tmp_path / "d", labels_csv=labels, classes=classes)
    assert found.classes == expected
    assert [p.label for p in found.patients] == [0, 1, 1]


def test_class_folders_and_name_mapping_keep_the_grades(brats2019, brats2020):
    assert discover(brats2019(n_hgg=1, n_lgg=1)[0]).classes == GRADES
    assert discover(brats2020(n=3)[0]).classes == GRADES  # name_mapping.csv's Grade column


def test_participants_tsv_gives_its_own_class_names(tmp_path):
    rows = "participant_id\tsex\tgroup\nsub-01\t1\tHGG\nsub-02\t0\tLGG\nsub-03\t1\tHGG\n"
    root = bids_dataset(tmp_path / "ds", rows, ["sub-01", "sub-02", "sub-03"])
    assert discover(root, bids=BidsOptions(label_column="sex")).classes == NEUTRAL
    assert discover(root, bids=BidsOptions(label_column="group")).classes == GRADES
    found = discover(root, bids=BidsOptions(label_column="group", positive="lgg"))
    assert found.classes == {"not lgg": 0, "lgg": 1}
    assert [p.label for p in found.patients] == [0, 1, 0]


def test_class_counts_text():
    assert class_counts_text({"HGG": 8, "LGG": 7}) == "HGG 8, LGG 7"
    assert class_counts_text({"1": 8, "0": 7}) == "class 1: 8, class 0: 7"


def test_preprocess_a_bids_sex_column_names_no_grade(tmp_path):
    """The issue's example: `--label-column sex` said "wrote 15 patients (HGG 8, LGG 7)"."""
    rows = "participant_id\tsex\nsub-01\t1\nsub-02\t0\nsub-03\t1\n"
    root = bids_dataset(tmp_path / "ds", rows, ["sub-01", "sub-02", "sub-03"])
    out = tmp_path / "s.h5"
    args = ["preprocess", str(root), str(out), "--slices", "16", "-j", "1", "--label-column"]
    result = CliRunner().invoke(main, [*args, "sex"])
    assert result.exit_code == 0, result.output
    assert f"wrote 3 patients (class 1: 2, class 0: 1) to {out}; skipped 0;" in result.output
    assert "HGG" not in result.output and "LGG" not in result.output
    with StoreReader(out) as reader:
        assert reader.info.classes == NEUTRAL
        assert reader.info.config["classes"] == NEUTRAL
        assert reader.labels.tolist() == [1, 0, 1]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "patients    3 (class 0: 1, class 1: 2)\n" in info.output
    assert "classes     0=0, 1=1\n" in info.output
    assert "HGG" not in info.output
    as_json = json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).output)
    assert as_json["classes"] == NEUTRAL


def test_append_without_classes_keeps_the_stores_names(tmp_path):
    ids = flat_folders(tmp_path / "d", 4)
    labels = tmp_path / "l.csv"
    labels.write_text("patient_id,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(ids)))
    (tmp_path / "d" / "P3").rename(tmp_path / "P3")
    out = tmp_path / "s.h5"
    base = ["preprocess", str(tmp_path / "d"), str(out), "--slices", "16", "-j", "1"]
    result = CliRunner().invoke(main, [*base, "--labels", str(labels), "--classes", "CN=0,AD=1"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 patients (AD 1, CN 2)" in result.output
    (tmp_path / "P3").rename(tmp_path / "d" / "P3")
    result = CliRunner().invoke(main, [*base, "--labels", str(labels), "--append"])
    assert result.exit_code == 0, result.output
    assert f"added 1 patient (AD 1, CN 0) to {out}, now 4 (3 already there)" in result.output
    with StoreReader(out) as reader:
        assert reader.info.classes == {"CN": 0, "AD": 1}


def test_a_01_labels_csv_names_reach_predictions_and_the_model_card(tmp_path):
    """A 0/1 labels CSV: the store, evaluate's predictions.csv, predict and the card say 0/1."""
    ids = flat_folders(tmp_path / "d", 12, shape=(32, 32, 16))
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(ids)))
    store, run = tmp_path / "s.h5", tmp_path / "run"
    runner = CliRunner()
    pre = ["preprocess", str(tmp_path / "d"), str(store), "--slices", "16", "-j", "1"]
    result = runner.invoke(main, [*pre, "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "wrote 12 patients (class 1: 6, class 0: 6)" in result.output
    train = ["train", str(store), "--out", str(run), "--epochs", "1", "--batch-size", "4",
             "--width", "0.25", "--cache", "ram", "--quiet", "--no-tensorboard"]  # fmt: skip
    result = runner.invoke(main, train)
    assert result.exit_code == 0, result.output
    evaluated = tmp_path / "eval"
    result = runner.invoke(
        main, ["evaluate", str(run / "best.pt"), str(store), "--out", str(evaluated), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    with open(evaluated / "predictions.csv", newline="") as fh:
        predicted = {row["predicted"] for row in csv.DictReader(fh)}
    assert predicted and predicted <= {"0", "1"}
    result = runner.invoke(main, ["predict", str(run / "best.pt"), str(tmp_path / "d" / "P0")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].split()[-1] in ("0", "1")
    out = tmp_path / "export"
    result = runner.invoke(main, ["export", str(run), str(out)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "is **1** (class 1) rather than **0** (class 0)" in card
    assert "HGG" not in card and "LGG" not in card
    assert json.loads((out / "config.json").read_text())["store"]["classes"] == NEUTRAL


def test_store_names_from_class_folders_are_unchanged(brats2019, tmp_path):
    root, truth = brats2019(n_hgg=2, n_lgg=1)
    out = tmp_path / "b.h5"
    result = CliRunner().invoke(main, ["preprocess", str(root), str(out), "--slices", "16"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 patients (HGG 2, LGG 1)" in result.output
    with StoreReader(out) as reader:
        assert reader.info.classes == GRADES
        assert np.array_equal(reader.labels, [truth[p][0] for p in reader.patient_ids])
