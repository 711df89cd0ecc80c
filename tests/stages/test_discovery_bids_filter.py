"""BIDS entity filters (`--bids-filter`, `--bids-filter-file`): they choose among a subject's
variants instead of dropping it; a subject still ambiguous is skipped naming its variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.discovery import BidsOptions, discover, parse_bids_filters
from smri.discovery.bids_filter import EntityFilter
from smri.errors import ConfigError
from smri.store import StoreReader
from tests.helpers.nifti import expected_images, patient_volumes, write_nifti
from tests.stages.test_discovery_layouts import BIDS_FILES, write_bids

ROWS = "participant_id\tgroup\n" + "".join(f"sub-0{i}\t{i % 2}\n" for i in range(1, 5))


@pytest.mark.parametrize(
    ("text", "parsed", "canonical"),
    [
        ("acq=MPRAGE", (None, "acq", ("MPRAGE",)), "acq=MPRAGE"),
        ("T1w:acquisition=MPRAGE", ("t1", "acq", ("MPRAGE",)), "t1:acq=MPRAGE"),
        ("t2:run=", ("t2", "run", (None,)), "t2:run="),
        ("t1ce:ceagent=gd,gd2", ("t1ce", "ce", ("gd", "gd2")), "t1ce:ce=gd,gd2"),
        ("t2:run=2,", ("t2", "run", ("2", None)), "t2:run=2,"),
        (" FLAIR:rec=norm ", ("flair", "rec", ("norm",)), "flair:rec=norm"),
    ],
)  # fmt: skip
def test_filter_texts(text, parsed, canonical):
    f = EntityFilter.parse(text)
    assert (f.modality, f.entity, f.values) == parsed
    assert f.text() == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acq", "expected [MODALITY:]ENTITY=VALUE (e.g. acq=MPRAGE or t1:run=1), got 'acq'"),
        ("acq=MP-RAGE", "expected [MODALITY:]ENTITY=VALUE"),
        ("pd:acq=x", "'pd' is not a modality smri reads from BIDS (flair, t1, t1ce, t2, or "
         "FLAIR, T1w, T2w)"),
        ("task=rest", "'task' is not a BIDS entity of anatomical files (acq, ce, chunk, dir, "
         "echo, flip, inv, mt, part, proc, rec, run, trc)"),
        ("ses=pre", "choose the session with --session LABEL"),
        ("sub=01", "the subject is the patient, not a variant to filter"),
    ],
)  # fmt: skip
def test_bad_filter_texts_name_the_option(text, message):
    with pytest.raises(ConfigError) as err:
        parse_bids_filters([text])
    assert err.value.option == "--bids-filter"
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "modality", "entities", "kept"),
    [
        ("acq=MPRAGE", "t1", {"acq": "MPRAGE"}, True),
        ("acq=mprage", "t1", {"acq": "MPRAGE"}, True),  # labels compare ignoring case
        ("acq=MPRAGE", "t1", {"acq": "SPACE"}, False),
        ("acq=MPRAGE", "flair", {}, True),  # without the entity: kept
        ("t1:acq=MPRAGE", "t1", {}, False),  # ... unless this modality must carry it
        ("t1:acq=MPRAGE", "flair", {"acq": "2d"}, True),  # another modality's filter
        ("t1:run=", "t1", {}, True),
        ("t1:run=", "t1", {"run": "1"}, False),
        ("t2:run=2", "t2", {}, False),  # strict for its modality: a T2w without run- is out
        ("t2:run=2,", "t2", {}, True),  # ... unless the absent entity is allowed too
        ("run=1", "t2", {"run": "01"}, True),  # numbers compare as numbers
        ("run=1,3", "t2", {"run": "3"}, True),
        ("rec=1", "t2", {"rec": "01"}, False),  # labels do not
    ],
)  # fmt: skip
def test_what_a_filter_keeps(text, modality, entities, kept):
    assert EntityFilter.parse(text).keeps(modality, entities) is kept


def variants_dataset(root):
    """sub-01: T1w acq-MPRAGE and acq-SPACE; sub-02: T2w run-01 and run-02; sub-03: only an
    acq-SPACE T1w; sub-04: two acq-MPRAGE T1w told apart by rec-. Returns each file's data."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "v", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text(ROWS)
    files = {
        "sub-01": {**BIDS_FILES, "t1": "acq-MPRAGE_T1w"},
        "sub-02": {**BIDS_FILES, "t2": "run-01_T2w"},
        "sub-03": {**BIDS_FILES, "t1": "acq-SPACE_T1w"},
        "sub-04": {**BIDS_FILES, "t1": "acq-MPRAGE_rec-norm_T1w"},
    }
    data = {}
    for i, (sub, names) in enumerate(files.items()):
        data[sub] = write_bids(root / sub / "anat", sub, i, names)
    extra = {"sub-01": "acq-SPACE_T1w", "sub-02": "run-02_T2w", "sub-04": "acq-MPRAGE_T1w"}
    for i, (sub, suffix) in enumerate(extra.items()):
        vol = patient_volumes(50 + i)["t2"]
        write_nifti(root / sub / "anat" / f"{sub}_{suffix}.nii.gz", vol)
        data[f"{sub}_{suffix}"] = vol
    return data


def test_filters_choose_among_variants(tmp_path):
    root = tmp_path / "ds"
    variants_dataset(root)
    anat = {s: root / s / "anat" for s in ("sub-01", "sub-02", "sub-03", "sub-04")}
    found = discover(root, bids=BidsOptions(label_column="group"))
    assert [p.patient_id for p in found.patients] == ["sub-03"]
    assert [str(e) for e in found.skipped] == [
        "patient sub-01: modality t1 present 2 times: sub-01_acq-MPRAGE_T1w.nii.gz, "
        "sub-01_acq-SPACE_T1w.nii.gz; they differ in acq: choose one with --bids-filter "
        "t1:acq=VALUE",
        "patient sub-02: modality t2 present 2 times: sub-02_run-01_T2w.nii.gz, "
        "sub-02_run-02_T2w.nii.gz; they differ in run: choose one with --bids-filter t2:run=VALUE",
        "patient sub-04: modality t1 present 2 times: sub-04_acq-MPRAGE_T1w.nii.gz, "
        "sub-04_acq-MPRAGE_rec-norm_T1w.nii.gz; they differ in rec: choose one with "
        "--bids-filter t1:rec=VALUE",
    ]
    opts = BidsOptions(label_column="group", bids_filter=("acq=MPRAGE", "t2:run=2,"))
    found = discover(root, bids=opts)
    chosen = {p.patient_id: [f.name for f in p.files] for p in found.patients}
    assert chosen == {
        "sub-01": ["sub-01_FLAIR.nii.gz", "sub-01_acq-MPRAGE_T1w.nii.gz",
                   "sub-01_ce-gadolinium_T1w.nii.gz", "sub-01_T2w.nii.gz"],
        "sub-02": ["sub-02_FLAIR.nii.gz", "sub-02_T1w.nii.gz",
                   "sub-02_ce-gadolinium_T1w.nii.gz", "sub-02_run-02_T2w.nii.gz"],
    }  # fmt: skip
    assert [str(e) for e in found.skipped] == [
        f"patient sub-03: no t1 file in {anat['sub-03']} passes --bids-filter (left out: "
        "sub-03_acq-SPACE_T1w.nii.gz)",
        "patient sub-04: modality t1 present 2 times: sub-04_acq-MPRAGE_T1w.nii.gz, "
        "sub-04_acq-MPRAGE_rec-norm_T1w.nii.gz after --bids-filter acq=MPRAGE t2:run=2,; they "
        "differ in rec: choose one with --bids-filter t1:rec=VALUE",
    ]
    opts = BidsOptions(label_column="group", bids_filter=("acq=MPRAGE", "t2:run=2,", "t1:rec="))
    assert [p.patient_id for p in discover(root, bids=opts).patients] == [
        "sub-01", "sub-02", "sub-04"]  # fmt: skip


def test_a_bids_apps_filter_file(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({
        "t1w": {"datatype": "anat", "acquisition": "MPRAGE", "reconstruction": None,
                "suffix": "T1w", "extension": [".nii", ".nii.gz"]},
        "t2w": {"run": [2, 3]},
        "bold": {"datatype": "func", "task": "rest"},  # not read by smri: skipped
    }))  # fmt: skip
    assert parse_bids_filters(["flair:acq=2d"], path) == (
        "t1:acq=MPRAGE", "t1:rec=", "t2:run=2,3", "flair:acq=2d")  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"t3w": {"run": 1}}, "query 't3w' is none of t1w, t2w, flair (or t1, t1ce, t2)"),
        ({"t1w": ["MPRAGE"]}, "query 't1w': expected an object of entities"),
        ({"t1w": {"suffix": "T2w"}}, "query 't1w': suffix 'T2w'; smri reads suffix t1w for "
         "this query"),
        ({"t1w": {"datatype": "func"}}, "query 't1w': datatype 'func'; smri reads datatype "
         "anat for this query"),
        ({"t1w": {"acquisition": "MP-RAGE"}}, "query 't1w', 'acquisition': expected a label "
         "(letters and digits), a number, null or a list of them, got 'MP-RAGE'"),
        ({"t1w": {"run": True}}, "query 't1w', 'run': expected a label"),
    ],
)  # fmt: skip
def test_filter_file_problems_name_the_file_and_query(tmp_path, content, message):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        parse_bids_filters([], path)
    assert err.value.option == "--bids-filter-file"
    assert str(err.value).startswith(f"{path}: {message}")


def test_filter_file_that_is_not_json(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text("{'t1w': 1}")
    with pytest.raises(ConfigError, match=r"filter.json: not valid JSON \(Expecting"):
        parse_bids_filters([], path)
    with pytest.raises(ConfigError, match=r"missing.json: cannot read \(No such file"):
        parse_bids_filters([], tmp_path / "missing.json")


def test_preprocess_with_filters(tmp_path, brats2019):
    root = tmp_path / "ds"
    data = variants_dataset(root)
    (tmp_path / "f.json").write_text(json.dumps({"t2w": {"run": [2, None]}}))  # 2, or none
    out = tmp_path / "s.h5"
    args = ["preprocess", str(root), str(out), "--slices", "16", "-j", "1",
            "--label-column", "group", "--bids-filter", "acq=MPRAGE",
            "--bids-filter-file", str(tmp_path / "f.json"), "--bids-filter", "t1:rec="]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "skipping patient sub-03: no t1 file in" in result.output
    with StoreReader(out) as reader:
        assert reader.patient_ids == ["sub-01", "sub-02", "sub-04"]
        assert reader.info.config["bids"]["bids_filter"] == ["t2:run=2,", "acq=MPRAGE", "t1:rec="]
        vols = {**patient_volumes(1), "t2": data["sub-02_run-02_T2w"]}  # sub-02's chosen run
        assert np.array_equal(reader.read(1), expected_images(vols))
        vols = {**patient_volumes(3), "t1": data["sub-04_acq-MPRAGE_T1w"]}
        assert np.array_equal(reader.read(2), expected_images(vols))
    bad = CliRunner().invoke(main, [*args[:-4], "--overwrite", "--bids-filter", "acq"])
    assert bad.exit_code == 2
    assert "Invalid value for '--bids-filter': expected [MODALITY:]ENTITY=VALUE" in bad.output
    brats, _ = brats2019(n_hgg=1, n_lgg=1)
    result = CliRunner().invoke(
        main, ["preprocess", str(brats), str(tmp_path / "b.h5"), "--bids-filter", "acq=x"]
    )
    assert result.exit_code == 2
    assert "--bids-filter reads a BIDS dataset" in result.output
