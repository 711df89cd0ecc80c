"""The ceiling of any faster image writer in `smri preprocess`: the run with the write removed.

`StoreWriter.write` copies each patient's images into the store on the main thread
(`images[i] = ...`, GIL held). Before building a faster writer (for example one that writes each
patient's chunks from its worker thread), this measures what it could gain at most: the same
`run_preprocess` on the BraTS-geometry cohort with that one assignment replaced by nothing,
against the shipped path, at 1 and 2 workers, alternating in one process. Everything else
(labels, ids, metadata, masks, checkpoints) is written as shipped. The store written without
images is thrown away.

    python -m benchmarks.writer_ceiling [--patients 24] [--rounds 6] [--out-dir DIR]

Results: benchmarks/RESULTS.md, section 0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import smri.store
from benchmarks.common import cohort, machine, table
from smri.preprocessing import PreprocessConfig, run_preprocess


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
        try:
            write(self, i, **row)
        finally:
            self.images = real

    smri.store.StoreWriter.write = without_images
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
        for _ in range(args.rounds):
            for jobs in (1, 2):
                runs.setdefault(("shipped", jobs), []).append(
                    throughput(root, out, jobs, args.patients)
                )
                with images_discarded():
                    runs.setdefault(("none", jobs), []).append(
                        throughput(root, out, jobs, args.patients)
                    )
    rows = []
    for write in ("shipped", "none"):
        one, two = (statistics.median(runs[write, j][1:]) for j in (1, 2))
        rows.append([write, f"{one:.1f}", f"{two:.1f}", f"{two / one:.2f}x"])
    print(machine())
    print(f"{args.patients} patients at 240x240x155, medians of rounds 2..{args.rounds}")
    print(table(["image write", "1 worker p/s", "2 workers p/s", "scaling"], rows))


if __name__ == "__main__":
    main()
