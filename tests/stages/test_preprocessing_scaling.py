"""Scaling preprocessing out: a Dask backend, bounded writer memory, and `--append`."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import weakref

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import smri.parallel
import smri.store
from smri.cli import main
from smri.errors import ConfigError, DataError
from smri.parallel import ordered_map
from smri.preprocessing import PatientResult, PreprocessConfig, append_preprocess
from smri.store import StoreReader
from tests.helpers.cli import quiet
from tests.helpers.nifti import write_nifti
from tests.helpers.stores import placed, preprocessing_runner

CFG = PreprocessConfig(slices=8)
TINY = (10, 12, 20)  # (X, Y, Z): a fast, non-square volume


run = preprocessing_runner(CFG)


def append(root, out, cfg=CFG, **kw):
    kw.setdefault("jobs", 1)
    return append_preprocess(root, out, cfg, progress=False, **kw)


def same_rows(a, b, meta=True):
    """Two stores hold the same images, labels and ids, byte for byte (and the same meta)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in ("images", "labels", "masks"):
            assert fa[key][:].tobytes() == fb[key][:].tobytes(), key
        assert list(fa["patient_id"].asstr()[:]) == list(fb["patient_id"].asstr()[:])
        if meta:
            for key in fa["meta"]:
                x, y = fa["meta"][key], fb["meta"][key]
                if key in ("source_files", "axis_codes"):
                    assert x.asstr()[:].tolist() == y.asstr()[:].tolist()
                else:
                    assert x[:].tobytes() == y[:].tobytes(), key


class LiveResults:
    """Counts PatientResult objects alive in this process (built here, or unpickled here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.live = self.peak = self.seen = 0
        self._lock = threading.Lock()
        init = PatientResult.__init__

        def tracked_init(obj, *args, **kwargs):
            init(obj, *args, **kwargs)
            self._track(obj)

        def tracked_setstate(obj, state):
            obj.__dict__.update(state)
            self._track(obj)

        monkeypatch.setattr(PatientResult, "__init__", tracked_init)
        monkeypatch.setattr(PatientResult, "__setstate__", tracked_setstate, raising=False)

    def _track(self, obj: PatientResult) -> None:
        with self._lock:
            self.live += 1
            self.seen += 1
            self.peak = max(self.peak, self.live)
        weakref.finalize(obj, self._gone)

    def _gone(self) -> None:
        with self._lock:
            self.live -= 1


def slow_writer(monkeypatch, seconds=0.02):
    """Make every store row write slow, as behind a busy disk or heavy compression."""
    original = smri.store.StoreWriter.append

    def slow(self, **row):
        time.sleep(seconds)
        return original(self, **row)

    monkeypatch.setattr(smri.store.StoreWriter, "append", slow)


def _helper(p) -> bool:
    """multiprocessing's resource tracker: one per interpreter, it exits with it."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except Exception:  # gone already
        return True


@pytest.fixture
def no_leftover_processes():
    """Fail if a test leaves child processes (cluster workers, pools) behind."""
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in me.children(recursive=True) if p.pid not in before and not _helper(p)]
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [p.cmdline() for p in left] == []


# -- bounded memory ------------------------------------------------------------------------


def test_writer_memory_is_bounded_behind_a_slow_writer(brats2019, tmp_path, monkeypatch):
    root, _ = brats2019(n_hgg=20, n_lgg=20, shape=TINY)
    run(root, tmp_path / "ref.h5")
    live = LiveResults(monkeypatch)
    slow_writer(monkeypatch)
    run(root, tmp_path / "s.h5", jobs=2)
    assert live.seen == 40
    # joblib's ordered generator held 39 of these 40 at once here: it dispatches on completion.
    assert live.peak <= 2 * 2 + 2
    same_rows(tmp_path / "ref.h5", tmp_path / "s.h5")


def test_ordered_map_submits_only_as_results_are_taken():
    from concurrent.futures import ThreadPoolExecutor

    submitted = []

    def task(i):
        return i * i

    with ThreadPoolExecutor(2) as ex:

        def submit(fn, *args):
            submitted.append(args[0])
            return ex.submit(fn, *args)

        results = ordered_map(submit, task, ((i,) for i in range(100)), window=4)
        assert next(results) == 0
        time.sleep(0.05)  # whatever the workers do meanwhile, nothing more is submitted
        assert submitted == [0, 1, 2, 3, 4]
        assert list(results) == [i * i for i in range(1, 100)]
        assert submitted == list(range(100))


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_one_job_runs_on_one_worker_thread_beside_the_caller(backend):
    """With --jobs 1 the caller (the store's writer) works while the next task runs."""
    caller = threading.get_ident()
    started = threading.Event()

    def task(i):
        if i == 1:
            started.set()
        return threading.get_ident()

    with smri.parallel.pool(backend, 1) as (submit, slots):
        assert slots == 1
        results = ordered_map(submit, task, ((i,) for i in range(3)), window=2)
        first = next(results)
        assert started.wait(5)  # the next task started while the caller holds the first result
        rest = list(results)
    assert {first, *rest} != {caller} and len({first, *rest}) == 1
    workers = [t for t in threading.enumerate() if t.name.startswith("smri-preprocess")]
    assert workers == []  # gone with the pool


# -- Dask -----------------------------------------------------------------------------------


def test_dask_local_cluster_equals_jobs_1_and_stays_bounded(
    brats2019, tmp_path, monkeypatch, no_leftover_processes
):
    pytest.importorskip("distributed")
    root, _ = brats2019(n_hgg=20, n_lgg=20, shape=TINY)
    run(root, tmp_path / "ref.h5")
    live = LiveResults(monkeypatch)
    slow_writer(monkeypatch)
    out = tmp_path / "dask.h5"
    res = CliRunner().invoke(
        main,
        ["preprocess", str(root), str(out), "--slices", "8", "--backend", "dask", "-j", "2"],
    )
    assert res.exit_code == 0, res.output
    assert "started a local Dask cluster: 2 worker processes at tcp://127.0.0.1:" in res.stderr
    assert res.stdout.startswith(f"wrote 40 patients (HGG 20, LGG 20) to {out}; skipped 0; ")
    same_rows(tmp_path / "ref.h5", out)
    assert live.seen == 40  # every result was unpickled here, from a worker process
    assert live.peak <= 2 * 2 + 2


def test_dask_missing_says_how_to_install(brats2019, tmp_path, monkeypatch):
    root, _ = brats2019(n_hgg=1, n_lgg=1, shape=TINY)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    out = tmp_path / "o.h5"
    res = CliRunner().invoke(main, ["preprocess", str(root), str(out), "--backend", "dask"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--backend': the dask backend needs the optional package " in (
        res.output
    )
    assert "pip install 'smri[distributed]'" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_dask_scheduler_address(brats2019, tmp_path, no_leftover_processes):
    distributed = pytest.importorskip("distributed")
    root, _ = brats2019(n_hgg=3, n_lgg=2, shape=TINY)
    run(root, tmp_path / "ref.h5")
    out = tmp_path / "dask.h5"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        args = ["preprocess", str(root), str(out), "--slices", "8", "--backend", "dask"]
        res = CliRunner().invoke(main, [*args, "--scheduler", address])
    assert res.exit_code == 0, res.output
    assert f"connected to the Dask scheduler at {address}: 2 worker threads" in res.stderr
    same_rows(tmp_path / "ref.h5", out)


@pytest.mark.parametrize(
    ("address", "code", "message"),
    [
        ("tcp://x", 2, "Invalid value for '--scheduler': 'tcp://x': not a scheduler address ("),
        ("nohost.invalid:8786", 1, "Error: Dask scheduler nohost.invalid:8786: cannot resolve"),
    ],
)
def test_bad_scheduler_address(brats2019, tmp_path, address, code, message):
    pytest.importorskip("distributed")
    root, _ = brats2019(n_hgg=1, n_lgg=1, shape=TINY)
    args = ["preprocess", str(root), str(tmp_path / "o.h5"), "--backend", "dask"]
    res = CliRunner().invoke(main, [*args, "--scheduler", address])
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output


def test_unreachable_scheduler_is_one_line_exit_1(brats2019, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    root, _ = brats2019(n_hgg=1, n_lgg=1, shape=TINY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(smri.parallel, "SCHEDULER_TIMEOUT_S", 1.0)
    address = f"tcp://127.0.0.1:{port}"
    args = ["preprocess", str(root), str(tmp_path / "o.h5"), "--backend", "dask"]
    t0 = time.monotonic()
    res = CliRunner().invoke(main, [*args, "--scheduler", address])
    assert time.monotonic() - t0 < 8
    assert res.exit_code == 1, res.output
    error = res.stderr.strip().splitlines()
    assert error[-1].startswith(f"Error: cannot reach the Dask scheduler at {address} within 1 s (")
    assert error[-1].endswith(
        "start one with `dask scheduler` and pass the address it prints (e.g. tcp://HOST:8786)"
    )
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.h5").exists()


def test_scheduler_needs_dask_backend(brats2019, tmp_path):
    root, _ = brats2019(n_hgg=1, n_lgg=1, shape=TINY)
    args = ["preprocess", str(root), str(tmp_path / "o.h5"), "--scheduler", "tcp://x:8786"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "Error: --scheduler needs --backend dask" in res.output
    with pytest.raises(ConfigError, match="--scheduler needs --backend dask"):
        run(root, tmp_path / "o.h5", scheduler="tcp://x:8786")


# -- --append -------------------------------------------------------------------------------


@pytest.fixture
def cohorts(brats2019, tmp_path):
    """A full cohort, and an earlier part of it (same patients, same bytes) already in a store."""
    full, truth = brats2019(n_hgg=3, n_lgg=3, shape=TINY, name="full")
    part, _ = brats2019(n_hgg=2, n_lgg=1, shape=TINY, name="part")  # ids 000, 001 / 000
    store = tmp_path / "s.h5"
    run(part, store)
    return full, part, store, sorted(truth)


@pytest.mark.parametrize(
    ("compression", "shape"),
    [("none", TINY), ("gzip-1", TINY), ("none", (32, 16, 20))],  # last: 8 x 16 x 32: 2 pages
    ids=["none", "gzip-1", "none-placed-chunks"],
)
def test_append_equals_one_run_and_keeps_ids_sorted(brats2019, tmp_path, compression, shape):
    full, truth = brats2019(n_hgg=3, n_lgg=3, shape=shape, name="full")
    part, _ = brats2019(n_hgg=2, n_lgg=1, shape=shape, name="part")
    cfg = PreprocessConfig(slices=8, compression=compression)
    store = tmp_path / "s.h5"
    run(part, store, cfg)
    lines = []
    summary = append(full, store, cfg, jobs=2, echo=lines.append)
    assert placed(store) == (shape != TINY)  # the O_DIRECT layout; old rows copied by h5py
    old = ["BraTS19_HGG_000_1", "BraTS19_HGG_001_1", "BraTS19_LGG_000_1"]
    assert lines == [f"skipping patient {pid}: already in {store}" for pid in old]
    assert summary.written == {"HGG": 1, "LGG": 2}
    assert summary.line().startswith(
        f"added 3 patients (HGG 1, LGG 2) to {store}, now 6 (3 already there); skipped 0; "
    )
    run(full, tmp_path / "ref.h5", cfg)
    same_rows(tmp_path / "ref.h5", store, meta=False)  # meta's source files name other roots
    with StoreReader(store) as r:
        assert r.patient_ids == sorted(truth)
        assert r.info.compression == (None if compression == "none" else compression)
        history = r.info.config["appended"]
        assert r.info.config["input"] == str(part.resolve())
    assert len(history) == 1
    assert {k: history[0][k] for k in ("input", "added", "already_in_store", "skipped")} == {
        "input": str(full.resolve()),
        "added": 3,
        "already_in_store": 3,
        "skipped": 0,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "part", "ref.h5", "s.h5"]


def test_append_twice_records_history_and_merges_skipped(cohorts):
    full, _, store, ids = cohorts
    broken = "BraTS19_HGG_002_1"
    (full / "HGG" / broken / f"{broken}_t1.nii.gz").write_bytes(b"")
    summary = append(full, store, echo=quiet)
    assert [r["patient_id"] for r in summary.skipped] == [broken]
    with StoreReader(store) as r:
        assert broken not in r.patient_ids and len(r) == 5
        assert [row["patient_id"] for row in r.info.skipped] == [broken]
        assert "empty file (0 bytes)" in r.info.skipped[0]["reason"]
    write_nifti(  # fixed: the next append adds it and drops it from the skipped list
        full / "HGG" / broken / f"{broken}_t1.nii.gz", np.ones(TINY, np.int16)
    )
    old = "BraTS19_HGG_000_1"  # broken in this copy, but the store has it: not "skipped"
    (full / "HGG" / old / f"{old}_t2.nii.gz").write_bytes(b"")
    summary = append(full, store, echo=quiet)
    assert summary.written == {"HGG": 1, "LGG": 0} and summary.total == 6
    with StoreReader(store) as r:
        assert r.patient_ids == ids
        assert r.info.skipped == []
        assert [h["added"] for h in r.info.config["appended"]] == [2, 1]


def test_append_with_nothing_new_leaves_the_store_alone(cohorts):
    _, part, store, _ = cohorts
    before = store.read_bytes()
    lines = []
    summary = append(part, store, echo=lines.append)
    assert lines[-1] == f"nothing to append: every usable patient of {part} is already in {store}"
    assert summary.n_written == 0 and summary.total == 3
    assert store.read_bytes() == before


@pytest.mark.parametrize(
    ("cfg", "option", "message"),
    [
        (
            PreprocessConfig(slices=8, modalities=("flair", "t1")),
            "--modalities",
            "was made with --modalities flair,t1,t1ce,t2; this run has --modalities flair,t1",
        ),
        (PreprocessConfig(slices=16), "--slices", "with --slices 8; this run has --slices 16"),
        (
            PreprocessConfig(slices=8, dtype="float32"),
            "--dtype",
            "with --dtype float16; this run has --dtype float32",
        ),
        (
            PreprocessConfig(slices=8, compression="lzf"),
            "--compression",
            "with --compression none; this run has --compression lzf",
        ),
        (
            PreprocessConfig(slices=8, canonical=True),
            "--canonical",
            "with --no-canonical; this run has --canonical",
        ),
        (
            PreprocessConfig(slices=8, classes={"LGG": 1, "HGG": 0}),
            "--classes",
            "with --classes LGG=0,HGG=1; this run has --classes LGG=1,HGG=0",
        ),
    ],
)
def test_append_refuses_other_settings(cohorts, cfg, option, message):
    full, _, store, _ = cohorts
    before = store.read_bytes()
    with pytest.raises(ConfigError, match=message) as info:
        append(full, store, cfg, echo=quiet)
    assert info.value.option == option
    assert store.read_bytes() == before


def test_append_refuses_another_inplane_shape(cohorts, brats2019, tmp_path):
    _, _, store, _ = cohorts
    other, _ = brats2019(n_hgg=3, n_lgg=0, shape=(14, 12, 20), name="other")
    with pytest.raises(
        DataError, match=r"in-plane shape 14x12 \(the most common in this cohort\) differs from "
    ) as info:
        append(other, store, echo=quiet)
    assert "the store's 10x12; --append needs volumes of that shape" in str(info.value)


def test_append_failure_and_interrupt_leave_the_store_unchanged(cohorts, tmp_path, monkeypatch):
    full, _, store, _ = cohorts
    before = store.read_bytes()
    original = smri.store.StoreWriter.append

    def interrupt(self, **row):
        if self.rows == 4:
            raise KeyboardInterrupt
        return original(self, **row)

    monkeypatch.setattr(smri.store.StoreWriter, "append", interrupt)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        append(full, store, echo=lines.append)
    assert lines[-1] == f"interrupted; {store} is unchanged"
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "part", "s.h5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overwrite"], "--append cannot be combined with --overwrite"),
        (["--resume"], "--append cannot be combined with --resume"),
    ],
)
def test_cli_append_usage_errors(cohorts, args, message):
    full, _, store, _ = cohorts
    res = CliRunner().invoke(main, ["preprocess", str(full), str(store), "--append", *args])
    assert res.exit_code == 2
    assert f"Error: {message}" in res.output


def test_cli_append(cohorts):
    full, _, store, _ = cohorts
    runner = CliRunner()
    res = runner.invoke(main, ["preprocess", str(full), str(store), "--append", "--slices", "8"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("already in") == 3
    assert res.stdout.startswith(f"added 3 patients (HGG 1, LGG 2) to {store}, now 6 (3 already ")
    res = runner.invoke(main, ["preprocess", str(full), str(store), "--append"])  # --slices 32
    assert res.exit_code == 2
    assert "Invalid value for '--slices'" in res.output and "--slices 8; this run" in res.output
    res = runner.invoke(main, ["info", str(store), "--json"])
    assert json.loads(res.stdout)["config"]["appended"][0]["added"] == 3


def test_cli_append_needs_an_existing_store(cohorts, tmp_path):
    full, *_ = cohorts
    out = tmp_path / "none.h5"
    res = CliRunner().invoke(main, ["preprocess", str(full), str(out), "--append"])
    assert res.exit_code == 1
    assert f"Error: {out}: no such store; --append adds to an existing smri store" in res.output
