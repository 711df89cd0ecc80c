"""Interruptions on the training side lose nothing, and a full disk is one clear line.

- `smri train` killed with SIGKILL mid-epoch, then `--resume`, ends with the metrics of an
  uninterrupted run (CPU, one torch thread, both runs as real subprocesses).
- A checkpoint write interrupted midway (Ctrl-C, full disk, SIGKILL) never leaves a corrupt
  last.pt: the previous one still loads.
- A full disk while writing a checkpoint or the store: exit 1, "No space left on device" naming
  the file, nothing corrupt or temporary left behind.
- A reader opening the store while `smri preprocess --overwrite` replaces it sees the old or
  the new complete file, never a mixture.

The preprocess side (SIGKILL/SIGINT then `--resume`) is in
tests/robustness/test_interruptions_preprocess.py.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import smri.atomic
import smri.model_io
from smri.cli import main
from smri.errors import DataError
from smri.model_io import load_checkpoint, save_checkpoint
from smri.networks import ModelConfig
from smri.store import StoreReader
from smri.training import TrainConfig, train
from tests.helpers.stores import direct_io_works, make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

TIMING = {"seconds", "patients_per_s"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "smri", "train", *(str(a) for a in args)]


def _rows(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "metrics.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def _numbers(run: Path) -> np.ndarray:
    """metrics.csv without the timing columns, as a float array (epochs x metrics)."""
    rows = _rows(run)
    keys = [k for k in rows[0] if k not in TIMING]
    return np.array([[float(r[k]) for k in keys] for r in rows])


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.partial"))


# ------------------------------------------------------------------- SIGKILL mid-epoch, resume
def _kill_mid_epoch(proc: subprocess.Popen, run: Path, after: int, share: float) -> None:
    """SIGKILL `proc` `share` of an epoch after its epoch `after` was written to metrics.csv."""
    deadline = time.monotonic() + 120
    while len(_rows(run)) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    rows = _rows(run)
    if rows:
        time.sleep(share * float(rows[-1]["seconds"]))  # somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 8)
    epochs = 30  # tiny epochs: under load the killer thread may wake late, yet before the last
    opts = ["--width", "0.25", "--batch-size", "2", "--epochs", str(epochs), "--cache", "ram"]
    opts += ["--workers", "0", "--device", "cpu", "--augment"]
    cut = tmp_path / "cut"
    victim = subprocess.Popen(
        _train_cmd(store, *opts, "--out", cut), env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    share = float(np.random.default_rng(7).uniform(0.3, 0.7))
    killer = threading.Thread(target=_kill_mid_epoch, args=(victim, cut, 1, share))
    killer.start()
    # Meanwhile, the uninterrupted reference: the same settings in this process (one thread).
    cfg = TrainConfig(epochs=epochs, batch_size=2, cache="ram", workers=0, device="cpu",
                      augment=True)  # fmt: skip
    train(store, ModelConfig(width=0.25), cfg, tmp_path / "full", log=lambda _: None)
    killer.join()
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, err
    done = len(_rows(cut))
    assert 1 <= done < epochs and not (cut / "summary.json").exists()
    assert load_checkpoint(cut / "last.pt")["epoch"] == done  # the last whole epoch
    resumed = subprocess.run(
        _train_cmd("--resume", cut, "--cache", "ram", "--workers", "0", "--device", "cpu"),
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {cut} after epoch {done}" in resumed.stdout
    assert "Traceback" not in resumed.stderr
    np.testing.assert_array_equal(_numbers(cut), _numbers(tmp_path / "full"))
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(cut / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _partials(cut) == []


# ------------------------------------------------------------------ folds in worker processes
def _fold_run(store: Path, out: Path) -> subprocess.Popen:
    opts = ["--width", "0.25", "--batch-size", "2", "--epochs", "40", "--folds", "2", "--jobs",
            "2", "--cache", "ram", "--workers", "0", "--device", "cpu", "--out", out]  # fmt: skip
    return subprocess.Popen(_train_cmd(store, *opts), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _workers_training(proc: subprocess.Popen, out: Path) -> list:
    """The worker processes, once both folds have finished an epoch."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if all(_rows(out / f"fold{k}") for k in (0, 1)):
            break
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2 and proc.poll() is None
    return workers


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_fold_workers_end_with_their_parent(tmp_path, sig):
    """A killed parent leaves no worker training on into its run folder."""
    psutil = pytest.importorskip("psutil")
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 8)
    proc = _fold_run(store, tmp_path / "r")
    workers = _workers_training(proc, tmp_path / "r")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []


def test_quiet_fold_workers_print_nothing(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 8)
    opts = ["--width", "0.25", "--batch-size", "2", "--epochs", "1", "--folds", "2", "--jobs",
            "2", "--cache", "ram", "--workers", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    done = subprocess.run(_train_cmd(store, *opts, "--out", tmp_path / "r"), env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"run folder: {tmp_path / 'r'}\n"


def test_ctrl_c_stops_every_fold_worker_and_resume_finishes_the_folds(tmp_path):
    psutil = pytest.importorskip("psutil")
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 8)
    out = tmp_path / "r"
    proc = _fold_run(store, out)
    workers = _workers_training(proc, out)
    proc.send_signal(signal.SIGINT)  # the parent alone, as `kill -INT` would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"Continue with: smri train --resume {out}" in err
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []
    assert all(load_checkpoint(out / f"fold{k}" / "last.pt")["epoch"] >= 1 for k in (0, 1))
    resumed = subprocess.run(_train_cmd("--resume", out, "--jobs", "2"), env=ENV,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "summary.json").exists() and _partials(out) == []


# ---------------------------------------------------------------- interrupted checkpoint writes
class FailingFile:
    """A file object that writes the first half of what it is given, then raises `exc`."""

    def __init__(self, path: Path, mode: str, exc: BaseException):
        self._fh = open(path, mode)  # noqa: SIM115 (closed in __exit__)
        self._exc = exc

    def write(self, data) -> int:
        data = bytes(data)
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise self._exc

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _state(value: float) -> dict:
    """A checkpoint-shaped dict with ~4 MB of weights."""
    return {
        **smri.model_io.checkpoint_header(),
        "model_config": {}, "store": dict.fromkeys(smri.model_io.STORE_KEYS),
        "preprocess_config": {}, "epoch": int(value),
        "model": {"w": torch.full((1_000_000,), value)},
    }  # fmt: skip


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))],
    ids=["ctrl-c", "disk-full"],
)
def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, exc):
    last = tmp_path / "last.pt"
    save_checkpoint(last, _state(1))
    before = last.read_bytes()
    monkeypatch.setattr(
        smri.atomic, "open", lambda p, mode, **kw: FailingFile(p, mode, exc), raising=False
    )
    if isinstance(exc, OSError):
        with pytest.raises(OSError, match="No space left on device") as info:
            save_checkpoint(last, _state(2))
        assert info.value.filename == str(last)  # the checkpoint, not its temporary file
    else:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(last, _state(2))
    assert last.read_bytes() == before
    assert load_checkpoint(last)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def _save_forever(last: Path, ready) -> None:
    """Child process: save ever newer ~8 MB checkpoints to `last` until killed."""
    for epoch in range(1, 10_000):
        save_checkpoint(last, {**_state(epoch), "model": {"w": torch.full((2_000_000,), epoch)}})
        ready.set()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork of a threaded process
def test_sigkill_while_saving_checkpoints_never_corrupts_last_pt(tmp_path):
    last = tmp_path / "last.pt"
    rng = np.random.default_rng(3)
    ctx = multiprocessing.get_context("fork")  # no interpreter start-up per kill
    for _ in range(6):
        ready = ctx.Event()
        proc = ctx.Process(target=_save_forever, args=(last, ready))
        proc.start()
        assert ready.wait(timeout=60)  # at least one complete checkpoint
        time.sleep(rng.uniform(0.0, 0.1))  # then a random point of a later write
        proc.kill()
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        ckpt = load_checkpoint(last)
        assert torch.all(ckpt["model"]["w"] == ckpt["epoch"])
        assert set(os.listdir(tmp_path)) <= {"last.pt", ".last.pt.partial"}


# ------------------------------------------------------------------------------- disk full
def test_disk_full_during_training_is_one_line_and_resumable(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 6)
    out = tmp_path / "run"
    real_open, calls = open, []

    def full_after_two(path, mode, **kw):
        if not Path(path).name.endswith(".pt.partial"):  # the run's other files
            return real_open(path, mode, **kw)
        calls.append(path)
        exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode) if len(calls) <= 2 else FailingFile(path, mode, exc)

    monkeypatch.setattr(smri.atomic, "open", full_after_two, raising=False)
    args = ["--width", "0.25", "--batch-size", "4", "--epochs", "3", "--cache", "ram"]
    result = CliRunner().invoke(main, ["train", str(store), *args, "--workers", "0",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    failed = Path(calls[-1]).name.removeprefix(".").removesuffix(".partial")
    assert lines[0] == f"Error: No space left on device: {out / failed}"
    assert _partials(out) == []
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last complete epoch
    monkeypatch.undo()  # space freed: the run continues
    result = CliRunner().invoke(main, ["train", "--resume", str(out), "--cache", "ram",
                                       "--workers", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(_rows(out)) == 3


def _preprocess(tree: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        main, ["preprocess", str(tree), str(out), "--slices", "16", "-j", "1", *extra]
    )


def _failing_dataset_writes(monkeypatch, make_exc) -> None:
    """h5py dataset writes fail from the third one on, as they do when the disk fills up."""
    import h5py

    real, calls = h5py.Dataset.__setitem__, []

    def setitem(self, key, value):
        calls.append(self.name)
        if len(calls) > 2:
            raise make_exc(self)
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


def test_disk_full_while_writing_the_store_leaves_the_old_one(brats2019, tmp_path, monkeypatch):
    tree, _ = brats2019(n_hgg=3, n_lgg=2)
    out = tmp_path / "s.h5"
    out.write_bytes(b"previous complete store")
    _failing_dataset_writes(
        monkeypatch, lambda ds: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), ds.file.filename)
    )
    result = _preprocess(tree, out, "--overwrite")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: No space left on device: ")
    assert out.read_bytes() == b"previous complete store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats19", "s.h5"]


def test_disk_full_during_a_direct_chunk_write_is_one_line(brats2019, tmp_path, monkeypatch):
    """Chunks of whole pages go to the file with os.pwrite (O_DIRECT), not through h5py."""
    if not direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system: h5py writes the chunks")
    tree, _ = brats2019(n_hgg=3, n_lgg=2, shape=(32, 24, 40))  # 16 x 24 x 32 float16: 6 pages
    out = tmp_path / "s.h5"
    out.write_bytes(b"previous complete store")
    calls = []

    def full(fd, data, offset):
        calls.append(offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    result = _preprocess(tree, out, "--overwrite")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: No space left on device: {out}"]
    assert out.read_bytes() == b"previous complete store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats19", "s.h5"]
    assert calls  # the failure came from a direct write


def _h5py_enospc(ds) -> OSError:
    # What h5py 3 raises on a full disk: errno 28, a long strerror with a ctime() line break,
    # no filename attribute (the path is inside the text).
    return OSError(
        errno.ENOSPC,
        "Can't synchronously write data (file write failed: time = Fri Nov 27 15:20:10 2026\n"
        f", filename = '{ds.file.filename}', file descriptor = 5, errno = 28, error message = "
        "'No space left on device', buf = 0x55d1, total write size = 32768, bytes this "
        "sub-write = 32768, offset = 4096)",
    )


def test_disk_full_as_h5py_reports_it_is_one_line_naming_the_output(
    brats2019, tmp_path, monkeypatch
):
    tree, _ = brats2019(n_hgg=3, n_lgg=2)
    out = tmp_path / "s.h5"
    _failing_dataset_writes(monkeypatch, _h5py_enospc)
    result = _preprocess(tree, out)
    assert result.exit_code == 1 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats19"]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"Error: No space left on device: {out}"
    assert len([line for line in lines if not line.startswith("skipping")]) == 1


# ------------------------------------------------------------ a reader while the store changes
REWRITER = """
import sys
from smri.cli import main
trees, out, n = sys.argv[1:3], sys.argv[3], int(sys.argv[4])
for i in range(n):
    args = ["preprocess", trees[i % 2], out, "--slices", "16", "-j", "1", "--overwrite"]
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    print(i, flush=True)
"""


def _digest(path: Path) -> tuple[tuple[str, ...], str]:
    """Validate the store and fingerprint everything a reader uses."""
    with StoreReader(path) as reader:
        h = hashlib.sha256(reader.labels.tobytes())
        h.update(reader.read_many(range(len(reader))).tobytes())
        for i in range(len(reader)):
            h.update(repr(reader.meta(i)).encode())
        h.update(repr(reader.info.config).encode())
        return tuple(reader.patient_ids), h.hexdigest()


def test_a_reader_sees_the_old_or_the_new_store_never_a_mixture(brats2019, tmp_path):
    tree_a, _ = brats2019(n_hgg=3, n_lgg=3, name="a")
    tree_b, _ = brats2019(n_hgg=4, n_lgg=2, name="b", shape=(20, 24, 36))
    out = tmp_path / "s.h5"
    versions = []
    for tree in (tree_a, tree_b):
        assert _preprocess(tree, out, "--overwrite").exit_code == 0
        versions.append(_digest(out))
    assert versions[0] != versions[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITER, str(tree_a), str(tree_b), str(out), "6"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: dict[int, int] = {0: 0, 1: 0}
    reads = 0
    try:
        while writer.poll() is None:
            try:
                seen[versions.index(_digest(out))] += 1  # ValueError: a mixture
            except DataError as exc:  # only a locked or missing file would be acceptable
                pytest.fail(f"read {reads} failed: {exc}")
            reads += 1
    finally:
        writer.kill()
        _, err = writer.communicate()
    assert writer.returncode == 0, err
    assert reads >= 6 and min(seen.values()) > 0, seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "s.h5"]
