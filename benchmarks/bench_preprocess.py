"""Preprocessing: each hand-written fast path against the plain path, end to end, in one run.

Every row is a whole `run_preprocess` of the same cohort into a new store, in a fresh process,
so each row starts from the same state. smri's kept fast paths are:

- ISA-L's gzip (`isal.igzip`) in place of the standard library's;
- the streamed reader (`smri.volume.stream.SlabSource`): each volume inflated 1 MiB at a time,
  min and max taken piece by piece, only the slab kept; without it, `load_volume` reads it whole;
- the float32 -> float16 cast through torch (`smri.volume.slab.cast_into`) in place of numpy's;
- the direct writer: image chunks written with O_DIRECT (`smri.store.direct.DirectChunks`) and
  masks compressed by the workers (`smri.store.direct.MaskChunk`), in place of h5py's
  ``images[i] = ...`` through the page cache and ``masks[i] = ...`` compressed by HDF5 on the
  writer thread (off: `smri.store.direct.DIRECT_WRITES`).

"smri without X" turns off one of them; "smri --no-masks" stores no segmentation masks (their
cost: smri's time over its time, target at most 1.15x); the plain path turns off all four and
reads with nibabel (`nib.load`, `np.asanyarray(img.dataobj)`) and writes with h5py, as a script
without smri would.
The same normalisation and crop (`normalized_slab`, numpy) run in every row. A path's gain is
smri / (smri without it), measured in the same round; rounds interleave the rows, and the
ratios reported are medians over rounds. patients/s is a median of 3 runs after a warm-up;
CPU is the preprocessing process's own user + system time per patient (all its threads), which
a busy machine disturbs less than the wall clock. Also: scaling from 1 worker to all cores,
and `--append`'s copy of stored chunks as bytes vs decoding and re-encoding them.

Usage: python -m benchmarks.bench_preprocess [PATIENTS] [ROUNDS] [X Y Z]
       (default 24 patients, 2 rounds, 240 240 155)
"""

from __future__ import annotations

import gzip
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import BRATS_SHAPE, CORES, cohort, machine, table

FAST = ("isal", "stream", "torch cast", "direct writer")
LABEL = {
    "isal": "ISA-L gzip (vs stdlib gzip)",
    "stream": "streamed reader (vs whole volume)",
    "torch cast": "float16 cast through torch (vs numpy)",
    "direct writer": "direct writer: O_DIRECT images, masks compressed by the workers (vs h5py)",
}
# The row that turns each path off.
WITHOUT = {p: f"smri without {p}" for p in FAST}
WITHOUT["direct writer"] = "smri without the direct writer (h5py writes)"


NO_MASKS = "smri --no-masks"


def configs() -> list[tuple[str, frozenset[str], int, bool]]:
    """(row name, fast paths on, workers, masks) for every row."""
    rows = [("smri", frozenset(FAST), CORES, True), (NO_MASKS, frozenset(FAST), CORES, False)]
    rows += [(WITHOUT[p], frozenset(FAST) - {p}, CORES, True) for p in FAST]
    rows += [("plain: nibabel + numpy + h5py", frozenset(), CORES, False)]
    if CORES > 1:
        rows += [("smri, 1 worker", frozenset(FAST), 1, True)]
    return rows


def use_paths(paths: frozenset[str]) -> None:
    """Turn off, in this process, the fast paths not in `paths`."""
    import nibabel as nib
    import numpy as np

    import smri.preprocessing.patient as pre
    import smri.store.direct as store
    import smri.volume.nifti as nifti
    import smri.volume.stream as volume

    if "direct writer" not in paths:
        store.DIRECT_WRITES = False
    if "isal" not in paths:
        nifti.GZIP = gzip
    if "torch cast" not in paths:

        def numpy_cast(dst: np.ndarray, src: np.ndarray) -> None:
            dst[...] = src

        volume.cast_into = numpy_cast
    if "stream" not in paths:

        def whole(path: Path, canonical: bool = False) -> volume.SlabSource:
            if paths:  # smri's own whole-volume loader
                vol = volume.load_volume(path)
                data, spacing = vol.data, vol.spacing
            else:  # the plain path: nibabel reads the file
                img = nib.load(path)
                data = np.asanyarray(img.dataobj)
                spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            vol = volume.Volume(data, spacing, np.eye(4))
            return volume.SlabSource(Path(path), data.shape, spacing, volume=vol)

        pre.open_volume = whole


def child(
    paths: frozenset[str], jobs: int, root: Path, masks: bool = True, runs: int = 3
) -> dict[str, float]:
    """patients/s (median of `runs` after a warm-up) and CPU ms per patient of this process."""
    use_paths(paths)
    from smri.preprocessing import PreprocessConfig, run_preprocess

    n = len(list(root.rglob("*_flair.nii*")))
    times, cpus = [], []
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        for i in range(runs + 1):
            for old in Path(tmp).glob("*.h5"):  # deleted outside the timing
                old.unlink()
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            out = Path(tmp) / f"b{i}.h5"
            cfg = PreprocessConfig(masks=masks)
            run_preprocess(root, out, cfg, jobs=jobs, progress=False, echo=quiet)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            times.append(time.perf_counter() - t0)
            cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return {"rate": n / med(times[1:]), "cpu": 1000 * med(cpus[1:]) / n}


def quiet(_line: str) -> None:
    pass


def run_child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_preprocess", "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(values: list[float]) -> float:
    return statistics.median(values)


def preprocess_rows(root: Path, rounds: int) -> None:
    rows = configs()
    got: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in rows}
    for _ in range(rounds):
        for name, paths, jobs, masks in rows:
            args = ["preprocess", ",".join(sorted(paths)), str(jobs), str(root), str(int(masks))]
            got[name].append(run_child(args))

    def ratio(a: str, b: str, key: str) -> float:  # median over rounds of a/b within a round
        return med([x[key] / y[key] for x, y in zip(got[a], got[b], strict=True)])

    out = []
    for name, _, jobs, _ in rows:
        rates = [r["rate"] for r in got[name]]
        cpu = med([r["cpu"] for r in got[name]])
        span = f"{min(rates):.3g}-{max(rates):.3g}"
        out.append((name, jobs, med(rates), span, cpu, ratio(name, "smri", "rate")))
    header = ("row", "workers", "patients/s", "range over rounds", "CPU ms/patient", "vs smri")
    print(table(header, out))
    print("\n**Each kept fast path against smri without it (same rounds):**\n")
    gains = []
    plain = "plain: nibabel + numpy + h5py"
    for label, other in [*((LABEL[p], WITHOUT[p]) for p in FAST), ("all four", plain)]:
        rate, cpu = ratio("smri", other, "rate"), ratio(other, "smri", "cpu")
        gains.append((label, f"{rate:.2f}x", f"{cpu:.2f}x"))
    print(table(("fast path", "patients/s gain", "CPU per patient gain"), gains))
    each = ", ".join(f"{y['rate'] / x['rate']:.2f}" for x, y in zip(got["smri"], got[NO_MASKS],
                                                                    strict=True))  # fmt: skip
    print(
        f"\nmasks (the seg of each patient, schema v2): {ratio(NO_MASKS, 'smri', 'rate'):.2f}x "
        f"the time of {NO_MASKS} (each round: {each}), {ratio('smri', NO_MASKS, 'cpu'):.2f}x "
        "its CPU per patient; target at most 1.15x"
    )
    if CORES > 1:
        one = "smri, 1 worker"
        pairs = zip(got["smri"], got[one], strict=True)
        each = ", ".join(f"{x['rate'] / y['rate']:.2f}" for x, y in pairs)
        print(
            f"\nscaling 1 -> {CORES} workers (threads): {ratio('smri', one, 'rate'):.2f}x "
            f"(each round: {each})"
        )


def append_child(compression: str, raw_copy: bool, part: Path, full: Path) -> dict[str, float]:
    """Seconds of `--append` of `full` onto a store of `part` (made outside the timing)."""
    import smri.store as store
    from smri.preprocessing import PreprocessConfig, append_preprocess, run_preprocess

    if not raw_copy:  # decode each old row and write it again (re-encoded by its filters)

        def decoded_copy(self: store.StoreWriter, reader: store.StoreReader, i: int) -> int:
            j = self.rows
            row = {"label": int(reader.labels[i]), "patient_id": reader.patient_ids[i]}
            self.write(j, images=reader.read(i), meta=reader.meta(i), **row)
            return j

        store.StoreWriter.copy_row = decoded_copy
    cfg = PreprocessConfig(compression=compression)
    times = []
    with tempfile.TemporaryDirectory(dir=full.parent) as tmp:
        base = Path(tmp) / "base.h5"
        run_preprocess(part, base, cfg, jobs=CORES, progress=False, echo=quiet)
        for _ in range(3):
            out = Path(tmp) / "s.h5"
            out.write_bytes(base.read_bytes())
            t0 = time.perf_counter()
            append_preprocess(full, out, cfg, jobs=CORES, progress=False, echo=quiet)
            times.append(time.perf_counter() - t0)
    return {"seconds": med(times)}


def append_rows(full: Path, patients: int) -> None:
    """`--append` of a third of the cohort onto a compressed store of the rest: copy stored
    chunk bytes (smri) vs decode and re-encode every old row (h5py's plain read and write)."""
    part = full.parent / f"{full.name}_first{patients - patients // 3}"
    if not part.exists():  # the first two thirds of the patients, as links
        part.mkdir()
        for cls in ("HGG", "LGG"):
            (part / cls).mkdir()
        folders = sorted(p for p in full.glob("*GG/*") if p.is_dir())
        for folder in folders[: patients - patients // 3]:
            (part / folder.parent.name / folder.name).symlink_to(folder.resolve())
    rows = []
    for comp in ("gzip-1",):  # uncompressed chunks are read and written as h5py does
        smri_s = run_child(["append", comp, "1", str(part), str(full)])["seconds"]
        plain_s = run_child(["append", comp, "0", str(part), str(full)])["seconds"]
        rows.append((comp, smri_s, plain_s, f"{plain_s / smri_s:.2f}x"))
    print(
        f"\n**--append** of {patients // 3} new patients onto a store of "
        f"{patients - patients // 3} (seconds, median of 3):\n"
    )
    print(table(("compression", "copy chunk bytes (smri)", "decode + re-encode", "gain"), rows))


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if argv[:1] == ["--child"]:
        if argv[1] == "preprocess":
            paths = frozenset(p for p in argv[2].split(",") if p)
            print(json.dumps(child(paths, int(argv[3]), Path(argv[4]), argv[5] == "1")))
        else:
            print(json.dumps(append_child(argv[2], argv[3] == "1", Path(argv[4]), Path(argv[5]))))
        return
    patients = int(argv[0]) if argv else 24
    rounds = int(argv[1]) if len(argv) > 1 else 2
    shape = tuple(int(v) for v in argv[2:5]) if len(argv) >= 5 else BRATS_SHAPE
    root = cohort(patients, shape)
    mib = sum(f.stat().st_size for f in root.rglob("*.nii.gz")) / 2**20
    print(
        f"# Preprocessing: {patients} patients of {'x'.join(map(str, shape))} (4 modalities + "
        f"seg, {mib:.0f} MiB of .nii.gz), {rounds} rounds; {machine()}\n"
    )
    preprocess_rows(root, rounds)
    append_rows(root, patients)


if __name__ == "__main__":
    main(sys.argv[1:])
