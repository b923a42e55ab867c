"""`LoaderConfig`: how probe rows become packed training batches.

Its own module so that loader.py (the Grain pipeline) and loader_transforms.py (the per-row sampling it
runs) both import it from below instead of from each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
    # Share of measurements whose four fields come in a random order; the rest use the query order
    # (Src Dst Timestamp Result, `query_context.FIELD_ORDER`), which is how an RTT question is asked.
    field_shuffle_share: float = 1.0
    # Which orders a shuffled measurement takes: "uniform" (any of the 24) or "last_field" (the source, the
    # destination or the timestamp last, as the inverse queries ask; the others in query order).
    field_orders: str = "uniform"
    # Share of contexts whose source addresses are replaced by unseen ones in the same network (see
    # `loader_transforms._remap_sources`): held-out probes in miniature, so the model learns to use context.
    src_remap_share: float = 0.0
    # Share of contexts cut to 1-8 measurements: cold starts and short contexts are most of what queries look
    # like, while long contexts give the model only one cold guess per (source, destination) pair.
    short_context_share: float = 0.0
    shuffle: bool = True  # shuffle rows, differently each epoch
    num_epochs: int | None = None  # None = repeat forever
    shard_index: int = 0  # this host's slice of the rows (multi-host data parallel)
    shard_count: int = 1  # number of hosts
    read_threads: int = 1  # Grain read threads per process (sampling is numpy + GIL: keep small)
    prefetch_rows: int = 16  # rows buffered per process (a row may be ~8 MB)
    worker_buffer_batches: int = 4  # batches buffered per worker process
    # Rows sampled together in one vectorised pass (amortises numpy call overhead), whose contexts are then
    # shuffled together: a batch mixes probes from this many rows.
    rows_per_group: int = 32

    def __post_init__(self) -> None:
        if self.seq_len < 64:
            raise ValueError(f"seq_len must hold a measurement (>= 64 tokens), got {self.seq_len}")
        if self.field_orders not in ("uniform", "last_field"):
            raise ValueError(f"field_orders must be 'uniform' or 'last_field', got {self.field_orders!r}")
        if self.rows_per_group < 1:
            raise ValueError(f"rows_per_group must be >= 1, got {self.rows_per_group}")
        if self.batch_size < 1 or self.workers < 0 or self.max_contexts_per_row < 1 or self.meas_per_k < 1:
            raise ValueError("batch_size, max_contexts_per_row, meas_per_k must be >= 1; workers >= 0")
        if len(self.mode_probs) != 3 or min(self.mode_probs) < 0 or abs(sum(self.mode_probs) - 1) > 1e-6:
            raise ValueError(f"mode_probs must be 3 non-negative numbers summing to 1, got {self.mode_probs}")
        if not 0.0 <= self.mixed_keep[0] <= self.mixed_keep[1] <= 1.0:
            raise ValueError(f"mixed_keep must be 0 <= lo <= hi <= 1, got {self.mixed_keep}")
        if not 0.0 <= self.short_context_share <= 1.0:
            raise ValueError(f"short_context_share must be in [0, 1], got {self.short_context_share}")
        if not 0.0 <= self.src_remap_share <= 1.0:
            raise ValueError(f"src_remap_share must be in [0, 1], got {self.src_remap_share}")
        if not 0.0 <= self.field_shuffle_share <= 1.0:
            raise ValueError(f"field_shuffle_share must be in [0, 1], got {self.field_shuffle_share}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} outside shard_count {self.shard_count}")

    def scoring(self) -> LoaderConfig:
        """The same contexts as queries see them: fields in query order and real addresses, no augmentation;
        how held-out losses are scored, so that recipes with different augmentations compare."""
        return dataclasses.replace(
            self, field_shuffle_share=0.0, src_remap_share=0.0, short_context_share=0.0
        )
