"""Training throughput: patients/s of one train epoch per model x precision x input path.

Builds a store of random volumes at the given geometry with the real `StoreWriter` (training
speed does not depend on the pixel values), then times `train_one_epoch` after one warm-up
epoch, median of 3 epochs. On CUDA each model is timed fp32 eager and with the default path
(bf16 autocast + channels_last_3d), each with the whole store on the GPU (`device`) and
streamed by DataLoader workers (`none`). `--paths ...,pad8` adds the default path with the
first convolution run on 8 zero-padded input channels (`smri.networks.pad_first_conv`), and
`--paths ...,compile` the default path under torch.compile on device-resident data. Peak GPU
memory is recorded per row, and the activation traffic a training step must move at least
(every activation written in the forward pass and read in the backward pass, its gradient
written and read) is set against a device-to-device copy measured in the same run. All
ratios are within this run. Anchors (DESIGN.md, H200): CNN2 fp32 / bf16 47 / 117 patients/s
on device-resident data; streamed vs device 70 vs 111.

Usage: python -m benchmarks.bench_train [PATIENTS] [S H W] [--paths fp32,bf16,pad8,compile]
                                        [--models cnn1,cnn2,cnn3] [--json FILE]
       (default 64 at 32 240 240; on CPU use e.g. 16 16 64 64)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import CORES, machine, table
from smri.data import Batches
from smri.networks import MODEL_NAMES, ModelConfig, build_model, pad_first_conv
from smri.store import StoreWriter
from smri.training import train_one_epoch

BATCH = 8
MODALITIES = ("flair", "t1", "t1ce", "t2")
# --paths name: (row label, bf16 autocast + channels_last, zero-padded first-conv channels,
# torch.compile). Compiled rows are timed on device-resident data only.
PATHS = {
    "contiguous": ("fp32 contiguous", False, 0, False),
    "fp32": ("fp32", False, 0, False),
    "bf16": ("bf16+channels_last", True, 0, False),
    "pad8": ("bf16+channels_last+pad8", True, 8, False),
    "compile": ("bf16+channels_last+compile", True, 0, True),
}
CPU_PATHS = ("contiguous", "fp32")


@dataclass
class Row:
    """One model x path: patients/s and peak GPU memory (GiB) per input."""

    model: str
    path: str
    cached: float
    streamed: float | None = None
    cached_gib: float | None = None
    streamed_gib: float | None = None


def make_store(path: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """n patients of random float16 volumes, alternating labels."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, n_patients=n, volume_shape=(len(MODALITIES), *shape),
                     dtype="float16", compression=None, modalities=MODALITIES,
                     classes={"LGG": 0, "HGG": 1}, config={}) as w:  # fmt: skip
        vol = rng.random((len(MODALITIES), *shape), dtype=np.float32)
        for i in range(n):
            w.write(i, images=np.roll(vol, i, axis=-1), label=i % 2, patient_id=f"P{i:04d}")
    return path


def _rate(
    store: Path,
    n: int,
    shape: tuple[int, ...],
    name: str,
    cache: str,
    amp: bool,
    device: torch.device,
    compile: bool = False,
    pad: int = 0,
    contiguous: bool = False,
) -> tuple[float, float | None]:
    """Median training patients/s over 3 epochs after one warm-up epoch, and peak GiB.

    `pad`: run the first convolution on that many zero-padded input channels
    (`smri.networks.pad_first_conv`, the same function). `contiguous`: weights and inputs in
    the contiguous layout instead of smri's channels-last.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = pad_first_conv(build_model(ModelConfig(name=name, volume_shape=shape)), pad)
    if contiguous:  # the layout smri used on the CPU before channels-last
        model.memory_format = torch.contiguous_format
    fmt = torch.contiguous_format if contiguous else torch.channels_last_3d
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = nn.BCEWithLogitsLoss()
    batches = Batches(store, np.arange(n), batch_size=BATCH, seed=0, shuffle=True, cache=cache,
                      device=device, workers=min(8, CORES))  # fmt: skip
    step = torch.compile(model) if compile else model
    rates = [
        train_one_epoch(step, batches, opt, loss, e, amp=amp, augment=False, seed=0)[
            "patients_per_s"
        ]
        for e in range(4)
    ][1:]
    batches.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    if compile:
        torch.compiler.reset()
    return statistics.median(rates), peak


def rate(*args, **kwargs) -> tuple[float, float | None]:
    """`_rate`, or NaN with the error printed: one failing cell must not lose the others."""
    try:
        return _rate(*args, **kwargs)
    except Exception as exc:  # reported, and the table says nan
        print(f"FAILED {args[3:5]} {kwargs}: {type(exc).__name__}: {exc}", flush=True)
        torch.compiler.reset()
        return float("nan"), None


def activation_bytes(name: str, shape: tuple[int, ...], bytes_per_value: int) -> int:
    """Bytes of the distinct tensors the CNN's layers output in one patient's forward pass.

    Counted with forward hooks on every module of the CNN (convolutions, norms, pooling, linear
    layers, SE rescaling; an in-place ReLU or an Identity adds no new tensor) on the meta device,
    for all modalities; the LSTM over four embeddings adds next to nothing. A lower bound on
    what autograd keeps.
    """
    cnn = build_model(ModelConfig(name=name, volume_shape=shape)).cnn.to("meta")
    seen: dict[int, torch.Tensor] = {}  # keeps each output alive so ids stay unique

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        for o in output if isinstance(output, tuple) else (output,):
            if isinstance(o, torch.Tensor):
                seen[id(o)] = o

    handles = [m.register_forward_hook(hook) for m in cnn.modules()]
    with torch.no_grad():
        x = torch.empty((len(MODALITIES), 1, *shape), device="meta")
        seen[id(x)] = x  # the input volumes are read too
        cnn(x)
    for h in handles:
        h.remove()
    total = sum(t.numel() for t in seen.values())
    return total * bytes_per_value


def copy_bandwidth(device: torch.device, gib: float = 4.0) -> float:
    """Device-to-device copy rate in bytes/s (bytes read + written), median of 10 copies."""
    src = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * gib * 2**30 / statistics.median(times)


def gib(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def main() -> None:
    """Print the tables (and write them as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patients", nargs="?", type=int, default=64)
    parser.add_argument("shape", nargs="*", type=int, default=[32, 240, 240], help="S H W")
    parser.add_argument(
        "--paths",
        default="contiguous,fp32,bf16",
        help="comma-separated, of contiguous (fp32, the contiguous layout), fp32 (eager, "
        "channels_last), bf16 (+ channels_last, the default CUDA path), "
        "pad8 (bf16 path, first convolution on 8 zero-padded input channels) and compile "
        "(bf16 path under torch.compile, device cache only); CUDA only but fp32",
    )
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    n, shape = args.patients, tuple(args.shape)
    models, paths = args.models.split(","), args.paths.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    caches = ("device", "none") if cuda else ("ram", "none")
    name_of = torch.cuda.get_device_name() if cuda else machine()
    print(f"{name_of}; {n} patients of 4x{'x'.join(map(str, shape))} float16; batch {BATCH}")
    if not cuda and set(paths) - set(CPU_PATHS):
        skipped = ", ".join(p for p in paths if p not in CPU_PATHS)
        print(f"no CUDA device: {skipped} skipped (GPU paths); the ram cache stands in for device")
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "bench.h5", n, shape)
        for key in (k for k in PATHS if k in paths and (cuda or k in CPU_PATHS)):
            path, amp, pad, compiled = PATHS[key]
            for name in models:
                t0 = time.perf_counter()
                kw = {
                    "amp": amp,
                    "pad": pad,
                    "compile": compiled,
                    "contiguous": key == "contiguous",
                }
                c, c_gib = rate(store, n, shape, name, caches[0], device=device, **kw)
                s, s_gib = (None, None) if compiled else rate(store, n, shape, name, "none",
                                                               device=device, **kw)  # fmt: skip
                rows.append(Row(name, path, c, s, c_gib, s_gib))
                streamed = "" if s is None else f", none {s:.1f}"
                print(f"{name} {path}: {caches[0]} {c:.1f}{streamed} patients/s "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    print(f"({time.perf_counter() - started:.0f} s)\n")

    fp32 = {r.model: r.cached for r in rows if r.path == "fp32"}
    contig = {r.model: r.cached for r in rows if r.path == "fp32 contiguous"}
    print(table(
        ["model", "path", f"{caches[0]} patients/s", "none patients/s", "none / cached",
         "vs fp32 eager", "vs contiguous", f"peak GiB ({caches[0]})", "peak GiB (none)"],
        [[r.model, r.path, r.cached, "" if r.streamed is None else r.streamed,
          "" if r.streamed is None else r.streamed / r.cached,
          r.cached / fp32[r.model] if r.model in fp32 else "",
          r.cached / contig[r.model] if r.model in contig else "",
          gib(r.cached_gib), gib(r.streamed_gib)] for r in rows],
    ))  # fmt: skip
    report: dict[str, object] = {"device": name_of, "patients": n, "shape": shape,
                                 "batch": BATCH, "rows": [asdict(r) for r in rows]}  # fmt: skip
    if cuda:
        bw = copy_bandwidth(device)
        print(f"\nDevice-to-device copy: {bw / 1e12:.2f} TB/s (read + write).")
        traffic_rows = []
        for r in rows:
            if r.path in ("fp32", "fp32 contiguous"):
                continue
            act = activation_bytes(r.model, shape, bytes_per_value=2)
            need = 4 * act * r.cached  # written + read in forward/backward, gradient likewise
            traffic_rows.append([r.model, r.path, act / 2**20, need / 1e12, need / bw])
        print(table(["model", "path", "bf16 activations MiB/patient", "min traffic TB/s",
                     "share of copy rate"], traffic_rows))  # fmt: skip
        report["copy_bytes_per_s"] = bw
        report["traffic"] = traffic_rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
