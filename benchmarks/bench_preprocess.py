"""Preprocess scaling: `smri preprocess` with 1 worker vs all cores vs the decompression floor.

The floor is a plain decompression of the same `.nii.gz` files in the same number of workers,
returning nothing: stdlib gzip (the issue's anchor), ISA-L (smri's decoder) on whole files, and
ISA-L streamed through one 1 MiB buffer (how smri reads; the strictest). Every ratio is measured
in this one run; times are medians of 3. One more smri row writes the image chunks through HDF5
and the page cache, as smri did before it wrote them with O_DIRECT: that change's A/B.

Usage: python -m benchmarks.bench_preprocess [PATIENTS] [X Y Z]   (default 16 at 240 240 155)
"""

from __future__ import annotations

import gzip
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from joblib import Parallel, delayed

from benchmarks.common import (
    BRATS_SHAPE,
    CORES,
    CpuMeter,
    cohort,
    machine,
    median_time,
    nifti_files,
    table,
)
from smri.memory import keep_freed_memory
from smri.preprocessing import PreprocessConfig, run_preprocess
from smri.store import DirectChunks
from smri.volume import GZIP_READ_BYTES, STREAM_CHUNK

# The floors with ISA-L, smri's decoder: whole files (as nibabel reads), and streamed through one
# buffer, which is how smri reads and the strictest floor (inflating into cache is faster).
FASTER = ("isal", "isal, streamed")


def _inflate(path: Path, impl: str) -> None:
    """Decompress one file and keep nothing: the whole file at once, or streamed."""
    keep_freed_memory()  # as smri's workers have it, in worker processes too
    if impl == "isal, streamed":  # inflated in place into one reused buffer, as smri reads
        from isal.isal_zlib import _GzipReader

        buf = bytearray(STREAM_CHUNK)
        with open(path, "rb") as raw:
            f = _GzipReader(raw, GZIP_READ_BYTES)
            while f.readinto(buf):
                pass
        return
    raw = path.read_bytes()
    if impl == "isal":
        from isal import igzip

        igzip.decompress(raw)
    else:
        gzip.decompress(raw)


def floor(files: list[Path], jobs: int, impl: str, backend: str) -> tuple[float, CpuMeter]:
    """Median seconds to decompress every file with `jobs` workers, one file per task; the
    machine's CPU use over the three timed runs."""
    meter = CpuMeter()
    with Parallel(n_jobs=jobs, backend=backend, batch_size=1) as par:
        par(delayed(_inflate)(f, impl) for f in files[:jobs])  # start and warm the workers

        def run() -> None:
            with meter:
                par(delayed(_inflate)(f, impl) for f in files)

        return median_time(run), meter


@contextmanager
def page_cache_writes(on: bool) -> Iterator[None]:
    """With `on`, the store's image chunks go through HDF5 and the page cache, as before
    smri wrote them with O_DIRECT (`smri.store.DirectChunks`): the A/B of that change."""
    supported = DirectChunks.supported
    if on:
        DirectChunks.supported = staticmethod(lambda chunk_bytes: False)
    try:
        yield
    finally:
        DirectChunks.supported = supported


def preprocess_seconds(
    root: Path, jobs: int, backend: str, page_cache: bool = False
) -> tuple[float, CpuMeter]:
    """Median seconds of a whole `run_preprocess` into a new store, after a warm-up run, and
    the machine's CPU use over the three timed runs.

    The steady state is what a cohort of hundreds of patients sees; the one-off start-up of a
    run (imports, the first growth of the heap: about 1 s) is reported separately. Each run
    writes a new file and the previous one is deleted outside the timing: replacing an existing
    store (`--overwrite`) adds the release of its pages to the rename (40 ms per 120 MB here),
    which is not preprocessing.
    """
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        outs = (Path(tmp) / f"bench{i}.h5" for i in range(1_000_000))

        def once() -> None:
            out = next(outs)
            run_preprocess(
                root, out, cfg, jobs=jobs, backend=backend, progress=False, echo=lambda _: None
            )

        meter = CpuMeter()

        def timed() -> float:
            for old in Path(tmp).glob("*.h5"):
                old.unlink()
            with meter:
                t0 = time.perf_counter()
                once()
                return time.perf_counter() - t0

        with page_cache_writes(page_cache):
            once()  # warm-up, as the floor has: imports, worker start, the heap's first growth
            return statistics.median(timed() for _ in range(3)), meter


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
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
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
    floors = (("gzip", "loky"), *((i, b) for i in FASTER for b in ("loky", "threading")))

    def use(meter: CpuMeter) -> tuple[object, object]:  # CPU ms per patient, idle share
        if not meter.available:
            return "", ""
        return 1000 * meter.busy / (3 * patients), f"{100 * meter.idle_share:.0f} %"

    for jobs in sorted({1, CORES}):
        for impl, backend in floors:
            s, meter = floor(files, jobs, impl, backend)
            rate[(impl, backend, jobs)] = patients / s
            rows.append(
                (f"decompress only ({impl}; {backend})", jobs, patients / s, "", *use(meter))
            )
        for backend, page_cache in (("threading", False), ("loky", False), ("threading", True)):
            s, meter = preprocess_seconds(root, jobs, backend, page_cache)
            r = patients / s
            rate[("smri", backend, jobs, page_cache)] = r
            vs = [f"{r / rate[('gzip', 'loky', jobs)]:.2f} x gzip"]
            vs += [f"{r / rate[(impl, backend, jobs)]:.2f} x {impl}" for impl in FASTER]
            what = f"smri preprocess ({backend}{'; chunks via page cache' if page_cache else ''})"
            rows.append((what, jobs, r, ", ".join(vs), *use(meter)))
    header = ("what", "workers", "patients/s", "vs floor (same workers and backend)")
    print(table((*header, "machine CPU ms per patient", "machine idle"), rows))
    print(
        "\n(machine-wide, from /proc/stat: every process and the kernel's writeback; "
        "idle = the share of all cores' time)"
    )
    if CORES > 1:

        def smri(backend: str, jobs: int) -> float:
            return rate[("smri", backend, jobs, False)]

        scale = {k: rate[(k, "threading", CORES)] / rate[(k, "threading", 1)] for k in FASTER}
        print(
            f"\nscaling 1 -> {CORES} workers: smri preprocess (threading) "
            f"{smri('threading', CORES) / smri('threading', 1):.2f}x, "
            f"(loky) {smri('loky', CORES) / smri('loky', 1):.2f}x; "
            + ", ".join(f"{k} floor (threading) {v:.2f}x" for k, v in scale.items())
        )
    peaks = [(b, j, peak_rss_mib(root, j, b)) for b in ("threading", "loky") for j in (CORES,)]
    print("\n" + table(("backend", "workers", "peak RSS of the largest process (MiB)"), peaks))
    print(f"\n(ru_maxrss; with threads one process holds all {CORES} workers)")


if __name__ == "__main__":
    main(sys.argv[1:])
