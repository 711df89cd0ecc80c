"""The training commands end to end through click: outputs, exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from smri.cli import main
from tests.helpers.cli import invoke
from tests.helpers.stores import make_store
from tests.helpers.training import one_torch_thread  # noqa: F401 (autouse fixture)

FAST = ["--width", "0.25", "--batch-size", "4", "--epochs", "2", "--cache", "ram", "--workers", "0"]


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    result = CliRunner().invoke(main, ["train", str(store), *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_models_lists_parameter_counts():
    result = invoke("models")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "input 4x32x240x240, width 1; the CNN is shared across the 4 modalities"
    assert lines[2].split()[:5] == ["cnn1", "15,037,824", "197,761", "15,235,585", "256"]
    assert lines[3].split()[:5] == ["cnn2", "291,456", "132,225", "423,681", "128"]
    assert lines[4].split()[:5] == ["cnn3", "297,232", "132,225", "429,457", "128"]


def test_models_with_input_pool_are_the_models_of_the_pooled_geometry():
    pooled = invoke("models", "--shape", "4x32x120x120", "--width", "0.5", "--input-pool", "3")
    plain = invoke("models", "--shape", "4x32x40x40", "--width", "0.5")
    assert pooled.exit_code == plain.exit_code == 0
    head, *rows = pooled.output.splitlines()
    assert head == (
        "input 4x32x120x120, width 0.5, pooled 3x3 in-plane; the CNN is shared across the 4 "
        "modalities"
    )
    assert rows == plain.output.splitlines()[1:]  # CNN1's FC sees the same 2x2x2 positions


def test_models_rejects_a_too_small_shape():
    result = invoke("models", "--shape", "4x8x240x240")
    assert result.exit_code == 2
    assert "(8, 240, 240) is too small for 4 pooling stages" in result.output


def test_train_logs_one_line_per_epoch_and_writes_the_run(run):
    assert (run / "best.pt").exists() and (run / "loss_curve.png").exists()
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_dry_run_writes_nothing(store, tmp_path):
    result = invoke("train", store, *FAST, "--folds", "2", "--out", tmp_path / "x", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "model     cnn2 width 0.25: 101,505 parameters (18,432 CNN, 83,073 LSTM + head)"
    )
    assert result.output.splitlines()[-1] == "split     fold 1: 8 train / 8 val patients"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--batch-size", "50"],
            2,
            "batch size 50 is larger than the training split (12 patients)",
        ),
        (["--folds", "9"], 2, "9 folds need at least 9 patients of every class; class LGG has 8"),
        (["--device", "cuda"], 2, "CUDA was asked for but torch sees no GPU"),
        (
            ["--input-pool", "3"],
            2,
            "Invalid value for '--input-pool': the in-plane size 32x32 is not a multiple of 3; "
            "choose a divisor of 32",
        ),
        (["--input-pool", "4"], 2, "4 leaves 8x8 voxels in-plane, too few for 4 pooling stages"),
        (["--input-pool", "0"], 2, "Invalid value for '--input-pool': 0 is not in the range x>=1"),
    ],
)
def test_bad_options_are_one_line_usage_errors(store, tmp_path, args, code, message):
    result = invoke("train", store, "--out", tmp_path / "r", *args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_not_a_store_is_exit_1(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("nope")
    result = invoke("train", bad, "--out", tmp_path / "r")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "not a readable HDF5 file" in result.output


def test_existing_run_needs_overwrite_or_resume(store, run):
    result = invoke("train", store, "--out", run)
    assert result.exit_code == 2
    assert f"continue it with --resume {run}" in result.output


def test_resume_refuses_new_settings(run):
    result = invoke("train", "--resume", run, "--lr", "0.1")
    assert result.exit_code == 2
    assert "--resume continues a run with its own settings; drop --lr" in result.output


def test_resume_refuses_overwrite(run):
    before = (run / "metrics.csv").read_text()
    result = invoke("train", "--resume", run, "--overwrite")
    assert result.exit_code == 2
    assert "--resume continues the run in place; drop --overwrite" in result.output
    assert (run / "metrics.csv").read_text() == before


def test_resume_of_a_finished_run_keeps_its_metrics(run):
    before = (run / "metrics.csv").read_text()
    result = invoke("train", "--resume", run, "--cache", "none", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and (run / "metrics.csv").read_text() == before


def test_evaluate_prints_json_and_writes_roc(store, run, tmp_path):
    result = invoke("evaluate", run / "best.pt", store, "--out", tmp_path / "ev", "--cache", "ram")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 16 and 0 <= report["auc"] <= 1
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "metrics.json", "predictions.csv", "roc.png",
    ]  # fmt: skip


def test_evaluate_refuses_a_different_store(run, tmp_path):
    other = make_store(tmp_path / "o.h5", labels=[0, 1], shape=(4, 16, 32, 48))
    result = invoke("evaluate", run / "best.pt", other)
    assert result.exit_code == 1
    assert "does not match" in result.output
    assert "volume_shape [4, 16, 32, 48] (checkpoint: [4, 16, 32, 32])" in result.output


def test_evaluate_refuses_a_non_checkpoint(store, tmp_path):
    (tmp_path / "m.pt").write_text("x")
    result = invoke("evaluate", tmp_path / "m.pt", store)
    assert result.exit_code == 1 and "not a readable torch checkpoint" in result.output


def test_plot_writes_the_comparison_figures(run, tmp_path):
    result = invoke("plot", run, "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    assert [line.split("/")[-1] for line in result.output.splitlines()] == [
        "CNN2_loss_curve.png", "all_models_loss_curve.png", "all_models_accuracy.png",
        "all_models_roc.png", "summary.json", "summary.md",
    ]  # fmt: skip


def test_predict_preprocesses_raw_folders_like_the_store(brats2019, tmp_path):
    from smri.preprocessing import PreprocessConfig, run_preprocess

    root, _ = brats2019(n_hgg=4, n_lgg=4)
    store = tmp_path / "b.h5"
    run_preprocess(root, store, PreprocessConfig(slices=16), jobs=1, echo=lambda m: None)
    out = tmp_path / "r"
    args = ["--width", "0.25", "--batch-size", "2", "--epochs", "1", "--cache", "ram"]
    result = invoke("train", store, *args, "--workers", "0", "--val-fraction", "0.25", "--out", out)
    assert result.exit_code == 0, result.output
    folders = [root / "HGG" / "BraTS19_HGG_000_1", root / "LGG" / "BraTS19_LGG_001_1"]
    result = invoke("predict", out / "best.pt", *folders, "--csv", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["patient_id", "probability", "predicted"]
    assert [line.split()[0] for line in lines[1:]] == ["BraTS19_HGG_000_1", "BraTS19_LGG_001_1"]
    again = invoke(
        "predict", out / "best.pt", *folders, root / "HGG" / ".." / "HGG" / folders[0].name
    )
    assert again.stdout == result.stdout  # a folder listed twice is predicted once
    assert f"skipped: {root}/HGG/../HGG/BraTS19_HGG_000_1 is listed again; predicted once" in (
        again.output
    )
    assert all(line.split()[2] in {"HGG", "LGG"} for line in lines[1:])
    # the same patient through the store and through predict gives the same probability
    ev = invoke("evaluate", out / "best.pt", store, "--out", tmp_path / "ev", "--cache", "ram")
    by_id = {
        r.split(",")[0]: float(r.split(",")[2])
        for r in (tmp_path / "ev" / "predictions.csv").read_text().splitlines()[1:]
    }
    csv_rows = (tmp_path / "p.csv").read_text().splitlines()
    assert csv_rows[0] == "patient_id,probability,predicted"
    for row in csv_rows[1:]:
        pid, prob, _ = row.split(",")
        assert float(prob) == pytest.approx(by_id[pid], abs=1e-5)
    assert ev.exit_code == 0


def test_predict_skips_an_unusable_folder_with_a_reason(run, tmp_path):
    empty = tmp_path / "P9"
    empty.mkdir()
    result = invoke("predict", run / "best.pt", empty)
    assert result.exit_code == 1
    assert "skipped: patient P9: no flair, t1, t1ce, t2 file in" in result.output
    assert "Error: no patient folder could be used" in result.output


@pytest.mark.parametrize(
    ("left", "message"),
    [
        ((), "Interrupted before the run started; {out} holds nothing to resume."),
        (("config.json",), "Interrupted; no epoch had finished; the run starts from epoch 1. "
                           "Continue with: smri train --resume {out}"),
        (("config.json", "last.pt"), "Interrupted; {out}/last.pt holds the last finished epoch. "
                                     "Continue with: smri train --resume {out}"),
        (("config.json", "fold0/last.pt"), "Interrupted; each fold's last.pt in {out} holds its "
                                           "last finished epoch. Continue with: smri train "
                                           "--resume {out}"),
    ],
    ids=["nothing", "no-epoch", "single-split", "folds"],
)  # fmt: skip
def test_ctrl_c_says_what_the_run_folder_holds(store, tmp_path, monkeypatch, left, message):
    out = tmp_path / "r"

    def interrupted(*_args, **_kwargs):
        for name in left:  # what training had written when Ctrl-C came
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("smri.training.train", interrupted)
    result = invoke("train", store, *FAST, "--out", out)
    assert result.exit_code == 130
    assert result.output.strip() == message.format(out=out)


def train_cnn1(store, out, *options: str) -> tuple[dict, torch.nn.Module]:
    """One epoch of CNN1 with `options` into `out`: its config.json's model part, and the model
    its best.pt rebuilds."""
    from smri.model_io import load_checkpoint
    from smri.networks import ModelConfig, build_model

    result = invoke("train", store, *FAST, "--epochs", "1", "--model", "cnn1", *options,
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["model"]
    model = build_model(ModelConfig.from_dict(load_checkpoint(out / "best.pt")["model_config"]))
    return saved, model


def test_dropout_is_a_run_setting(store, tmp_path):
    out = tmp_path / "d"
    saved, model = train_cnn1(store, out, "--dropout", "0.2")
    assert saved["dropout"] == 0.2
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    result = invoke("train", "--resume", out, "--dropout", "0.3")
    assert result.exit_code == 2
    assert "--resume continues a run with its own settings; drop --dropout" in result.output
    assert invoke("train", store, "--dropout", "1").exit_code == 2


def test_input_pool_is_a_run_setting_kept_by_every_checkpoint_reader(store, tmp_path):
    out = tmp_path / "p"
    saved, model = train_cnn1(store, out, "--input-pool", "2")
    assert saved["input_pool"] == 2
    assert model.cnn.backbone.input_pool.kernel_size == (1, 2, 2)
    result = invoke("evaluate", out / "best.pt", store, "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    pytest.importorskip("safetensors")
    result = invoke("export", out, tmp_path / "exp")
    assert result.exit_code == 0, result.output
    assert "each slice first averaged over 2x2 voxels" in (tmp_path / "exp/README.md").read_text()
    result = invoke("evaluate", tmp_path / "exp", store, "--out", tmp_path / "ev2")
    assert result.exit_code == 0, result.output
    ev, ev2 = (tmp_path / d / "predictions.csv" for d in ("ev", "ev2"))
    assert ev2.read_text() == ev.read_text()
    result = invoke("train", "--resume", out, "--input-pool", "4")
    assert result.exit_code == 2
    assert "--resume continues a run with its own settings; drop --input-pool" in result.output


def test_a_checkpoint_saved_before_input_pool_existed_loads_unpooled():
    from smri.networks import ModelConfig

    saved = {k: v for k, v in vars(ModelConfig(width=0.25)).items() if k != "input_pool"}
    assert ModelConfig.from_dict(saved).input_pool == 1


def test_dry_run_and_run_log_note_units_that_see_too_little_of_the_slice(tmp_path):
    wide = make_store(tmp_path / "wide.h5", labels=[0, 1] * 4, shape=(4, 16, 64, 64))
    note = (
        "note: cnn2's last-block units each see 46 of the 64x64 voxels in-plane; on the demo, "
        "global pooling learnt reliably only when they saw most of the slice (docs/results.md); "
        "--input-pool 2 gives them most of it"
    )
    result = invoke("train", wide, "--dry-run", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == note
    for other in (["--model", "cnn1"], ["--input-pool", "2"]):
        result = invoke("train", wide, "--dry-run", "--batch-size", "4", *other)
        assert result.exit_code == 0 and "note:" not in result.output, result.output
    result = invoke("train", wide, *FAST, "--epochs", "1", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines().count(note) == 1
