"""Where preprocessing's 1 -> 2 worker scaling goes: the same run with less and less written.

`StoreWriter.write` sends each patient's images to the store from the main thread (with
O_DIRECT, or `images[i] = ...` through the page cache) and writes its mask (compressed by the
worker, or by HDF5 with the direct writer off), label, id and metadata there too. This
measures what a faster writer could gain at most: the BraTS-geometry cohort preprocessed at 1
and 2 workers, alternating in one process, with

- `shipped`: `run_preprocess`, everything written as shipped;
- `nothing`: smri's own loop (`write_patients`: discovery, the worker pool, at most 2 x jobs
  patients in flight, results taken in order) with a writer that keeps nothing and no store
  opened (the ceiling of any writer);
- `workers only`: `load_patient` on a plain thread pool with no store (the workers' own
  scaling: the inflating, min-max, crop and cast, and the segmentation);
- `inflating only`: each patient's files inflated by ISA-L into a 1 MiB buffer, nothing else.

Only smri's public API is used; nothing in smri is patched. An earlier version also measured
"all but the images" by replacing `StoreWriter.write` and a private method of it; that variant
needs the writer's internals and was dropped (its figures are in this folder's README).

    python -m studies.preprocess_scaling.writer_ceiling [--patients 24] [--rounds 6]
        [--out-dir DIR]

Results: studies/preprocess_scaling/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from isal import igzip

from benchmarks.common import cohort, machine, table
from smri.parallel import DEFAULT_BACKEND
from smri.preprocessing import (
    PreprocessConfig,
    Run,
    common_inplane,
    discover_for_store,
    load_patient,
    progress_bar,
    run_preprocess,
    write_patients,
)

VARIANTS = ("shipped", "nothing", "workers only", "inflating only")


def quiet(_line: str) -> None:
    pass


class NothingWritten:
    """Takes each patient's result from `write_patients` and keeps nothing."""

    def __init__(self) -> None:
        self.rows = 0

    def append(self, **row: Any) -> int:
        self.rows += 1
        return self.rows - 1


def throughput(root: Path, out: Path, jobs: int, patients: int) -> float:
    """Patients per second of one `run_preprocess` into a fresh `out`."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    run_preprocess(root, out, PreprocessConfig(), jobs=jobs, progress=False, echo=quiet)
    return patients / (time.perf_counter() - start)


def nothing_written(root: Path, jobs: int) -> float:
    """Patients per second of smri's preprocessing loop with a writer that keeps nothing."""
    cfg = PreprocessConfig()
    start = time.perf_counter()
    found = discover_for_store(root, cfg, None, False, quiet, None)[0]
    bar = progress_bar(len(found.patients), 0, "preprocess", False)
    run = Run(backend=DEFAULT_BACKEND, jobs=jobs, scheduler=None, strict=False, echo=quiet, bar=bar)
    writer = NothingWritten()
    inplane = common_inplane(found.patients)
    write_patients(run, found.patients, cfg, inplane, root, lambda _first: writer)
    bar.close()
    return writer.rows / (time.perf_counter() - start)


def workers_only(root: Path, jobs: int, inflate_only: bool = False) -> float:
    """Patients per second of `load_patient` alone on `jobs` threads (each result dropped), or
    of inflating each patient's files and nothing else."""
    cfg = PreprocessConfig()
    start = time.perf_counter()
    found = discover_for_store(root, cfg, None, False, quiet, None)[0]
    inplane = common_inplane(found.patients)

    def work(patient):
        if not inflate_only:
            return load_patient(patient, cfg, inplane, root)
        buf = memoryview(bytearray(1 << 20))
        for path in (*patient.files, *patient.seg_files):
            with igzip.open(path, "rb") as f:
                while f.readinto(buf):
                    pass

    with ThreadPoolExecutor(jobs) as pool:
        for _ in pool.map(work, found.patients):
            pass
    return len(found.patients) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=6, help="the first is dropped as warm-up")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the stores go (temp)")
    args = parser.parse_args()
    root = cohort(args.patients)
    runs: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        out = Path(tmp) / "store.h5"
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                for jobs in (1, 2):
                    if variant.endswith("only"):
                        rate = workers_only(root, jobs, inflate_only=variant.startswith("inf"))
                    elif variant == "nothing":
                        rate = nothing_written(root, jobs)
                    else:
                        rate = throughput(root, out, jobs, args.patients)
                    runs.setdefault((variant, jobs), []).append(rate)
    rows = []
    for variant in VARIANTS:
        one, two = (statistics.median(runs[variant, j][1:]) for j in (1, 2))
        pairs = [b / a for a, b in zip(runs[variant, 1][1:], runs[variant, 2][1:], strict=True)]
        rows.append([variant, f"{one:.1f}", f"{two:.1f}", f"{statistics.median(pairs):.2f}x"])
    print(machine())
    print(f"{args.patients} patients at 240x240x155, medians of rounds 2..{args.rounds}")
    print(table(["written", "1 worker p/s", "2 workers p/s", "scaling (median of rounds)"], rows))


if __name__ == "__main__":
    main()
