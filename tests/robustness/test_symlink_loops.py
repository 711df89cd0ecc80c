"""A symbolic link loop inside a cohort costs only its own patient.

A loop where a patient folder should be (``HGG/a -> b -> a``, a self-link, a BIDS subject)
is listed as a patient and skipped with the reason; every good patient is stored. Listing a
folder never fails for one entry that cannot be followed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from smri.cli import main
from smri.discovery import BidsOptions, discover
from smri.store import StoreReader
from tests.helpers.nifti import write_cohort, write_patient

LOOP = "Too many levels of symbolic links"


def invoke(*args: object):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res


@pytest.fixture
def cohort(tmp_path) -> Path:
    """Three good patients, and a two-link loop in HGG and a self-link in LGG."""
    root = write_cohort(tmp_path / "in")
    os.symlink("b", root / "HGG" / "a")
    os.symlink("a", root / "HGG" / "b")
    os.symlink("self", root / "LGG" / "self")
    return root


def test_preprocess_keeps_every_good_patient(cohort, tmp_path):
    out = tmp_path / "s.h5"
    res = invoke("preprocess", cohort, out, "--slices", "16", "-j", "1")
    assert res.exit_code == 0, res.output
    for name in ("HGG/a", "HGG/b", "LGG/self"):
        assert f"skipping patient {Path(name).name}: cannot read {cohort / name} ({LOOP})" in (
            res.stderr
        )
    with StoreReader(out) as reader:
        assert reader.patient_ids == ["BraTS19_HGG_000_1", "BraTS19_HGG_001_1", "BraTS19_LGG_000_1"]
        assert sorted(row["patient_id"] for row in reader.info.skipped) == ["a", "b", "self"]


def test_strict_stops_at_the_loop_with_its_reason(cohort, tmp_path):
    res = invoke("preprocess", cohort, tmp_path / "s.h5", "--slices", "16", "--strict")
    assert res.exit_code == 1
    assert LOOP in res.stderr and not (tmp_path / "s.h5").exists()


def test_a_looping_bids_subject_is_skipped_alone(tmp_path):
    root = tmp_path / "bids"
    for i in (1, 2):
        pid = f"sub-0{i}"
        vols = write_patient(root / pid / "anat", pid, i, seg=False)
        for m, suffix in zip(vols, ("FLAIR", "T1w", "ce-gd_T1w", "T2w"), strict=True):
            (root / pid / "anat" / f"{pid}_{m}.nii.gz").rename(
                root / pid / "anat" / f"{pid}_{suffix}.nii.gz"
            )
    (root / "participants.tsv").write_text("participant_id\tgrade\nsub-01\tLGG\nsub-02\tHGG\n"
                                           "sub-03\tHGG\n")  # fmt: skip
    os.symlink("sub-03", root / "sub-03")
    found = discover(root, bids=BidsOptions(label_column="grade"))
    assert [p.patient_id for p in found.patients] == ["sub-01", "sub-02"]
    (skipped,) = found.skipped
    assert str(skipped) == f"patient sub-03: cannot read {root / 'sub-03'} ({LOOP})"


def test_a_link_to_a_real_patient_folder_is_still_read(tmp_path):
    root = write_cohort(tmp_path / "in")
    elsewhere = tmp_path / "elsewhere" / "BraTS19_HGG_009_1"
    write_patient(elsewhere, "BraTS19_HGG_009_1", 9)
    os.symlink(elsewhere, root / "HGG" / "BraTS19_HGG_009_1")
    os.symlink("loop", root / "HGG" / "loop")
    found = discover(root)
    assert "BraTS19_HGG_009_1" in [p.patient_id for p in found.patients]
    assert [e.patient_id for e in found.skipped] == ["loop"]
