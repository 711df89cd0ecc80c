"""TensorBoard event files: per-epoch scalars, the best epoch's ROC, the hyperparameters and
final metrics of every run and fold (the HParams dashboard), one folder per fold, resume
without doubled steps, and one note (not an error) when the package is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from smri.errors import ConfigError
from smri.networks import ModelConfig
from smri.training import TrainConfig, train
from smri.training import tensorboard as tensorboard_log
from smri.training.runs import METRIC_COLUMNS
from smri.training.tensorboard import Board, hparams_of, resolve, scalar_tag
from tests.helpers.training import metric_rows, one_torch_thread  # noqa: F401 (autouse fixture)

HAVE_TB = importlib.util.find_spec("tensorboard") is not None
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="pip install 'smri[tensorboard]'")
SMALL = ModelConfig(width=0.25)
FAST = TrainConfig(epochs=2, batch_size=4, workers=0, cache="ram", lr=3e-3)
NOTE = "note: TensorBoard logs off: pip install 'smri[tensorboard]'"


def events(folder: Path):
    """The scalars and images TensorBoard reads from `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def session(folder: Path) -> tuple[dict, int]:
    """The HParams dashboard's session of `folder`: its hyperparameters and end status, read
    back with tensorboard's own event reader and plugin parsers."""
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import api_pb2, metadata

    content = events(folder).PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert metadata.EXPERIMENT_TAG not in content  # the dashboard builds it from all sessions
    assert end.status == api_pb2.STATUS_SUCCESS
    return {k: json_format.MessageToDict(v) for k, v in start.hparams.items()}, end.status


def test_hparams_of_a_fold():
    cfg = TrainConfig(**{**vars(FAST), "folds": 5, "fold": 3, "amp": False})
    assert hparams_of(ModelConfig(name="cnn3", width=0.5, volume_shape=(16, 64, 64)), cfg) == {
        "model": "cnn3", "width": 0.5, "dropout": 0.0, "hidden": 128, "input_pool": 1,
        "volume_shape": "16x64x64", "epochs": 2, "batch_size": 4, "lr": 3e-3,
        "weight_decay": 1e-4, "seed": 0, "val_fraction": 0.2, "folds": 5, "fold": 3, "seeds": 1,
        "repeat": 0, "class_weight": "auto", "amp": "false", "compile": "false",
        "augment": "true",
    }  # fmt: skip
    assert "folds" not in hparams_of(SMALL, FAST)  # a single split: no fold columns
    swept = hparams_of(ModelConfig(width=np.float64(0.5)), TrainConfig(epochs=np.int64(3)))
    assert (type(swept["width"]), type(swept["epochs"])) == (float, int)  # numpy's: Python's


def test_scalar_tags_pair_training_and_validation_curves():
    assert [scalar_tag(c) for c in METRIC_COLUMNS if c != "epoch"] == [
        "loss/train", "accuracy/train", "loss/val", "accuracy/val", "balanced_accuracy/val",
        "auc/val", "sensitivity/val", "specificity/val", "lr", "seconds", "patients_per_s",
    ]  # fmt: skip


def test_resolve_without_the_package(monkeypatch):
    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    lines: list[str] = []
    assert resolve(None, lines.append) is False
    assert lines == [NOTE]
    assert resolve(False, lines.append) is False and lines == [NOTE]
    with pytest.raises(ConfigError, match=r"need the tensorboard package: pip install") as err:
        resolve(True, lines.append)
    assert err.value.option == "--tensorboard"


@needs_tb
def test_a_run_writes_every_metric_per_epoch_and_the_best_roc(store, tmp_path):
    out = tmp_path / "run"
    summary = train(store, SMALL, FAST, out, log=lambda _: None)
    acc = events(out)
    rows = metric_rows(out)
    for column in METRIC_COLUMNS[1:]:
        scalars = acc.Scalars(scalar_tag(column))
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(
            [float(r[column]) for r in rows], rel=1e-5, nan_ok=True
        )
    (roc,) = acc.Images("roc/best_epoch")
    assert roc.step == summary["best_epoch"] and roc.encoded_image_string[:4] == b"\x89PNG"


@needs_tb
def test_a_run_fills_the_hparams_dashboard(store, tmp_path):
    out = tmp_path / "run"
    summary = train(store, SMALL, FAST, out, log=lambda _: None)
    hparams, _ = session(out)
    assert hparams == hparams_of(ModelConfig(width=0.25, volume_shape=(16, 32, 32)), FAST)
    acc = events(out)
    finals = {t.removeprefix("final/"): acc.Scalars(t) for t in acc.Tags()["scalars"]
              if t.startswith("final/")}  # fmt: skip
    assert set(finals) == {*summary["best"], "epoch"}
    for key, (scalar,) in finals.items():
        assert scalar.step == summary["best_epoch"]
        expected = summary["best_epoch"] if key == "epoch" else summary["best"][key]
        assert scalar.value == pytest.approx(expected, rel=1e-6, nan_ok=True), key


@needs_tb
def test_each_fold_has_its_own_event_files(store, tmp_path):
    out = tmp_path / "cv"
    train(store, SMALL, TrainConfig(**{**vars(FAST), "epochs": 1, "folds": 2}), out,
          log=lambda _: None)  # fmt: skip
    assert not list(out.glob("events.out.tfevents.*"))
    for k in (0, 1):
        assert [s.step for s in events(out / f"fold{k}").Scalars("auc/val")] == [1]
        hparams, _ = session(out / f"fold{k}")  # each fold its own row in the HParams dashboard
        assert (hparams["fold"], hparams["folds"]) == (k, 2)


def test_without_the_package_a_run_says_so_once(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    lines: list[str] = []
    out = tmp_path / "cv"
    train(store, SMALL, TrainConfig(**{**vars(FAST), "epochs": 1, "folds": 2}), out,
          log=lines.append)  # fmt: skip
    assert lines.count(NOTE) == 1 and lines[0] == NOTE
    assert not list(out.rglob("events.out.tfevents.*"))


@needs_tb
def test_resumed_board_replaces_the_epochs_after_the_checkpoint(tmp_path):
    board = Board(tmp_path)
    for epoch in (1, 2, 3):  # epoch 3 was logged, but last.pt holds epoch 2
        board.epoch({"epoch": epoch, "val_auc": float(epoch)})
    board.close()
    board = Board(tmp_path, first_epoch=3)
    for epoch in (3, 4):
        board.epoch({"epoch": epoch, "val_auc": 10.0 * epoch})
    board.close()
    values = [(s.step, s.value) for s in events(tmp_path).Scalars("auc/val")]
    assert values == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_a_disabled_board_writes_nothing(tmp_path):
    board = Board(tmp_path, enabled=False)
    board.epoch({"epoch": 1, "val_auc": 0.5})
    board.roc(np.array([0, 1]), np.array([0.2, 0.8]), 1, "cnn2")
    board.hparams(hparams_of(SMALL, FAST), {"auc": 0.5}, 1)
    board.close()
    assert list(tmp_path.iterdir()) == []
