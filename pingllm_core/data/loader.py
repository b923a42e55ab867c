"""Grain training pipeline over probe rows (SPEC section 5).

source -> host shard -> shuffle (per epoch) -> repeat -> groups of rows -> K contexts per row, a group at a time (random map)
-> first-fit packing into batch_size x seq_len rows with segment ids, positions, loss weights -> mp_prefetch.

Every random choice goes through Grain's per-index `random_map` generator, so batches are a function of
(seed, epoch, index); the iterator state resumes exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags

from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.data.loader_transforms import sample_rows
from pingllm_core.data.records import ProbeRecordSource, ProbeRow

__all__ = ["make_dataset", "make_train_iter", "iter_eval_batches", "Batch"]

Batch = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32[B, L]; weights: float32[B, L]
_ID_RUNS = 16  # segment ids below this are copied from constant runs when packing


def shuffle_contexts(
    toks: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The contexts (flat tokens, tokens per context) in a uniformly random order."""
    perm = rng.permutation(len(sizes))
    starts = np.cumsum(sizes) - sizes
    new_sizes = sizes[perm]
    # Token j of the output is token (j - its context's new start) of its context's old place.
    ctx = np.repeat(np.arange(len(perm)), new_sizes)
    src = np.arange(len(ctx)) - (np.cumsum(new_sizes) - new_sizes)[ctx] + starts[perm][ctx]
    return toks[src], new_sizes


@dataclass(frozen=True)
class _GroupContexts(grain.transforms.RandomMap):
    """A group of rows -> (flat int32 tokens of all their contexts in random order, tokens per context).

    The order is shuffled so that a batch mixes the group's probes: a row yields up to 16 contexts, and
    packed in the order they are sampled, a batch would hold two or three probes and the model would chase
    each batch's own RTT range instead of learning what the addresses say.
    """

    cfg: LoaderConfig

    def random_map(self, element: list[ProbeRow], rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        toks, sizes, _, _, _ = sample_rows(element, rng, self.cfg)
        toks, sizes = shuffle_contexts(toks, np.asarray(sizes), rng)
        return toks, sizes.tolist()


class _RowGroups(grain.MapDataset):
    """Epochs of rows, shuffled per epoch, cut into consecutive groups of `group` rows.

    Element j is the list of rows at positions j*group .. j*group+group-1 of the concatenated epochs;
    epoch e visits the rows `rows` (this host's shard of the source) in a numpy permutation seeded by
    (seed, e) (cached: Grain's per-index Feistel shuffle costs ~0.1 ms a row). Rows are read from the
    source directly (a Grain source dataset's per-element bookkeeping costs ~20 us a row). Sampling a
    whole group at once amortises numpy's per-call overhead.
    """

    def __init__(
        self,
        source: ProbeRecordSource,
        rows: range,
        group: int,
        seed: int,
        shuffle: bool,
        num_epochs: int | None,
    ):
        super().__init__()
        self._source, self._rows = source, rows
        self._group, self._seed, self._shuffle = group, seed, shuffle
        n = len(rows)
        total = n * num_epochs if num_epochs is not None else sys.maxsize // 2
        self._len = -(-total // group)
        self._total = total
        self._cached: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self._len

    def __str__(self) -> str:
        return (
            f"_RowGroups(rows={self._rows}, group={self._group}, seed={self._seed}, shuffle={self._shuffle})"
        )

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._cached.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._rows))
            self._cached = {epoch: perm, **{e: p for e, p in self._cached.items() if e == epoch - 1}}
        return perm

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._rows)
        p0 = index * self._group
        out = []
        for p in range(p0, min(p0 + self._group, self._total)):
            epoch, i = divmod(p, n)
            out.append(self._source[self._rows[int(self._perm(epoch)[i]) if self._shuffle else i]])
        return out


class _PackIterator(grain.DatasetIterator):
    """First-fit packing of each group's contexts into batch_size rows of seq_len tokens.

    The state is the parent's state before the current group plus how many of its contexts are already
    in emitted batches; restoring re-derives that group's contexts (deterministic) and goes on. Placement
    is decided in Python on context sizes; each placed context's tokens, segment ids and positions are
    slice copies into zero-filled batch arrays (padding: token 0, segment 0, position 0), and the weights
    follow from the positions.
    """

    def __init__(self, parent: grain.DatasetIterator, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._seq_len, self._batch_size = seq_len, batch_size
        self._row_state = parent.get_state()  # parent state before the group in self._toks/_sizes
        self._set_group(np.zeros(0, np.int32), [])
        self._next = 0  # next context of that group to place
        # Constant sources for the copies below: positions 0..seq_len-1, and seq_len-runs of segment ids
        # 0.._ID_RUNS-1 (rarer higher ids are filled with numpy).
        self._arange = memoryview(np.arange(seq_len, dtype=np.int32))
        self._ids = memoryview(np.repeat(np.arange(_ID_RUNS, dtype=np.int32), seq_len))

    def _set_group(self, toks: np.ndarray, sizes: list[int]) -> None:
        self._toks, self._sizes = memoryview(np.ascontiguousarray(toks, np.int32)), sizes
        self._offsets = list(itertools.accumulate(sizes, initial=0))

    def _advance_group(self) -> None:
        while True:
            self._row_state = self._parent.get_state()
            toks, sizes = next(self._parent)  # StopIteration ends the pass
            self._set_group(toks, sizes)
            self._next = 0
            if sizes:
                return

    def __next__(self) -> Batch:
        seq_len, rows = self._seq_len, self._batch_size
        shape = (rows, seq_len)
        toks = np.zeros(rows * seq_len, np.int32)
        seg = np.zeros(rows * seq_len, np.int32)
        positions = np.zeros(rows * seq_len, np.int32)
        # Copies through memoryviews: a slice copy costs ~0.2 us this way, ~0.5 us with numpy slicing.
        toks_mv, seg_mv, pos_mv = memoryview(toks), memoryview(seg), memoryview(positions)
        fill = [0] * rows  # tokens used per packed row
        count = [0] * rows  # contexts per packed row (segment ids 1..count)
        arange, ids = self._arange, self._ids
        sizes, offsets, group_toks, j = self._sizes, self._offsets, self._toks, self._next
        placed = False
        while True:
            if j >= len(sizes):
                self._next = j
                try:
                    self._advance_group()
                except StopIteration:
                    if not placed:
                        raise
                    break
                sizes, offsets, group_toks, j = self._sizes, self._offsets, self._toks, self._next
            size = sizes[j]
            if size == 0:
                j += 1
                continue
            for b in range(rows):  # first fit
                if fill[b] + size <= seq_len:
                    break
            else:  # no row has room: emit; this context opens the next batch
                break
            o = offsets[j]
            d = b * seq_len + fill[b]
            e = d + size
            toks_mv[d:e] = group_toks[o : o + size]
            c = count[b] = count[b] + 1
            if c < _ID_RUNS:
                seg_mv[d:e] = ids[c * seq_len : c * seq_len + size]
            else:
                seg[d:e] = c
            pos_mv[d:e] = arange[:size]
            fill[b] += size
            placed = True
            j += 1
        self._next = j
        # A token is a target iff an earlier token of its context predicts it (padding has position 0).
        weights = np.greater(positions, 0).astype(np.float32)
        return {
            "tokens": toks.reshape(shape),
            "segment_ids": seg.reshape(shape),
            "positions": positions.reshape(shape),
            "weights": weights.reshape(shape),
        }

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._row_state, "next_context": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._row_state = state["parent"]
        try:
            toks, sizes = next(self._parent)
        except StopIteration:
            toks, sizes = np.zeros(0, np.int32), []
        self._set_group(toks, sizes)
        self._next = state["next_context"] if sizes else 0


class _PackDataset(grain.IterDataset):
    """Rows of contexts -> packed batches (see _PackIterator)."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._seq_len, self._batch_size = seq_len, batch_size

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._seq_len, self._batch_size)


def make_dataset(records_dir: str | Path, cfg: LoaderConfig) -> grain.IterDataset:
    """The Grain IterDataset of packed batches over a records folder."""
    source = ProbeRecordSource(records_dir)
    rows = range(cfg.shard_index, len(source), cfg.shard_count)  # this host's shard
    ds = _RowGroups(source, rows, cfg.rows_per_group, cfg.seed, cfg.shuffle, cfg.num_epochs)
    # The generator of group j is seeded from (seed, j); j runs on across epochs, so each epoch samples
    # new windows, modes and field orders.
    ds = ds.random_map(_GroupContexts(cfg), seed=cfg.seed + 1)
    it = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=cfg.read_threads,
            prefetch_buffer_size=max(1, cfg.prefetch_rows // cfg.rows_per_group),
        )
    )
    it = _PackDataset(it, cfg.seq_len, cfg.batch_size)
    if cfg.workers > 0:
        if not flags.FLAGS.is_parsed():
            # Grain's worker processes read absl flags; outside an absl app nobody parsed them: use defaults.
            flags.FLAGS.mark_as_parsed()
        # Each worker samples and packs its own slice of rows; output order is fixed by (seed, workers).
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=cfg.workers, per_worker_buffer_size=cfg.worker_buffer_batches
            )
        )
    return it


def make_train_iter(records_dir: str | Path, cfg: LoaderConfig) -> grain.DatasetIterator:
    """A checkpointable iterator of training batches (`get_state()` / `set_state()` resume exactly)."""
    return iter(make_dataset(records_dir, cfg))


def iter_eval_batches(
    records_dir: str | Path, cfg: LoaderConfig, max_batches: int | None = None
) -> Iterator[Batch]:
    """A finite, unshuffled, reproducible pass over the rows (at most max_batches batches)."""
    eval_cfg = dataclasses.replace(cfg, shuffle=False, num_epochs=1)
    it = make_train_iter(records_dir, eval_cfg)
    try:
        for i, batch in enumerate(it):
            if max_batches is not None and i >= max_batches:
                break
            yield batch
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
