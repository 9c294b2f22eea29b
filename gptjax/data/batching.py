"""Batching: an encoded split into [B, T] batches, T one of a few bucket lengths (a few static
shapes for XLA); an epoch's order is deterministic per (seed, epoch), so a resumed run rebuilds
it and restarts at a batch offset.

Batch format (a dict of numpy arrays; B is always the batch size, T a bucket length):
  input_ids      int32 [B, T]  padded on the right with the pad id (EOS when there is none)
  attention_mask int32 [B, T]  1 real token, 0 padding (padding rows are all 0)
  labels         int32 [B, T]  one label a position (token and causal_lm tasks), -100 where
                               ignored; [B] for a sequence task; padding rows are -100 everywhere
  example_index  int32 [B]     index into the split's example list; -1 marks a padding row
  word_index     int32 [B, T]  token task only: w at the first subword of word w, else -1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gptjax.data.encode import EncodedSplit
from gptjax.data.labels import IGNORE_INDEX


def buckets_for(data_config) -> tuple[int, ...]:
    """The bucket lengths of a config's data section: data.buckets below data.max_length, and
    data.max_length."""
    return make_buckets(data_config.max_length, tuple(data_config.buckets))


def make_buckets(max_length: int, boundaries: Sequence[int]) -> tuple[int, ...]:
    """Bucket lengths below max_length, plus max_length itself: a few static shapes for XLA."""
    return tuple(sorted({b for b in boundaries if 0 < b < max_length})) + (max_length,)


def _bucket_ids(encoded: EncodedSplit, buckets: Sequence[int]) -> np.ndarray:
    """For each example, the index of the smallest bucket that holds it."""
    buckets = np.asarray(buckets)
    if len(buckets) == 0 or np.any(np.diff(buckets) <= 0):
        raise ValueError(f"buckets must be strictly increasing, got {tuple(buckets)}")
    which = np.searchsorted(buckets, encoded.lengths, side="left")
    if len(which) and which.max() >= len(buckets):
        raise ValueError(f"an example of {encoded.lengths.max()} tokens exceeds the largest "
                         f"bucket {buckets[-1]}; encode with max_length <= {buckets[-1]}")
    return which


def batch_plan(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int], seed: int = 0,
               epoch: int = 0, shuffle: bool = False,
               drop_last: bool = False) -> list[tuple[int, np.ndarray]]:
    """The epoch's batches as (bucket length, example indices padded with -1 to batch_size)."""
    which = _bucket_ids(encoded, buckets)
    # One generator per (seed, epoch): any epoch's order can be rebuilt on resume.
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = rng.permutation(len(encoded)) if shuffle else np.arange(len(encoded))
    plan = []
    for b, length in enumerate(buckets):
        members = order[which[order] == b]  # keeps the (shuffled) order
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            if len(idx) < batch_size:
                if drop_last:
                    break
                idx = np.concatenate([idx, np.full(batch_size - len(idx), -1, dtype=idx.dtype)])
            plan.append((int(length), idx.astype(np.int32)))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]  # mix buckets across the epoch
    return plan


def num_batches(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int],
                drop_last: bool = False) -> int:
    """Batches in one epoch (the same for every seed and epoch)."""
    counts = np.bincount(_bucket_ids(encoded, buckets), minlength=len(buckets))
    per_bucket = counts // batch_size if drop_last else -(-counts // batch_size)
    return int(per_bucket.sum())


def make_batch(encoded: EncodedSplit, indices: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One [B, length] batch; index -1 makes a padding row (all pad, mask 0, labels -100)."""
    B = len(indices)
    input_ids = np.full((B, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((B, length), dtype=np.int32)
    per_token = encoded.per_token
    labels = np.full((B, length) if per_token else (B,), IGNORE_INDEX, dtype=np.int32)
    word_index = None if encoded.word_index is None else np.full((B, length), -1, dtype=np.int32)
    for row, i in enumerate(indices):
        if i < 0:
            continue
        ids = encoded.input_ids[i]
        n = len(ids)
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        if per_token:
            labels[row, :n] = encoded.labels[i]
        else:
            labels[row] = encoded.labels[i]
        if word_index is not None:
            word_index[row, :n] = encoded.word_index[i]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "example_index": np.asarray(indices, dtype=np.int32)}
    if word_index is not None:
        batch["word_index"] = word_index
    return batch


class EpochBatches(Sequence):
    """A lazy, indexable list of one epoch's batches; slicing (batches[k:]) skips without work."""

    def __init__(self, encoded: EncodedSplit, plan: list[tuple[int, np.ndarray]], pad_id: int):
        self.encoded, self.plan, self.pad_id = encoded, plan, pad_id

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.plan)

    def __getitem__(self, i):
        """Batch i (built now), or for a slice a view of the planned batches."""
        if isinstance(i, slice):
            return EpochBatches(self.encoded, self.plan[i], self.pad_id)
        length, indices = self.plan[i]
        return make_batch(self.encoded, indices, length, self.pad_id)


def epoch_batches(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int], pad_id: int,
                  seed: int = 0, epoch: int = 0, shuffle: bool = False, drop_last: bool = False,
                  start: int = 0) -> EpochBatches:
    """The epoch's batches from batch `start` on, deterministic per (seed, epoch); built lazily."""
    plan = batch_plan(encoded, batch_size, buckets=buckets, seed=seed, epoch=epoch,
                      shuffle=shuffle, drop_last=drop_last)
    return EpochBatches(encoded, plan[start:], pad_id)
