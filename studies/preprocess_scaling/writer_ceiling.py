"""Where preprocessing's 1 -> 2 worker scaling goes: the same run with less and less written.

`StoreWriter.write` sends each patient's images to the store from the main thread (with
O_DIRECT, or `images[i] = ...` through the page cache) and writes its mask (compressed by the
worker, or by HDF5 with the direct writer off), label, id and metadata there too. This
measures what a faster writer could gain at most: the same `run_preprocess` on the
BraTS-geometry cohort, at 1 and 2 workers, alternating in one process, with

- `shipped`: everything written as shipped;
- `no images`: the image write replaced by nothing (the ceiling of any faster image writer);
- `nothing`: no row written at all (the ceiling of any writer);
- `workers only`: `load_patient` on the same thread pool with no store (the workers' own
  scaling: the inflating, min-max, crop and cast, and the segmentation);
- `inflating only`: each patient's files inflated by ISA-L into a 1 MiB buffer, nothing else.

The stores written without images are thrown away.

    python -m benchmarks.writer_ceiling [--patients 24] [--rounds 6] [--out-dir DIR]

Results: benchmarks/RESULTS.md, section 0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

from isal import igzip

import smri.store
from benchmarks.common import cohort, machine, table
from smri.preprocessing import (
    PreprocessConfig,
    common_inplane,
    discover_for_store,
    load_patient,
    run_preprocess,
)

VARIANTS = ("shipped", "no images", "nothing", "workers only", "inflating only")


class _Discard:
    """Stands in for the images dataset: every row assignment is dropped."""

    def __setitem__(self, index: object, value: object) -> None:
        pass


@contextmanager
def images_discarded():
    """Within the block, `StoreWriter.write` writes everything but the images."""
    write = smri.store.StoreWriter.write

    def without_images(self, i, **row):
        real, self.images = self.images, _Discard()
        self._write_direct = lambda i, images: False  # nor past h5py, with O_DIRECT
        try:
            write(self, i, **row)
        finally:
            self.images = real
            del self._write_direct

    smri.store.StoreWriter.write = without_images
    try:
        yield
    finally:
        smri.store.StoreWriter.write = write


@contextmanager
def nothing_written():
    """Within the block, `StoreWriter.write` only marks the row as written."""
    write = smri.store.StoreWriter.write

    def mark(self, i, **row):
        self._written[i] = True

    smri.store.StoreWriter.write = mark
    try:
        yield
    finally:
        smri.store.StoreWriter.write = write


def throughput(root: Path, out: Path, jobs: int, patients: int) -> float:
    """Patients per second of one `run_preprocess` into a fresh `out`."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    run_preprocess(root, out, PreprocessConfig(), jobs=jobs, progress=False, echo=lambda _: None)
    return patients / (time.perf_counter() - start)


def workers_only(root: Path, jobs: int, inflate_only: bool = False) -> float:
    """Patients per second of `load_patient` alone on `jobs` threads (each result dropped), or
    of inflating each patient's files and nothing else."""
    cfg = PreprocessConfig()
    start = time.perf_counter()
    found = discover_for_store(root, cfg, None, False, lambda _: None, None)[0]
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
    patched = {"no images": images_discarded, "nothing": nothing_written}
    runs: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        out = Path(tmp) / "store.h5"
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                for jobs in (1, 2):
                    if variant.endswith("only"):
                        rate = workers_only(root, jobs, inflate_only=variant.startswith("inf"))
                    else:
                        with patched.get(variant, nullcontext)():
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
