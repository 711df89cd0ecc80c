"""smri.discovery: every input layout, modality matching, and per-patient reasons."""

from __future__ import annotations

import numpy as np
import pytest

from smri.discovery import discover, modality_of, parse_classes, parse_modalities
from smri.errors import ConfigError, DataError
from tests.helpers.nifti import write_nifti, write_patient


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("BraTS19_2013_2_1_t1.nii.gz", "t1"),
        ("BraTS19_2013_2_1_t1ce.nii.gz", "t1ce"),
        ("BraTS19_2013_2_1_T1CE.NII.GZ", "t1ce"),
        ("p_flair.nii", "flair"),
        ("W39_1998.09.19_Segm.nii", "segm"),
        ("p_seg.nii.gz", "seg"),
        ("p_t1.nii.gz.bak", None),
        ("p_t1.json", None),
        ("t1.nii", None),
    ],
)
def test_modality_of_is_an_exact_suffix(name, modality):
    assert modality_of(name) == modality


def test_brats2019_class_folders(brats2019):
    root, truth = brats2019(n_hgg=3, n_lgg=2)
    found = discover(root)
    assert found.layout == "class-folders"
    assert [p.patient_id for p in found.patients] == sorted(truth)
    for p in found.patients:
        assert p.label == truth[p.patient_id][0]
        assert [f.name.split("_")[-1] for f in p.files] == [
            "flair.nii.gz",
            "t1.nii.gz",
            "t1ce.nii.gz",
            "t2.nii.gz",
        ]
    assert found.skipped == []


def test_brats2020_finds_name_mapping_and_ignores_stray_segmentation(brats2020):
    root, truth = brats2020(n=4, ext=".nii")
    # The real BraTS 2020 copy names one segmentation like this; it must not count.
    pid = "BraTS20_Training_002"
    write_nifti(root / pid / "W39_1998.09.19_Segm.nii", np.zeros((2, 2, 2), np.uint8))
    (root / pid / "notes.txt").write_text("stray")
    found = discover(root)
    assert found.layout == "brats2020"
    assert {p.patient_id: p.label for p in found.patients} == {k: v[0] for k, v in truth.items()}


def test_modality_order_follows_the_option(brats2019):
    root, _ = brats2019(n_hgg=1, n_lgg=1)
    found = discover(root, modalities=("t2", "flair"))
    assert [f.name.rsplit("_", 1)[-1] for f in found.patients[0].files] == [
        "t2.nii.gz",
        "flair.nii.gz",
    ]


def test_generic_class_folders(tmp_path):
    for cls, n in (("CN", 2), ("AD", 1)):
        for i in range(n):
            write_patient(tmp_path / cls / f"{cls}{i}", f"{cls}{i}", i, seg=False)
    found = discover(tmp_path, classes=parse_classes("CN=0,AD=1"))
    assert {p.patient_id: p.label for p in found.patients} == {"AD0": 1, "CN0": 0, "CN1": 0}


def test_labels_csv_with_names_and_numbers(tmp_path):
    for i in range(3):
        write_patient(tmp_path / "data" / f"s{i}", f"s{i}", i, seg=False)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("patient_id,label\ns0,HGG\ns1,0\ns2,lgg\nghost,1\n")
    found = discover(tmp_path / "data", labels_csv=csv_path)
    assert found.layout == "labels-csv"
    assert {p.patient_id: p.label for p in found.patients} == {"s0": 1, "s1": 0, "s2": 0}
    assert [(e.patient_id, e.reason) for e in found.skipped] == [
        ("ghost", f"listed in labels.csv but no folder {tmp_path / 'data' / 'ghost'}")
    ]


def test_missing_and_doubled_modalities_are_skipped_with_reasons(brats2019):
    root, _ = brats2019(n_hgg=3, n_lgg=1)
    (root / "HGG" / "BraTS19_HGG_000_1" / "BraTS19_HGG_000_1_t1ce.nii.gz").unlink()
    extra = root / "HGG" / "BraTS19_HGG_001_1" / "BraTS19_HGG_001_1_T2.nii"
    write_nifti(extra, np.zeros((2, 2, 2), np.int16))
    found = discover(root)
    reasons = {e.patient_id: e.reason for e in found.skipped}
    assert reasons["BraTS19_HGG_000_1"].startswith("no t1ce file in ")
    assert reasons["BraTS19_HGG_001_1"] == (
        "modality t2 present 2 times: BraTS19_HGG_001_1_T2.nii, BraTS19_HGG_001_1_t2.nii.gz"
    )
    assert [p.patient_id for p in found.patients] == ["BraTS19_HGG_002_1", "BraTS19_LGG_000_1"]


def test_labels_csv_errors(tmp_path):
    write_patient(tmp_path / "d" / "a", "a", 0, seg=False)
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("name,grade_x\na,1\n")
    with pytest.raises(DataError, match=r"cols\.csv: labels CSV needs a patient id column"):
        discover(tmp_path / "d", labels_csv=bad_cols)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("patient_id,label\na,GBM\n")
    with pytest.raises(DataError, match=r"unknown\.csv, line 2: patient a has label 'GBM'"):
        discover(tmp_path / "d", labels_csv=unknown)
    dup = tmp_path / "dup.csv"
    dup.write_text("patient_id,label\na,1\na,0\n")
    with pytest.raises(DataError, match="patient a listed twice with different labels"):
        discover(tmp_path / "d", labels_csv=dup)


def test_unusable_roots(tmp_path):
    with pytest.raises(DataError, match="input folder does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is a file; expected a folder"):
        discover(tmp_path / "f.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no class folders \(LGG/, HGG/\) and no name_mapping"):
        discover(tmp_path / "empty")
    (tmp_path / "empty" / "HGG").mkdir()
    with pytest.raises(DataError, match="no patient folders with flair, t1, t1ce, t2"):
        discover(tmp_path / "empty")


@pytest.mark.parametrize("text", ["LGG=0", "LGG=0,HGG=2", "LGG,HGG", "A=1,B=1"])
def test_parse_classes_rejects(text):
    with pytest.raises(ConfigError, match="expected"):
        parse_classes(text)


def test_parse_modalities():
    assert parse_modalities("FLAIR, t1") == ("flair", "t1")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_modalities("t1,t1")
    with pytest.raises(ConfigError, match="segmentation"):
        parse_modalities("t1,seg")
