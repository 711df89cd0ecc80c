"""Store format: float16/float32 x compression -> size, write MB/s, read patients/s.

Rows come from one preprocessed cohort held in memory; each variant is written with the real
`StoreWriter` and read back with `StoreReader`, whole patients at a time as training does.
Reads are from the page cache (a store that fits in RAM stays there between epochs); times are
medians of 3. Blosc/Zstd rows need `hdf5plugin` in every reader and appear only when it is
installed (pip install hdf5plugin).

Usage: python -m benchmarks.bench_store [PATIENTS] [X Y Z]   (default 12 at 240 240 155)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from benchmarks.common import BRATS_SHAPE, CORES, cohort, machine, median_time, table
from smri import store
from smri.preprocessing import PreprocessConfig, run_preprocess
from smri.store import StoreReader, StoreWriter

VARIANTS = ["none", "lzf", "gzip-1"]
try:  # optional third-party filters, registered with HDF5 on import
    import hdf5plugin

    store.COMPRESSIONS.setdefault(
        "blosc-lz4", dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    )
    store.COMPRESSIONS.setdefault("zstd-3", dict(hdf5plugin.Zstd(clevel=3)))
    VARIANTS += ["blosc-lz4", "zstd-3"]
except ImportError:
    hdf5plugin = None


def _read_share(path: Path, indices: list[int]) -> int:
    if hdf5plugin is not None:  # a worker process registers the plugin filters too
        import hdf5plugin as _  # noqa: F401
    with StoreReader(path) as r:
        buf = np.empty(r.info.volume_shape, dtype=r.info.dtype)
        for i in indices:
            r.read(i, out=buf)
    return len(indices)


def read_rate(path: Path, n: int, readers: int) -> float:
    """Patients/s reading every patient once with `readers` processes (disjoint shares)."""
    shares = [list(range(k, n, readers)) for k in range(readers)]
    with Parallel(n_jobs=readers, backend="loky") as par:
        par(delayed(_read_share)(path, s[:1]) for s in shares)  # start the workers
        return n / median_time(lambda: par(delayed(_read_share)(path, s) for s in shares))


def main(argv: list[str]) -> None:
    patients = int(argv[0]) if argv else 12
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else BRATS_SHAPE
    root = cohort(patients, shape)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        src = Path(tmp) / "src.h5"
        run_preprocess(
            root,
            src,
            PreprocessConfig(dtype="float32"),
            jobs=CORES,
            progress=False,
            echo=lambda _: None,
        )
        with StoreReader(src) as r:
            arrays = r.read_many(range(len(r)))
            info = r.info
        raw_mb = arrays.nbytes / 1e6
        print(
            f"# Store formats: {patients} patients of {info.volume_shape} "
            f"({raw_mb / patients:.1f} MB each as float32); {machine()}\n"
        )
        rows = []
        base_size = {}
        for dtype in ("float16", "float32"):
            data = arrays.astype(dtype)
            for comp in VARIANTS:
                path = Path(tmp) / f"{dtype}_{comp}.h5"

                def write(
                    path: Path = path, data: np.ndarray = data, comp: str = comp, dtype: str = dtype
                ) -> None:
                    with StoreWriter(
                        path,
                        n_patients=len(data),
                        volume_shape=info.volume_shape,
                        dtype=dtype,
                        compression=comp,
                        modalities=info.modalities,
                        classes=info.classes,
                        config={},
                    ) as w:
                        for i, row in enumerate(data):
                            w.write(i, images=row, label=0, patient_id=f"p{i}")

                seconds = median_time(write)
                size = path.stat().st_size
                base_size.setdefault(dtype, size)
                rows.append(
                    (
                        dtype,
                        comp,
                        f"{size / 2**20:.0f}",
                        base_size[dtype] / size,
                        data.nbytes / 1e6 / seconds,
                        read_rate(path, len(data), 1),
                        read_rate(path, len(data), CORES),
                    )
                )
        print(
            table(
                (
                    "dtype",
                    "compression",
                    "MiB",
                    "size ratio vs none",
                    "write MB/s",
                    "read patients/s, 1 reader",
                    f"read patients/s, {CORES} readers",
                ),
                rows,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
