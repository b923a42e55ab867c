"""Grain training loader: contexts per row, timestamp modes, whole measurements, packing, determinism, resume."""

from __future__ import annotations

import dataclasses
import itertools
import math

import grain
import numpy as np
import pytest

from pingllm_core.data import loader, loader_encode, loader_transforms, records, tokens
from pingllm_core.data.loader_config import LoaderConfig
from pingllm_core.data.loader_transforms import MODE_FULL, MODE_MIXED, MODE_NONE
from tests.helpers.splits import make_split

CFG = LoaderConfig(seq_len=256, batch_size=4, seed=3)
TIME_TOKENS = (tokens.TIMESTAMP_ABS, tokens.TIMESTAMP_DELTA1, tokens.TIMESTAMP_DELTA4)


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    make_split(d / "train.parquet", seed=7)
    # 32 KiB rows: the 2000-measurement probe becomes two rows.
    records.write_probe_records(
        d / "train.parquet", d / "rec", records.RecordsConfig(max_row_bytes=32768, shards=2)
    )
    return d / "rec"


@pytest.fixture(scope="module")
def rows(rec_dir) -> list[records.ProbeRow]:
    src = records.ProbeRecordSource(rec_dir)
    return [src[i] for i in range(len(src))]


def _row_keys(row: records.ProbeRow) -> set[tuple]:
    m = row.measurements()
    rtt = np.where(m.rtt < 0, -1.0, tokens.decode_rtt_code(tokens.encode_rtt_ms(np.maximum(m.rtt, 0))))
    return {
        (int(m.time[i]), m.src[i].tobytes(), m.dst[i].tobytes(), bool(m.dst_v6[i]), float(rtt[i]))
        for i in range(row.n)
    }


def _take(it, k: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(k)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("tokens", "segment_ids", "positions", "weights"):
            np.testing.assert_array_equal(x[key], y[key])


def test_each_row_yields_k_contexts(rows):
    assert {r.n for r in rows} >= {1, 5, 40, 300}
    for i, row in enumerate(rows):
        ctxs = loader_transforms.make_contexts(row, np.random.default_rng(i), CFG)
        assert len(ctxs) == min(math.ceil(row.n / 30), 16)
        assert all(c.dtype == np.int32 and 0 < len(c) <= CFG.seq_len for c in ctxs)


def test_contexts_hold_whole_measurements_of_their_row(rows):
    rng = np.random.default_rng(0)
    for row in rows:
        keys = _row_keys(row)
        for ctx in loader_transforms.make_contexts(row, rng, CFG):
            m, has_time, order = tokens.decode_tokens(ctx)  # raises if a measurement was cut
            assert len(m) > 0 and ctx[0] == tokens.MEASUREMENT_START
            for i in np.flatnonzero(has_time):
                assert (
                    int(m.time[i]),
                    m.src[i].tobytes(),
                    m.dst[i].tobytes(),
                    bool(m.dst_v6[i]),
                    m.rtt[i],
                ) in keys
            untimed = {k[1:] for k in keys}
            for i in np.flatnonzero(~has_time):
                assert (m.src[i].tobytes(), m.dst[i].tobytes(), bool(m.dst_v6[i]), m.rtt[i]) in untimed
            if len(m) >= 8:  # field orders are shuffled per measurement, not fixed
                assert len({tuple(o) for o in order}) > 1


def test_batched_encoder_matches_the_token_codec_per_context(rows):
    rng = np.random.default_rng(9)
    row = max(rows, key=lambda r: r.n)
    sizes = [7, 1, 30, 12]
    order = np.concatenate([np.sort(rng.choice(row.n, s, replace=False)) for s in sizes])
    has_time = rng.random(len(order)) < 0.6
    field_order = rng.permuted(np.tile(np.arange(4, dtype=np.int8), (len(order), 1)), axis=1)
    new_context = np.zeros(len(order), bool)
    new_context[np.cumsum([0] + sizes[:-1])] = True
    m = row.measurements(order)
    got, starts = loader_encode.encode_contexts(m, has_time, field_order, new_context)
    want, want_starts, off = [], [], 0
    for a, b in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes), strict=True):
        t, st = tokens.encode_measurements_with_offsets(
            m.take(np.arange(a, b)), has_time[a:b], field_order[a:b]
        )
        want.append(t)
        want_starts.append(st + off)
        off += len(t)
    np.testing.assert_array_equal(got, np.concatenate(want))
    np.testing.assert_array_equal(starts, np.concatenate(want_starts))


def test_batched_encoder_matches_the_token_codec_on_random_measurements():
    # Every field kind and length: v4/v6 sources and destinations, failures, RTTs up to ~50 days, first
    # timestamps up to 2**62 (8 bytes), deltas below and above 256 s, several contexts per call.
    rng = np.random.default_rng(4)
    for _ in range(60):
        sizes = rng.integers(1, 25, rng.integers(1, 6))
        n = int(sizes.sum())
        v6 = rng.random((2, n)) < 0.5
        addr = rng.integers(0, 256, (2, n, 16), dtype=np.uint8)
        addr[:, :, 4:] *= v6[:, :, None]  # an IPv4 address keeps zeros after its 4 bytes
        rtt = np.where(rng.random(n) < 0.2, -1.0, np.minimum(rng.lognormal(3, 4, n), 4e9))
        gaps = np.where(rng.random(n) < 0.5, rng.integers(0, 256, n), rng.integers(256, 1 << 26, n))
        m = tokens.Measurements(
            int(rng.integers(0, 2**62)) + np.cumsum(gaps), addr[0], v6[0], addr[1], v6[1], rtt
        )
        has_time = rng.random(n) < rng.random()
        field_order = rng.permuted(np.tile(np.arange(4, dtype=np.int8), (n, 1)), axis=1)
        bounds = np.cumsum(np.r_[0, sizes])
        new_context = np.isin(np.arange(n), bounds[:-1])
        got, starts = loader_encode.encode_contexts(m, has_time, field_order, new_context)
        want, want_starts = [], []
        for a, b in itertools.pairwise(bounds.tolist()):
            t, st = tokens.encode_measurements_with_offsets(
                m.take(np.arange(a, b)), has_time[a:b], field_order[a:b]
            )
            want_starts.append(st + sum(len(w) for w in want))
            want.append(t)
        np.testing.assert_array_equal(got, np.concatenate(want))
        np.testing.assert_array_equal(starts, np.concatenate(want_starts))


def _subset_counts(width: int, p: int, n_ctx: int, rng: np.random.Generator, wide: int = 0) -> np.ndarray:
    """How often each p-subset of range(width) comes out of _subsample over n_ctx equal contexts.

    `wide` extra contexts with a much wider window share the call (so contexts get reordered and both
    kinds of pick, keep and drop, run together); they are checked for validity only.
    """
    a = np.arange(n_ctx + wide) * 100_000 + 17
    w = np.r_[np.full(n_ctx, width), np.full(wide, 50 * p + 3)]
    target = np.full(n_ctx + wide, p)
    pos, ctx, counts, corder = loader_transforms._subsample(a, a + w, target, rng)
    a, w, target = a[corder], w[corder], target[corder]
    assert sorted(corder.tolist()) == list(range(n_ctx + wide))
    np.testing.assert_array_equal(counts, np.minimum(w, target))
    np.testing.assert_array_equal(ctx, np.repeat(np.arange(len(counts)), counts))
    local = pos - a[ctx]
    assert local.min() >= 0 and (local < w[ctx]).all()
    assert (np.diff(pos)[ctx[1:] == ctx[:-1]] > 0).all()  # distinct, in order
    ours = np.flatnonzero(corder < n_ctx)
    codes = np.add.reduceat(1 << local, np.cumsum(counts) - counts)[ours]
    subsets = [sum(1 << i for i in c) for c in itertools.combinations(range(width), min(width, p))]
    freq = np.array([np.count_nonzero(codes == c) for c in subsets])
    assert freq.sum() == n_ctx
    return freq


class _CountingGenerator(np.random.Generator):
    """A Generator that counts `choice` calls (the exact fallback of _subsample)."""

    choices = 0

    def choice(self, *args, **kwargs):
        self.choices += 1
        return super().choice(*args, **kwargs)


@pytest.mark.parametrize(
    ("width", "p", "sds", "dense"),
    [
        (6, 3, None, 64),
        (7, 2, None, 64),
        (8, 6, None, 64),
        (9, 4, None, 0),
        (8, 5, -3.0, 64),
        (7, 3, -3.0, 0),
    ],
)
def test_subsample_is_uniform_over_subsets(width, p, sds, dense, monkeypatch):
    """Every p-subset of a window equally likely (chi-square), picking kept (W >= 2p) or dropped values."""
    if sds is not None:  # too few draws: the exact fallback for short contexts must run, and stay uniform
        monkeypatch.setattr(loader_transforms, "_DRAW_SDS", sds)
    monkeypatch.setattr(loader_transforms, "_DENSE_SLOTS_PER_DRAW", dense)  # 0: the sorting path
    rng = _CountingGenerator(np.random.PCG64(width * 10 + p))
    freq = _subset_counts(width, p, 30_000, rng, wide=500)
    expected = freq.sum() / len(freq)
    chi2 = ((freq - expected) ** 2 / expected).sum()
    dof = len(freq) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # ~5 sd above the mean of a chi-square
    assert sds is None or rng.choices > 0


@pytest.mark.parametrize("dense", [64, 0])
def test_first_occurrences_of_draws(dense, monkeypatch):
    monkeypatch.setattr(loader_transforms, "_DENSE_SLOTS_PER_DRAW", dense)
    rng = np.random.default_rng(dense)
    for _ in range(50):
        span = int(rng.integers(1, 5000))
        g = rng.integers(0, span, rng.integers(0, 3000))
        first = loader_transforms._first_occurrences(g, span)
        np.testing.assert_array_equal(first, np.sort(np.unique(g, return_index=True)[1]))


def test_subsample_takes_small_windows_whole():
    freq = _subset_counts(4, 9, 100, np.random.default_rng(0))
    assert freq.tolist() == [100]


def test_multi_row_groups_sample_valid_contexts_of_their_rows(rows):
    """One vectorised pass over all rows: K per row, every context decodes, from a single row, modes obeyed."""
    keys = [_row_keys(r) for r in rows]
    untimed = [{k[1:] for k in ks} for ks in keys]
    for mode_probs in [(0.4, 0.3, 0.3), (0.0, 0.0, 1.0)]:
        cfg = dataclasses.replace(CFG, mode_probs=mode_probs)
        toks, sizes, mode, kept, k = loader_transforms.sample_rows(rows, np.random.default_rng(8), cfg)
        assert k.tolist() == [min(math.ceil(r.n / 30), 16) for r in rows]
        assert len(sizes) == len(mode) == len(kept) == k.sum() and sizes.sum() == len(toks)
        for ctx, md, n_meas in zip(np.split(toks, np.cumsum(sizes)[:-1]), mode, kept, strict=True):
            m, has_time, _ = tokens.decode_tokens(ctx)
            assert len(m) == n_meas and 0 < len(ctx) <= cfg.seq_len
            if md == MODE_FULL:
                assert has_time.all()
            elif md == MODE_NONE:
                assert not has_time.any()
            assert np.all(np.diff(m.time[has_time]) >= 0)  # (mixed: the cut may keep any share)
            timed = {
                (int(m.time[i]), m.src[i].tobytes(), m.dst[i].tobytes(), bool(m.dst_v6[i]), m.rtt[i])
                for i in np.flatnonzero(has_time)
            }
            rest = {
                (m.src[i].tobytes(), m.dst[i].tobytes(), bool(m.dst_v6[i]), m.rtt[i]) for i in range(len(m))
            }
            assert any(timed <= ks and rest <= us for ks, us in zip(keys, untimed, strict=True))


def test_host_shards_partition_the_rows(rec_dir, rows):
    total = 0
    for shard in range(2):
        cfg = dataclasses.replace(CFG, shard_index=shard, shard_count=2, seed=5)
        segments = sum(_check_batch(b, cfg) for b in loader.iter_eval_batches(rec_dir, cfg))
        assert segments == sum(min(math.ceil(r.n / 30), 16) for r in rows[shard::2])
        total += segments
    assert total == sum(min(math.ceil(r.n / 30), 16) for r in rows)


def test_large_rows_fill_the_context(rows):
    big = max(rows, key=lambda r: r.n)
    lens = np.array(
        [
            [len(c) for c in loader_transforms.make_contexts(big, np.random.default_rng(s), CFG)]
            for s in range(20)
        ]
    )
    assert lens.shape == (20, 16)
    # Truncation drops at most one measurement's worth (<= 47 tokens) below seq_len; a window much richer
    # in IPv6 than the row's average may fall short, rarely.
    assert np.median(lens) > CFG.seq_len - 48 and np.mean(lens < 0.75 * CFG.seq_len) < 0.01


def test_timestamp_modes_follow_their_rules_and_proportions(rows):
    cfg = dataclasses.replace(CFG, seq_len=4096)  # no truncation: mode rules visible on whole windows
    row = next(r for r in rows if r.n == 40)
    rng = np.random.default_rng(5)
    base = loader_transforms.base_tokens_per_meas(row, rng)
    counts = np.zeros(3)
    for _ in range(1500):
        ctx = loader_transforms.sample_context(row, rng, cfg, base)
        counts[ctx.mode] += 1
        m, has_time, _ = tokens.decode_tokens(ctx.tokens)
        assert len(m) == row.n
        if ctx.mode == MODE_NONE:
            assert not np.isin(ctx.tokens, TIME_TOKENS).any()
        elif ctx.mode == MODE_FULL:
            assert has_time.all()
            np.testing.assert_array_equal(m.time, row.time)  # every measurement, in time order
        else:
            share = has_time.mean()
            assert 0.075 <= share <= 0.925 and 0 < has_time.sum() < row.n
            assert np.all(np.diff(m.time[has_time]) >= 0)
            assert np.isin(row.time, m.time[has_time]).sum() >= has_time.sum()
    np.testing.assert_allclose(counts / counts.sum(), [0.4, 0.3, 0.3], atol=0.04)
    # Proportions, tighter: 20000 contexts of the row in one vectorised pass (sd of a share ~0.0035).
    _, _, mode, _, _ = loader_transforms.sample_rows([row], rng, cfg, np.array([20000]))
    np.testing.assert_allclose(np.bincount(mode, minlength=3) / len(mode), [0.4, 0.3, 0.3], atol=0.015)


def test_mixed_mode_interleaves_untimed_measurements(rows):
    row = next(r for r in rows if r.n == 40)
    cfg = dataclasses.replace(CFG, seq_len=4096, mode_probs=(0.0, 0.0, 1.0))
    rng = np.random.default_rng(2)
    first_untimed = []
    for _ in range(50):
        ctx = loader_transforms.sample_context(row, rng, cfg, 20.0)
        assert ctx.mode == MODE_MIXED
        _, has_time, _ = tokens.decode_tokens(ctx.tokens)
        first_untimed.append(int(np.argmin(has_time)))
    assert len(set(first_untimed)) > 3  # untimed ones land at varied positions, not appended at the end


def _check_batch(batch: dict[str, np.ndarray], cfg: LoaderConfig) -> int:
    toks, seg, pos, w = batch["tokens"], batch["segment_ids"], batch["positions"], batch["weights"]
    assert toks.shape == seg.shape == pos.shape == w.shape == (cfg.batch_size, cfg.seq_len)
    assert toks.dtype == seg.dtype == pos.dtype == np.int32 and w.dtype == np.float32
    segments = 0
    for b in range(cfg.batch_size):
        s = seg[b]
        real = s > 0
        assert not np.any(real[1:] & ~real[:-1])  # padding only at the end
        ids = s[real]
        if len(ids):
            assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)  # 1..k contiguous
        for k in range(1, int(s.max(initial=0)) + 1):
            where = np.flatnonzero(s == k)
            np.testing.assert_array_equal(pos[b, where], np.arange(len(where)))  # positions restart at 0
            tokens.decode_tokens(toks[b, where])  # a whole context, not split across rows
            segments += 1
        np.testing.assert_array_equal(w[b], (real & (pos[b] > 0)).astype(np.float32))
        assert w[b][~real].sum() == 0
    return segments


def test_batches_are_packed_with_segments_positions_and_weights(rec_dir):
    batches = _take(loader.make_train_iter(rec_dir, CFG), 8) + list(loader.iter_eval_batches(rec_dir, CFG))
    for b in batches:
        _check_batch(b, CFG)
    assert max(int(b["segment_ids"].max()) for b in batches) >= 2  # short contexts share a row
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches[:8]])
    assert fill > 0.8


class _Groups(grain.DatasetIterator):
    """A parent iterator that yields given (tokens, sizes) groups; its state is the next group."""

    def __init__(self, groups):
        super().__init__()
        self._groups, self._i = groups, 0

    def __next__(self):
        if self._i >= len(self._groups):
            raise StopIteration
        self._i += 1
        return self._groups[self._i - 1]

    def get_state(self):
        return {"i": self._i}

    def set_state(self, state):
        self._i = state["i"]


def test_packing_places_contexts_first_fit_with_many_segments_per_row():
    # Tiny contexts (a measurement each), so that a row holds more than 16 segments, and large ones.
    rng = np.random.default_rng(3)
    groups, contexts = [], []
    for g in range(6):
        sizes = rng.choice([12, 13, 14] if g % 2 else [12, 17, 29, 150, 250], rng.integers(0, 40)).tolist()
        ctx = [rng.integers(0, tokens.VOCAB_SIZE, s).astype(np.int32) for s in sizes]
        contexts += ctx
        groups.append((np.concatenate(ctx) if ctx else np.zeros(0, np.int32), sizes))
    cfg = dataclasses.replace(CFG, seq_len=256, batch_size=2)
    batches = list(loader._PackIterator(_Groups(groups), cfg.seq_len, cfg.batch_size))
    # Reference first fit: (batch, row, offset) of every context.
    where, fill, n_batches = [], [0] * cfg.batch_size, 1
    for c in contexts:
        row = next((r for r in range(cfg.batch_size) if fill[r] + len(c) <= cfg.seq_len), None)
        if row is None:
            fill, n_batches, row = [0] * cfg.batch_size, n_batches + 1, 0
        where.append((n_batches - 1, row, fill[row]))
        fill[row] += len(c)
    assert len(batches) == n_batches
    segment = {}
    for c, (i, row, off) in zip(contexts, where, strict=True):
        sl = slice(off, off + len(c))
        segment[i, row] = segment.get((i, row), 0) + 1
        np.testing.assert_array_equal(batches[i]["tokens"][row, sl], c)
        np.testing.assert_array_equal(batches[i]["positions"][row, sl], np.arange(len(c)))
        assert (batches[i]["segment_ids"][row, sl] == segment[i, row]).all()
    for i, batch in enumerate(batches):
        for row in range(cfg.batch_size):
            used = sum(len(c) for c, w in zip(contexts, where, strict=True) if w[:2] == (i, row))
            assert not batch["segment_ids"][row, used:].any() and not batch["tokens"][row, used:].any()
            assert not batch["positions"][row, used:].any()
            np.testing.assert_array_equal(batch["weights"][row], batch["positions"][row] > 0)
    assert max(segment.values()) > 16
    # Resuming from any batch boundary gives the same remaining batches.
    it = loader._PackIterator(_Groups(groups), cfg.seq_len, cfg.batch_size)
    for i in range(len(batches)):
        state = it.get_state()
        again = loader._PackIterator(_Groups(groups), cfg.seq_len, cfg.batch_size)
        again.set_state(state)
        _assert_same(list(again), batches[i:])
        next(it)


def test_same_seed_same_batches_and_different_seed_differs(rec_dir):
    a = _take(loader.make_train_iter(rec_dir, CFG), 6)
    b = _take(loader.make_train_iter(rec_dir, CFG), 6)
    _assert_same(a, b)
    c = _take(loader.make_train_iter(rec_dir, dataclasses.replace(CFG, seed=4)), 6)
    assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c, strict=True))


def test_resume_from_iterator_state_gives_the_same_batches(rec_dir):
    it = loader.make_train_iter(rec_dir, CFG)
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 5)
    fresh = loader.make_train_iter(rec_dir, CFG)
    fresh.set_state(state)
    _assert_same(_take(fresh, 5), expected)


def test_eval_pass_is_finite_and_covers_every_context(rec_dir, rows):
    cfg = dataclasses.replace(CFG, seed=11)
    batches = list(loader.iter_eval_batches(rec_dir, cfg))
    segments = sum(_check_batch(b, cfg) for b in batches)
    assert segments == sum(min(math.ceil(r.n / 30), 16) for r in rows)
    again = list(loader.iter_eval_batches(rec_dir, cfg, max_batches=3))
    _assert_same(again, batches[:3])


def test_epochs_repeat_with_fresh_contexts(rec_dir, rows):
    cfg = dataclasses.replace(CFG, num_epochs=2, shuffle=True)
    batches = list(loader.make_dataset(rec_dir, cfg))
    segments = sum(_check_batch(b, cfg) for b in batches)
    assert segments == 2 * sum(min(math.ceil(r.n / 30), 16) for r in rows)


def test_multi_worker_batches_are_deterministic_and_resume(rec_dir):
    cfg = dataclasses.replace(CFG, workers=2)
    it1 = loader.make_train_iter(rec_dir, cfg)
    it2 = loader.make_train_iter(rec_dir, cfg)
    try:
        a = _take(it1, 6)
        state = it1.get_state()
        rest = _take(it1, 3)
        _assert_same(_take(it2, 6), a)
        for b in a:
            _check_batch(b, cfg)
    finally:
        it1.close()
        it2.close()
    it3 = loader.make_train_iter(rec_dir, cfg)
    try:
        it3.set_state(state)
        _assert_same(_take(it3, 3), rest)
    finally:
        it3.close()


def test_field_order_share_keeps_the_rest_in_query_order(rows):
    query = (tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME, tokens.FIELD_RESULT)
    for share in (0.0, 0.5):
        cfg = dataclasses.replace(CFG, field_shuffle_share=share)
        toks, sizes, *_ = loader_transforms.sample_rows(rows, np.random.default_rng(5), cfg)
        hits, timed = [], []
        for ctx in np.split(toks, np.cumsum(sizes)[:-1]):
            _, has_time, orders = tokens.decode_tokens(ctx)
            for o, t in zip(orders, has_time, strict=True):
                present = query if t else tuple(f for f in query if f != tokens.FIELD_TIME)
                hits.append(tuple(f for f in o if f in present) == present)
                timed.append(t)
        in_query = np.mean(hits)
        # a random order of four fields is the query order 1 time in 24, of three (no timestamp) 1 in 6
        expected = (1 - share) + share * np.mean([1 / 24 if t else 1 / 6 for t in timed])
        assert abs(in_query - expected) < 0.05, (share, in_query)


def test_last_field_orders_put_one_field_last_as_the_inverse_queries_ask(rows):
    S, D, T, R = tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME, tokens.FIELD_RESULT
    allowed = {(D, R, T, S), (S, R, T, D), (S, D, R, T)}  # source, destination or timestamp last
    cfg = dataclasses.replace(CFG, field_shuffle_share=1.0, field_orders="last_field")
    toks, sizes, *_ = loader_transforms.sample_rows(rows, np.random.default_rng(3), cfg)
    seen = set()
    for ctx in np.split(toks, np.cumsum(sizes)[:-1]):
        _, has_time, orders = tokens.decode_tokens(ctx)
        for o, t in zip(orders, has_time, strict=True):
            got = tuple(int(f) for f in o if t or f != T)  # an untimed measurement has no timestamp field
            full = [a for a in allowed if tuple(f for f in a if t or f != T) == got]
            assert full, got
            seen.update(full)
    assert seen == allowed  # all three occur, and nothing else
    with pytest.raises(ValueError, match="field_orders"):
        dataclasses.replace(CFG, field_orders="random")


def test_remapped_sources_keep_a_prefix_and_stay_one_address_per_context(rows):
    keys = [_row_keys(r) for r in rows]
    real = {k[1] for ks in keys for k in ks}
    cfg = dataclasses.replace(CFG, src_remap_share=1.0)
    toks, sizes, *_ = loader_transforms.sample_rows(rows, np.random.default_rng(2), cfg)
    for ctx in np.split(toks, np.cumsum(sizes)[:-1]):
        m, _, _ = tokens.decode_tokens(ctx)
        srcs = {(a.tobytes(), bool(v6)) for a, v6 in zip(m.src, m.src_v6, strict=True)}
        assert len(srcs) <= 2 and not ({s for s, _ in srcs} & real)  # one per family, all new
        for s, v6 in srcs:
            n = 2 if v6 else 1  # keeps at least its /16 (IPv6) or /8 (IPv4)
            assert any(r[:n] == s[:n] for r in real), s
    plain = loader_transforms.sample_rows(rows, np.random.default_rng(2), CFG)[0]
    m, _, _ = tokens.decode_tokens(plain[: np.flatnonzero(plain == 0)[1]])
    assert m.src[0].tobytes() in real  # share 0 leaves sources alone


def test_short_contexts_hold_one_to_eight_measurements(rows):
    cfg = dataclasses.replace(CFG, short_context_share=1.0)
    _, _, _, kept, _ = loader_transforms.sample_rows(rows, np.random.default_rng(4), cfg)
    assert kept.min() >= 1 and kept.max() <= loader_transforms.SHORT_CONTEXT_MAX
    _, _, _, kept_full, _ = loader_transforms.sample_rows(rows, np.random.default_rng(4), CFG)
    assert kept_full.max() > loader_transforms.SHORT_CONTEXT_MAX


def test_a_batch_mixes_the_probes_of_a_group(rec_dir):
    # Packed in sampling order, the K <= 16 contexts of one row fill whole batches of a single probe; shuffled
    # within the group, a batch holds contexts of several rows.
    cfg = dataclasses.replace(CFG, batch_size=8, seq_len=512, rows_per_group=8)
    it = loader.make_train_iter(rec_dir, cfg)
    sources = []
    for batch in _take(it, 4):
        srcs = set()
        for r in range(cfg.batch_size):
            for sid in set(batch["segment_ids"][r][batch["segment_ids"][r] > 0].tolist()):
                m, _, _ = tokens.decode_tokens(batch["tokens"][r][batch["segment_ids"][r] == sid])
                srcs.add(m.src[0].tobytes())
        sources.append(len(srcs))
    assert np.mean(sources) > 2.5, sources


def test_shuffled_contexts_are_a_permutation_of_whole_contexts():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, 30)
    toks = np.repeat(np.arange(30), sizes).astype(np.int32)  # context i is `sizes[i]` copies of i
    out, new_sizes = loader.shuffle_contexts(toks, sizes, rng)
    parts = np.split(out, np.cumsum(new_sizes)[:-1])
    assert sorted(int(p[0]) for p in parts) == list(range(30)) and not np.array_equal(out, toks)
    assert all((p == p[0]).all() and len(p) == sizes[p[0]] for p in parts)


def test_scoring_config_turns_every_augmentation_off():
    cfg = dataclasses.replace(CFG, field_shuffle_share=0.5, src_remap_share=0.3, short_context_share=0.3)
    assert (cfg.scoring().field_shuffle_share, cfg.scoring().src_remap_share) == (0.0, 0.0)
    assert cfg.scoring().short_context_share == 0.0
    cfg = cfg.scoring()
    assert cfg.seq_len == CFG.seq_len and cfg.batch_size == CFG.batch_size
