"""Preprocessing: NIfTI patient folders -> one HDF5 store, in parallel, the parent the only writer.

`patient` is the worker's per-patient work (`load_patient`, also used by `smri predict`); `run`
the parent's loop and single writer (`run_preprocess`); `append` adds a cohort's new patients to
a store (`--append`); `summary` what a run reports. `show` (`smri show`) is imported where it is
used, not here: it draws with matplotlib.
"""

from smri.preprocessing.append import append_preprocess
from smri.preprocessing.patient import (
    DEFAULT_SLICES,
    PatientResult,
    PreprocessConfig,
    common_inplane,
    load_or_error,
    load_patient,
)
from smri.preprocessing.run import (
    CHECKPOINT_SECONDS,
    Run,
    check_not_inputs,
    check_output,
    discover_for_store,
    run_preprocess,
    warn_orientations,
    write_patients,
)
from smri.preprocessing.summary import (
    PreprocessSummary,
    orientation_warning,
    per_class,
    progress_bar,
    skip_rows,
)

__all__ = [
    "CHECKPOINT_SECONDS",
    "DEFAULT_SLICES",
    "PatientResult",
    "PreprocessConfig",
    "PreprocessSummary",
    "Run",
    "append_preprocess",
    "check_not_inputs",
    "check_output",
    "common_inplane",
    "discover_for_store",
    "load_or_error",
    "load_patient",
    "orientation_warning",
    "per_class",
    "progress_bar",
    "run_preprocess",
    "skip_rows",
    "warn_orientations",
    "write_patients",
]
