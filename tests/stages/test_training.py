"""Training: improving loss for every model, the run folder, checkpoints, resume, K folds."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from smri.errors import ConfigError, DataError
from smri.model_io import check_compatible, load_checkpoint, resolve_device
from smri.networks import MODEL_NAMES, ModelConfig, build_model
from smri.training import TrainConfig, train
from smri.training.runs import METRIC_COLUMNS
from tests.helpers.cli import quiet
from tests.helpers.stores import make_store
from tests.helpers.training import metric_rows, one_torch_thread  # noqa: F401 (autouse fixture)

FAST = TrainConfig(epochs=3, batch_size=4, workers=0, cache="ram", lr=3e-3)
SMALL = ModelConfig(width=0.25)


STORE_LABELS = [0, 1] * 10  # the patients of conftest's `store`


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_with_finite_improving_loss(store, tmp_path, name):
    train(store, ModelConfig(name=name, width=0.25), FAST, tmp_path / name, log=quiet)
    losses = [float(r["train_loss"]) for r in metric_rows(tmp_path / name)]
    assert len(losses) == 3
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_run_folder_contents(store, tmp_path):
    lines: list[str] = []
    out = tmp_path / "run"
    summary = train(store, SMALL, FAST, out, log=lines.append, tensorboard=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.json", "last.pt", "loss_curve.png", "metrics.csv",
        "predictions.csv", "split.json", "summary.json",
    ]  # fmt: skip
    assert lines[0] == "cnn2: 101,505 parameters | cpu | cache ram | bf16 off | 16 train / 4 val"
    assert [line.split()[:2] for line in lines[1:]] == [
        ["epoch", "1/3"],
        ["epoch", "2/3"],
        ["epoch", "3/3"],
    ]
    with open(out / "metrics.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == METRIC_COLUMNS
    split = json.loads((out / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"])
    assert len(split["train"]) == 16 and len(split["val"]) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["model"]["volume_shape"] == [16, 32, 32]
    assert config["store"]["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert set(config["versions"]) >= {"smri", "torch", "numpy", "h5py", "python"}
    with open(out / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert [p["patient_id"] for p in preds] == split["val"]
    assert {p["predicted"] for p in preds} <= {"LGG", "HGG"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["best_epoch"] == summary["best_epoch"]
    assert saved["parameters"] == summary["parameters"] and saved["n_val"] == 4
    ranked = sorted(metric_rows(out), key=lambda r: (-float(r["val_auc"]), float(r["val_loss"])))
    assert saved["best_epoch"] == int(ranked[0]["epoch"])


def test_checkpoint_rebuilds_the_model_with_weights_only(store, tmp_path):
    out = tmp_path / "run"
    train(store, ModelConfig(name="cnn3", width=0.25), FAST, out, log=quiet)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["preprocess_config"]["slices"] == 16
    assert ckpt["store"]["volume_shape"] == [4, 16, 32, 32]
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and set(last) >= {"optimizer", "scheduler", "rng", "best"}


def _stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            raise KeyboardInterrupt

    return log


def test_resume_after_interrupt_equals_an_uninterrupted_run(store, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=4, workers=0, cache="ram", augment=True)
    train(store, SMALL, cfg, tmp_path / "full", log=quiet)
    with pytest.raises(KeyboardInterrupt):
        train(store, SMALL, cfg, tmp_path / "cut", log=_stop_after(2))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    assert len(metric_rows(tmp_path / "cut")) == 2
    train(store, SMALL, cfg, tmp_path / "cut", resume=True, log=quiet)
    timing = {"seconds", "patients_per_s"}
    full, cut = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "cut")
    assert [{k: v for k, v in r.items() if k not in timing} for r in cut] == [
        {k: v for k, v in r.items() if k not in timing} for r in full
    ]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_compile_trains_on_cpu(store, tmp_path):
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 2, "compile": True})
    train(store, SMALL, cfg, tmp_path / "compiled", log=quiet)
    assert all(np.isfinite([float(r["train_loss"]) for r in metric_rows(tmp_path / "compiled")]))
    state = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)  # saved without the wrapper


def test_streaming_and_ram_cache_train_identically(store, tmp_path):
    train(store, SMALL, FAST, tmp_path / "ram", log=quiet)
    streamed = TrainConfig(**{**FAST.__dict__, "cache": "none"})
    train(store, SMALL, streamed, tmp_path / "none", log=quiet)
    keys = ("train_loss", "val_loss", "val_auc")
    assert [[r[k] for k in keys] for r in metric_rows(tmp_path / "ram")] == [
        [r[k] for k in keys] for r in metric_rows(tmp_path / "none")
    ]


def test_k_fold_runs_every_fold_and_reports_mean_and_std(store, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram", folds=3)
    lines: list[str] = []
    summary = train(store, SMALL, cfg, tmp_path / "cv", log=lines.append)
    out = tmp_path / "cv"
    assert all((out / f"fold{k}" / "best.pt").exists() for k in range(3))
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    fold0 = json.loads((out / "fold0" / "summary.json").read_text())
    assert summary["device_name"] == fold0["device_name"]  # summary.md's device column
    aucs = [f["auc"] for f in summary["per_fold"]]
    assert summary["mean"]["auc"] == pytest.approx(np.mean(aucs))
    assert summary["std"]["auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert summary["std_ddof"] == 1
    assert lines[-1].startswith("3-fold cross-validation: accuracy ")
    with open(out / "predictions.csv", newline="") as fh:
        ids = [r["patient_id"] for r in csv.DictReader(fh)]
    assert sorted(ids) == [f"P{i:03d}" for i in range(20)]  # every patient validated once
    assert (out / "loss_curve.png").exists()


def test_folds_in_parallel_train_exactly_as_one_after_another(store, tmp_path):
    """--jobs 2: the same folds, bit for bit (each worker runs one thread, as this test does)."""
    cfg = TrainConfig(epochs=2, batch_size=4, workers=0, cache="ram", folds=3, augment=True)
    lines: list[str] = []
    one = train(store, SMALL, cfg, tmp_path / "one", log=quiet)
    two = train(store, SMALL, replace(cfg, jobs=2), tmp_path / "two", log=lines.append)
    assert one["per_fold"] == two["per_fold"]
    for k in range(3):
        assert metric_rows(tmp_path / "one" / f"fold{k}") == [
            {**r, "seconds": a["seconds"], "patients_per_s": a["patients_per_s"]}
            for r, a in zip(metric_rows(tmp_path / "two" / f"fold{k}"),
                            metric_rows(tmp_path / "one" / f"fold{k}"), strict=True)
        ]  # fmt: skip
        a = load_checkpoint(tmp_path / "one" / f"fold{k}" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "two" / f"fold{k}" / "last.pt")["model"]
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert "folds 0, 1, 2: 2 at a time, 1 thread each" in lines
    assert (tmp_path / "one" / "predictions.csv").read_text() == (
        tmp_path / "two" / "predictions.csv"
    ).read_text()


def test_single_fold(store, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, cache="ram", folds=4, fold=2)
    summary = train(store, SMALL, cfg, tmp_path / "f2", log=quiet)
    assert summary["fold"] == 2 and summary["n_val"] == 5
    assert json.loads((tmp_path / "f2" / "split.json").read_text())["fold"] == 2


@pytest.mark.parametrize(
    ("changes", "option", "message"),
    [
        (
            {"batch_size": 17},
            "--batch-size",
            r"batch size 17 is larger than the training split \(16",
        ),
        ({"fold": 1}, "--fold", "--fold needs --folds K"),
        (
            {"jobs": 2},
            "--jobs",
            r"--jobs trains folds \(or --seeds repeats\) at once: it needs --folds K or --seeds N",
        ),
        ({"seeds": 0}, "--seeds", "must be 1 or more, got 0"),
        ({"folds": 3, "fold": 3}, "--fold", r"must be in 0\.\.2, got 3"),
        (
            {"folds": 11},
            "--folds",
            "11 folds need at least 11 patients of every class; class LGG has 10",
        ),
    ],
)
def test_bad_settings_name_the_option(store, tmp_path, changes, option, message):
    with pytest.raises(ConfigError, match=message) as exc:
        train(store, SMALL, TrainConfig(**{**FAST.__dict__, **changes}), tmp_path / "x", log=quiet)
    assert exc.value.option == option
    assert not (tmp_path / "x").exists()


def test_non_empty_out_is_refused_without_overwrite(store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; choose another --out"):
        train(store, SMALL, FAST, out, log=quiet)
    with pytest.raises(
        ConfigError, match=r"not an smri run folder \(no config\.json\); not deleting it"
    ):
        train(store, SMALL, FAST, out, overwrite=True, log=quiet)
    assert (out / "notes.txt").read_text() == "mine"


def test_one_class_store_is_refused(tmp_path):
    store = make_store(tmp_path / "one.h5", labels=[1, 1, 1, 1])
    with pytest.raises(DataError, match="both classes; the store has LGG=0, HGG=4"):
        train(store, SMALL, FAST, tmp_path / "run", log=quiet)


def test_store_mismatch_names_each_difference(store, tmp_path):
    other = make_store(tmp_path / "o.h5", labels=[0, 1], shape=(3, 16, 32, 48),
                       modalities=("flair", "t1", "t2"))  # fmt: skip
    from smri.store import read_info

    expected = {"modalities": ["flair", "t1", "t1ce", "t2"], "slices": 16,
                "volume_shape": [4, 16, 32, 32]}  # fmt: skip
    message = (
        r"o\.h5 does not match m\.pt: modalities \['flair', 't1', 't2'\] \(checkpoint: "
        r"\['flair', 't1', 't1ce', 't2'\]\); volume_shape \[3, 16, 32, 48\]"
    )
    with pytest.raises(DataError, match=message):
        check_compatible(expected, read_info(other), "m.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu():
    with pytest.raises(ConfigError, match="CUDA was asked for but torch sees no GPU") as exc:
        resolve_device("cuda")
    assert exc.value.option == "--device"


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match="not an smri checkpoint"):
        load_checkpoint(bad)
    (tmp_path / "y.pt").write_text("hello")
    with pytest.raises(DataError, match=r"y\.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_seeds_repeat_every_fold_with_its_own_initialisation(store, tmp_path):
    """--seeds 2 --folds 2: four trainings in seed{r}/fold{k}; repeat 0 is the run without
    --seeds, byte for byte in its metrics; repeat 1 has the same splits, other weights."""
    cfg = replace(FAST, epochs=2, folds=2)
    plain = train(store, SMALL, cfg, tmp_path / "plain", log=quiet)
    summary = train(store, SMALL, replace(cfg, seeds=2), tmp_path / "seeds", log=quiet)
    run = tmp_path / "seeds"
    assert summary["seeds"] == 2 and summary["folds"] == 2
    assert summary["members"] == ["seed0/fold0", "seed0/fold1", "seed1/fold0", "seed1/fold1"]
    assert len(summary["per_fold"]) == 4
    for k in range(2):
        timeless = lambda rows: [  # noqa: E731
            {c: v for c, v in r.items() if c not in ("seconds", "patients_per_s")} for r in rows
        ]
        assert timeless(metric_rows(run / f"seed0/fold{k}")) == timeless(
            metric_rows(tmp_path / f"plain/fold{k}")
        )
        s0 = json.loads((run / f"seed0/fold{k}/split.json").read_text())
        s1 = json.loads((run / f"seed1/fold{k}/split.json").read_text())
        assert (s0["train"], s0["val"]) == (s1["train"], s1["val"])
        c1 = json.loads((run / f"seed1/fold{k}/config.json").read_text())["train"]
        assert (c1["repeat"], c1["fold"], c1["seeds"]) == (1, k, 2)
    w0 = load_checkpoint(run / "seed0/fold0/last.pt")["model"]
    w1 = load_checkpoint(run / "seed1/fold0/last.pt")["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())
    for r in range(2):  # each seed is a K-fold run of its own
        assert json.loads((run / f"seed{r}/summary.json").read_text())["folds"] == 2
        assert (run / f"seed{r}/predictions.csv").exists()
    assert plain["mean"]["auc"] == pytest.approx(
        json.loads((run / "seed0/summary.json").read_text())["mean"]["auc"]
    )
    from smri.comparison.figures import load_run  # what `smri plot` reads: every training

    assert len(load_run(run).metrics) == 4 and len(load_run(run).predictions) == 4
