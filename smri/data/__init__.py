"""The training input: which patients train and validate, and their batches from the store.

Owns splits and K folds, the per-epoch order (a pure function of seed and epoch), the sources
of batches that `--cache` picks (streamed, in RAM, on the device; their fast paths in
`slots.py`), the checks for NaN/Inf in the input, and `StoreDataset`, a store's patients as a
torch Dataset for loops of your own. It reads the store only through `smri.store`.
"""

from smri.data.batches import Batches
from smri.data.caches import resolve_cache
from smri.data.dataset import StoreDataset
from smri.data.nonfinite import nonfinite_message, nonfinite_output_message, nonfinite_rows
from smri.data.splits import (
    Split,
    contiguous_shard,
    epoch_batches,
    random_flips,
    stratified_folds,
    stratified_split,
    strided_shard,
)
from smri.data.stream import BatchDataset

__all__ = [
    "BatchDataset",
    "Batches",
    "Split",
    "StoreDataset",
    "contiguous_shard",
    "epoch_batches",
    "nonfinite_message",
    "nonfinite_output_message",
    "nonfinite_rows",
    "random_flips",
    "resolve_cache",
    "stratified_folds",
    "stratified_split",
    "strided_shard",
]
