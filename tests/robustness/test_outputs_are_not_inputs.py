"""No command destroys what the user did not ask to replace: an output that is, or lies inside,
what the command reads is refused (even with --overwrite), and the input is unchanged.

Also: `smri show --out` replaces an existing file only if it is a PNG (or with --overwrite),
and `smri plot` / `smri evaluate` never write into a run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.cli import digest, invoke
from tests.helpers.nifti import write_cohort
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)

PID = "BraTS19_HGG_000_1"


def usage_error(result, option: str) -> str:
    """The `Error:` line of a usage error (exit 2) naming `option`."""
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Error: Invalid value for '{option}': "), line
    return line


@pytest.fixture
def cohort(tmp_path) -> Path:
    return write_cohort(tmp_path / "in")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("outputs")
    return tiny_run(tmp)


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        (f"in/HGG/{PID}/{PID}_t1.nii.gz", ["--overwrite"], "is inside INPUT "),
        ("in/store.h5", [], "is inside INPUT "),
        ("in/HGG/../LGG/store.h5", [], "is inside INPUT "),
        ("link/HGG/store.h5", [], "is inside INPUT "),  # INPUT reached through a link
        ("labels.csv", ["--overwrite", "--labels", "{tmp}/labels.csv"], "is --labels "),
    ],
    ids=["an-input-scan", "inside-input", "dot-dot", "through-a-link", "the-labels-csv"],
)
def test_preprocess_output_is_not_an_input(cohort, tmp_path, output, extra, message):
    (tmp_path / "link").symlink_to(cohort)
    (tmp_path / "labels.csv").write_text(f"patient_id,label\n{PID},1\n")
    before = digest(tmp_path)
    args = [a.format(tmp=tmp_path) for a in extra]
    for mode in ([], ["--append"]) if "--overwrite" not in extra else ([],):
        res = invoke("preprocess", cohort, tmp_path / output, "--slices", "16", *args, *mode)
        assert message in usage_error(res, "OUTPUT")
    assert digest(tmp_path) == before  # nothing replaced, nothing written


def test_show_out_is_not_a_file_it_reads(cohort, tmp_path):
    folder = cohort / "HGG" / PID
    scan = folder / f"{PID}_t2.nii.gz"
    before = digest(cohort)
    for out, extra in ((scan, []), (scan, ["--overwrite"]), (folder / "view.png", [])):
        res = invoke("show", folder, "--out", out, *extra)
        assert "is inside the patient folder" in usage_error(res, "--out")
        res = invoke("show", cohort, PID, "--out", out, *extra)  # cohort root + id
        assert "is inside the patient folder" in usage_error(res, "--out")
    store = make_store(tmp_path / "s.h5")
    stored = store.read_bytes()
    res = invoke("show", store, "P001", "--out", store, "--overwrite")
    assert f"{store} is SOURCE {store}" in usage_error(res, "--out")
    assert store.read_bytes() == stored and digest(cohort) == before


def test_show_replaces_an_existing_file_only_if_it_is_a_png(cohort, tmp_path):
    folder = cohort / "HGG" / PID
    other = tmp_path / "notes.txt"
    other.write_text("my notes")
    res = invoke("show", folder, "--out", other)
    assert "exists and is not a PNG image" in usage_error(res, "--out")
    assert other.read_text() == "my notes"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = invoke("show", folder, "--out", fifo, "--overwrite")
    assert "is a FIFO (named pipe), not a file to write a PNG to" in usage_error(res, "--out")
    png = tmp_path / "p.png"
    assert invoke("show", folder, "--out", png).exit_code == 0
    assert invoke("show", folder, "--out", png).exit_code == 0  # a PNG: replaced as before
    assert invoke("show", folder, "--out", other, "--overwrite").exit_code == 0  # asked for
    assert other.read_bytes().startswith(b"\x89PNG")
    link = tmp_path / "link.png"
    link.symlink_to(folder / f"{PID}_t1.nii.gz")
    before = digest(cohort)
    assert invoke("show", folder, "--out", link, "--overwrite").exit_code == 0
    assert digest(cohort) == before and not link.is_symlink()  # the link, not the scan


def test_plot_never_writes_into_a_run(run, tmp_path):
    _, out = run
    before = digest(out)
    res = invoke("plot", out, "--out", out)
    assert f"{out} is RUN_DIR {out}" in usage_error(res, "--out")
    fold = tmp_path / "cv"
    (fold / "fold0").mkdir(parents=True)
    for name in ("config.json", "metrics.csv", "summary.json", "best.pt"):
        (fold / "fold0" / name).write_bytes((out / name).read_bytes())
    res = invoke("plot", out, "--out", fold / "fold0")
    assert "is an smri run folder" in usage_error(res, "--out")
    assert digest(out) == before
    res = invoke("plot", out, "--out", tmp_path / "figures")  # the run still plots
    assert res.exit_code == 0, res.output


def test_evaluate_never_writes_into_a_run(run, tmp_path):
    store, out = run
    before = digest(out)
    res = invoke("evaluate", out / "best.pt", store, "--out", out, "--overwrite")
    assert "is an smri run folder" in usage_error(res, "--out")
    assert digest(out) == before


def test_predict_csv_is_not_a_file_it_reads(run, cohort, tmp_path):
    _, out = run
    folder = cohort / "HGG" / PID
    before, model = digest(cohort), (out / "best.pt").read_bytes()
    res = invoke("predict", out / "best.pt", folder, "--csv", folder / f"{PID}_t1.nii.gz",
                 "--overwrite")  # fmt: skip
    assert "is inside PATIENT_DIR" in usage_error(res, "--csv")
    res = invoke("predict", out / "best.pt", folder, "--csv", out / "best.pt", "--overwrite")
    assert "is MODEL" in usage_error(res, "--csv")
    assert digest(cohort) == before and (out / "best.pt").read_bytes() == model


def test_train_overwrite_never_deletes_the_store(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "config.json").write_text("{}")  # an old run folder that also holds the store
    store = make_store(runs / "s.h5")
    res = invoke("train", store, "--out", runs, "--overwrite", "--epochs", "1")
    assert f"holds STORE {store}" in usage_error(res, "--out")
    assert store.is_file()
