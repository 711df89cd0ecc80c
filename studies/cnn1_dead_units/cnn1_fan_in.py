"""Do CNN1's fixes still keep its FC units alive when the FC layer's fan-in grows?

Every fix of cnn1_candidates.py (beside this file) works on the CPU demo (40x40 in-plane: the
FC sees 64 x 2 x 2 x 2 = 512 features at width 0.5). But the reason units die scales with the
fan-in: one Adam step moves a unit's pre-activation by about fan_in x lr x mean input, and at BraTS
geometry (240x240, width 1) the FC sees 128 x 2 x 15 x 15 = 57,600 features. A smaller first
learning rate (warm-up, a head learning rate) divides that step by a constant; normalising
(BatchNorm before or after the FC) removes the dependence. This script measures it: for each
candidate and store, the share of FC units that are positive for at least one volume of the
last `--window` steps, after each of the first `--steps` optimisation steps of training.

    python -m studies.cnn1_dead_units.cnn1_fan_in STORE [STORE ...] [--width 0.5] [--steps 12]

Candidates: plain-d0, kaiming-d0, warmup-d0 (the first epoch of a 5-epoch warm-up: lr / 5),
headlr-d0 (FC at lr / 10), flatnorm-d0, fcbn-d0 (smri's CNN1). CPU; patients from the store's
training split, batch 8 (4 modalities each: 32 volumes per step).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from smri.data import stratified_split
from smri.networks import ModelConfig, build_model
from smri.store import StoreReader
from studies.cnn1_dead_units.cnn1_candidates import CANDIDATES, cnn1_head

NAMES = ("plain-d0", "kaiming-d0", "warmup-d0", "headlr-d0", "flatnorm-d0", "fcbn-d0")


def alive_curve(store: str, name: str, width: float, steps: int, window: int) -> tuple[int, list]:
    """(fan-in, share of FC units alive over the last `window` steps, after each step)."""
    c = CANDIDATES[name]
    with StoreReader(store) as reader:
        split = stratified_split(reader.labels, reader.info.classes, 0.2, 0)
        rows = np.random.default_rng(0).permutation(split.train)[: steps * 8]
        x = torch.from_numpy(reader.read_many(np.sort(rows)).astype(np.float32))
        y = torch.from_numpy(reader.labels[np.sort(rows)].astype(np.float32))
        shape = reader.info.volume_shape[1:]
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn1", volume_shape=shape, width=width, dropout=0))
    flat = model.cnn.head[1].in_features
    model.cnn.head = cnn1_head(flat, 256, 0.0, c.head)
    head = {id(p) for p in model.cnn.head.parameters()}
    lr = 1e-3 / c.warmup if c.warmup else 1e-3  # a warm-up's first epoch
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": lr},
        {"params": [p for p in model.parameters() if id(p) in head], "lr": lr * c.head_lr},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(y == 0).sum() / (y == 1).sum())
    relu = next(m for m in model.cnn.head if isinstance(m, nn.ReLU))
    fired: list[torch.Tensor] = []
    relu.register_forward_hook(lambda _m, _i, out: fired.append((out > 0).any(0)))
    model.train()
    curve = []
    batches = max(len(y) // 8, 1)  # a small store's training split is cycled through
    for step in range(steps):
        batch = slice(step % batches * 8, step % batches * 8 + 8)
        loss = loss_fn(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(torch.stack(fired[-window:]).any(0).float().mean().item())
    return flat, curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--candidates", default=",".join(NAMES))
    args = ap.parse_args()
    shown = sorted({0, args.steps // 4, args.steps // 2, args.steps - 1})
    print(f"width {args.width}; FC units alive over the last {args.window} steps (x 32 volumes)")
    print("| store | FC fan-in | candidate | " + " | ".join(f"step {s + 1}" for s in shown)
          + " | seconds |\n|---|---|---|" + "---|" * (len(shown) + 1))  # fmt: skip
    for store in args.stores:
        for name in args.candidates.split(","):
            t0 = time.perf_counter()
            flat, curve = alive_curve(store, name, args.width, args.steps, args.window)
            cells = " | ".join(f"{curve[s]:.2f}" for s in shown)
            print(f"| {store} | {flat:,} | {name} | {cells} | {time.perf_counter() - t0:.0f} |",
                  flush=True)  # fmt: skip
    print(f"\n(one Adam step at lr 1e-3 moves a pre-activation by up to fan_in x 1e-3 x mean "
          f"input; e.g. fan-in 57,600: {57600 * 1e-3 * 0.5:.0f} for mean input 0.5)")  # fmt: skip


if __name__ == "__main__":
    main()
