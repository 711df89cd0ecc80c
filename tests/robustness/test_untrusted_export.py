"""An exported config.json (and a checkpoint's store facts) is untrusted input too.

Read bounded (never a 1 GiB file whole, never deeper than JSON parses), each field smri uses
checked for its type before it is used, and refused in one line naming the file and the field:
`predict` and `evaluate` alike, never a traceback. Writing an export to a full disk is the
usual one line naming the file asked for.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import smri.model_io.export as export_module
from smri.cli import main
from smri.model_io import export_run
from tests.helpers.cli import ENV, error_line, leftovers, smri_cmd
from tests.helpers.nifti import write_patient
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)

GEOMETRY = (32, 32, 20)  # raw (X, Y, Z) that preprocesses to the tiny store's (16, 32, 32)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The tiny store and run, and the run exported."""
    folder = tmp_path_factory.mktemp("untrusted-export")
    store, run = tiny_run(folder)
    export_run(run, folder / "m")
    return store, run, folder / "m"


def one_error(*args: object, code: int = 1) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "\x1b" not in res.stderr
    return lines[0]


def changed(folder: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "m"))
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


CONFIGS = [
    ("training-text", lambda c: c.update(training="x"), "damaged export: 'training' is not an"),
    ("epoch-text", lambda c: c["training"].update(epoch="3"), "'training.epoch' is not a whole"),
    ("classes-mixed", lambda c: c["store"].update(classes={"LGG": 0, "HGG": "1"}),
     "damaged export: 'store.classes' is {'LGG': 0, 'HGG': '1'}, expected class names, each"),
    ("classes-escape", lambda c: c["store"].update(classes={"L\x1b[2J": 0, "H": 1}),
     "'store.classes' is {'L\\x1b[2J': 0, 'H': 1}, expected"),
    ("modalities-ints", lambda c: c["store"].update(modalities=[1, 2, 3, 4]),
     "damaged export: 'store.modalities' is [1, 2, 3, 4], expected a list of modality names"),
    ("slices-float", lambda c: c["store"].update(slices=16.0),
     "'store.slices' is missing or malformed"),
    ("preprocess-slices", lambda c: c["preprocess"].update(slices=-1), "bad preprocess_config"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_each_config_field_is_checked_before_use(made, tmp_path, edit, message):
    store, _, exported = made
    folder = changed(exported, tmp_path, edit)
    patient = tmp_path / "P1"
    write_patient(patient, "P1", 1, shape=GEOMETRY)
    line = one_error("predict", folder, patient)
    assert line.startswith(f"Error: {folder}") and message in line, line
    if "preprocess" not in message:  # evaluate reads no preprocessing settings
        line = one_error("evaluate", folder, store, "--out", tmp_path / "ev")
        assert message in line, line


def test_a_config_nested_100000_deep_is_one_line(made, tmp_path):
    _, _, exported = made
    folder = Path(shutil.copytree(exported, tmp_path / "m"))
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    line = one_error("predict", folder, tmp_path)
    assert line == f"Error: {folder / 'config.json'}: cannot read (nested too deeply)"


def test_a_huge_config_is_refused_without_being_read(made, tmp_path):
    """A sparse 1 GiB config.json: refused by its size, in a moment and no memory."""
    store, _, exported = made
    folder = Path(shutil.copytree(exported, tmp_path / "m"))
    with open(folder / "config.json", "r+b") as fh:
        fh.truncate(1 << 30)
    line = one_error("evaluate", folder, store, "--out", tmp_path / "ev")
    assert line == (
        f"Error: {folder / 'config.json'}: 1,073,741,824 bytes, more than the 1,048,576 smri "
        "reads of such a file; not read (it was not written by smri)"
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2 * 1024 * 1024  # KiB


def test_a_checkpoint_with_mistyped_store_facts_is_refused(made, tmp_path):
    store, run, _ = made
    ckpt = torch.load(run / "best.pt", weights_only=True)
    for key, value, message in [
        ("classes", {"LGG": 0, "HGG": "1"}, "'store.classes' is {'LGG': 0, 'HGG': '1'}"),
        ("modalities", ["flair", 2, "t1ce", "t2"], "'store.modalities' is ['flair', 2,"),
        ("volume_shape", "4x16x32x32", "'store.volume_shape' is '4x16x32x32', expected 4"),
    ]:
        bad = tmp_path / f"{key}.pt"
        torch.save({**ckpt, "store": {**ckpt["store"], key: value}}, bad)
        line = one_error("evaluate", bad, store, "--out", tmp_path / "ev")
        assert line.startswith(f"Error: {bad}: damaged smri checkpoint: {message}"), line


# -------------------------------------------------------------------------- writing an export
def test_a_full_disk_while_writing_the_weights_is_one_line(made, tmp_path, monkeypatch):
    """safetensors reports the OS error inside its own error type: named as the file asked for."""
    _, run, _ = made
    st = export_module.safetensors_torch()

    def full(*args, **kwargs):
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(st, "save", full)  # the weights are serialised, then written
    out = tmp_path / "m"
    line = one_error("export", run, out)
    assert line == f"Error: No space left on device: {out / 'model.safetensors'}"
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
    assert leftovers(tmp_path) == []


def test_a_file_size_limit_while_exporting_is_one_line(made, tmp_path):
    """A real write failure (ulimit -f: EFBIG, the path a full disk takes) in a subprocess."""
    _, run, _ = made
    limit = 64 * 1024  # the weights take more; the lock file and a folder take less

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "m"
    res = subprocess.run(smri_cmd("export", run, out), capture_output=True, text=True, env=ENV,
                         timeout=180, preexec_fn=small_files)  # fmt: skip
    assert error_line(res) == f"Error: File too large: {out / 'model.safetensors'}"
    assert leftovers(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == []
