"""Multi-process training under torchrun: the process group, rank helpers and collectives.

`torchrun --nproc_per_node N -m smri train STORE ...` starts N copies of `smri train` and sets
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. The CLI turns them
into a `Dist` with `from_env` and joins the process group with `process_group`; the library only
ever receives the `Dist`. With WORLD_SIZE unset (or 1) nothing here touches torch.distributed:
every helper returns its input unchanged, so single-process training is the plain code path.

Rank 0 alone reads and writes the run folder; the other ranks get what it read through
`Dist.on_main` (a broadcast), so only the store has to be reachable from every host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from smri.errors import ConfigError, SmriError
from smri.model_io import resolve_device

T = TypeVar("T")
ENV_INTS = {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1}
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job; the default is one process and no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # 'nccl' or 'gloo' once the process group is up
    device: torch.device | None = None  # this rank's device once the process group is up

    @property
    def enabled(self) -> bool:
        """True when several processes train together (WORLD_SIZE > 1)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes the run folder."""
        return self.rank == 0

    # ------------------------------------------------------------------------------ collectives
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (float64; returned as given when alone)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's 1-D `array` (lengths may differ), concatenated in rank order, everywhere."""
        if not self.enabled:
            return array
        local = torch.from_numpy(np.ascontiguousarray(array).reshape(-1)).to(self.device)
        count = torch.tensor([local.numel()], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        tdist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        if max(sizes) == 0:
            return np.asarray(array).reshape(-1)
        padded = torch.zeros(max(sizes), dtype=local.dtype, device=self.device)
        padded[: local.numel()] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).cpu().numpy()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` (anything picklable) on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only; its result, or the error it raised, reaches every rank.

        For the run folder's files: the other ranks neither touch them nor hang at the next
        collective when rank 0 refuses an --out folder; every rank raises the same error.
        """
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except (SmriError, OSError) as exc:
                error = exc
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) into every rank's `module`.

        Parameters stay equal under DDP; running statistics drift apart where each rank
        normalises its own batch (CPU, no SyncBatchNorm), and checkpoints hold rank 0's.
        """
        if not self.enabled:
            return
        with torch.no_grad():
            for buf in module.buffers():
                tdist.broadcast(buf, src=0)

    # ----------------------------------------------------------------------------------- models
    def prepare_model(self, net: nn.Module) -> tuple[nn.Module, bool]:
        """`net` with SyncBatchNorm where batch statistics can be shared (CUDA), and whether it is.

        Called before moving `net` to the device. PyTorch's SyncBatchNorm runs on GPUs only
        (on CPU it raises in training), so with gloo on CPU each rank keeps plain BatchNorm.
        """
        if not self.enabled or self.device is None or self.device.type != "cuda":
            return net, False
        return nn.SyncBatchNorm.convert_sync_batchnorm(net), True

    def wrap(self, net: nn.Module) -> nn.Module:
        """DistributedDataParallel around `net` (on this rank's device already); alone: `net`."""
        if not self.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device is not None and self.device.type == "cuda"
        ids = [self.device.index] if cuda else None
        return DistributedDataParallel(net, device_ids=ids, output_device=ids[0] if ids else None)


SINGLE = Dist()


def from_env(environ: Mapping[str, str]) -> Dist:
    """The torchrun variables as a `Dist` (process group not started); one process without them."""
    if "WORLD_SIZE" not in environ:
        return SINGLE
    values = {}
    for key, default in ENV_INTS.items():
        text = environ.get(key, str(default))
        try:
            values[key] = int(text)
        except ValueError:
            raise ConfigError(f"{key} must be an integer (set by torchrun), got {text!r}") from None
    if values["WORLD_SIZE"] <= 1:
        return SINGLE
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(
            f"RANK {values['RANK']} is outside 0..{values['WORLD_SIZE'] - 1} (WORLD_SIZE)"
        )
    missing = [k for k in RENDEZVOUS_VARS if not environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={values['WORLD_SIZE']} but {' and '.join(missing)} not set; start "
            "multi-process training with torchrun (torchrun --nproc_per_node N -m smri train ...)"
        )
    return Dist(
        rank=values["RANK"],
        world_size=values["WORLD_SIZE"],
        local_rank=values["LOCAL_RANK"],
        local_world_size=values["LOCAL_WORLD_SIZE"],
    )


def start(spec: Dist, device_name: str) -> Dist:
    """Join the process group: NCCL with one GPU per rank (cuda:LOCAL_RANK), gloo on CPU."""
    if not spec.enabled:
        return spec
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"under torchrun each rank uses GPU LOCAL_RANK; got {device_name!r}, "
                "use --device cuda or auto (choose GPUs with CUDA_VISIBLE_DEVICES)",
                option="--device",
            )
        available = torch.cuda.device_count()
        if spec.local_rank >= available:
            raise ConfigError(
                f"LOCAL_RANK {spec.local_rank} needs GPU {spec.local_rank} but this host has "
                f"{available}; use --nproc_per_node {available} or fewer"
            )
        device = torch.device("cuda", spec.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    tdist.init_process_group(
        backend,
        rank=spec.rank,
        world_size=spec.world_size,
        device_id=device if backend == "nccl" else None,
    )
    return replace(spec, backend=backend, device=device)


def stop(d: Dist) -> None:
    """Leave the process group, if this process joined one."""
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


@contextmanager
def process_group(spec: Dist, device_name: str) -> Iterator[Dist]:
    """`start` ... `stop` around a block; yields the started `Dist` (or `spec` when alone)."""
    d = start(spec, device_name)
    try:
        yield d
        if d.enabled:  # every rank finishes before any leaves: a peer that tears down its
            tdist.barrier()  # gloo connections under another's feet aborts it (std::terminate)
    finally:
        stop(d)


def describe(d: Dist, batch_size: int) -> dict[str, Any] | None:
    """config.json's "distributed" block: ranks, backend and how the global batch is split."""
    if not d.enabled:
        return None
    return {
        "world_size": d.world_size,
        "local_world_size": d.local_world_size,
        "backend": d.backend,
        "batch_size": "global",
        "batch_size_per_rank": batch_size // d.world_size,
        "sync_batchnorm": d.device is not None and d.device.type == "cuda",
        "train_sampling": "epoch permutation padded by wrapping, rank r takes r::world_size",
        "val_sharding": "contiguous shards, gathered in order (no padding)",
    }
