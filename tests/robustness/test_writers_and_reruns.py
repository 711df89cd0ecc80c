"""Writers and reruns: `smri plot` again into the same folder, and outputs that cannot be made.

Plot's figures and summary are made from the runs; a second `smri plot` into the same --out
(the default figures/ included) replaces plot's own earlier outputs, and refuses only a file
there that plot did not write. A folder plot wrote into is no run folder for `evaluate`
either. An output that cannot be written (a read-only folder) is named as asked for, never by
the hidden ``.NAME.lock`` beside it.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import smri.atomic
from smri.cli import main
from tests.helpers.training import one_torch_thread, tiny_run  # noqa: F401 (autouse fixture)

PLOT_FILES = ["CNN2_loss_curve.png", "all_models_accuracy.png", "all_models_loss_curve.png",
              "all_models_roc.png", "summary.json", "summary.md"]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory.mktemp("reruns"))


def invoke(*args: object):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res


def test_plot_twice_into_the_default_folder(made, tmp_path, monkeypatch):
    _, run = made
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        res = invoke("plot", run)
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == PLOT_FILES


def test_plot_again_replaces_its_own_outputs_and_nothing_else(made, tmp_path):
    _, run = made
    out = tmp_path / "figs"
    assert invoke("plot", run, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "summary.md").write_text("# Validation results\nedited by hand\n")
    assert invoke("plot", run, "--out", out).exit_code == 0
    assert "edited by hand" not in (out / "summary.md").read_text()  # remade from the runs
    assert (out / "notes.txt").read_text() == "mine"  # never touched


@pytest.mark.parametrize(
    ("name", "content"),
    [("summary.json", json.dumps({"best": {"auc": 0.9}})), ("summary.md", "my notes\n"),
     ("all_models_roc.png", "not a picture")],
)  # fmt: skip
def test_plot_refuses_to_replace_a_file_it_did_not_write(made, tmp_path, name, content):
    _, run = made
    out = tmp_path / "figs"
    out.mkdir()
    (out / name).write_text(content)
    res = invoke("plot", run, "--out", out)
    assert res.exit_code == 2
    assert f"{out / name} exists and was not written by `smri plot`" in res.stderr
    assert (out / name).read_text() == content
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_a_folder_plot_wrote_into_is_no_run_folder(made, tmp_path):
    store, run = made
    out = tmp_path / "figs"
    assert invoke("plot", run, "--out", out).exit_code == 0
    res = invoke("evaluate", run / "best.pt", store, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert (out / "metrics.json").exists()


@pytest.fixture
def read_only(monkeypatch):
    """Creating files fails as in a read-only folder (root ignores permissions)."""
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).endswith(smri.atomic.LOCK_SUFFIX):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(smri.atomic.os, "open", refuse)


def test_a_read_only_output_is_named_as_asked_for(made, tmp_path, read_only):
    store, run = made
    for args, out in [
        (["plot", run, "--out", tmp_path / "figs"], tmp_path / "figs"),
        (["export", run, tmp_path / "m"], tmp_path / "m"),
        (["evaluate", run / "best.pt", store, "--out", tmp_path / "ev"], tmp_path / "ev"),
    ]:
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        assert res.stderr.strip() == f"Error: Read-only file system: {out}", res.stderr
        assert ".lock" not in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_folder_without_write_permission_is_named_as_asked_for(made, tmp_path):
    _, run = made
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        res = invoke("export", run, folder / "m")
    finally:
        folder.chmod(0o755)
    assert res.exit_code == 1 and ".lock" not in res.stderr
    assert res.stderr.strip().endswith(str(folder / "m")), res.stderr
