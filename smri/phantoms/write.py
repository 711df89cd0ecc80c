"""Writing a cohort: each phantom as NIfTI files (gzip bytes that repeat), the patients in
parallel, truth.csv and BraTS 2020's name_mapping.csv, and no debris from an interrupted run.

A patient's five files take their real names together, so a folder holds a whole patient or
none; `--overwrite` deletes only what a marked synth folder holds.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from smri.atomic import PARTIAL_SUFFIX, atomic_path, write_text
from smri.errors import ConfigError
from smri.phantoms.anatomy import MODALITIES, make_phantom
from smri.phantoms.cohort import PatientSpec, SynthConfig, cohort
from smri.volume.write import nifti_bytes

NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
TRUTH_COLUMNS = (
    "patient_id",
    "grade",
    "label",
    "centre_x",
    "centre_y",
    "centre_z",
    "centre_in_slab",
    "radius_x_mm",
    "radius_y_mm",
    "radius_z_mm",
    "oedema_factor",
    "necrosis_fraction",
    "enhancement",
    "atypical",
    "atypical_kind",
    "voxels_necrotic_core",
    "voxels_oedema",
    "voxels_enhancing",
    "tumour_voxels",
    "tumour_voxels_in_slab",
    "share_in_slab",
)
DESCRIPTION = "smri synth phantom"  # each file's header descrip
MARKER = ".smri-synth"  # hidden file that marks a folder as a synth cohort (for --overwrite)


def write_patient(
    seed: int, spec: PatientSpec, shape: tuple[int, int, int], root: Path, fmt: str
) -> dict[str, Any]:
    """Generate and write one patient's five files; return its truth row (runs in a worker)."""
    from threadpoolctl import threadpool_limits  # one BLAS thread: same floats for any --jobs

    with threadpool_limits(limits=1):
        ph = make_phantom(seed, spec.index, spec.grade, shape)
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    ext = "." + fmt
    parts = [(m, ph.volumes[m]) for m in MODALITIES] + [("seg", ph.seg)]
    with ExitStack() as staged:  # all five are written before any takes its real name
        for name, data in parts:
            tmp = staged.enter_context(atomic_path(folder / f"{spec.patient_id}_{name}{ext}"))
            tmp.write_bytes(nifti_bytes(data, ph.affine, fmt == "nii.gz", DESCRIPTION))
    return {"patient_id": spec.patient_id, **ph.truth}


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def name_mapping_rows(specs: list[PatientSpec], site: str = "SYN") -> list[dict[str, str]]:
    """BraTS 2020 `name_mapping.csv` rows for the cohort (earlier-year ids made up alike)."""
    return [
        {
            "Grade": s.grade,
            "BraTS_2017_subject_ID": f"Brats17_{site}_{s.index:04d}_1",
            "BraTS_2018_subject_ID": f"Brats18_{site}_{s.index:04d}_1",
            "TCGA_TCIA_subject_ID": "NA",
            "BraTS_2019_subject_ID": f"BraTS19_{site}_{s.index:04d}_1",
            "BraTS_2020_subject_ID": s.patient_id,
        }
        for s in specs
    ]


def own_entries(root: Path) -> list[Path]:
    """Entries of `root` named as `smri synth` names them (any layout): what --overwrite removes."""
    return [p for p in sorted(root.iterdir()) if _is_own(p.name) and p.name != MARKER]


def _is_own(name: str) -> bool:
    return (
        name in {"HGG", "LGG", "truth.csv", "name_mapping.csv"}
        or re.fullmatch(r"BraTS(19_[A-Z][A-Z0-9]*_[0-9]+_1|20_[A-Za-z][A-Za-z0-9]*_[0-9]+)", name)
        or name.endswith(PARTIAL_SUFFIX)
    )


def prepare_output(root: Path, overwrite: bool) -> None:
    """Create `root`, or clear a previous synth cohort there with `overwrite`; refuse otherwise.

    Only a folder that carries synth's marker file has entries removed, so `--overwrite` never
    deletes a real BraTS copy that happens to use the same names.
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder", option="OUT")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{root} is not empty; pass --overwrite to replace a cohort there", option="OUT"
            )
        entries = own_entries(root)
        if entries and not (root / MARKER).is_file():
            names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConfigError(
                f"{root} holds {names}, which smri synth did not write (no {MARKER} file); "
                "refusing to delete them: choose an empty folder",
                option="--overwrite",
            )
        for p in entries:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by smri synth; `smri synth --overwrite` may replace it\n")


def remove_partials(root: Path) -> None:
    """Delete the `.partial` files (and emptied patient folders) an interrupted run left."""
    for p in root.rglob(f".*{PARTIAL_SUFFIX}"):
        p.unlink(missing_ok=True)
    folders = [p for p in root.rglob("*") if p.is_dir() and _is_own(p.name)]
    for d in sorted(folders, key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def synthesize(
    cfg: SynthConfig,
    root: Path,
    *,
    jobs: int = -1,
    overwrite: bool = False,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Write the cohort `cfg` under `root` (parallel over patients); return the truth rows."""
    cfg.validate()
    root = Path(root)
    prepare_output(root, overwrite)
    specs = cohort(cfg)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        rows = list(_run(cfg, specs, root, jobs, progress))
        rows.sort(key=lambda r: r["patient_id"])
        write_text(root / "truth.csv", _csv_text(TRUTH_COLUMNS, rows))
        if cfg.layout == "2020":
            write_text(
                root / "name_mapping.csv",
                _csv_text(NAME_MAPPING_COLUMNS, name_mapping_rows(specs, cfg.site)),
            )
    except BaseException:
        remove_partials(root)
        raise
    return rows


def _run(
    cfg: SynthConfig, specs: list[PatientSpec], root: Path, jobs: int, progress: bool
) -> Iterator[dict[str, Any]]:
    from tqdm.auto import tqdm

    n_jobs = min(_effective_jobs(jobs), len(specs))
    bar = tqdm(total=len(specs), desc="synth", unit="patient", disable=not progress)
    with bar:
        if n_jobs == 1:
            for spec in specs:
                yield write_patient(cfg.seed, spec, cfg.shape, root, cfg.fmt)
                bar.update()
            return
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(write_patient)(cfg.seed, spec, cfg.shape, root, cfg.fmt) for spec in specs
        )
        for row in results:
            yield row
            bar.update()


def _effective_jobs(jobs: int) -> int:
    if jobs == 0:
        raise ConfigError("--jobs must not be 0 (use -1 for all cores)", option="--jobs")
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + jobs) if jobs < 0 else jobs
