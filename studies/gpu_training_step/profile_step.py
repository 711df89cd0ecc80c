"""Where a training step's GPU time goes: step time per memory layout, and the top kernels.

One model on one device-resident batch of random volumes (BraTS geometry by default): the
median step time (forward, backward, AdamW; CUDA events, 10 steps after 3 warm-ups) in bf16
autocast with channels_last_3d (smri's default), with contiguous tensors, and with the first
convolution on 8 zero-padded input channels, then the kernels of 5 steps under torch.profiler,
by GPU time. Without CUDA it runs the same on the
CPU (fp32, CPU operators), only to rehearse the script.

Usage: python -m studies.gpu_training_step.profile_step [MODEL] [S H W [PAD]]
       (default cnn2 32 240 240 0; PAD 8 profiles the step with the first convolution on 8
       zero-padded input channels)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.bench_train import BATCH, MODALITIES
from benchmarks.common import table
from smri.networks import ModelConfig, build_model, pad_first_conv

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def setup(name: str, shape: tuple[int, ...], layout: torch.memory_format, pad: int = 0):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, volume_shape=shape)).to(DEVICE)
    pad_first_conv(model, pad)
    model = model.to(memory_format=layout)
    x = torch.rand((BATCH, len(MODALITIES), *shape), device=DEVICE)
    y = (torch.arange(BATCH, device=DEVICE) % 2).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = nn.BCEWithLogitsLoss()

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            logits = model(x)
        opt.zero_grad(set_to_none=True)
        loss(logits.float(), y).backward()
        opt.step()

    return step


def step_seconds(step, repeats: int = 10) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if not CUDA:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    name = argv[0] if argv else "cnn2"
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else (32, 240, 240)
    torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name() if CUDA else "CPU (rehearsal)"
    print(f"{where}; {name}, batch {BATCH} of 4x{'x'.join(map(str, shape))}")
    rows = []
    variants = (
        ("channels_last_3d", torch.channels_last_3d, 0),
        ("contiguous", torch.contiguous_format, 0),
        ("channels_last_3d, first conv on 8 padded channels", torch.channels_last_3d, 8),
    )
    for label, layout, pad in variants:
        t = step_seconds(setup(name, shape, layout, pad))
        rows.append([label, t * 1e3, BATCH / t])
    print(table(["bf16 layout", "ms/step", "patients/s"], rows))

    pad = int(argv[4]) if len(argv) > 4 else 0
    step = setup(name, shape, torch.channels_last_3d, pad)
    step_seconds(step, repeats=1)
    kind = torch.profiler.ProfilerActivity.CUDA if CUDA else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[kind]) as prof:
        for _ in range(5):
            step()
        if CUDA:
            torch.cuda.synchronize()
    if CUDA:
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    else:
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]

    def gpu_us(e) -> float:
        return e.self_device_time_total if CUDA else e.self_cpu_time_total

    total = sum(gpu_us(e) for e in events)
    events.sort(key=gpu_us, reverse=True)
    print(f"\nGPU time of 5 steps: {total / 1e3:.1f} ms; top kernels:")
    print(table(["kernel", "calls", "ms", "share"],
                [[e.key[:90], e.count, gpu_us(e) / 1e3, gpu_us(e) / total]
                 for e in events[:15]]))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
