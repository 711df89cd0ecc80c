"""Two smri processes aiming at one output: the second is refused before it touches a byte,
the first finishes correctly, and nothing is left behind (real concurrent processes).

The first process is stopped (SIGSTOP) while it holds the output's lock, so the second always
meets it mid-run, however fast or busy the machine.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smri.atomic import OutputLock, OutputLocked
from tests.helpers.cli import ENV, error_line, leftovers, paused_holder, run_smri, smri_cmd
from tests.helpers.nifti import write_patient
from tests.helpers.stores import make_store, same_store

LOCKED = r"another smri process \(pid {pid}\) is writing it; wait for it to finish or stop it"


def _lock(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _preprocess(root: Path, out: Path, *extra: str) -> list[str]:
    return smri_cmd("preprocess", root, out, "--slices", "16", "-j", "1", *extra)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A cohort, a store of its first half and the store of all of it (made once)."""
    tmp = tmp_path_factory.mktemp("two-writers")
    root, half = tmp / "in", tmp / "half"
    for cls, label, n in (("HGG", 1, 6), ("LGG", 0, 4)):
        for i in range(n):
            pid = f"BraTS19_{cls}_{i:03d}_1"
            write_patient(root / cls / pid, pid, 100 * label + i, shape=(40, 48, 60))
            if i < 2:
                shutil.copytree(root / cls / pid, half / cls / pid)
    assert subprocess.run(_preprocess(half, tmp / "half.h5"), env=ENV).returncode == 0
    assert subprocess.run(_preprocess(root, tmp / "ref.h5"), env=ENV).returncode == 0
    return root, tmp / "half.h5", tmp / "ref.h5"


@pytest.fixture
def cohort(stores, tmp_path):
    """The cohort, a fresh copy of the half store (`good.h5`) and the full reference store."""
    root, half, ref = stores
    work = tmp_path / "work"
    work.mkdir()
    return root, Path(shutil.copy(half, work / "good.h5")), ref


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["--overwrite"], ["--overwrite"]),
        (["--append"], ["--append"]),
        (["--overwrite", "--resume"], ["--overwrite", "--resume"]),
        (["--append"], ["--overwrite"]),
    ],
    ids=["overwrite", "append", "resume", "append-then-overwrite"],
)
def test_two_preprocess_runs_on_one_store(cohort, first, second):
    root, good, ref = cohort
    with paused_holder(_preprocess(root, good, *first), _lock(good)) as holder:
        res = subprocess.run(_preprocess(root, good, *second), capture_output=True, text=True,
                             env=ENV, timeout=180)  # fmt: skip
        line = error_line(res)
        assert line.startswith(f"Error: {good}: ")
        assert __import__("re").search(LOCKED.format(pid=holder.pid), line)
    assert holder.returncode == 0, holder.err
    same_store(ref, good)  # the first run's store, complete and correct
    assert leftovers(good.parent) == []


def test_two_train_runs_on_one_run_folder(tmp_path):
    store = make_store(tmp_path / "s.h5")
    run = tmp_path / "run"
    args = ("--model", "cnn2", "--width", "0.25", "--batch-size", "4", "--epochs", "2",
            "--device", "cpu", "--cache", "ram", "--no-tensorboard")  # fmt: skip
    first = smri_cmd("train", store, *args, "--out", run)
    # paused once the run folder is one (config.json), so --resume gets past its usage check
    with paused_holder(first, _lock(run), ready=run / "config.json") as holder:
        for other in (
            ["train", "--resume", run],  # two resumes of one run
            ["train", store, *args, "--out", run, "--overwrite"],  # would delete the run
            ["train", store, *args, "--out", run],
        ):
            res = run_smri(*other)
            assert error_line(res).startswith(f"Error: {run}: another smri process (pid ")
    assert holder.returncode == 0, holder.err
    assert (run / "summary.json").is_file() and (run / "best.pt").is_file()
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert leftovers(tmp_path) == []
    resumed = run_smri("train", "--resume", run)  # the lock went with the first process
    assert resumed.returncode == 0, resumed.stderr


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "x.h5"
    code = (
        "import sys, time; from smri.atomic import OutputLock; "
        "OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(OutputLocked, match=LOCKED.format(pid=holder.pid)):
            OutputLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _lock(out).exists()  # a killed holder cannot tidy up, but its lock is gone:
    with OutputLock(out):
        pass
    assert not _lock(out).exists()


def test_the_lock_is_taken_before_anything_is_read(tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(b"not yet a store")
    with OutputLock(out):  # held here: an --append must not even read the store
        res = run_smri("preprocess", tmp_path / "in", out, "--append")
    assert "another smri process" in error_line(res)
    assert out.read_bytes() == b"not yet a store"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import smri

    tmp = tmp_path_factory.mktemp("trained")
    store = make_store(tmp / "s.h5")
    run = smri.train(store, model="cnn2", width=0.25, batch_size=4, epochs=1, device="cpu",
                     out=tmp / "run", tensorboard=False, quiet=True)  # fmt: skip
    cohort = smri.synth(tmp / "cohort", patients=2, shape=(32, 32, 40), jobs=1, quiet=True)
    return store, run, cohort


@pytest.mark.parametrize("command", ["evaluate", "predict", "show", "plot", "export", "synth"])
def test_every_writing_command_takes_the_lock(trained, tmp_path, command):
    from click.testing import CliRunner

    from smri.cli import main

    store, run, cohort = trained
    patient = next((cohort / "HGG").iterdir(), None) or next((cohort / "LGG").iterdir())
    ckpt, target = run / "best.pt", tmp_path / "out"
    args = {
        "evaluate": ["evaluate", ckpt, store, "--out", target],
        "predict": ["predict", ckpt, patient, "--csv", target],
        "show": ["show", patient, "--out", target],
        "plot": ["plot", run, "--out", target],
        "export": ["export", run, target],
        "synth": ["synth", target, "-n", "2", "--shape", "32", "32", "40"],
    }[command]
    before = sorted(tmp_path.iterdir())
    with OutputLock(target):  # as another process would hold it
        res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines()[-1].startswith(f"Error: {target}: another smri process")
    assert "Traceback" not in res.output
    assert [p for p in sorted(tmp_path.iterdir()) if p not in before] in ([], [target])
    assert not target.exists() or not any(target.iterdir())
