"""Model I/O: a trained model saved, shared, and loaded again.

`checkpoint` writes and reads smri checkpoints (best.pt, last.pt: weights, configuration, the
store they fit, RNG state) and chooses the device; `export` writes a run's best model as a
Hugging Face style folder with its `model_card`; `loading` reads either form back into a model.
"""

from smri.model_io.checkpoint import (
    STORE_KEYS,
    calibration_fields,
    calibration_of,
    check_compatible,
    checkpoint_header,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    store_fields,
)
from smri.model_io.export import RUN_FILES, export_run, is_plot_summary, run_files
from smri.model_io.loading import load_model, load_weights, model_from_checkpoint

__all__ = [
    "RUN_FILES",
    "STORE_KEYS",
    "calibration_fields",
    "calibration_of",
    "check_compatible",
    "checkpoint_header",
    "export_run",
    "is_plot_summary",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_from_checkpoint",
    "resolve_device",
    "rng_state",
    "run_files",
    "save_checkpoint",
    "set_rng_state",
    "store_fields",
]
