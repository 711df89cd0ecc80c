"""A failed or signalled run names the file it could not write and leaves nothing behind.

- A file size limit (ulimit -f: EFBIG, the same path as a full disk's ENOSPC) while synth,
  preprocess (the store uncompressed, checked before writing; compressed, failing midway),
  train, evaluate or predict writes: exit 1, one line naming the file the user asked for.
- SIGTERM (kill, a scheduler, docker stop) acts as Ctrl-C: exit 143, no hidden .partial or
  lock file, no worker process left, the store unchanged after an interrupted --append.
- Two predicted folders of one name are told apart in the CSV.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from smri.cli import main
from tests.helpers.cli import DEADLINE_S, ENV, error_line, leftovers, smri_cmd
from tests.helpers.nifti import write_patient
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)


def _limited(limit: int):
    def pre() -> None:  # a write past `limit` bytes fails with EFBIG instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def run_limited(limit: int, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(smri_cmd(*args), capture_output=True, text=True, env=ENV,
                          timeout=DEADLINE_S, preexec_fn=_limited(limit))  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("debris") / "in"
    for i in range(10):
        cls = "HGG" if i % 3 else "LGG"
        write_patient(root / cls / f"P{i:02d}_1", f"P{i:02d}_1", i, shape=(40, 48, 60))
    return root


@pytest.fixture(scope="module")
def cohort_model(cohort, tmp_path_factory) -> Path:
    """best.pt of a model trained on `cohort`'s own store: it predicts the cohort's folders."""
    import smri

    tmp = tmp_path_factory.mktemp("debris-cohort")
    store = smri.preprocess(cohort, tmp / "s.h5", slices=16, log=lambda _: None).output
    run = smri.train(store, width=0.25, epochs=1, batch_size=2, device="cpu", cache="ram",
                     out=tmp / "r", tensorboard=False, quiet=True)  # fmt: skip
    return run / "best.pt"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("debris-run")
    return tiny_run(tmp)


@pytest.mark.parametrize(
    ("limit", "args", "named", "message"),
    [
        (20_000, ["synth", "{tmp}/c", "-n", "2", "--shape", "64", "64", "60", "-j", "1"],
         "c/", "File too large"),
        (500_000, ["preprocess", "{cohort}", "{tmp}/s.h5", "--slices", "16"], "s.h5",
         "more than this process may write to one file"),
        (400_000, ["preprocess", "{cohort}", "{tmp}/s.h5", "--slices", "16", "--compression",
                   "gzip-1", "-j", "1"], "s.h5", "File too large"),
        (60_000, ["train", "{store}", "--width", "0.25", "--epochs", "1", "--batch-size", "4",
                  "--device", "cpu", "--no-tensorboard", "--out", "{tmp}/r"], "r/best.pt",
         "File too large"),
        (3_000, ["evaluate", "{ckpt}", "{store}", "--device", "cpu", "--out", "{tmp}/ev"],
         "ev/roc.png", "File too large"),
        (40, ["predict", "{model}", "{patient}", "--csv", "{tmp}/p.csv"], "p.csv",
         "File too large"),
    ],
    ids=["synth", "preprocess", "preprocess-gzip", "train", "evaluate", "predict"],
)  # fmt: skip
def test_a_file_size_limit_names_the_file(cohort, cohort_model, run, tmp_path, limit, args,
                                          named, message):  # fmt: skip
    store, out = run
    values = {"tmp": tmp_path, "cohort": cohort, "store": store, "ckpt": out / "best.pt",
              "patient": cohort / "HGG" / "P01_1", "model": cohort_model}  # fmt: skip
    res = run_limited(limit, *(a.format(**values) for a in args))
    line = error_line(res)
    assert str(tmp_path / named) in line and message in line, line
    assert "Exception ignored" not in res.stderr and res.returncode == 1
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "s.h5").exists()


# --------------------------------------------------------------------------------- SIGTERM
def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _terminate_when(cmd: list[str], ready, workers: int = 0) -> tuple[subprocess.Popen, set]:
    """Start `cmd`, wait until `ready()` (and `workers` child processes), send SIGTERM; its
    result and the child processes it had."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + DEADLINE_S
    kids: set[int] = set()
    while not (ready() and len(kids) >= workers):
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline
        kids |= _children(proc.pid)
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE_S)
    proc.out, proc.err = out.decode(), err.decode()
    return proc, kids


def _gone(pids: set[int]) -> bool:
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_sigterm_during_append_leaves_the_store_and_nothing_else(cohort, tmp_path, backend):
    half = tmp_path / "half"
    for cls in ("HGG", "LGG"):
        (half / cls).mkdir(parents=True)
    (half / "HGG" / "P01_1").symlink_to(cohort / "HGG" / "P01_1")
    (half / "LGG" / "P00_1").symlink_to(cohort / "LGG" / "P00_1")
    store = tmp_path / "work" / "s.h5"
    store.parent.mkdir()
    assert subprocess.run(smri_cmd("preprocess", half, store, "--slices", "16"),
                          env=ENV).returncode == 0  # fmt: skip
    before = store.read_bytes()
    cmd = smri_cmd("preprocess", cohort, store, "--append", "--slices", "16", "-j", "2",
                   "--backend", backend)  # fmt: skip
    started = lambda: any(store.parent.glob(".s.h5.*.partial"))  # noqa: E731
    proc, kids = _terminate_when(cmd, started, workers=2 if backend == "loky" else 0)
    assert proc.returncode == 143, proc.err
    assert "Traceback" not in proc.err and "interrupted; " in proc.err
    assert store.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert _gone(kids)


def test_sigterm_during_k_fold_training_keeps_each_folds_epochs(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 9)
    out = tmp_path / "cv"
    cmd = smri_cmd("train", store, "--width", "0.25", "--epochs", "200", "--batch-size", "4",
                   "--folds", "3", "--jobs", "2", "--device", "cpu", "--cache", "ram",
                   "--no-tensorboard", "--out", out)  # fmt: skip
    proc, kids = _terminate_when(cmd, lambda: (out / "fold0" / "last.pt").exists(), workers=2)
    assert proc.returncode == 143, proc.err
    assert "Continue with: smri train --resume" in proc.err and "Traceback" not in proc.err
    assert leftovers(tmp_path) == [] and _gone(kids)
    from smri.model_io import load_checkpoint

    assert load_checkpoint(out / "fold0" / "last.pt")["epoch"] >= 1  # complete, loadable


def test_sigterm_during_synth_leaves_no_partial_file(tmp_path):
    out = tmp_path / "c"
    cmd = smri_cmd("synth", out, "-n", "40", "--shape", "96", "96", "80", "-j", "2")
    proc, kids = _terminate_when(cmd, lambda: any(out.glob("*GG/*")), workers=1)
    assert proc.returncode == 143, proc.err
    assert leftovers(tmp_path) == [] and _gone(kids)


# ---------------------------------------------------------------------------------- names
def test_two_predicted_folders_of_one_name_are_told_apart(cohort, cohort_model, tmp_path):
    a, b = tmp_path / "a" / "P01_1", tmp_path / "b" / "P01_1"
    for folder in (a, b):  # two copies of one patient, as two sites might name them
        shutil.copytree(cohort / "HGG" / "P01_1", folder)
    csv = tmp_path / "p.csv"
    res = CliRunner().invoke(main, ["predict", str(cohort_model), str(a), str(b), "--csv",
                                    str(csv), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ids = [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]
    assert ids == [str(a), str(b)]  # not "P01_1" twice
    single = CliRunner().invoke(main, ["predict", str(cohort_model), str(a), "--device", "cpu"])
    assert single.stdout.splitlines()[1].startswith("P01_1 ")  # alone, the folder's name
