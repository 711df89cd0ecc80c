"""BraTS 2023 and BIDS input layouts: discovery, labels, their quirks, and `smri preprocess`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.discovery import BidsOptions, discover, modality_of, parse_brats_name, raw_patient
from smri.discovery.bids import parse_bids_name
from smri.errors import ConfigError, DataError, PatientError
from smri.store import StoreReader
from tests.helpers.nifti import MODALITIES, patient_volumes, write_nifti

BRATS2023_FILES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
BIDS_FILES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "ce-gadolinium_T1w", "t2": "T2w"}


def write_brats2023(root: Path, pid: str, seed: int, ext: str = ".nii.gz") -> dict:
    """One BraTS 2023 patient folder (four modalities and a segmentation); returns the arrays."""
    vols = patient_volumes(seed)
    for m, alias in BRATS2023_FILES.items():
        write_nifti(root / pid / f"{pid}-{alias}{ext}", vols[m])
    write_nifti(root / pid / f"{pid}-seg{ext}", np.zeros(vols["t1"].shape, np.uint8))
    return vols


def write_bids(anat: Path, prefix: str, seed: int, files: dict[str, str] = BIDS_FILES) -> dict:
    """One BIDS anat folder: ``<prefix>_<suffix>.nii.gz`` per modality, with JSON sidecars."""
    vols = patient_volumes(seed)
    for m, suffix in files.items():
        write_nifti(anat / f"{prefix}_{suffix}.nii.gz", vols[m])
        (anat / f"{prefix}_{suffix}.json").write_text("{}")
    return vols


def bids_dataset(root: Path, rows: str, subjects: list[str]) -> Path:
    """A BIDS dataset: description, participants.tsv (`rows`, tab-separated), one session-less
    anat folder per subject, and a derivatives/ tree that must be ignored."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text(rows)
    for i, sub in enumerate(subjects):
        write_bids(root / sub / "anat", sub, i)
    write_bids(root / "derivatives" / "skullstrip" / subjects[0] / "anat", subjects[0], 99)
    (root / "code").mkdir()
    return root


TSV = "participant_id\tage\tgroup\nsub-01\t50\tHGG\nsub-02\t41\tLGG\nsub-03\t63\tHGG\n"


# --------------------------------------------------------------------------------- BraTS 2023
@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("BraTS-GLI-00000-000-t2f.nii.gz", ("flair", "BraTS-GLI-00000-000")),
        ("BraTS-MEN-00004-000-t1n.nii", ("t1", "BraTS-MEN-00004-000")),
        ("BraTS-MET-00002-000-T1C.NII.GZ", ("t1ce", "BraTS-MET-00002-000")),
        ("BraTS-PED-00001-000-t2w.nii.gz", ("t2", "BraTS-PED-00001-000")),
        ("BraTS-SSA-00002-000-seg.nii.gz", ("seg", "BraTS-SSA-00002-000")),
        ("BraTS-GLI-00000-000-t1.nii.gz", (None, "BraTS-GLI-00000-000")),
        ("BraTS-GLI-00000-000_t1.nii.gz", ("t1", None)),  # the older underscore naming
        ("BraTS-GLI-0000-000-t1n.nii.gz", (None, None)),  # not a 5-digit case number
        ("BraTS-GLI-00000-000-t1n.nii.gz.bak", (None, None)),
    ],
)
def test_brats2023_names(name, parsed):
    assert parse_brats_name(name) == parsed
    assert modality_of(name) == parsed[0]


def test_brats2023_tree_with_labels_csv(tmp_path):
    root = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-MET-00005-000"]
    truth = {
        pid: write_brats2023(root, pid, i, ".nii" if i == 1 else ".nii.gz")
        for i, pid in enumerate(ids)
    }
    (root / ids[0] / f"._{ids[0]}-t1c.nii.gz").write_bytes(b"\0\5\26\7")  # macOS zip debris
    labels = tmp_path / "grades.csv"
    labels.write_text("patient_id,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(ids)))
    found = discover(root, labels_csv=labels)
    assert found.layout == "brats2023" and found.skipped == []
    assert {p.patient_id: p.label for p in found.patients} == dict(zip(ids, [0, 1, 0], strict=True))
    first = found.patients[0]
    assert [f.name for f in first.files] == [
        f"{ids[0]}-{a}.nii.gz" for a in ("t2f", "t1n", "t1c", "t2w")
    ]
    assert set(truth) == {p.patient_id for p in found.patients}
    # --modalities keeps smri's names and order
    found = discover(root, labels_csv=labels, modalities=("t1ce", "flair"))
    assert [f.name for f in found.patients[1].files] == [f"{ids[1]}-t1c.nii", f"{ids[1]}-t2f.nii"]


def test_brats2023_without_labels_says_to_give_a_csv(tmp_path):
    write_brats2023(tmp_path, "BraTS-GLI-00000-000", 0)
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: BraTS 2023 layout (folders like BraTS-GLI-00000-000/) has no grade "
        "folders; give labels with --labels CSV (patient_id,label columns)"
    )


def test_brats2023_quirks_are_reasons(tmp_path):
    good, missing, stray, doubled = (f"BraTS-GLI-0000{i}-000" for i in range(4))
    for i, pid in enumerate((good, missing, stray, doubled)):
        write_brats2023(tmp_path, pid, i)
    (tmp_path / missing / f"{missing}-t1c.nii.gz").unlink()
    # a file of another case copied into this folder must not be read as this patient's
    (tmp_path / stray / f"{stray}-t2w.nii.gz").rename(tmp_path / stray / f"{good}-t2w.nii.gz")
    write_nifti(tmp_path / doubled / f"{doubled}-t2f.nii", np.zeros((2, 2, 2), np.int16))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "patient_id,label\n" + "".join(f"BraTS-GLI-0000{i}-000,1\n" for i in range(4))
    )
    found = discover(tmp_path, labels_csv=labels)
    assert [p.patient_id for p in found.patients] == [good]
    assert [str(e) for e in found.skipped] == [
        f"patient {missing}: no t1ce file in {tmp_path / missing} (expected names ending "
        "-t1c.nii or .nii.gz)",
        f"patient {stray}: file {good}-t2w.nii.gz in {tmp_path / stray} is named for {good}, "
        f"not {stray}",
        f"patient {doubled}: modality flair present 2 times: {doubled}-t2f.nii, "
        f"{doubled}-t2f.nii.gz",
    ]


def test_brats2023_keeps_one_timepoint_per_subject(tmp_path):
    """Timepoints of one subject would land on both sides of a split: the lowest usable one is
    kept, every other one is skipped with a reason naming the kept one."""
    ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00000-001", "BraTS-GLI-00002-001",
           "BraTS-GLI-00002-003", "BraTS-GLI-00003-000", "BraTS-GLI-00003-002",
           "BraTS-GLI-00003-004", "BraTS-MET-00000-001"]  # fmt: skip
    for i, pid in enumerate(ids):
        write_brats2023(tmp_path, pid, i)
    (tmp_path / ids[4] / f"{ids[4]}-t1c.nii.gz").unlink()  # the lowest is unusable: next one
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\n" + "".join(f"{p},1\n" for p in ids))
    found = discover(tmp_path, labels_csv=labels)
    assert [p.patient_id for p in found.patients] == [
        "BraTS-GLI-00000-000", "BraTS-GLI-00002-001", "BraTS-GLI-00003-002",
        "BraTS-MET-00000-001",  # another tumour type: another subject
    ]  # fmt: skip
    assert [str(e) for e in found.skipped] == [
        "patient BraTS-GLI-00000-001: another timepoint of subject BraTS-GLI-00000; kept "
        "BraTS-GLI-00000-000 (one timepoint per subject)",
        "patient BraTS-GLI-00002-003: another timepoint of subject BraTS-GLI-00002; kept "
        "BraTS-GLI-00002-001 (one timepoint per subject)",
        f"patient BraTS-GLI-00003-000: no t1ce file in {tmp_path / ids[4]} (expected names "
        "ending -t1c.nii or .nii.gz)",
        "patient BraTS-GLI-00003-004: another timepoint of subject BraTS-GLI-00003; kept "
        "BraTS-GLI-00003-002 (one timepoint per subject)",
    ]


def test_brats2023_modalities_must_have_a_counterpart(tmp_path):
    write_brats2023(tmp_path, "BraTS-GLI-00000-000", 0)
    with pytest.raises(ConfigError) as err:
        discover(tmp_path, modalities=("t2f", "t1"), labels_csv=tmp_path / "x.csv")
    assert err.value.option == "--modalities"
    assert str(err.value) == (
        "BraTS 2023 files <id>-{t2f,t1n,t1c,t2w}.nii.gz are read as flair, t1, t1ce, t2; "
        "'t2f' is none of these"
    )


# --------------------------------------------------------------------------------------- BIDS
@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("sub-01_FLAIR.nii.gz", ("flair", "sub-01")),
        ("sub-01_T1w.nii", ("t1", "sub-01")),
        ("sub-01_ce-gadolinium_T1w.nii.gz", ("t1ce", "sub-01")),
        ("sub-01_ses-pre_acq-mprage_ce-gd_rec-norm_T1w.nii.gz", ("t1ce", "sub-01_ses-pre")),
        ("sub-01_run-2_T2w.nii.gz", ("t2", "sub-01")),
        ("sub-01_ce-gd_FLAIR.nii.gz", (None, "sub-01")),  # post-contrast FLAIR: not read
        ("sub-01_T2starw.nii.gz", (None, "sub-01")),
        ("sub-01_PDw.nii.gz", (None, "sub-01")),
        ("sub-01_T1w.json", (None, None)),
        ("sub-01_desc-brain_mask.nii.gz", (None, "sub-01")),
        ("T1w.nii.gz", (None, None)),
    ],
)
def test_bids_names(name, parsed):
    assert parse_bids_name(name) == parsed


def test_bids_dataset_labels_from_participants(tmp_path):
    root = bids_dataset(tmp_path / "ds", TSV, ["sub-01", "sub-02", "sub-03"])
    found = discover(root, bids=BidsOptions(label_column="group"))
    assert found.layout == "bids" and found.skipped == []
    assert {p.patient_id: p.label for p in found.patients} == {
        "sub-01": 1,
        "sub-02": 0,
        "sub-03": 1,
    }
    assert [f.name for f in found.patients[0].files] == [
        "sub-01_FLAIR.nii.gz",
        "sub-01_T1w.nii.gz",
        "sub-01_ce-gadolinium_T1w.nii.gz",
        "sub-01_T2w.nii.gz",
    ]
    assert found.patients[0].folder == root / "sub-01" / "anat"  # not derivatives/
    positive = discover(root, bids=BidsOptions(label_column="GROUP", positive="lgg"))
    assert {p.patient_id: p.label for p in positive.patients} == {
        "sub-01": 0,
        "sub-02": 1,
        "sub-03": 0,
    }


def test_bids_label_quirks(tmp_path):
    rows = (
        "participant_id\tgroup\r\n"  # Windows line ends
        "01\tpatient\r\n"  # id without sub-: read as sub-01
        "sub-02\tn/a\r\n"
        "sub-03\r\n"  # a short row: no value
        "sub-04\tcontrol\r\n"
        "sub-09\tpatient\r\n"  # no folder
    )
    root = bids_dataset(
        tmp_path / "ds", "\ufeff" + rows, ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]
    )
    found = discover(root, bids=BidsOptions(label_column="group", positive="patient"))
    assert {p.patient_id: p.label for p in found.patients} == {"sub-01": 1, "sub-04": 0}
    assert [str(e) for e in found.skipped] == [
        "patient sub-02: no group in participants.tsv (line 3: n/a)",
        "patient sub-03: no group in participants.tsv (line 4: empty)",
        "patient sub-05: no row for this subject in participants.tsv",
        f"patient sub-09: listed in participants.tsv but no folder {root / 'sub-09'}",
    ]


def test_bids_label_errors(tmp_path):
    root = bids_dataset(tmp_path / "ds", TSV.replace("LGG", "GBM"), ["sub-01", "sub-02"])
    cases = [
        (
            BidsOptions(),
            ConfigError,
            "--label-column",
            f"{root} is a BIDS dataset: name the participants.tsv column holding the labels with "
            "--label-column (its columns: age, group), or give --labels CSV",
        ),
        (
            BidsOptions(label_column="grade"),
            ConfigError,
            "--label-column",
            f"{root / 'participants.tsv'} has no label column 'grade'; columns: participant_id, "
            "age, group",
        ),
        (
            BidsOptions(label_column="group"),
            DataError,
            None,
            f"{root / 'participants.tsv'}, line 3: sub-02 has group 'GBM'; expected 0, 1 or a "
            "class name (LGG, HGG), or give --positive VALUE",
        ),
        (
            BidsOptions(label_column="group", positive="tumour"),
            ConfigError,
            "--positive",
            f"no participant has group 'tumour' in {root / 'participants.tsv'} (values: GBM, HGG)",
        ),
        (
            BidsOptions(positive="HGG"),
            ConfigError,
            "--positive",
            "needs --label-column, the column it is a value of",
        ),
    ]
    for opts, kind, option, message in cases:
        with pytest.raises(kind) as err:
            discover(root, bids=opts)
        assert str(err.value) == message
        assert getattr(err.value, "option", None) == option
    (root / "participants.tsv").unlink()
    with pytest.raises(DataError) as err:
        discover(root, bids=BidsOptions(label_column="group"))
    assert str(err.value) == (
        f"{root}: BIDS dataset without participants.tsv; --label-column reads that file "
        "(or give --labels CSV)"
    )


def test_bids_labels_from_a_csv_instead(tmp_path):
    root = bids_dataset(tmp_path / "ds", TSV, ["sub-01", "sub-02"])
    labels = tmp_path / "l.csv"
    labels.write_text("patient_id,label\nsub-01,0\nsub-02,1\n")
    found = discover(root, labels_csv=labels)
    assert {p.patient_id: p.label for p in found.patients} == {"sub-01": 0, "sub-02": 1}
    with pytest.raises(ConfigError, match="labels come from --labels CSV or from a participants"):
        discover(root, labels_csv=labels, bids=BidsOptions(label_column="group"))


def test_bids_file_quirks_are_reasons(tmp_path):
    rows = "participant_id\tgroup\n" + "".join(f"sub-0{i}\t1\n" for i in range(1, 7))
    root = bids_dataset(tmp_path / "ds", rows, ["sub-01"])
    # two runs of one contrast: an error for that subject, never a silent pick
    write_bids(root / "sub-02" / "anat", "sub-02", 2)
    write_nifti(root / "sub-02" / "anat" / "sub-02_run-2_T1w.nii.gz", np.zeros((2, 2, 2), np.int16))
    # two acquisitions of FLAIR, told apart only by acq-
    files = {**BIDS_FILES, "flair": "acq-2d_FLAIR"}
    write_bids(root / "sub-03" / "anat", "sub-03", 3, files)
    write_nifti(
        root / "sub-03" / "anat" / "sub-03_acq-3d_FLAIR.nii.gz", np.zeros((2, 2, 2), np.int16)
    )
    # no contrast-enhanced T1 (other suffixes do not stand in for it)
    write_bids(
        root / "sub-04" / "anat", "sub-04", 4, {m: s for m, s in BIDS_FILES.items() if m != "t1ce"}
    )
    write_nifti(root / "sub-04" / "anat" / "sub-04_T2starw.nii.gz", np.zeros((2, 2, 2), np.int16))
    # a file of another subject in this one's folder
    write_bids(root / "sub-05" / "anat", "sub-05", 5)
    (root / "sub-05" / "anat" / "sub-05_T2w.nii.gz").rename(
        root / "sub-05" / "anat" / "sub-06_T2w.nii.gz"
    )
    # no anat folder at all (only dwi/)
    (root / "sub-06" / "dwi").mkdir(parents=True)
    found = discover(root, bids=BidsOptions(label_column="group"))
    assert [p.patient_id for p in found.patients] == ["sub-01"]
    anat = {i: root / f"sub-0{i}" / "anat" for i in range(1, 7)}
    assert [str(e) for e in found.skipped] == [
        "patient sub-02: modality t1 present 2 times: sub-02_T1w.nii.gz, sub-02_run-2_T1w.nii.gz"
        "; they differ in run: choose one with --bids-filter t1:run=VALUE",
        "patient sub-03: modality flair present 2 times: sub-03_acq-2d_FLAIR.nii.gz, "
        "sub-03_acq-3d_FLAIR.nii.gz; they differ in acq: choose one with --bids-filter "
        "flair:acq=VALUE",
        f"patient sub-04: no t1ce file in {anat[4]} (expected names ending _ce-<label>_T1w.nii "
        "or .nii.gz)",
        f"patient sub-05: file sub-06_T2w.nii.gz in {anat[5]} is named for sub-06, not sub-05",
        f"patient sub-06: no anat folder in {root / 'sub-06'}",
    ]


def test_bids_sessions(tmp_path):
    rows = "participant_id\tgroup\nsub-01\t1\nsub-02\t0\n"
    root = tmp_path / "ds"
    root.mkdir()
    (root / "participants.tsv").write_text(rows)  # no dataset_description.json: found by sub-*/
    write_bids(root / "sub-01" / "ses-pre" / "anat", "sub-01_ses-pre", 1)
    write_bids(root / "sub-01" / "ses-post" / "anat", "sub-01_ses-post", 2)
    write_bids(root / "sub-02" / "ses-pre" / "anat", "sub-02_ses-pre", 3)
    opts = BidsOptions(label_column="group")
    found = discover(root, bids=opts)
    assert [p.patient_id for p in found.patients] == ["sub-02"]
    assert [str(e) for e in found.skipped] == [
        "patient sub-01: 2 sessions (ses-post, ses-pre); choose one with --session LABEL"
    ]
    found = discover(root, bids=BidsOptions(label_column="group", session="post"))
    assert [(p.patient_id, p.folder.parent.name) for p in found.patients] == [
        ("sub-01", "ses-post")
    ]
    assert [str(e) for e in found.skipped] == [
        f"patient sub-02: no ses-post/anat folder in {root / 'sub-02'} (found: ses-pre)"
    ]
    # a session folder whose files name another session is refused
    bad = root / "sub-02" / "ses-pre" / "anat" / "sub-02_ses-pre_T2w.nii.gz"
    bad.rename(bad.with_name("sub-02_ses-post_T2w.nii.gz"))
    found = discover(root, bids=opts)
    assert str(found.skipped[1]) == (
        f"patient sub-02: file sub-02_ses-post_T2w.nii.gz in {bad.parent} is named for "
        "sub-02_ses-post, not sub-02_ses-pre"
    )


def test_bids_modalities_and_options_elsewhere(tmp_path, brats2019):
    root = bids_dataset(tmp_path / "ds", TSV, ["sub-01"])
    found = discover(root, modalities=("t2", "t1ce"), bids=BidsOptions(label_column="group"))
    assert [f.name for f in found.patients[0].files] == [
        "sub-01_T2w.nii.gz",
        "sub-01_ce-gadolinium_T1w.nii.gz",
    ]
    with pytest.raises(ConfigError) as err:
        discover(root, modalities=("flair", "pd"), bids=BidsOptions(label_column="group"))
    assert str(err.value) == (
        "BIDS files _FLAIR, _T1w, _ce-<label>_T1w, _T2w are read as flair, t1, t1ce, t2; "
        "'pd' is none of these"
    )
    brats, _ = brats2019(n_hgg=1, n_lgg=1)
    with pytest.raises(ConfigError) as err:
        discover(brats, bids=BidsOptions(session="01"))
    assert err.value.option == "--session"
    assert str(err.value) == (
        f"--session reads a BIDS dataset (sub-*/anat/ folders and participants.tsv); {brats} "
        "is not one"
    )


def test_raw_patient_reads_bids_and_brats2023_folders(tmp_path):
    write_bids(tmp_path / "sub-07" / "anat", "sub-07", 0)
    write_bids(tmp_path / "sub-08" / "ses-1" / "anat", "sub-08_ses-1", 1)
    write_bids(tmp_path / "sub-08" / "ses-2" / "anat", "sub-08_ses-2", 2)
    write_brats2023(tmp_path, "BraTS-GLI-00001-000", 3)
    assert raw_patient(tmp_path / "sub-07", MODALITIES).patient_id == "sub-07"
    session = raw_patient(tmp_path / "sub-08" / "ses-2", MODALITIES)
    assert (session.patient_id, session.files[0].name) == (
        "sub-08_ses-2",
        "sub-08_ses-2_FLAIR.nii.gz",
    )
    with pytest.raises(PatientError, match=r"^patient sub-08: 2 sessions \(ses-1, ses-2\)"):
        raw_patient(tmp_path / "sub-08", MODALITIES)
    assert raw_patient(tmp_path / "BraTS-GLI-00001-000", MODALITIES).files[2].name == (
        "BraTS-GLI-00001-000-t1c.nii.gz"
    )


# ------------------------------------------------------------------------ smri preprocess, CLI
def test_preprocess_a_bids_dataset(tmp_path):
    root = bids_dataset(tmp_path / "ds", TSV, ["sub-01", "sub-02", "sub-03"])
    out = tmp_path / "b.h5"
    args = ["preprocess", str(root), str(out), "--slices", "16", "-j", "1"]
    result = CliRunner().invoke(main, [*args, "--label-column", "group", "--positive", "LGG"])
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        assert reader.patient_ids == ["sub-01", "sub-02", "sub-03"]
        assert reader.labels.tolist() == [0, 1, 0]
        assert reader.info.classes == {"not LGG": 0, "LGG": 1}
        assert reader.info.config["layout"] == "bids"
        assert reader.info.config["bids"] == {
            "label_column": "group",
            "positive": "LGG",
            "session": None,
            "bids_filter": [],
        }
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--overwrite",
            "--label-column",
            "group",
            "--positive",
            "LGG",
            "--classes",
            "other=0,lgg=1",
        ],
    )
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        assert reader.info.classes == {"other": 0, "lgg": 1}
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 2
    assert "Invalid value for '--label-column': " in result.output
    assert "name the participants.tsv column holding the labels" in result.output


def test_preprocess_a_brats2023_tree(tmp_path):
    ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    for i, pid in enumerate(ids):
        write_brats2023(tmp_path / "d", pid, i)
    (tmp_path / "l.csv").write_text(f"patient_id,label\n{ids[0]},HGG\n{ids[1]},LGG\n")
    out = tmp_path / "b.h5"
    result = CliRunner().invoke(
        main,
        [
            "preprocess",
            str(tmp_path / "d"),
            str(out),
            "--slices",
            "16",
            "-j",
            "1",
            "--labels",
            str(tmp_path / "l.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    with StoreReader(out) as reader:
        assert reader.patient_ids == ids and reader.labels.tolist() == [1, 0]
        assert reader.info.config["layout"] == "brats2023"
        assert "bids" not in reader.info.config
