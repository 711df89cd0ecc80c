"""CUDA paths: device cache vs streaming, bf16 + channels_last training, --compile, the CLI.

Every test here needs a GPU and skips without one (`make test-all` on a GPU machine runs them;
`make test` deselects the `gpu` marker).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from smri.cli import main
from smri.data import Batches, resolve_cache
from smri.model_io import load_checkpoint
from smri.networks import MODEL_NAMES, ModelConfig, build_model, pad_first_conv
from smri.training import TrainConfig, train
from tests.helpers.cli import quiet
from tests.helpers.training import assert_same_batches, metric_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
GPU = TrainConfig(epochs=3, batch_size=4, workers=2, device="cuda", lr=3e-3)
SMALL = ModelConfig(width=0.25)


STORE_LABELS = [0, 1] * 10  # the patients of conftest's `store`


def losses(run, key="train_loss"):
    return [float(r[key]) for r in metric_rows(run)]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_and_device_cached_batches_are_identical(store, workers):
    rows = np.arange(13)
    kw = {"batch_size": 4, "seed": 3, "shuffle": True, "device": CUDA}
    cached = Batches(store, rows, cache="device", **kw)
    streamed = Batches(store, rows, cache="none", workers=workers, **kw)
    assert cached.images.is_cuda
    # more batches than the slot pool holds: slots are reused; all on the GPU
    assert_same_batches(cached, streamed, epochs=(0, 1, 2), sizes=[4, 4, 4, 1])
    cached.close()
    streamed.close()


def test_streaming_pins_the_slots_and_survives_a_slow_copy_stream(store):
    """Batches go from page-locked slots to the GPU on a side stream; a slot must not be
    rewritten before its copy is done, however late the copy stream runs."""
    rows = np.arange(20)
    kw = {"batch_size": 2, "seed": 5, "shuffle": True, "device": CUDA}
    cached = Batches(store, rows, cache="device", **kw)
    streamed = Batches(store, rows, cache="none", workers=2, **kw)
    expected = [(x.clone(), y.clone()) for x, y in cached.epoch(1)]
    got = []
    for x, y in streamed.epoch(1):
        with torch.cuda.stream(streamed._feeder.stream):
            torch.cuda._sleep(20_000_000)  # delays every later copy by ~10 ms
        got.append((x.clone(), y.clone()))
    assert len(streamed._feeder.registered) == len(streamed._slots) == 6
    assert len(got) == len(expected) == 10
    for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    streamed.close()
    cached.close()


def test_auto_cache_keeps_a_store_that_fits_on_the_gpu():
    assert resolve_cache("auto", CUDA, 2**20) == "device"
    assert resolve_cache("auto", CUDA, 2**60) == "none"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_on_the_gpu_in_bf16(store, tmp_path, name):
    lines: list[str] = []
    train(store, ModelConfig(name=name, width=0.25), GPU, tmp_path / name, log=lines.append)
    assert "| cuda" in lines[0] and "cache device" in lines[0] and "bf16 on" in lines[0]
    loss = losses(tmp_path / name)
    assert all(np.isfinite(loss)) and loss[-1] < loss[0]
    ckpt = load_checkpoint(tmp_path / name / "best.pt")  # weights_only, mapped to the CPU
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    assert all(not t.is_cuda for t in ckpt["model"].values())


def test_streaming_and_device_cache_train_alike(store, tmp_path):
    """Same batches, same seed: equal up to the GPU's non-deterministic reductions."""
    train(store, SMALL, GPU, tmp_path / "device", log=quiet)
    streamed = TrainConfig(**{**GPU.__dict__, "cache": "none"})
    train(store, SMALL, streamed, tmp_path / "none", log=quiet)
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(losses(tmp_path / "none", key), losses(tmp_path / "device", key),
                                   rtol=2e-2)  # fmt: skip


def test_cli_train_evaluate_on_the_gpu(store, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", str(store), "--model", "cnn2", "--width", "0.25", "--epochs", "2",
            "--batch-size", "4", "--device", "cuda", "--out", str(run)]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device_name"] == torch.cuda.get_device_name()
    result = runner.invoke(main, ["evaluate", str(run / "best.pt"), str(store), "--device", "cuda",
                                  "--out", str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["auc"] <= 1.0


def test_compile_trains(store, tmp_path):
    cfg = TrainConfig(**{**GPU.__dict__, "epochs": 2, "compile": True})
    train(store, SMALL, cfg, tmp_path / "compiled", log=quiet)
    assert all(np.isfinite(losses(tmp_path / "compiled")))
    state = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)  # saved without the wrapper


def test_padded_first_conv_matches_on_the_gpu():
    """The tensor-core candidate for the first convolution computes the same function."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(volume_shape=(16, 32, 32), width=0.5)).to(CUDA).eval()
    model = model.to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 4, 16, 32, 32, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = model(x).float()
        padded = pad_first_conv(model, 8)(x).float()
    torch.testing.assert_close(padded, plain, rtol=2e-2, atol=2e-2)
