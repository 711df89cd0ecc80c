"""Shared benchmark helpers: a cached synthetic cohort, medians, and markdown tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

WORK = Path(os.environ.get("SMRI_BENCH_DIR", Path(__file__).parent / ".work"))
CORES = os.cpu_count() or 1
BRATS_SHAPE = (240, 240, 155)


def cohort(patients: int, shape: Sequence[int] = BRATS_SHAPE, fmt: str = "nii.gz") -> Path:
    """A `smri synth` cohort under WORK, generated once and reused by later runs."""
    root = WORK / f"cohort_{patients}_{'x'.join(map(str, shape))}_{fmt.replace('.', '')}"
    if not (root / "truth.csv").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "smri",
                "synth",
                str(root),
                "--patients",
                str(patients),
                "--shape",
                *map(str, shape),
                "--format",
                fmt,
                "--seed",
                "0",
                "--overwrite",
            ],
            check=True,
        )
    return root


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `repeats` calls of `fn` (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""

    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import platform

    return f"{platform.node()}: {CORES} cores, {platform.processor() or platform.machine()}"
