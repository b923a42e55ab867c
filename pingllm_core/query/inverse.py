"""Inverse queries: generate an address or a time field last, by grammar-constrained beam search.

Each generated token is chosen among `GrammarState.allowed()` (intersected with the markers of the asked
field), with the model's probabilities renormalised over that set. Beams share the prompt's KV cache and
only the new token is decoded per step (the cache rows are gathered by parent beam).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pingllm_core.data import tokens as T
from pingllm_core.model.transformer import KVCache
from pingllm_core.query.context import FIELD_ORDER, NO_TIME, Prompt, as_measurements, make_measurements
from pingllm_core.query.inputs import QueryError, check_families, check_rtt, is_public, parse_ip
from pingllm_core.query.rtt_codes import MAX_RTT_MS, restricted

# Byte tokens after each field marker (SPEC section 4).
FIELD_BYTES = {
    T.SRC_IPV4: 4, T.SRC_IPV6: 16, T.DST_IPV4: 4, T.DST_IPV6: 16, T.TIMESTAMP_ABS: 8,
    T.TIMESTAMP_DELTA1: 1, T.TIMESTAMP_DELTA4: 4, T.RTT_START: 2, T.FAILED: 0,
}  # fmt: skip
MAX_WIDTH = 512  # widest beam `_public` widens to (rows of the batched decode, each with its KV cache)
_ORDER_DST_LAST = (T.FIELD_SRC, T.FIELD_RESULT, T.FIELD_TIME, T.FIELD_DST)
_ORDER_TIME_LAST = (T.FIELD_SRC, T.FIELD_DST, T.FIELD_RESULT, T.FIELD_TIME)


class Engine(Protocol):
    """What these queries use of a `QueryEngine` (a protocol, so that this module, which the engine imports,
    need not import the engine)."""

    def grammar(self, prompt_L: np.ndarray) -> T.GrammarState: ...

    def prefill(self, prompt_L: np.ndarray, extra: int) -> tuple[np.ndarray, KVCache]: ...

    def extend(
        self, cache: KVCache, rows: np.ndarray, tokens_BxT: np.ndarray
    ) -> tuple[np.ndarray, KVCache]: ...

    def build_prompt(
        self, query: T.Measurements, query_has_time: bool, context: T.Measurements | None, reserve: int,
        order: Sequence[int] = FIELD_ORDER, cut: int = 1,
    ) -> Prompt: ...  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LikelyAddress:
    """A generated address and the model's probability of exactly that address field."""

    addr: str
    prob: float


@dataclasses.dataclass(frozen=True)
class LikelyTime:
    """A generated time: unix seconds, its delta from the last context timestamp, and its probability."""

    time: int
    delta_s: int
    prob: float


@dataclasses.dataclass
class _Beam:
    tokens: list[int]
    logp: float
    state: T.GrammarState
    need: int  # tokens still to generate in the field (-1 = marker not chosen yet)
    parent: int = 0  # row of the previous step's cache this beam continues


def beam_field(
    engine: Engine, prompt_L: np.ndarray, markers: Sequence[int] | None, width: int, n_best: int
) -> list[tuple[list[int], float]]:
    """The `n_best` most likely completions of one field after the prompt, as (tokens, log-prob).

    `markers`: the marker tokens the field may open with, or None when the prompt already ends with the
    marker (then only its bytes are generated). Every token is masked with the grammar.
    """
    state = engine.grammar(prompt_L)
    if markers is None:
        last = int(prompt_L[-1])
        beams = [_Beam([], 0.0, state, FIELD_BYTES[last])]
        extra = FIELD_BYTES[last]
    else:
        beams = [_Beam([], 0.0, state, -1)]
        extra = 1 + max(FIELD_BYTES[m] for m in markers)
    logp_BxV, cache = engine.prefill(prompt_L, extra=extra)
    logp_BxV = logp_BxV[None]
    done: list[_Beam] = []
    while beams:
        cands = []  # (score, beam index, token)
        for b, beam in enumerate(beams):
            allowed = beam.state.allowed()
            if beam.need < 0:  # choosing the marker: only the asked field's markers
                allowed &= np.isin(np.arange(T.VOCAB_SIZE), list(markers))
            else:
                allowed[: T.BYTE0] = False
            if not allowed.any():
                raise RuntimeError(
                    f"grammar allows no token for the asked field after {len(prompt_L)} tokens"
                )
            lp = np.log(np.maximum(restricted(logp_BxV[b], allowed), 1e-300))
            top = np.flatnonzero(allowed)
            top = top[np.argsort(-lp[top], kind="stable")[:width]]
            cands += [(beam.logp + lp[t], b, int(t)) for t in top]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        nxt: list[_Beam] = []
        for score, b, tok in cands:
            if len(nxt) >= width:
                break
            st = beams[b].state.copy()
            st.advance(tok)  # cannot fail: tok was allowed
            need = FIELD_BYTES[tok] if beams[b].need < 0 else beams[b].need - 1
            (done if need == 0 else nxt).append(_Beam(beams[b].tokens + [tok], score, st, need, b))
        if len(done) >= n_best and nxt and max(x.logp for x in nxt) < sorted(d.logp for d in done)[-n_best]:
            break  # no unfinished beam can beat the n_best finished ones (log-probs only decrease)
        if nxt:
            rows = np.array([x.parent for x in nxt], np.int32)
            logp_BxV, cache = engine.extend(cache, rows, np.array([[x.tokens[-1]] for x in nxt]))
        beams = nxt
    done.sort(key=lambda d: (-d.logp, d.tokens))
    return [(d.tokens, d.logp) for d in done[:n_best]]


def _address(field_tokens: list[int]) -> str:
    nbytes = len(field_tokens) - 1
    addr = np.zeros((1, 16), np.uint8)
    addr[0, :nbytes] = np.array(field_tokens[1:]) - T.BYTE0
    return T.bytes_to_ip(addr, np.array([nbytes == 16]))[0]


def _public(
    engine: Engine, prompt_L: np.ndarray, markers, n: int, width: int, marker: int | None = None
) -> list[LikelyAddress]:
    """The `n` most likely generated addresses that are public (never `::`, `0.0.0.0`, private or multicast:
    the model was trained on public addresses only), by `beam_field`; `marker` prefixes fields generated
    without one. When fewer than `n` of the finished beams are public, the beam is widened (twice, x2 each,
    at most MAX_WIDTH), so a model that favours such addresses still answers; otherwise nothing changes."""
    widths = [width or max(2 * n, 8)]
    widths += [min(widths[0] * 2, MAX_WIDTH), min(widths[0] * 4, MAX_WIDTH)]
    out: list[LikelyAddress] = []
    for w in dict.fromkeys(widths):  # distinct widths, narrowest first
        found = beam_field(engine, prompt_L, markers, w, max(n, w))
        out = [LikelyAddress(_address(toks if marker is None else [marker, *toks]), float(np.exp(lp)))
               for toks, lp in found]  # fmt: skip
        out = [a for a in out if is_public(a.addr)]
        if len(out) >= n:
            break
    return out[:n]


def likely_destinations(
    engine: Engine,
    src: str,
    rtt_ms_range: float | tuple[float, float],
    n: int = 10,
    context=None,
    width: int = 0,
    allow_mixed_family: bool = False,
) -> list[LikelyAddress]:
    """Most likely public destinations for a source and an RTT (prompt: context, `<MS> Src Result`, then Dst).

    A range (lo, hi) is asked at its geometric midpoint, a single RTT code in the prompt. Destinations are of
    the source's family (the probability is then P(address | family)) unless `allow_mixed_family`.
    """
    lo, hi = (rtt_ms_range, rtt_ms_range) if np.isscalar(rtt_ms_range) else rtt_ms_range  # type: ignore[misc]
    if not 0 < check_rtt(lo, "RTT", failed_ok=False) <= check_rtt(hi, "RTT", failed_ok=False):
        raise QueryError(f"RTT range must be above 0 and ordered (0 < LO <= HI <= {MAX_RTT_MS:.0f}), got "
                         f"{rtt_ms_range}")  # fmt: skip
    if n < 1:
        raise QueryError(f"the number of destinations must be at least 1, got {n}")
    rtt = float(np.sqrt(float(lo) * float(hi)))
    s, v6 = parse_ip(src, "source")
    query = make_measurements([NO_TIME], [s], ["0.0.0.0"], [rtt])  # placeholder IPv4 dst: 5 tokens, cut off
    prompt = engine.build_prompt(
        query, False, as_measurements(context), reserve=17, order=_ORDER_DST_LAST, cut=5
    )
    markers = (T.DST_IPV4, T.DST_IPV6) if allow_mixed_family else ((T.DST_IPV6,) if v6 else (T.DST_IPV4,))
    return _public(engine, prompt.tokens, markers, n, width)


def likely_timestamp(
    engine: Engine, src: str, dst: str, rtt_ms: float, context, k: int = 5, width: int = 0,
    allow_mixed_family: bool = False,
) -> list[LikelyTime]:  # fmt: skip
    """Top-k times for a (src, dst, rtt) measurement, as deltas after a timestamped context (time last).

    `rtt_ms`: 0 to MAX_RTT_MS, or -1 (or None) for a failed ping.
    """
    if k < 1:
        raise QueryError(f"the number of times must be at least 1, got {k}")
    rtt = -1.0 if rtt_ms is None else check_rtt(rtt_ms, "RTT")
    check_families(src, dst, allow_mixed_family)
    ctx = as_measurements(context)
    if ctx is None or not (ctx.time != NO_TIME).any():
        raise QueryError(
            "asking for a time needs context measurements with timestamps (a `time` column): the time is "
            "predicted as a delta after the last one"
        )
    s, _ = parse_ip(src, "source")
    d, _ = parse_ip(dst, "destination")
    last = int(ctx.time[ctx.time != NO_TIME].max())
    query = make_measurements([last], [s], [d], [rtt])
    # Placeholder time = the last context time: a 1-byte delta of 0 (2 tokens), cut off.
    prompt = engine.build_prompt(query, True, ctx, reserve=5, order=_ORDER_TIME_LAST, cut=2)
    found = beam_field(
        engine, prompt.tokens, (T.TIMESTAMP_DELTA1, T.TIMESTAMP_DELTA4), width or max(2 * k, 16), k
    )
    base = engine.grammar(prompt.tokens).last_time
    out = []
    for toks, lp in found:
        delta = int.from_bytes(bytes(t - T.BYTE0 for t in toks[1:]), "big")
        out.append(LikelyTime(int(base) + delta, delta, float(np.exp(lp))))
    return out


def _greedy_measurement(engine: Engine, prompt_L: np.ndarray) -> np.ndarray:
    """Complete the open measurement greedily with a Dst then a Result field (grammar-constrained)."""
    for markers in ((T.DST_IPV4, T.DST_IPV6), (T.RTT_START, T.FAILED)):
        ((toks, _),) = beam_field(engine, prompt_L, markers, width=1, n_best=1)
        prompt_L = np.concatenate([prompt_L, np.array(toks, np.int32)])
    return prompt_L


def counterpart(engine: Engine, src: str, context=None, n: int = 5, width: int = 0) -> list[LikelyAddress]:
    """Likely public address of the same probe in the other family (IPv4 -> IPv6 and back; never `::`).

    Prompt: the context measurements (or, without a context row from `src`, one measurement
    `<MS> Src Dst Result` whose Dst and Result the model completes greedily), then `<MS> <SrcIPv6>`
    (or `<SrcIPv4>`) and a beam search over the address bytes. Training rows group a probe's IPv4 and IPv6
    measurements in one context, which is what makes this learnable.
    """
    if n < 1:
        raise QueryError(f"the number of addresses must be at least 1, got {n}")
    s, v6 = parse_ip(src, "source")
    ctx = as_measurements(context)
    own = make_measurements([NO_TIME], [s], ["0.0.0.0"], [-1.0])
    from_src = ctx is not None and bool((ctx.src == own.src[0]).all(axis=1)[ctx.src_v6 == v6].any())
    if from_src:
        prompt = engine.build_prompt(own, False, ctx, reserve=18, cut=0)
        prompt_L = prompt.tokens[: prompt.query_start]  # the context alone
    else:
        # `own` encodes as <MS> Src Dst Result; keep <MS> Src and let the model fill Dst and Result.
        prompt = engine.build_prompt(own, False, ctx, reserve=18 + 20, cut=0)
        cut_at = prompt.query_start + 1 + (17 if v6 else 5)
        prompt_L = _greedy_measurement(engine, prompt.tokens[:cut_at])
    marker = T.SRC_IPV4 if v6 else T.SRC_IPV6
    prompt_L = np.concatenate([prompt_L, np.array([T.MEASUREMENT_START, marker], np.int32)])
    return _public(engine, prompt_L, None, n, width, marker)


def sample_tokens(
    engine: Engine, prompt_L: np.ndarray, n_tokens: int, n_samples: int = 1, seed: int = 0
) -> np.ndarray:
    """Sample continuations token by token (batched, KV-cached), each token drawn from the grammar-allowed
    set (reserved `<ThroughputStart>` excluded); int32[n_samples, n_tokens]."""
    rng = np.random.default_rng(seed)
    state0 = engine.grammar(prompt_L)
    logp, cache = engine.prefill(prompt_L, extra=n_tokens)
    logp_BxV = np.repeat(logp[None], n_samples, axis=0)
    states = [state0.copy() for _ in range(n_samples)]
    out = np.zeros((n_samples, n_tokens), np.int32)
    rows = np.zeros(n_samples, np.int32)
    for i in range(n_tokens):
        for b, st in enumerate(states):
            allowed = st.allowed()
            allowed[T.THROUGHPUT_START] = False
            p = restricted(logp_BxV[b], allowed)
            out[b, i] = rng.choice(T.VOCAB_SIZE, p=p)
            st.advance(out[b, i])
        if i + 1 < n_tokens:
            logp_BxV, cache = engine.extend(cache, rows, out[:, i : i + 1])
            rows = np.arange(n_samples, dtype=np.int32)
    return out
