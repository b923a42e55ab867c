"""The training loader's vectorised encoder: many contexts to tokens in one pass (SPEC section 4).

Same language as `tokens.encode_measurements` applied to each context separately (tested equal). Per layout
(field order x address families x failed x timestamp kind) the length and each field's marker offset are
tabulated once; the writer then places each kind of field of all measurements at once, each field of a
measurement one copied run of tokens. loader_transforms.py samples the contexts and calls `layouts`,
`time_kinds` and `write_tokens` directly, so that it can cut contexts before any token is written.
"""

from __future__ import annotations

import itertools

import numpy as np

from pingllm_core.data import tokens


def nonzero(mask: np.ndarray) -> np.ndarray:
    """Indices of the true elements of a 1-D array (np.flatnonzero without its ~1 us of wrapping)."""
    return mask.nonzero()[0]


# ---------------------------------------------------------------------------------------------- layouts
# A measurement is <MeasurementStart> then its four field blocks (the timestamp one possibly empty) in its
# field order. Its layout is field order (24 permutations) x src family x dst family x failed x time kind
# (none / abs / delta1 / delta4) = 768 layouts; per layout we tabulate the length and where each field's
# marker sits, so the writer places each kind of field of all measurements at once (`write_tokens`).
_TK_NONE, _TK_ABS, _TK_D1, _TK_D4 = 0, 1, 2, 3
_TIME_LEN = np.array([0, 9, 2, 5], np.int64)
PERMS = np.array(list(itertools.permutations(range(4))), np.int8)  # int8[24, 4] field orders
_PERM_OF_CODE = np.full(256, -1, np.int64)  # base-4 code of a field order -> its row in PERMS
_PERM_OF_CODE[PERMS.astype(np.int64) @ np.array([64, 16, 4, 1])] = np.arange(24)
# The field order queries use (Src Dst Timestamp Result): the RTT is read after everything it depends on.
QUERY_PERM = int(_PERM_OF_CODE[np.array([tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME,
                                         tokens.FIELD_RESULT]) @ np.array([64, 16, 4, 1])])  # fmt: skip
# One field last, as the inverse queries ask (`query_inverse`): the source, the destination or the timestamp.
_S, _D, _T, _R = tokens.FIELD_SRC, tokens.FIELD_DST, tokens.FIELD_TIME, tokens.FIELD_RESULT
LAST_FIELD_PERMS = _PERM_OF_CODE[np.array([(_D, _R, _T, _S), (_S, _R, _T, _D), (_S, _D, _R, _T)])
                                 @ np.array([64, 16, 4, 1])].astype(np.int16)  # fmt: skip


def _layout_tables() -> tuple[np.ndarray, np.ndarray]:
    """(int64[768] tokens per layout, int64[4, 768] offset of each field's marker in the measurement)."""
    lens = np.zeros(768, np.int64)
    field_off = np.zeros((4, 768), np.int64)
    for layout in range(768):
        tk, failed, dst6, src6, perm = (
            layout & 3,
            (layout >> 2) & 1,
            (layout >> 3) & 1,
            (layout >> 4) & 1,
            layout >> 5,
        )
        flen = {
            tokens.FIELD_SRC: 17 if src6 else 5,
            tokens.FIELD_DST: 17 if dst6 else 5,
            tokens.FIELD_RESULT: 1 if failed else 3,
            tokens.FIELD_TIME: int(_TIME_LEN[tk]),
        }
        off = 1  # after <MeasurementStart>
        for f in PERMS[perm].tolist():
            field_off[f, layout] = off
            off += flen[f]
        lens[layout] = off
    return lens, field_off


LAYOUT_LEN, _FIELD_OFF = _layout_tables()
# (time kind, marker, big-endian type of its value) of the three timestamp fields.
_TIME_FIELDS = (
    (_TK_ABS, tokens.TIMESTAMP_ABS, ">u8"),
    (_TK_D1, tokens.TIMESTAMP_DELTA1, ">u1"),
    (_TK_D4, tokens.TIMESTAMP_DELTA4, ">u4"),
)
_B = tokens.BYTE0


# --------------------------------------------------------------------------------------------- encoding


def time_kinds(time: np.ndarray, has_time: np.ndarray, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time kind, value to write) per measurement: abs for a context's first timestamp, then deltas.

    `ctx` (non-decreasing) is each measurement's context; timestamps restart at <TimestampAbs> per context.
    """
    n = len(time)
    kind = np.zeros(n, np.int64)
    value = np.zeros(n, np.int64)
    ti = nonzero(has_time)
    if len(ti):
        t, c = time.take(ti), ctx.take(ti)
        delta = np.empty_like(t)  # seconds since the previous timestamped one (same context)
        delta[0] = 0
        np.subtract(t[1:], t[:-1], out=delta[1:])
        first = np.empty(len(ti), bool)  # first timestamped measurement of its context
        first[0] = True
        np.not_equal(c[1:], c[:-1], out=first[1:])
        k = np.where(delta < 256, _TK_D1, _TK_D4)
        f = nonzero(first)
        k[f] = _TK_ABS
        delta[f] = t.take(f)
        kind[ti] = k
        value[ti] = delta
    return kind, value


def layouts(perm: np.ndarray, src6: np.ndarray, dst6: np.ndarray, failed: np.ndarray, kind: np.ndarray):
    """int16 layout ids: perm (0..23) x src6 x dst6 x failed x time kind (see _layout_tables)."""
    layout = np.left_shift(perm, 5, dtype=np.int16)
    layout += src6 * np.int16(16)
    layout += dst6 * np.int16(8)
    layout += failed * np.int16(4)
    layout += kind
    return layout


def _runs(out: np.ndarray, tokens_per_run: int) -> np.ndarray:
    """View of int32 `out` whose element i is the run of `tokens_per_run` tokens starting at token i.

    Assigning a 1-D array of such runs (a void dtype of the same size) at token offsets writes a whole
    field per measurement with one copy each (the view is unaligned; numpy copies bytes), instead of
    one scatter per token.
    """
    dtype = np.dtype(f"V{4 * tokens_per_run}")
    return np.ndarray((max(len(out) - tokens_per_run + 1, 0),), dtype, buffer=out, strides=(4,))


def _as_runs(a: np.ndarray) -> np.ndarray:
    """int32[n, w] (C-contiguous) as n runs of w tokens, for assignment into `_runs`."""
    return np.ascontiguousarray(a, np.int32).view(f"V{4 * a.shape[1]}").reshape(-1)


def _put_addr(out, o, rows, tab, tab6, v6, tok4: int, tok6: int) -> None:
    """Address fields at offsets o: marker + 4 or 16 byte tokens of table rows `rows` (uint8[., 16]).

    Each field is one run copied from a token table (marker and bytes of every table row, or of just the
    rows used when the table is the larger); v6 is the family of each measurement's address.
    """
    if len(tab) > len(rows):
        tab, tab6, rows = tab.take(rows, axis=0), tab6.take(rows), np.arange(len(rows))
    tt = np.empty((len(tab), 17), np.int32)
    tt[:, 0] = np.where(tab6, np.int32(tok6), np.int32(tok4))
    np.add(tab, _B, out=tt[:, 1:], dtype=np.int32)
    i6 = nonzero(v6)
    if len(i6):
        _runs(out, 17)[o.take(i6)] = _as_runs(tt).take(rows.take(i6))
    if len(i6) < len(o):
        i4 = nonzero(~v6)
        _runs(out, 5)[o.take(i4)] = _as_runs(tt[:, :5]).take(rows.take(i4))


def _byte_runs(marker: int, value: np.ndarray, big_endian: str) -> np.ndarray:
    """Runs of marker + the byte tokens of `value` as the big-endian type `big_endian` (">u8", ">u2"...)."""
    raw = value.astype(big_endian).view(np.uint8).reshape(len(value), -1)
    blk = np.empty((len(value), 1 + raw.shape[1]), np.int32)
    blk[:, 0] = marker
    np.add(raw, _B, out=blk[:, 1:], dtype=np.int32)
    return _as_runs(blk)


def write_tokens(
    layout, src_rows, src_tab, src_tab6, src6, dst_rows, dst_tab, dst_tab6, dst6, rtt_ms, kind, value
):
    """int32 tokens of measurements (concatenated, in order) given their layouts and field values.

    Addresses are rows `src_rows` / `dst_rows` of the uint8[., 16] tables (families src_tab6 / dst_tab6)
    and src6 / dst6 the family per measurement; rtt_ms < 0 is <Failed>; kind / value come from
    `time_kinds`. Each kind of field is written for all measurements at once, at offsets from the
    layout tables: O(fields) numpy calls, each field of a measurement one copied run of tokens (`_runs`).
    """
    size = LAYOUT_LEN.take(layout)
    end = np.cumsum(size)
    start = end - size
    out = np.empty(int(end[-1]) if len(end) else 0, np.int32)  # every token is written below
    out[start] = tokens.MEASUREMENT_START
    src_o = start + _FIELD_OFF[tokens.FIELD_SRC].take(layout)
    _put_addr(out, src_o, src_rows, src_tab, src_tab6, src6, tokens.SRC_IPV4, tokens.SRC_IPV6)
    dst_o = start + _FIELD_OFF[tokens.FIELD_DST].take(layout)
    _put_addr(out, dst_o, dst_rows, dst_tab, dst_tab6, dst6, tokens.DST_IPV4, tokens.DST_IPV6)
    res_o = start + _FIELD_OFF[tokens.FIELD_RESULT].take(layout)
    failed = rtt_ms < 0
    out[res_o.take(nonzero(failed))] = tokens.FAILED
    ok = nonzero(~failed)
    if len(ok):  # <RttStart> + the 2 code bytes, big-endian
        codes = tokens.encode_rtt_ms(rtt_ms.take(ok))
        _runs(out, 3)[res_o.take(ok)] = _byte_runs(tokens.RTT_START, codes, ">u2")
    ti = nonzero(kind)
    if len(ti):
        k, v = kind.take(ti), value.take(ti)
        time_o = start.take(ti) + _FIELD_OFF[tokens.FIELD_TIME].take(layout.take(ti))
        for tk, marker, big_endian in _TIME_FIELDS:
            j = nonzero(k == tk)
            if len(j):
                _runs(out, 1 + np.dtype(big_endian).itemsize)[time_o.take(j)] = _byte_runs(
                    marker, v.take(j), big_endian
                )
    return out


def encode_contexts(
    m: tokens.Measurements, has_time: np.ndarray, field_order: np.ndarray, new_context: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Encode several contexts in one vectorised pass; returns (int32 tokens, start of each measurement).

    Same language as `tokens.encode_measurements` applied to each context separately (tested equal):
    `new_context[i]` marks the first measurement of a context, where timestamps restart at <TimestampAbs>.
    Timestamped measurements must be in time order within their context.
    """
    perm = _PERM_OF_CODE[np.asarray(field_order, np.int64) @ np.array([64, 16, 4, 1])]
    if (perm < 0).any():
        raise ValueError("field_order rows must be permutations of the four field ids")
    kind, value = time_kinds(m.time, np.asarray(has_time, bool), np.cumsum(np.asarray(new_context, bool)))
    failed = m.rtt < 0
    layout = layouts(perm, m.src_v6, m.dst_v6, failed, kind)
    rows = np.arange(len(m))
    toks = write_tokens(
        layout, rows, m.src, m.src_v6, m.src_v6, rows, m.dst, m.dst_v6, m.dst_v6, m.rtt, kind, value
    )
    sizes = LAYOUT_LEN[layout]
    return toks, np.cumsum(sizes) - sizes
