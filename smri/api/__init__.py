"""The Python API: the library entry points that `smri`'s commands call, importable from `smri`.

    import smri
    cohort = smri.synth("demo", patients=16, shape=(32, 32, 40))
    smri.preprocess(cohort, "demo.h5")
    run = smri.train("demo.h5", model="cnn2", epochs=2, width=0.25)
    metrics = smri.evaluate(run / "best.pt", "demo.h5")
    report = smri.explain(run / "best.pt", "demo.h5")   # saliency against the tumour

Keyword arguments are the commands' options (`--batch-size` is `batch_size=`) with the same
defaults: those of the settings dataclasses (`smri.config`, `PreprocessConfig`, `SynthConfig`)
and, for options no dataclass holds, of these signatures, which the CLI reads. Errors are the
typed exceptions of `smri.errors` that the CLI maps to exit codes: `ConfigError` (settings;
exit 2), other `SmriError`s (data; exit 1). Messages name keywords (`overwrite=True`).

Output: `log` receives info lines and warnings (default `smri.messages.python_log`: warnings
through `warnings.warn` as `SmriWarning`, info lines to the ``smri`` logger); `quiet` drops the
info lines and progress bars, never warnings; `progress` None shows bars when stderr is a
terminal.
This package imports no torch: the work is imported on the first call. See docs/api.md.
Its modules, by job: `inputs` (synth, preprocess, info, show), `runs` (models, train, export,
plot, holdout), `inference` (evaluate, explain, predict, load_model), `checks` (every
setting's rule), `common` (what they share: `public`, the messages worded for Python). No
module is named like a function: `smri.api.train` is the function.
"""

from smri.api.common import Log, PathLike
from smri.api.inference import EVAL_FILES, evaluate, explain, load_model, predict
from smri.api.inputs import SYNTH_BYTES_PER_VOXEL, info, preprocess, show, synth
from smri.api.runs import RUN_OPTIONS, export, holdout, interrupted_message, models, plot, train

__all__ = [
    "EVAL_FILES",
    "RUN_OPTIONS",
    "SYNTH_BYTES_PER_VOXEL",
    "Log",
    "PathLike",
    "evaluate",
    "explain",
    "export",
    "holdout",
    "info",
    "interrupted_message",
    "load_model",
    "models",
    "plot",
    "predict",
    "preprocess",
    "show",
    "synth",
    "train",
]
