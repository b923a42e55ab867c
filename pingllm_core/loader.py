"""Grain training pipeline over probe rows (SPEC section 5).

source -> host shard -> shuffle (per epoch) -> repeat -> K contexts per row (random map)
-> first-fit packing into batch_size x seq_len rows with segment ids, positions, loss weights -> mp_prefetch.

Every random choice goes through Grain's per-index `random_map` generator, so batches are a function of
(seed, epoch, index); the iterator state resumes exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags

from pingllm_core.loader_transforms import make_contexts
from pingllm_core.records import ProbeRecordSource, ProbeRow

__all__ = ["LoaderConfig", "make_contexts", "make_dataset", "make_train_iter", "iter_eval_batches", "Batch"]

Batch = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32[B, L]; weights: float32[B, L]


@dataclass(frozen=True)
class LoaderConfig:
    """How probe rows become packed training batches."""

    seq_len: int = 1024  # tokens per packed row (the model's context)
    batch_size: int = 8  # packed rows per batch (per host)
    seed: int = 0  # drives shuffling and every sampling choice
    workers: int = 0  # mp_prefetch worker processes; 0 = in-process
    max_contexts_per_row: int = 16  # K is capped here
    meas_per_k: int = 30  # K = ceil(n / meas_per_k) before the cap
    mode_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)  # timestamp modes full / none / mixed
    mixed_keep: tuple[float, float] = (0.1, 0.9)  # share of timestamped measurements in mixed mode
    shuffle: bool = True  # shuffle rows, differently each epoch
    num_epochs: int | None = None  # None = repeat forever
    shard_index: int = 0  # this host's slice of the rows (multi-host data parallel)
    shard_count: int = 1  # number of hosts
    read_threads: int = 1  # Grain read threads per process (sampling is numpy + GIL: keep small)
    prefetch_rows: int = 16  # rows buffered per process (a row may be ~8 MB)
    worker_buffer_batches: int = 4  # batches buffered per worker process

    def __post_init__(self) -> None:
        if self.seq_len < 64:
            raise ValueError(f"seq_len must hold a measurement (>= 64 tokens), got {self.seq_len}")
        if self.batch_size < 1 or self.workers < 0 or self.max_contexts_per_row < 1 or self.meas_per_k < 1:
            raise ValueError("batch_size, max_contexts_per_row, meas_per_k must be >= 1; workers >= 0")
        if len(self.mode_probs) != 3 or min(self.mode_probs) < 0 or abs(sum(self.mode_probs) - 1) > 1e-6:
            raise ValueError(f"mode_probs must be 3 non-negative numbers summing to 1, got {self.mode_probs}")
        if not 0.0 <= self.mixed_keep[0] <= self.mixed_keep[1] <= 1.0:
            raise ValueError(f"mixed_keep must be 0 <= lo <= hi <= 1, got {self.mixed_keep}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} outside shard_count {self.shard_count}")


@dataclass(frozen=True)
class _RowContexts(grain.transforms.RandomMap):
    """Row -> list of K token contexts (dicts ready for packing)."""

    cfg: LoaderConfig

    def random_map(self, element: ProbeRow, rng: np.random.Generator) -> list[np.ndarray]:
        return make_contexts(element, rng, self.cfg)


class _EpochShuffle(grain.MapDataset):
    """Rows in a fresh random order each epoch: a numpy permutation per (seed, epoch), cached.

    Replaces `MapDataset.shuffle`, whose per-index Feistel shuffle costs ~0.1 ms a row (more than
    sampling a small row). Index i of epoch e maps to parent index e * n + perm_e[i], as Grain's does.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._cached: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))  # (epoch, permutation)

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"_EpochShuffle(seed={self._seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        epoch, i = divmod(index, n)
        cached = self._cached  # one read: safe with several read threads
        if cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(n))
            self._cached = cached
        return self._parent[epoch * n + int(cached[1][i])]


class _PackIterator(grain.DatasetIterator):
    """First-fit packing of each row's contexts into batch_size rows of seq_len tokens.

    The state is the parent's state before the current probe row plus how many of its contexts are
    already in emitted batches; restoring re-derives that row's contexts (deterministic) and goes on.
    """

    def __init__(self, parent: grain.DatasetIterator, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._seq_len, self._batch_size = seq_len, batch_size
        self._row_state = parent.get_state()  # parent state before the row in self._contexts
        self._contexts: list[np.ndarray] = []
        self._next = 0  # next context of that row to place
        self._arange = np.arange(seq_len, dtype=np.int32)

    def _advance_row(self) -> None:
        while True:
            self._row_state = self._parent.get_state()
            self._contexts = next(self._parent)  # StopIteration ends the pass
            self._next = 0
            if self._contexts:
                return

    def __next__(self) -> Batch:
        seq_len, rows = self._seq_len, self._batch_size
        shape = (rows, seq_len)
        toks, seg, pos = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        weights = np.zeros(shape, np.float32)
        fill = [0] * rows  # tokens used per packed row
        count = [0] * rows  # contexts per packed row (segment ids 1..count)
        arange = self._arange
        placed = 0
        while True:
            if self._next >= len(self._contexts):
                try:
                    self._advance_row()
                except StopIteration:
                    if placed == 0:
                        raise
                    break
            ctx = self._contexts[self._next]
            size = len(ctx)
            for b in range(rows):  # first fit
                if fill[b] + size <= seq_len:
                    break
            else:  # no row has room: emit; this context opens the next batch
                break
            a = fill[b]
            end = a + size
            count[b] += 1
            toks[b, a:end] = ctx
            seg[b, a:end] = count[b]
            pos[b, a:end] = arange[:size]
            # Token t is a target iff it is real and its segment has an earlier token to predict it from.
            weights[b, a + 1 : end] = 1.0
            fill[b] = end
            self._next += 1
            placed += 1
        return {"tokens": toks, "segment_ids": seg, "positions": pos, "weights": weights}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._row_state, "next_context": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._row_state = state["parent"]
        try:
            self._contexts = next(self._parent)
        except StopIteration:
            self._contexts = []
        self._next = state["next_context"] if self._contexts else 0


class _PackDataset(grain.IterDataset):
    """Rows of contexts -> packed batches (see _PackIterator)."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, batch_size: int):
        super().__init__(parent)
        self._seq_len, self._batch_size = seq_len, batch_size

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._seq_len, self._batch_size)


def make_dataset(records_dir: str | Path, cfg: LoaderConfig) -> grain.IterDataset:
    """The Grain IterDataset of packed batches over a records folder."""
    ds = grain.MapDataset.source(ProbeRecordSource(records_dir))
    if cfg.shard_count > 1:
        ds = ds[cfg.shard_index :: cfg.shard_count]
    if cfg.shuffle:
        ds = _EpochShuffle(ds, cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    # The generator of element i is seeded from (seed, i); i runs on across epochs, so each epoch
    # samples new windows, modes and field orders.
    ds = ds.random_map(_RowContexts(cfg), seed=cfg.seed + 1)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_rows)
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
