"""Packing: several tokenized samples in one row of up to `max_len` tokens, and the collators that train on such rows
without letting one sample see another.

Takes: sample lengths (for the packer) and Parquet shard rows `{"input_ids", "labels", "seq_lens"}` (for the collator;
`seq_lens` lists the lengths of the samples a row holds, in order, summing to the row's length).
Gives:
- `best_fit_decreasing(lengths, capacity)`: which samples go into which row (BFD: longest first, each into the row
  whose free space fits it most tightly). Deterministic: ties go to the earlier sample / the earlier row.
- `PackedCollator`: a training batch from packed rows. Two ways to keep the samples apart:
  * `"mask"` (CPU, sdpa / eager): rows are right-padded to the widest row, and a 4D block-diagonal causal mask of
    shape (batch, 1, L, L) is passed as an additive float mask (0 where a query may attend, the dtype's minimum
    elsewhere). `position_ids` restart at 0 for every sample, so rotary positions are those of the sample alone.
    Restarting position_ids alone is NOT enough with sdpa/eager: without the mask the second sample attends to the
    first (tests/test_pack.py shows both). A bool mask would do for sdpa but silently gives wrong results with
    eager, so the float mask is used for both.
  * `"position_ids"` (GPU, flash_attention_2): the batch is flattened into one row and `attention_mask` is None; the
    flash-attn varlen kernel finds the sample boundaries where `position_ids` restart (the route of
    transformers' DataCollatorWithFlattening).
  In both, the label of each sample's first token is -100, so no loss term asks the last token of one sample to
  predict the first token of the next.
- `make_collator(shard_paths, ...)`: the PackedCollator for shards written with `tokenize.packing: true` (the flag
  is in each shard's Parquet metadata), None for unpacked shards (the caller keeps its padding collator).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Sequence

from agenttune.tokenize.encoder import IGNORE_INDEX

PACKING_KEY = b"agenttune.packing"
# The row capacity a shard was made for, in its metadata next to PACKING_KEY; loading refuses longer rows
# (agenttune.tokenize.load).
MAX_LEN_KEY = b"agenttune.max_len"


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity (best-fit decreasing).

    Bins are kept sorted by free space, so each placement is a binary search: O(n log n) comparisons (plus list
    inserts, fine for the thousands of rows of a shard). Within a bin, samples keep their placement order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), ascending
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the row capacity {capacity}")
        if n <= 0:
            raise ValueError(f"sample {i} has no tokens")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def packing_efficiency(tokens: int, rows: int, max_len: int) -> float:
    """Real tokens / slots, where a row has max_len slots."""
    return tokens / (rows * max_len) if rows else 0.0


def shards_are_packed(shard_paths: Sequence[str | Path]) -> bool:
    """The packing flag written into the shards' Parquet metadata; all shards must agree."""
    import pyarrow.parquet as pq

    flags = set()
    for p in shard_paths:
        meta = pq.read_schema(p).metadata or {}
        flags.add(meta.get(PACKING_KEY, b"false") == b"true")
    if len(flags) > 1:
        raise ValueError(f"shards mix packed and unpacked rows: {[str(p) for p in shard_paths]}")
    return flags == {True}


def block_causal_mask(seq_lens_per_row: Sequence[Sequence[int]], width: int, dtype):
    """(batch, 1, width, width) additive float mask: token q of a row may attend to token k when both lie in the same
    segment and k <= q. Positions past the row's segments (padding) form one more causal segment of their own, so
    no query row is fully masked (a fully masked row gives NaN in softmax)."""
    import torch

    batch = len(seq_lens_per_row)
    segment = torch.empty((batch, width), dtype=torch.long)
    for r, lens in enumerate(seq_lens_per_row):
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(list(lens), dtype=torch.long))
        segment[r, : len(ids)] = ids
        segment[r, len(ids):] = len(lens)
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros((batch, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask


def _position_ids(lens: Sequence[int]):
    import torch

    return torch.cat([torch.arange(n, dtype=torch.long) for n in lens]) if lens else torch.zeros(0, dtype=torch.long)


class PackedCollator:
    """Batches packed rows; see the module docstring for the two modes."""

    def __init__(self, pad_token_id: int, mode: str = "mask", dtype=None):
        import torch

        if mode not in ("mask", "position_ids"):
            raise ValueError(f"unknown packing mode '{mode}' (expected 'mask' or 'position_ids')")
        self.pad_token_id = pad_token_id
        self.mode = mode
        self.dtype = dtype or torch.float32

    @staticmethod
    def _row(r: dict) -> tuple[list[int], list[int], list[int]]:
        ids, labels = list(r["input_ids"]), list(r["labels"])
        lens = list(r.get("seq_lens") or [len(ids)])
        if sum(lens) != len(ids) or len(labels) != len(ids):
            raise ValueError(f"row {r.get('id', '?')}: seq_lens {lens} do not add up to {len(ids)} tokens")
        start = 0
        for n in lens:
            labels[start] = IGNORE_INDEX  # never a target across a sample boundary
            start += n
        return ids, labels, lens

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        rows = [self._row(r) for r in batch]
        if self.mode == "position_ids":
            ids = torch.tensor([t for r in rows for t in r[0]], dtype=torch.long)[None]
            labels = torch.tensor([t for r in rows for t in r[1]], dtype=torch.long)[None]
            pos = torch.cat([_position_ids(r[2]) for r in rows])[None]
            return {"input_ids": ids, "labels": labels, "position_ids": pos}
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels, lens) in enumerate(rows):
            n = len(row_ids)
            ids[i, :n] = torch.tensor(row_ids, dtype=torch.long)
            labels[i, :n] = torch.tensor(row_labels, dtype=torch.long)
            pos[i, :n] = _position_ids(lens)
            pos[i, n:] = torch.arange(width - n)
        mask = block_causal_mask([r[2] for r in rows], width, self.dtype)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}


def padding_id(tokenizer) -> int:
    """The token id that fills padding: the pad token, else eos (Llama-2 and others ship no pad token). Which id it
    is does not matter for training, since padding is masked out of attention and of the loss."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has neither a pad nor an eos token: "
                     "batches cannot be padded")


def make_collator(shard_paths: Sequence[str | Path], pad_token_id: int, attn_implementation: str, dtype=None):
    """PackedCollator for packed shards (flash_attention_2: position_ids route; sdpa/eager: 4D mask), else None."""
    if not shards_are_packed(shard_paths):
        return None
    mode = "position_ids" if attn_implementation == "flash_attention_2" else "mask"
    return PackedCollator(pad_token_id, mode, dtype)
