"""Why CNN1's FC units die, and what keeps them alive: each candidate fix cross-validated.

Runs `smri train` (the library function, same split, loop, checkpoints and outputs) on a store
with K folds, for one candidate of CNN1's head or its optimisation, and prints per fold what
issue 15 asks of CNN1: does its training loss fall (last epoch <= 0.6 x the first), does it
overfit (training loss well under validation loss), and the validation AUC.

    python -m studies.cnn1_dead_units.cnn1_candidates STORE OUT CANDIDATE [--folds 5]
        [--epochs 20] [--width 0.5] [--batch-size 8] [--seed 0] [--no-augment]
    python -m studies.cnn1_dead_units.cnn1_candidates --report OUT/*   # the table of finished runs

Candidates (the conv blocks, flatten, FC 256, ReLU and LSTM are the seed's in all of them):

    plain        FC -> ReLU, PyTorch's default init (smri before issue 15), dropout 0.5
    plain-d0     the same without dropout
    kaiming-d0   FC initialised He-normal for ReLU, zero bias
    flatnorm-d0  BatchNorm1d on the flattened features, before the FC
    fcbn-d0      FC -> BatchNorm1d -> ReLU (as every conv block normalises before its ReLU)
    fcbn         the same with dropout 0.5
    warmup-d0    plain-d0 with the learning rate warmed up linearly over 5 epochs
    headlr-d0    plain-d0 with the FC layer at a tenth of the learning rate

Why they die (measured with cnn1_dead_units.py, beside this file): the flattened features are
post-ReLU, post-max-pool activations, all >= 0. A gradient step of Adam moves each weight of
an FC unit by about the learning rate, and for a unit all these moves share one sign (that of
the unit's error: every input is positive), so its pre-activation shifts by about
fan_in x lr x mean input at once: 512 x 1e-3 x ~1 ≈ 0.5 per step on the CPU demo (40x40
in-plane, width 0.5; 1152 at 48x48), as large as the pre-activation itself. A unit pushed
below zero for every patient gets no gradient again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import smri.training
import smri.training.fit
import smri.training.plan
from smri.config import TrainConfig
from smri.metrics import fold_interval
from smri.networks import ModelConfig, build_model
from smri.training.runs import read_metrics


@dataclass(frozen=True)
class Candidate:
    head: str = "plain"  # plain | kaiming | flatnorm | fcbn
    dropout: float = 0.0
    warmup: int = 0
    head_lr: float = 1.0


CANDIDATES = {
    "plain": Candidate(dropout=0.5),
    "plain-d0": Candidate(),
    "kaiming-d0": Candidate(head="kaiming"),
    "flatnorm-d0": Candidate(head="flatnorm"),
    "fcbn-d0": Candidate(head="fcbn"),
    "fcbn": Candidate(head="fcbn", dropout=0.5),
    "warmup-d0": Candidate(warmup=5),
    "headlr-d0": Candidate(head_lr=0.1),
}


def cnn1_head(flat: int, fc: int, dropout: float, kind: str) -> nn.Sequential:
    """Flatten -> [BN] -> Linear(flat, fc) -> [BN] -> ReLU -> Dropout, as the candidate says."""
    linear = nn.Linear(flat, fc)
    if kind == "kaiming":
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
    layers: list[nn.Module] = [nn.Flatten()]
    layers += [nn.BatchNorm1d(flat)] if kind == "flatnorm" else []
    layers += [linear]
    layers += [nn.BatchNorm1d(fc)] if kind == "fcbn" else []
    layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@contextlib.contextmanager
def patched(c: Candidate) -> Iterator[set[int]]:
    """smri.training builds the candidate's CNN1 and optimiser while inside; yields the ids of
    the candidate heads' parameters (empty if smri.training never built one)."""
    head_params: set[int] = set()

    def build(cfg: ModelConfig) -> nn.Module:
        model = build_model(cfg)
        old = model.cnn.head
        flat = next(m for m in old if isinstance(m, nn.Linear)).in_features
        model.cnn.head = cnn1_head(flat, cfg.fc, cfg.dropout, c.head)
        head_params.update(id(p) for p in model.cnn.head.parameters())
        return model

    adamw, cosine = torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR

    def optimizer(params, lr, weight_decay):
        params = list(params)
        head = [p for p in params if id(p) in head_params]
        rest = [p for p in params if id(p) not in head_params]
        groups = [{"params": rest, "lr": lr}, {"params": head, "lr": lr * c.head_lr}]
        return adamw(groups, lr=lr, weight_decay=weight_decay)

    def scheduler(opt, T_max):
        if not c.warmup:
            return cosine(opt, T_max=T_max)
        warm = torch.optim.lr_scheduler.LinearLR(opt, 1 / c.warmup, 1.0, total_iters=c.warmup)
        decay = cosine(opt, T_max=T_max - c.warmup)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], [c.warmup])

    saved = smri.training.fit.build_model
    smri.training.fit.build_model = smri.training.plan.build_model = build
    torch.optim.AdamW = optimizer
    torch.optim.lr_scheduler.CosineAnnealingLR = scheduler
    try:
        yield head_params
    finally:
        smri.training.fit.build_model = smri.training.plan.build_model = saved
        torch.optim.AdamW = adamw
        torch.optim.lr_scheduler.CosineAnnealingLR = cosine


def fold_report(run: Path) -> list[dict[str, float]]:
    """Per fold: first and last training loss, their ratio, last validation loss, AUC."""
    out = []
    done = run.glob("fold*/summary.json")  # finished folds only
    for fold in sorted(done, key=lambda p: int(p.parent.name[4:])):
        rows = read_metrics(fold.parent / "metrics.csv")
        best = json.loads(fold.read_text())["best"]
        first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
        out.append({"first": first, "last": last, "ratio": last / first,
                    "val_last": rows[-1]["val_loss"], "auc": best["auc"],
                    "bacc": best["balanced_accuracy"]})  # fmt: skip
    return out


def report(runs: list[Path]) -> None:
    print(
        "| candidate | AUC mean ± std [95 % CI] | per fold | balanced acc. | loss falls "
        "(last ≤ 0.6 × first) | last train / val loss, median |\n|---|---|---|---|---|---|"
    )
    for run in runs:
        folds = fold_report(run)
        if not folds:
            continue
        aucs = [f["auc"] for f in folds]
        bacc = [f["bacc"] for f in folds]
        mean = sum(aucs) / len(aucs)
        std = math.sqrt(sum((a - mean) ** 2 for a in aucs) / len(aucs))
        falls = sum(f["ratio"] <= 0.6 for f in folds)
        ratios = sorted(f["last"] / f["val_last"] for f in folds)
        trv = sorted((f["last"], f["val_last"]) for f in folds)[len(folds) // 2]
        shown = ", ".join(f"{f['ratio']:.2f}" for f in folds)
        ci = fold_interval(aucs)
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        print(
            f"| {run.name} | {mean:.3f} ± {std:.3f}{ci_text} | "
            f"{', '.join(f'{a:.3f}' for a in aucs)} | "
            f"{sum(bacc) / len(bacc):.3f} | {falls} of {len(folds)} "
            f"({shown}) | "
            f"{trv[0]:.3f} / {trv[1]:.3f} (ratio {ratios[len(ratios) // 2]:.2f}) |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path, nargs="?")
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("candidate", nargs="?", choices=sorted(CANDIDATES))
    ap.add_argument("--report", type=Path, nargs="+", help="print the table of these runs")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    c = CANDIDATES[args.candidate]
    model_cfg = ModelConfig(name="cnn1", width=args.width, dropout=c.dropout)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      folds=args.folds, augment=not args.no_augment, device="cpu",
                      cache="ram")  # fmt: skip
    with patched(c) as built:
        smri.training.train(args.store, model_cfg, cfg, args.out / args.candidate)
    if not built:  # the patch above missed: smri's own CNN1 was trained, not the candidate
        raise SystemExit("smri.training did not build the model through the patched build_model")
    report([args.out / args.candidate])


if __name__ == "__main__":
    main()
