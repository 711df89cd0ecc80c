"""`smri export`: a run's best model as a Hugging Face style folder, loadable without pickle.

    OUT_DIR/model.safetensors  the weights: tensors only, so loading runs no code
    OUT_DIR/config.json        the model, the input it expects (``network_data_format``, as
                               MONAI bundles describe it), the preprocessing to repeat, the
                               calibration, and the metrics the card reports
    OUT_DIR/README.md          the model card: model, data, split, metrics, intended use, limits

Reading such a folder back (for `smri evaluate`, `smri predict`, `smri explain`) is
`smri.model_io.loading`'s.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from smri.atomic import OutputLock, atomic_path, naming
from smri.errors import ConfigError, DataError, SmriError
from smri.files import check_regular
from smri.jsonfiles import json_text
from smri.model_io.checkpoint import load_checkpoint
from smri.model_io.metadata import cohort_spacing, network_data_format, untouched_metrics
from smri.model_io.model_card import model_card
from smri.text import one_line
from smri.version import __version__

EXPORT_FORMAT = "smri-model"
EXPORT_VERSION = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
EXPORT_FILES = (WEIGHTS, CONFIG, CARD)
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "split.json", "summary.json")
# The keys of the summary.json `smri plot` writes (its comparison): that file is no run's.
PLOT_SUMMARY_KEYS = ("models", "comparisons", "baselines", "bootstrap")
_LICENSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*\Z")
_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?\Z")  # a Hub dataset id


def safetensors_torch() -> Any:
    """The safetensors.torch module, or a one-line error saying how to install it."""
    try:
        import safetensors.torch
    except ImportError:
        raise SmriError(
            "exported models are safetensors files: pip install 'smri[export]' (or safetensors)"
        ) from None
    return safetensors.torch


# ------------------------------------------------------------------------------ the run to export
def fold_dirs(run: Path) -> dict[int, Path]:
    """fold index -> fold folder holding a best.pt, for a K-fold run (empty otherwise)."""
    found = {}
    for d in run.glob("fold*"):
        if re.fullmatch(r"fold[0-9]+", d.name) and (d / "best.pt").is_file():
            found[int(d.name[4:])] = d
    return dict(sorted(found.items()))


def model_dir(run: Path, fold: int | None) -> Path:
    """The folder of the model to export: the run itself, or its fold `fold`."""
    if not (run / "config.json").is_file():
        raise DataError(f"{run}: not an smri run folder (no config.json)")
    folds = fold_dirs(run)
    if (run / "best.pt").is_file():
        if fold is not None:
            raise ConfigError(f"{run} is a single-split run, not K folds; drop --fold", "--fold")
        chosen = run
    elif folds:
        if fold is None or fold not in folds:
            listed = ", ".join(f"fold {k} (AUC {_fold_auc(d)})" for k, d in folds.items())
            what = "choose one with --fold K" if fold is None else f"there is no fold {fold}"
            raise ConfigError(
                f"{run} is a {len(folds)}-fold cross-validation run: one model per fold; "
                f"{what}: {listed}",
                option="--fold",
            )
        chosen = folds[fold]
    else:
        raise DataError(f"{run}: no best.pt (the run has not finished an epoch)")
    if not (chosen / "summary.json").is_file():
        raise DataError(
            f"{chosen}: no summary.json: the run has not finished; finish it with "
            f"`smri train --resume {run}` before exporting"
        )
    return chosen


def _fold_auc(fold: Path) -> str:
    try:
        return f"{float(read_json(fold / 'summary.json')['best']['auc']):.3f}"
    except (SmriError, OSError, ValueError, KeyError, TypeError):
        return "unfinished"


JSON_MAX_BYTES = 64 << 20  # a run's split.json of 100,000 patients takes about 4 MB


def read_json(path: Path, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """The JSON in `path` (None when it does not exist); DataError naming the file when it is
    larger than `max_bytes` (never read whole), not JSON, or nested too deeply to parse."""
    try:
        with open(check_regular(path), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(max_bytes + 1) if size <= max_bytes else b""
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size > max_bytes or len(data) > max_bytes:
        raise DataError(
            f"{path}: {max(size, len(data)):,} bytes, more than the {max_bytes:,} smri reads of "
            "such a file; not read (it was not written by smri)"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else one_line(str(exc)[:200])
        raise DataError(f"{path}: cannot read ({why})") from None


def run_files(folder: Path) -> list[str]:
    """The RUN_FILES in `folder`: what makes it a run or fold folder, whose files a command
    writing there would replace. A summary.json that `smri plot` wrote, alone, does not: that
    folder holds plot's own outputs (figures/ after a first `smri plot`), not a run."""
    held = [name for name in RUN_FILES if (Path(folder) / name).exists()]
    if held == ["summary.json"] and is_plot_summary(Path(folder) / "summary.json"):
        return []
    return held


def is_plot_summary(path: Path) -> bool:
    """Whether `path` is a summary.json written by `smri plot` (by its keys)."""
    try:
        data = read_json(path)
    except DataError:
        return False
    return isinstance(data, dict) and all(key in data for key in PLOT_SUMMARY_KEYS)


# --------------------------------------------------------------------------------- writing
def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an OUT_DIR that holds an export (without `overwrite`) or is a run folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder", option="OUT_DIR")
    held = run_files(out)
    if held:
        raise ConfigError(
            f"{out} is an smri run folder ({', '.join(held)}); its config.json would be "
            "replaced; export to another folder (e.g. a new subfolder)",
            option="OUT_DIR",
        )
    held = [n for n in EXPORT_FILES if (out / n).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"{out} already holds {', '.join(held)}; choose another OUT_DIR or pass --overwrite",
            option="OUT_DIR",
        )


def export_run(
    run: Path,
    out: Path,
    *,
    fold: int | None = None,
    license: str | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write `run`'s best model (fold `fold` of a K-fold run) into `out`; the files written.

    Each file is written beside its final name and renamed into place, so `out` never holds a
    half-written file; other files in `out` (a git checkout of a model repository) are kept.
    """
    st = safetensors_torch()
    if license is not None and not _LICENSE.match(license):
        raise ConfigError(f"expected a license id such as mit or cc-by-4.0, got {license!r}",
                          option="--license")  # fmt: skip
    if dataset is not None and not _DATASET.match(dataset):
        raise ConfigError(f"expected a Hugging Face dataset id such as brats or org/name, got "
                          f"{dataset!r}", option="--dataset")  # fmt: skip
    source = model_dir(Path(run), fold)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):  # one export at a time writes a folder
        check_out_dir(out, overwrite)  # again: another may have written it meanwhile
        return _export(st, source, Path(run), out, license, dataset)


def _export(
    st: Any, source: Path, run: Path, out: Path, license: str | None, dataset: str | None
) -> list[Path]:
    """The three files of an export of `source` (run or fold folder) into `out`."""
    ckpt = load_checkpoint(source / "best.pt")
    run_config = read_json(source / "config.json") or {}
    config = export_config(ckpt, source, run, run_config, dataset)
    title = out.resolve().name
    card = model_card(config, run_config, title, license, WEIGHTS)
    tensors = {k: v.detach().contiguous() for k, v in ckpt["model"].items()}
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as staged:  # all three are written before any takes its real name
        temps = {name: staged.enter_context(atomic_path(out / name)) for name in EXPORT_FILES}
        # safetensors' own save_file creates its file 0600; written here, the weights get the
        # mode of their siblings (the umask's)
        with _naming(out / WEIGHTS, temps[WEIGHTS]):
            weights = st.save(tensors, metadata={"format": "pt", "smri": __version__})
            temps[WEIGHTS].write_bytes(weights)
        with _naming(out / CONFIG, temps[CONFIG]):
            temps[CONFIG].write_text(json_text(config) + "\n")  # NaN as null
        with _naming(out / CARD, temps[CARD]):
            temps[CARD].write_text(card)
    return [out / name for name in EXPORT_FILES]


@contextmanager
def _naming(path: Path, tmp: Path) -> Iterator[None]:
    """A failed write of `tmp` as the OSError naming `path`, the file asked for: a full disk
    is ``No space left on device: OUT/model.safetensors``, never a hidden file or a
    SafetensorError traceback (safetensors reports the OS error inside its own type)."""
    try:
        yield
    except OSError as exc:
        raise naming(exc, path, tmp) from None
    except Exception as exc:  # SafetensorError: "Os { code: 28, ..." or "(os error 27)"
        found = re.search(r"code: (\d+)|os error (\d+)", str(exc))
        if found:
            code = int(found.group(1) or found.group(2))
            raise OSError(code, os.strerror(code), str(path)) from None
        first = one_line(str(exc).strip().split("\n")[0][:200]) or type(exc).__name__
        raise DataError(f"{path}: cannot write the weights ({first})") from None


def export_config(
    ckpt: dict[str, Any],
    source: Path,
    run: Path,
    run_config: dict[str, Any] | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """config.json of an export: what `load_model` needs, the input it takes, and the run's
    facts for the card (`run_config`: the run's config.json; `dataset`: a Hub dataset id).

    Paths on the training machine are left out (a folder's name is kept): the folder is meant
    to be shared. The cohort's voxel spacing is read from the store the run recorded, when it
    is still there.
    """
    from smri.preprocessing import PreprocessConfig

    store = ckpt["store"]
    pre = ckpt["preprocess_config"]
    summary = read_json(source / "summary.json") or {}
    top = read_json(run / "summary.json") if source != run else None
    split = read_json(source / "split.json") or {}
    names = {v: k for k, v in store["classes"].items()}
    spacing = cohort_spacing((run_config or {}).get("store", {}).get("path"), store)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "smri_version": __version__,
        "library_name": "smri",
        "model": ckpt["model_config"],
        "calibration": ckpt.get("calibration"),
        "store": {k: store[k] for k in ("modalities", "slices", "volume_shape", "classes")},
        "network_data_format": network_data_format(store, pre, names, spacing),
        "dataset": dataset,
        "preprocess": {
            **PreprocessConfig.from_dict(pre).to_dict(),
            "layout": pre.get("layout"),
            "input_name": Path(pre["input"]).name if pre.get("input") else None,
            "store_name": Path(str(store.get("path", ""))).name or None,
        },
        "training": {
            "epoch": ckpt["epoch"],
            "epochs": summary.get("epochs"),
            "settings": ckpt.get("train_config"),
            "split": {k: split.get(k) for k in ("seed", "val_fraction", "folds", "fold")},
            "n_train": summary.get("n_train"),
            "n_val": summary.get("n_val"),
        },
        "metrics": {
            "validation": summary.get("best"),
            "ci95": summary.get("ci95"),
            "cross_validation": None
            if top is None
            else {k: top.get(k) for k in ("folds", "mean", "std", "ci95")},
            "test": untouched_metrics(run, source),
        },
    }
