"""Preprocess scaling: `smri preprocess` with 1 worker vs all cores vs the decompression floor.

The floor is a plain decompression of the same `.nii.gz` files in the same number of workers
(stdlib gzip, the issue's anchor, and ISA-L, which smri uses), returning nothing. Every ratio
is measured in this one run; times are medians of 3.

Usage: python -m benchmarks.bench_preprocess [PATIENTS] [X Y Z]   (default 16 at 240 240 155)
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

from joblib import Parallel, delayed

from benchmarks.common import BRATS_SHAPE, CORES, cohort, machine, median_time, nifti_files, table
from smri.preprocess import PreprocessConfig, run_preprocess


def _inflate(path: Path, impl: str) -> None:
    raw = path.read_bytes()
    if impl == "isal":
        from isal import igzip

        igzip.decompress(raw)
    else:
        gzip.decompress(raw)


def floor(files: list[Path], jobs: int, impl: str, backend: str) -> float:
    """Median seconds to decompress every file with `jobs` workers."""
    with Parallel(n_jobs=jobs, backend=backend) as par:
        par(delayed(_inflate)(f, impl) for f in files[:jobs])  # start and warm the workers
        return median_time(lambda: par(delayed(_inflate)(f, impl) for f in files))


def preprocess_seconds(root: Path, jobs: int, backend: str) -> float:
    """Median seconds of a whole `run_preprocess` into a scratch store, after a warm-up run.

    The steady state is what a cohort of hundreds of patients sees; the one-off start-up of a
    run (imports, the first growth of the heap: about 1 s) is reported separately.
    """
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        out = Path(tmp) / "bench.h5"

        def once() -> None:
            run_preprocess(
                root,
                out,
                cfg,
                jobs=jobs,
                backend=backend,
                overwrite=True,
                progress=False,
                echo=lambda _: None,
            )

        once()  # warm-up, as the floor has: imports, worker start, the heap's first growth
        return median_time(once)


def peak_rss_mib(root: Path, jobs: int, backend: str) -> float:
    """Peak resident memory (MiB) of the largest process of a `smri preprocess` run."""
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        code = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                sys.executable,
                "-m",
                "smri",
                "preprocess",
                str(root),
                str(Path(tmp) / "m.h5"),
                "--jobs",
                str(jobs),
                "--backend",
                backend,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str]) -> None:
    patients = int(argv[0]) if argv else 16
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else BRATS_SHAPE
    root = cohort(patients, shape)
    files = nifti_files(root)
    mib = sum(f.stat().st_size for f in files) / 2**20
    print(
        f"# Preprocess scaling: {patients} patients, {'x'.join(map(str, shape))}, "
        f"{len(files)} .nii.gz files ({mib:.0f} MiB); {machine()}\n"
    )
    rows = []
    rate = {}
    for jobs in sorted({1, CORES}):
        for impl, backend in (("gzip", "loky"), ("isal", "loky"), ("isal", "threading")):
            s = floor(files, jobs, impl, backend)
            rate[("floor", impl, backend, jobs)] = patients / s
            rows.append((f"decompress only ({impl}, {backend})", jobs, patients / s, ""))
        for backend in ("threading", "loky"):
            s = preprocess_seconds(root, jobs, backend)
            rate[("smri", backend, jobs)] = patients / s
            rows.append((f"smri preprocess ({backend})", jobs, patients / s, ""))
    for row_i, row in enumerate(rows):
        name, jobs, r, _ = row
        if name.startswith("smri"):
            backend = name.split("(")[1].rstrip(")")
            vs_gzip = r / rate[("floor", "gzip", "loky", jobs)]
            vs_isal = (
                r / rate[("floor", "isal", backend if backend == "threading" else "loky", jobs)]
            )
            rows[row_i] = (name, jobs, r, f"{vs_gzip:.2f} x gzip floor, {vs_isal:.2f} x isal floor")
    print(table(("what", "workers", "patients/s", "vs floor (same workers)"), rows))
    if CORES > 1:
        iso_scale = rate[("floor", "isal", "loky", CORES)] / rate[("floor", "isal", "loky", 1)]
        print(
            f"\nscaling 1 -> {CORES} workers: smri preprocess (threading) "
            f"{rate[('smri', 'threading', CORES)] / rate[('smri', 'threading', 1)]:.2f}x, "
            f"(loky) {rate[('smri', 'loky', CORES)] / rate[('smri', 'loky', 1)]:.2f}x; "
            f"isal floor {iso_scale:.2f}x"
        )
    peaks = [(b, j, peak_rss_mib(root, j, b)) for b in ("threading", "loky") for j in (CORES,)]
    print("\n" + table(("backend", "workers", "peak RSS of the largest process (MiB)"), peaks))
    print(f"\n(ru_maxrss; with threads one process holds all {CORES} workers)")


if __name__ == "__main__":
    main(sys.argv[1:])
