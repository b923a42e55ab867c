"""The query engine: RTT distributions, P(failure) and ranking from a trained checkpoint (SPEC section 7).

Prompts put the known fields first and the asked field last: context measurements (field order Src Dst
Time Result, timestamped where they have a time), then `<MeasurementStart> Src Dst [Time]`, then the
result is read from the model. Every distribution is the model's softmax restricted to the tokens the
grammar (`tokens.GrammarState`) allows at that position and to the field asked for, renormalised.
The shared prefix is run once into a KV cache; branches (byte-2 given byte-1, candidates) reuse it. Jitted
decoding lives in `decode.py`, ranking many candidates over a trie of their address bytes in `rank.py`, the
RTT code tables and distributions in `rtt_codes.py`, the inverse queries in `inverse.py`, the result types
in `result.py`, prompts and context files in `context.py` and the input rules in `inputs.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pingllm_core.data import tokens as T
from pingllm_core.data.pair_recall import recall_after
from pingllm_core.model import model_card
from pingllm_core.model.checkpoint import load_checkpoint
from pingllm_core.model.transformer import KVCache, ModelConfig, Transformer
from pingllm_core.query import inverse
from pingllm_core.query.context import (
    FIELD_ORDER,
    NO_TIME,
    Prompt,
    as_measurements,
    build_prompt,
    make_measurements,
)
from pingllm_core.query.decode import Runner
from pingllm_core.query.inputs import (
    FamilyError,
    QueryError,
    address_warnings,
    check_families,
    parse_ip,
    parse_time,
)
from pingllm_core.query.rank import RankStats, bucket, rank_family
from pingllm_core.query.result import (
    DEFAULT_QUANTILES,
    RankedDestination,
    RttPrediction,
)
from pingllm_core.query.rtt_codes import result_distribution

__all__ = ["QueryEngine"]

_CHUNK = 512  # rows per batched decode call (bounds the KV-cache copy: rows x layers x cache x width)


def _report_ranked(progress: Callable[[str], None], total: int, v6: bool, done: int) -> None:
    """Progress line of `rank` (the CLI reads the `done/total` part)."""
    progress(f"ranked {done}/{total} IPv{6 if v6 else 4} candidates")


class QueryEngine:
    """Answers queries from a trained transformer, offline; see the module docstring for prompt layout."""

    def __init__(self, model: Transformer, cfg: ModelConfig | None = None, *, compute_dtype: str = "float32"):
        cfg = cfg or model.cfg
        # Queries run in float32 by default: bf16 matmuls are slow on CPU and probabilities want precision.
        self.cfg = dataclasses.replace(cfg, dtype=compute_dtype, dropout=0.0)
        abstract = nnx.eval_shape(lambda: Transformer(self.cfg, rngs=nnx.Rngs(0)))
        graphdef, _ = nnx.split(abstract)
        state = nnx.state(model)
        self.model = nnx.merge(graphdef, state)  # same weights, query-time numerics
        self.runner = Runner(graphdef, state, self.model)  # the jitted decoding functions on these weights
        self.last_rank_stats = RankStats()  # work done by the latest `rank` call (benchmarks, tests)
        self.card: dict = {}  # the checkpoint's model card (`model_card.py`), set by `load`

    @classmethod
    def load(cls, ckpt_dir: str | Path, compute_dtype: str = "float32") -> QueryEngine:
        """Load the newest checkpoint in `ckpt_dir` (offline); `card` holds its model card ({} if none).

        A folder that is not a usable checkpoint raises QueryError with one line saying why.
        """
        path = Path(ckpt_dir)
        problem = model_card.checkpoint_problem(path)
        if problem:
            raise QueryError(problem)
        try:
            model, cfg, _ = load_checkpoint(path)
        except Exception as err:  # orbax/JSON/config errors: one line, not a traceback
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise QueryError(f"checkpoint {str(path)!r} cannot be restored: {first}") from err
        engine = cls(model, cfg, compute_dtype=compute_dtype)
        try:
            engine.card = model_card.read(path)
        except model_card.ModelCardError:
            engine.card = {}
        return engine

    # ---- KV-cache primitives -------------------------------------------------------------------------------
    def prefill(self, prompt_L: np.ndarray, extra: int) -> tuple[np.ndarray, KVCache]:
        """Run the prompt once into a batch-1 cache with room for `extra` more tokens; log-probs of the next."""
        logp_LxV, cache = self.prefill_all(prompt_L, extra)
        return logp_LxV[-1], cache

    def prefill_all(self, prompt_L: np.ndarray, extra: int) -> tuple[np.ndarray, KVCache]:
        """`prefill`, with the log-probs after every prompt token [L, V].

        One call: the prompt is padded to a power of two (at least 32) and the cache length to a power of two
        that also holds `extra`, so that a few compiled shapes serve every prompt length.
        """
        n = len(prompt_L)
        size = bucket(n, 32)
        capacity = bucket(n + extra, 32)
        padded = np.zeros((1, size), np.int32)
        padded[0, :n] = prompt_L
        logp, cache = self.runner.prefill(jnp.asarray(padded), jnp.int32(n), capacity)
        return np.asarray(logp)[:n], cache

    @staticmethod
    def _trim(cache: KVCache, n: int) -> KVCache:
        """The first slots of a batch-1 cache that hold `n` tokens (every row of a cascade reads all slots)."""
        keep = min(cache.k.shape[2], bucket(n, 8))
        toks = None if cache.tokens is None else cache.tokens[:, :keep]
        return KVCache(cache.k[:, :, :keep], cache.v[:, :, :keep], cache.length, cache.role, toks)

    def extend(self, cache: KVCache, rows: np.ndarray, tokens_BxT: np.ndarray) -> tuple[np.ndarray, KVCache]:
        """Rows `rows` of `cache` continued by `tokens_BxT` (one call, padded); log-probs after the last token."""
        n = len(rows)
        pad = bucket(n) - n
        rows_p = np.concatenate([rows, np.zeros(pad, rows.dtype)]).astype(np.int32)
        toks_p = np.concatenate([tokens_BxT, np.repeat(tokens_BxT[:1], pad, axis=0)]).astype(np.int32)
        logp, cache = self.runner.extend(cache, jnp.asarray(rows_p), jnp.asarray(toks_p))
        return np.asarray(logp)[:n], cache

    def cascade(
        self,
        prefix: KVCache,
        own: tuple[jax.Array, jax.Array] | None,
        rows: np.ndarray,
        tokens_BxT: np.ndarray,
    ) -> tuple[np.ndarray, tuple[jax.Array, jax.Array]]:
        """Rows continuing a shared batch-1 prefix cache (plus their own cached tokens `own`, bytes of the
        prefix's last field): log-probs at every new position [B, T, V] and the rows' own keys/values (padded
        rows at the end)."""
        if own is None:
            shape = (self.cfg.n_layers, 1, 0, self.cfg.n_heads, self.cfg.d_head)
            own = (jnp.zeros(shape, self.cfg.compute_dtype), jnp.zeros(shape, self.cfg.compute_dtype))
        n = len(rows)
        pad = -(-n // 16) * 16 - n  # byte-2 branches number up to ~80: pad finely, few shapes all the same
        rows_p = np.concatenate([rows, np.zeros(pad, rows.dtype)]).astype(np.int32)
        toks_p = np.concatenate([tokens_BxT, np.repeat(tokens_BxT[:1], pad, axis=0)]).astype(np.int32)
        logp, k, v = self.runner.cascade(prefix, *own, jnp.asarray(rows_p), jnp.asarray(toks_p))
        return np.asarray(logp)[:n], (k, v)

    def _byte2(self, prefix: KVCache, own, rows: np.ndarray, b1: np.ndarray) -> np.ndarray:
        """Log-probs of RTT byte 2 after (row's own tokens, byte 1 `b1`), in chunks of _CHUNK rows."""
        out = [self.cascade(prefix, own, rows[j : j + _CHUNK], (T.BYTE0 + b1[j : j + _CHUNK])[:, None])[0][:, 0]
               for j in range(0, len(rows), _CHUNK)]  # fmt: skip
        return np.concatenate(out) if out else np.zeros((0, T.VOCAB_SIZE), np.float32)

    # ---- prompts -------------------------------------------------------------------------------------------
    def build_prompt(
        self, query: T.Measurements, query_has_time: bool, context: T.Measurements | None, reserve: int,
        order: Sequence[int] = FIELD_ORDER, cut: int = 1,
    ) -> Prompt:  # fmt: skip
        """`context.build_prompt` for this model's max_len."""
        return build_prompt(query, query_has_time, context, self.cfg.max_len, reserve, order, cut)

    @staticmethod
    def grammar(prompt_L: np.ndarray) -> T.GrammarState:
        """Grammar state after the prompt (raises if the prompt itself is invalid)."""
        state = T.GrammarState()
        for tok in prompt_L.tolist():
            state.advance(tok)
        return state

    @staticmethod
    def _query(src: str, dst: str, time) -> tuple[T.Measurements, bool, list[str]]:
        """The query measurement (placeholder failed result), whether it is timed, and input warnings."""
        s, _ = parse_ip(src, "source")
        d, _ = parse_ip(dst, "destination")
        warnings = address_warnings((s, d))
        t = None if time is None else parse_time(time)
        return make_measurements([NO_TIME if t is None else t], [s], [d], [-1.0]), t is not None, warnings

    # ---- public queries ------------------------------------------------------------------------------------
    def predict(
        self, src: str, dst: str, time=None, context=None, quantiles: Sequence[float] = DEFAULT_QUANTILES,
        allow_mixed_family: bool = False,
    ) -> RttPrediction:  # fmt: skip
        """RTT distribution and P(failure) for one (src, dst[, time]) with optional context measurements.

        A source and destination of different families raise FamilyError unless `allow_mixed_family`.
        """
        levels = tuple(float(q) for q in quantiles)
        if not levels or any(not 0.0 < q < 1.0 for q in levels):
            raise QueryError(f"quantile levels must lie strictly between 0 and 1, got {list(levels)}")
        check_families(src, dst, allow_mixed_family)
        query, has_time, warnings = self._query(src, dst, time)
        prompt = self.build_prompt(query, has_time, as_measurements(context), reserve=3)
        # One call for the prompt and <RttStart>: log-probs of the Result field and of the RTT high byte.
        logp, prefix = self.prefill_all(np.append(prompt.tokens, T.RTT_START).astype(np.int32), extra=0)
        prefix = self._trim(prefix, len(prompt.tokens) + 1)
        state = self.grammar(prompt.tokens)
        byte2 = functools.partial(self._byte2, prefix, None)  # all branches batched on the shared prefix
        ((p_fail, codes, probs),) = result_distribution(logp[-2:-1], logp[-1:], state, byte2, full=True)
        s, d = T.bytes_to_ip(
            np.concatenate([query.src, query.dst]), np.concatenate([query.src_v6, query.dst_v6])
        )
        return RttPrediction(
            s, d, int(query.time[0]) if has_time else None, p_fail, codes, probs, levels,
            tuple(warnings + prompt.warnings), prompt.context_used, prompt.context_dropped,
        )  # fmt: skip

    def rank(
        self, src: str, candidates: Sequence[str], time=None, context=None, by: str = "median",
        threshold_ms: float | None = None, progress: Callable[[str], None] | None = None,
        allow_mixed_family: bool = False,
    ) -> list[RankedDestination]:  # fmt: skip
        """Rank candidate destinations for a source: per address family one shared prefix (context, source)
        in a KV cache, then the candidates as a trie of address bytes (`rank.rank_family`); each result
        equals `predict` for that destination (up to float rounding). `last_rank_stats` tells the work done.

        by="median": ascending median RTT; by="p_below": descending P(success and rtt <= threshold_ms).
        Ties are broken by the address text, so the order is deterministic. Duplicates are ranked once.
        Candidates of another family than the source raise FamilyError unless `allow_mixed_family`.
        """
        if by not in ("median", "p_below"):
            raise QueryError(f"rank by must be 'median' or 'p_below', got {by!r}")
        if by == "p_below" and (threshold_ms is None or threshold_ms <= 0):
            raise QueryError("ranking by p_below needs a positive threshold_ms")
        cands = sorted({parse_ip(c, "candidate")[0] for c in candidates})
        if not cands:
            raise QueryError("no candidate destinations given")
        src_v6 = parse_ip(src, "source")[1]
        other = [c for c in cands if parse_ip(c)[1] != src_v6]
        if other and not allow_mixed_family:
            raise FamilyError(f"{len(other)} candidate(s) are of another family than the source {src} (first: "
                              f"{other[0]}): a ping stays in one address family")  # fmt: skip
        ctx = as_measurements(context)
        addr, v6 = T.ip_to_bytes(cands)
        targets = [("q", 0.5)] + ([("t", float(threshold_ms))] if by == "p_below" else [])
        results: list[RankedDestination] = []
        self.last_rank_stats = RankStats()
        for fam in (False, True):  # one shared prefix per address family: context, <MS> Src <DstIPvX>
            idx = np.flatnonzero(v6 == fam)
            if not len(idx):
                continue
            query, has_time, _ = self._query(src, cands[idx[0]], time)
            prompt = self.build_prompt(query, has_time, ctx, reserve=3)
            split = prompt.query_start + 1 + (17 if query.src_v6[0] else 5) + 1
            nbytes = 16 if fam else 4
            tail = prompt.tokens[split + nbytes :]  # the query's time field: the same for every candidate
            tail = np.append(tail, T.RTT_START).astype(np.int32)
            prefix = self._trim(self.prefill(prompt.tokens[:split], extra=0)[1], split)
            report = None if progress is None else functools.partial(_report_ranked, progress, len(idx), fam)
            own = np.concatenate(
                [T.BYTE0 + addr[idx, :nbytes].astype(np.int32), np.tile(tail, (len(idx), 1))], 1
            )
            recall = recall_after(prompt.tokens[:split], own) if self.cfg.pair_recall else None
            p_fail, median, p_below, stats = rank_family(
                self.runner,
                prefix,
                addr[idx, :nbytes],
                tail,
                self.grammar(prompt.tokens),
                targets,
                report,
                recall,
            )
            stats.prefix_tokens = split
            self.last_rank_stats.add(stats)
            score = median if by == "median" else p_below
            results += [RankedDestination(cands[j], float(sc), float(md), float(pf))
                        for j, sc, md, pf in zip(idx, score, median, p_fail, strict=True)]  # fmt: skip
        sign = 1.0 if by == "median" else -1.0
        return sorted(results, key=lambda r: (sign * r.score, r.dst))

    # ---- inverse queries (inverse.py) ----------------------------------------------------------------------
    def likely_destinations(
        self, src: str, rtt_ms_range, n: int = 10, context=None, allow_mixed_family: bool = False
    ) -> list[inverse.LikelyAddress]:
        """Most likely public destinations for a source and an RTT (or range), in the source's family unless
        `allow_mixed_family`; see `inverse.likely_destinations`."""
        return inverse.likely_destinations(
            self, src, rtt_ms_range, n, context, allow_mixed_family=allow_mixed_family
        )

    def likely_timestamp(
        self, src: str, dst: str, rtt_ms: float, context, k: int = 5, allow_mixed_family: bool = False
    ) -> list[inverse.LikelyTime]:
        """Top-k times of a measurement after a timestamped context; see `inverse.likely_timestamp`."""
        return inverse.likely_timestamp(
            self, src, dst, rtt_ms, context, k, allow_mixed_family=allow_mixed_family
        )

    def counterpart(self, src: str, context=None, n: int = 5) -> list[inverse.LikelyAddress]:
        """Likely public address of the same probe in the other family; see `inverse.counterpart`."""
        return inverse.counterpart(self, src, context, n)
