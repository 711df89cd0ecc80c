"""How many of CNN1's FC units die during training? (studies/cnn1_dead_units/README.md)

Trains a CNN-LSTM on the training split of a store, as `smri train` builds it (same model,
split, class-weighted loss and AdamW; no flips, no learning-rate decay), and prints per epoch
the training loss and the share of CNN1's FC-embedding units that are alive: positive for at
least one training volume of the epoch (a ReLU unit that is zero for every input gets no
gradient and stays dead). CPU; the whole store is held in RAM.

    python -m studies.cnn1_dead_units.cnn1_dead_units STORE [--lr 1e-3] [--dropout 0.5] [--epochs 8]
        [--width 0.5] [--train N] [--model cnn1]

`--train N` keeps N random training patients (can the model fit a small set?).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--model", default="cnn1", choices=("cnn1", "cnn2", "cnn3"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train", type=int, default=None, help="N random training patients only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with StoreReader(args.store) as reader:
        split = stratified_split(reader.labels, reader.info.classes, 0.2, args.seed)
        rows = split.train
        if args.train is not None:  # a random subset: the store's rows are sorted by class
            rows = np.sort(np.random.default_rng(args.seed).permutation(rows)[: args.train])
        x = torch.from_numpy(reader.read_many(rows).astype(np.float32))
        y = torch.from_numpy(reader.labels[rows].astype(np.float32))
        shape = reader.info.volume_shape[1:]
    torch.manual_seed(args.seed)
    cfg = ModelConfig(name=args.model, volume_shape=shape, width=args.width, dropout=args.dropout)
    model = build_model(cfg)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(y == 0).sum() / (y == 1).sum())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    fired: list[torch.Tensor] = []
    if args.model == "cnn1":  # the ReLU after the FC layer: which units were positive
        relu = next(m for m in model.cnn.head if isinstance(m, nn.ReLU))
        relu.register_forward_hook(lambda _m, _i, out: fired.append((out > 0).any(0)))
    print(f"{args.model} width {args.width} dropout {args.dropout} lr {args.lr}: "
          f"{len(rows)} training patients of {args.store}")  # fmt: skip
    print("| epoch | training loss | FC units alive | seconds |\n|---|---|---|---|")
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        fired.clear()
        total, t0 = 0.0, time.perf_counter()
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), args.batch_size):
            batch = order[start : start + args.batch_size]
            loss = loss_fn(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        alive = f"{torch.stack(fired).any(0).float().mean().item():.2f}" if fired else "—"
        print(f"| {epoch} | {total / len(y):.4f} | {alive} | {time.perf_counter() - t0:.1f} |")


if __name__ == "__main__":
    main()
