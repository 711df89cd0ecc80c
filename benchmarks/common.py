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


def nifti_files(root: Path) -> list[Path]:
    """Every modality and segmentation file of a cohort, sorted."""
    return sorted(p for p in root.rglob("*.nii*") if "seg" not in p.name.lower())


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `repeats` calls of `fn` (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class CpuMeter:
    """Machine-wide CPU time while it is active (/proc/stat: every process and the kernel's
    writeback included): busy seconds and the idle share, summed over `with meter:` blocks.
    Off Linux both stay 0 and `available` is False."""

    def __init__(self) -> None:
        self.busy = self.idle = 0.0
        self.available = Path("/proc/stat").exists()
        self._start: list[int] = []

    @staticmethod
    def _ticks() -> list[int]:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]

    def __enter__(self) -> CpuMeter:
        if self.available:
            self._start = self._ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.available:
            return
        d = [b - a for a, b in zip(self._start, self._ticks(), strict=False)]
        hz = os.sysconf("SC_CLK_TCK")
        idle = d[3] + (d[4] if len(d) > 4 else 0)  # idle + iowait
        self.idle += idle / hz
        self.busy += (sum(d[:8]) - idle) / hz  # user .. steal; guest time is inside user

    @property
    def idle_share(self) -> float:
        total = self.busy + self.idle
        return self.idle / total if total else 0.0


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
