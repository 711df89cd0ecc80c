"""Multi-process training: torchrun's variables, shards, collectives, and 2-process gloo runs.

The runs start `python -m torch.distributed.run --nproc_per_node 2 -m smri train` on 127.0.0.1
(CPU, gloo) exactly as a user would, then check the run folder against a single-process
`evaluate` of its checkpoints, and that a Ctrl-C'd run resumed under torchrun equals an
uninterrupted one.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from smri.cli import main
from smri.data import contiguous_shard, epoch_batches, random_flips, strided_shard
from smri.errors import ConfigError
from smri.evaluation import evaluate_store
from smri.metrics import binary_metrics
from smri.model_io import calibration_of
from smri.training.distributed import SINGLE, Dist, from_env
from smri.training.runs import METRIC_COLUMNS
from tests.helpers.stores import make_store
from tests.helpers.training import metric_rows, one_torch_thread  # noqa: F401 (autouse fixture)

# 11 LGG + 13 HGG: 19 training patients (odd: the sampler pads one), 5 validation (shards 3 + 2)
LABELS = [0, 1] * 11 + [1, 1]
EPOCHS = 4
TRAIN_ARGS = ["--width", "0.25", "--batch-size", "4", "--epochs", str(EPOCHS), "--lr", "3e-3",
              "--cache", "ram", "--workers", "0", "--augment"]  # fmt: skip
TIMING = {"seconds", "patients_per_s"}
RUN_FILES = [
    "best.pt", "config.json", "last.pt", "loss_curve.png", "metrics.csv", "predictions.csv",
    "split.json", "summary.json",
]  # fmt: skip
EVENTS = "events.out.tfevents."  # TensorBoard's files, when the package is installed


def run_files(out: Path) -> list[str]:
    """The run folder's files but TensorBoard's."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(EVENTS))


# ------------------------------------------------------------------------------ torchrun's env
def test_no_world_size_is_a_single_process():
    assert from_env({}) is SINGLE
    assert from_env({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE  # torchrun --nproc_per_node 1
    assert not SINGLE.enabled and SINGLE.is_main


def test_torchrun_variables_become_a_dist():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    assert from_env(env) == Dist(rank=3, world_size=4, local_rank=1, local_world_size=2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, r"WORLD_SIZE must be an integer \(set by torchrun\), got 'two'"),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            r"RANK 2 is outside 0\.\.1 \(WORLD_SIZE\)",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"},
            r"WORLD_SIZE=2 but MASTER_ADDR not set; start multi-process training with torchrun",
        ),
    ],
)
def test_bad_torchrun_variables(env, message):
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_single_process_helpers_return_their_input():
    x = np.array([1.5, 2.5], dtype=np.float32)
    assert SINGLE.gather(x) is x
    assert SINGLE.sum([1.0, 2]) == [1.0, 2]
    assert SINGLE.broadcast("a") == "a"
    assert SINGLE.on_main(lambda: 7) == 7
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    assert SINGLE.prepare_model(net) == (net, False)
    assert SINGLE.wrap(net) is net


def test_global_batch_must_divide_over_the_ranks(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 4)
    env = {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "1"}  # fmt: skip
    args = ["train", str(store), "--batch-size", "4", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2
    assert (
        "Invalid value for '--batch-size': 4 is the global batch and must be divisible by the "
        "3 processes (WORLD_SIZE); use a multiple of 3"
    ) in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()
    assert not torch.distributed.is_initialized()


# ------------------------------------------------------------------------------------ shards
def test_strided_shard_deals_out_like_distributed_sampler():
    order = np.array([7, 3, 9, 0, 5])
    shards = [strided_shard(order, r, 3) for r in range(3)]
    assert [s.tolist() for s in shards] == [[7, 0], [3, 5], [9, 7]]  # padded with order[0]
    assert strided_shard(order, 0, 1) is order


def test_rank_batches_together_are_the_single_process_batches():
    n, per_rank, world = 19, 2, 2
    single = epoch_batches(n, per_rank * world, seed=5, epoch=3)
    ranks = [epoch_batches(n, per_rank, 5, 3, True, r, world) for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # same number of steps on every rank
    for k, batch in enumerate(single):
        together = np.stack([ranks[0][k], ranks[1][k]], axis=1).ravel()  # interleave r::world
        assert together[: len(batch)].tolist() == batch.tolist()
    assert len(together) == len(batch) + 1 and together[-1] == single[0][0]  # padding wraps


def test_rank_flips_are_the_single_process_flips():
    x = torch.arange(4 * 4 * 2 * 3 * 5, dtype=torch.float32).reshape(4, 4, 2, 3, 5)
    single = random_flips(x, 1, 2, 3)
    for rank in range(2):
        assert torch.equal(random_flips(x[rank::2], 1, 2, 3, rank, 2), single[rank::2])


def test_contiguous_shards_rebuild_the_rows():
    rows = np.array([2, 4, 8, 16, 32])
    shards = [contiguous_shard(rows, r, 2) for r in range(2)]
    assert [s.tolist() for s in shards] == [[2, 4, 8], [16, 32]]
    assert contiguous_shard(rows[:1], 1, 2).tolist() == []


# ------------------------------------------------------------------------- collectives (gloo)
def _collectives(rank: int, world: int, port: int, out: str) -> None:
    """One rank of the collectives test: uneven gather, sum, broadcast, on_main errors."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from smri.training.distributed import process_group

    spec = Dist(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    with process_group(spec, "cpu") as dist:
        gathered = dist.gather(np.arange(3 - rank, dtype=np.float32) + 10 * rank)
        empty = dist.gather(np.zeros(rank, dtype=np.int64))
        totals = dist.sum([1.5, rank])
        shared = dist.broadcast({"rank": rank})
        try:
            dist.on_main(lambda: (_ for _ in ()).throw(ConfigError("refused", option="--out")))
            error = None
        except ConfigError as exc:
            error = [str(exc), exc.option]
        Path(out, f"{rank}.json").write_text(json.dumps({
            "gathered": gathered.tolist(), "dtype": str(gathered.dtype), "empty": empty.tolist(),
            "totals": totals, "shared": shared, "error": error, "backend": dist.backend,
        }))  # fmt: skip


@pytest.mark.slow  # the torchrun runs below exercise the same collectives end to end
def test_collectives_on_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_collectives, args=(2, free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got == {
            "gathered": [0.0, 1.0, 2.0, 10.0, 11.0], "dtype": "float32", "empty": [0],
            "totals": [3.0, 1.0], "shared": {"rank": 0}, "error": ["refused", "--out"],
            "backend": "gloo",
        }  # fmt: skip


# ---------------------------------------------------------------------------- 2-process runs
def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str | Path, nproc: int = 2) -> list[str]:
    """The command line of an `nproc`-process `smri` on this machine (gloo, 127.0.0.1)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "smri",
        *map(str, args),
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_torchrun(*args: str | Path, nproc: int = 2) -> subprocess.CompletedProcess:
    command = torchrun(*args, nproc=nproc)
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


STORE_LABELS = LABELS  # the patients of conftest's `store`


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    result = run_torchrun("train", store, *TRAIN_ARGS, "--out", out)
    return out, result.stdout


def test_two_process_run_writes_one_valid_run_folder(run):
    out, stdout = run
    assert run_files(out) == RUN_FILES  # no .partial files left behind
    if importlib.util.find_spec("tensorboard"):  # rank 0 alone writes event files
        assert len([p for p in out.iterdir() if p.name.startswith(EVENTS)]) == 1
    lines = stdout.splitlines()
    assert lines[0] == (
        "note: 2 processes on cpu: SyncBatchNorm needs CUDA, so each rank normalises its own "
        "2 patients (running statistics are rank 0's)"
    )
    assert lines[1] == (
        "cnn2: 101,505 parameters | cpu | cache ram | bf16 off | 19 train / 5 val | "
        "2 ranks x 2 patients/step"
    )
    assert [line.split()[:2] for line in lines[2:-1]] == [
        ["epoch", f"{k}/{EPOCHS}"] for k in range(1, EPOCHS + 1)
    ]  # logged once, by rank 0
    assert lines[-1] == f"run folder: {out}"
    with open(out / "metrics.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in metric_rows(out)] == list(range(1, EPOCHS + 1))
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["batch_size"] == 4
    assert config["distributed"] == {
        "world_size": 2, "local_world_size": 2, "backend": "gloo", "batch_size": "global",
        "batch_size_per_rank": 2, "sync_batchnorm": False,
        "train_sampling": "epoch permutation padded by wrapping, rank r takes r::world_size",
        "val_sharding": "contiguous shards, gathered in order (no padding)",
    }  # fmt: skip
    split = json.loads((out / "split.json").read_text())
    assert (len(split["train"]), len(split["val"])) == (19, 5)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["epochs"], summary["n_train"], summary["n_val"]) == (EPOCHS, 19, 5)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == EPOCHS


def _evaluate_val(checkpoint: Path, store: Path, val_ids: list[str]) -> tuple[np.ndarray, ...]:
    """Single-process `smri evaluate` of `checkpoint`, restricted to the validation patients."""
    result = evaluate_store(checkpoint, store, device="cpu", batch_size=3, cache="ram")
    rows = [result.patient_ids.index(pid) for pid in val_ids]
    return result.labels[rows], result.probabilities[rows]


def test_validation_metrics_equal_a_single_process_evaluation(run, store):
    out, _ = run
    val_ids = json.loads((out / "split.json").read_text())["val"]
    summary = json.loads((out / "summary.json").read_text())
    labels, probs = _evaluate_val(out / "best.pt", store, val_ids)
    assert len(set(np.round(probs, 4))) > 1  # the model tells patients apart
    offset, threshold, _ = calibration_of(torch.load(out / "best.pt", weights_only=True))
    expected = binary_metrics(labels, probs, threshold)
    assert {k: summary["best"][k] for k in expected} == pytest.approx(expected, abs=1e-9)
    with open(out / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert [p["patient_id"] for p in preds] == val_ids  # gathered back in split order
    assert [float(p["probability"]) for p in preds] == pytest.approx(probs, abs=1e-6)

    # the last epoch's row was computed with the weights now in last.pt
    labels, probs = _evaluate_val(out / "last.pt", store, val_ids)
    final = metric_rows(out)[-1]
    expected = binary_metrics(labels, probs, threshold)
    assert {k: float(final[f"val_{k}"]) for k in expected} == pytest.approx(expected, abs=1e-9)
    y_train = np.array(LABELS)[[int(pid[1:]) for pid in json.loads(
        (out / "split.json").read_text())["train"]]]  # fmt: skip
    pos_weight = torch.tensor((y_train == 0).sum() / (y_train == 1).sum())
    logits = torch.logit(torch.from_numpy(probs)) - offset  # the raw logits: calibration undone
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, torch.from_numpy(labels * 1.0))
    assert float(final["val_loss"]) == pytest.approx(loss.item(), abs=1e-5)


def test_interrupted_two_process_run_resumes_to_the_uninterrupted_result(run, store, tmp_path):
    full, _ = run
    cut = tmp_path / "cut"
    proc = subprocess.Popen(torchrun("train", store, *TRAIN_ARGS, "--out", cut), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith(f"epoch 1/{EPOCHS}"):
            proc.send_signal(signal.SIGINT)  # Ctrl-C: torchrun passes it on to both ranks
            break
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.count(f"Continue with: smri train --resume {cut}") == 1  # rank 0 only
    epoch = torch.load(cut / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < EPOCHS, "the run finished before Ctrl-C reached it"
    assert not (cut / "summary.json").exists()

    result = run_torchrun("train", "--resume", cut, "--cache", "ram", "--workers", "0")
    assert f"resuming {cut} after epoch {epoch}" in result.stdout.splitlines()
    assert run_files(cut) == RUN_FILES
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in metric_rows(cut)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in metric_rows(full)]
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_rank_without_validation_patients(tmp_path):
    store = make_store(tmp_path / "s.h5", labels=[0, 1] * 4)  # 2 validation patients, 3 ranks
    out = tmp_path / "run"
    args = ["--width", "0.25", "--batch-size", "3", "--epochs", "1", "--cache", "none"]
    result = run_torchrun("train", store, *args, "--workers", "0", "--out", out, nproc=3)
    assert "6 train / 2 val | 3 ranks x 1 patients/step" in result.stdout
    val_ids = json.loads((out / "split.json").read_text())["val"]
    _, probs = _evaluate_val(out / "best.pt", store, val_ids)
    with open(out / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert [p["patient_id"] for p in preds] == val_ids
    assert [float(p["probability"]) for p in preds] == pytest.approx(probs, abs=1e-6)


def test_rank_0_refusal_is_reported_once_and_every_rank_exits(run, store):
    out, _ = run
    command = torchrun("train", store, "--batch-size", "4", "--out", out)
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode != 0
    message = f"Error: Invalid value for '--out': {out} exists and is not empty"
    assert result.stderr.count(message) == 1
    assert "exitcode: 2" in result.stderr  # torchrun's report of the first rank to exit
    assert run_files(out) == RUN_FILES
