"""Membership-inference audit of a trained model (property 5 of the study: "limit training data discovery").

The question a curious party asks of a released checkpoint: *was this probe's data in the training set?*
For pingllm that leaks where a probe is (its RTTs to anchors pin it down), which ISP it sits in (its source
prefix) and whom it talks to (its destinations). This module measures how well the simplest strong attack
answers it, so a change in training (more data, more steps, DP-SGD, a distilled tier) can be judged by a
number rather than by hope.

Attack (Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", IEEE CSF 2018): a sample whose loss is low was more likely trained on; score = -loss. We
aggregate to the unit we want to protect, the **probe** (user-level membership): the mean token NLL over
a few fixed-seed contexts of that probe's measurements, timestamps on, fields in the query order
(Src, Dst, Timestamp, Result). Per-field losses are kept as well: the loss on destination tokens is the
signal for *relationship* inference (which hosts a probe talks to), the loss on source tokens for its
identity/prefix, the loss on RTT tokens for its location.

Members are rows of the `train` split, non-members rows of `heldout_probes` (probes never trained on, same
time window, so the comparison is not confounded by time drift). The audit reports ROC-AUC, TPR at 1% and
10% FPR (the low-FPR regime argued for by Carlini et al., "Membership Inference Attacks From First
Principles", IEEE S&P 2022) and the membership advantage max(TPR - FPR) of Yeom et al.

This is a *lower bound* on leakage: a stronger attack (LiRA with shadow models, reference-model
calibration) can only do better. The audit's numbers (`membership_audit`, `roc_points`, `tpr_at_fpr`) live in
evaluation.metrics and its figure (`fig_membership_roc`) in evaluation.figures.
Pure library: no Dagster imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pingllm_core.data import records, tokens
from pingllm_core.model.transformer import Transformer
from pingllm_core.query.context import FIELD_ORDER

FIELD_GROUPS = ("src", "dst", "time", "result")  # per-field loss columns of ProbeLosses.field_loss
_MIN_TOKENS_PER_MEAS = 14  # <MeasurementStart> + 2 IPv4 blocks (5 each) + <Failed> + <TimestampDelta1>+1 byte
_MAX_MEAS_TOKENS = 47  # IPv6 src and dst, <TimestampAbs>, RTT: 1 + 17 + 17 + 9 + 3
# Field group of each marker token id (-1: <MeasurementStart>, counted in the total only).
_MARKER_GROUP = np.full(tokens.BYTE0, -1, np.int64)
_MARKER_GROUP[[tokens.SRC_IPV4, tokens.SRC_IPV6]] = 0
_MARKER_GROUP[[tokens.DST_IPV4, tokens.DST_IPV6]] = 1
_MARKER_GROUP[[tokens.TIMESTAMP_ABS, tokens.TIMESTAMP_DELTA1, tokens.TIMESTAMP_DELTA4]] = 2
_MARKER_GROUP[[tokens.RTT_START, tokens.FAILED]] = 3


@dataclass
class ProbeLosses:
    """Per-probe (and per-context) losses of one split under one model."""

    prb_id: np.ndarray  # int64[p]; -1 for a row without probe id (then the row is its own unit)
    loss: np.ndarray  # float64[p] mean token NLL (nats) over all predicted tokens of the probe's contexts
    field_loss: np.ndarray  # float64[p, 4] mean NLL of tokens in each FIELD_GROUPS field (NaN: none)
    tokens: np.ndarray  # int64[p] predicted tokens that went into `loss`
    contexts: np.ndarray  # int64[p] distinct contexts scored
    context_loss: np.ndarray  # float64[c] mean token NLL of each context
    context_probe: np.ndarray  # int64[c] position in the per-probe arrays of each context's probe

    def field(self, name: str) -> np.ndarray:
        """Per-probe loss restricted to one field group ("src", "dst", "time" or "result")."""
        return self.field_loss[:, FIELD_GROUPS.index(name)]


# ------------------------------------------------------------------------------------------- contexts


def probe_units(source) -> tuple[list[int], list[list[int]]]:
    """(prb_id, row positions) of each probe in `source`, in first-seen order; id-less rows stand alone."""
    if isinstance(source, str | Path):
        prb = records.read_index(source).sort_by("row").column("prb_id").to_pylist()
        prb = [-1 if p is None else int(p) for p in prb]
    else:
        prb = [int(source[i].prb_id) for i in range(len(source))]
    ids: list[int] = []
    rows: list[list[int]] = []
    where: dict[int, int] = {}
    for r, p in enumerate(prb):
        if p >= 0 and p in where:
            rows[where[p]].append(r)
            continue
        if p >= 0:
            where[p] = len(ids)
        ids.append(p)
        rows.append([r])
    return ids, rows


def _context_tokens(m: tokens.Measurements, seq_len: int) -> np.ndarray:
    """Tokens of the longest prefix of whole measurements of `m` that fits seq_len (timestamps on)."""
    n = len(m)
    order = np.tile(np.array(FIELD_ORDER, np.int8), (n, 1))
    toks, starts = tokens.encode_measurements_with_offsets(m, np.ones(n, bool), order)
    ends = np.append(starts[1:], len(toks))
    keep = int(np.count_nonzero(ends <= seq_len))
    return toks[: ends[keep - 1]]


def probe_contexts(
    rows: Sequence[records.ProbeRow], n_contexts: int, seq_len: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Up to n_contexts token sequences (<= seq_len) of consecutive measurements of one probe's rows.

    Each context is a window of measurements in time order, starting at a uniform position of a row drawn
    with probability proportional to its size; a probe small enough to fit one context gives one context.
    """
    fit = seq_len // _MIN_TOKENS_PER_MEAS + 1  # measurements always enough to fill seq_len
    sizes = np.array([r.n for r in rows], np.float64)
    if len(rows) == 1 and rows[0].n <= fit:
        return [_context_tokens(rows[0].measurements(), seq_len)]
    out = []
    for _ in range(n_contexts):
        row = rows[int(rng.choice(len(rows), p=sizes / sizes.sum()))]
        start = int(rng.integers(0, max(1, row.n - fit + 1)))
        out.append(_context_tokens(row.measurements(np.arange(start, min(row.n, start + fit))), seq_len))
    return out


def _token_groups(toks: np.ndarray) -> np.ndarray:
    """Field group (index into FIELD_GROUPS, -1 for <MeasurementStart>) of every token of a context."""
    marker = toks < tokens.BYTE0
    last = np.maximum.accumulate(np.where(marker, np.arange(len(toks)), 0))
    return _MARKER_GROUP[toks[last]]


@nnx.jit
def _token_nll(model: Transformer, tokens_BxL, segment_ids_BxL, positions_BxL) -> jax.Array:
    """NLL (nats) of tokens[:, 1:] given earlier tokens: [B, L-1] float32."""
    logits_BxLxV = model(tokens_BxL, segment_ids_BxL, positions_BxL, deterministic=True)
    logp = jax.nn.log_softmax(logits_BxLxV[:, :-1], axis=-1)
    return -jnp.take_along_axis(logp, tokens_BxL[:, 1:, None], axis=-1)[..., 0]


def _score_contexts(
    model: Transformer, ctxs: list[np.ndarray], seq_len: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL [c, 5], predicted-token count [c, 5]) per context: columns = total + FIELD_GROUPS."""
    c = len(ctxs)
    nll_sum, count = np.zeros((c, 5)), np.zeros((c, 5), np.int64)
    pos = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    for a in range(0, c, batch_size):
        chunk = ctxs[a : a + batch_size]
        toks = np.zeros((batch_size, seq_len), np.int32)
        seg = np.zeros((batch_size, seq_len), np.int32)  # 0 = padding (also the unused batch rows)
        for i, t in enumerate(chunk):
            toks[i, : len(t)], seg[i, : len(t)] = t, 1
        nll = np.asarray(_token_nll(model, jnp.asarray(toks), jnp.asarray(seg), jnp.asarray(pos)), np.float64)
        for i, t in enumerate(chunk):
            row_nll = nll[i, : len(t) - 1]  # predictions of tokens 1..len-1 (not the segment's first)
            groups = _token_groups(t)[1:]
            nll_sum[a + i, 0], count[a + i, 0] = row_nll.sum(), len(row_nll)
            for g in range(4):
                sel = groups == g
                nll_sum[a + i, 1 + g], count[a + i, 1 + g] = row_nll[sel].sum(), int(sel.sum())
    return nll_sum, count


def probe_loss_table(
    model: Transformer,
    source: records.ProbeRecordSource | str | Path,
    max_probes: int = 200,
    contexts_per_probe: int = 4,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
    select: Callable[[int], bool] | None = None,
) -> ProbeLosses:
    """Score up to max_probes probes of `source` (a ProbeRecordSource, or a records folder) under `model`.

    Probes are drawn without replacement with `seed`; each probe's contexts come from its own generator
    seeded by (seed, prb_id), so a probe's score does not depend on which other probes were drawn.
    Pass the folder for large splits: probe ids then come from index.parquet instead of decoding every row.
    `select(prb_id)` restricts the draw to the probes it accepts (id-less rows are passed as -1).
    """
    if max_probes < 1 or contexts_per_probe < 1 or batch_size < 1:
        raise ValueError("max_probes, contexts_per_probe and batch_size must be >= 1")
    if not _MAX_MEAS_TOKENS <= seq_len <= model.cfg.max_len:
        raise ValueError(f"seq_len must be in [{_MAX_MEAS_TOKENS}, {model.cfg.max_len}], got {seq_len}")
    src = records.ProbeRecordSource(source) if isinstance(source, str | Path) else source
    ids, unit_rows = probe_units(source)
    rng = np.random.default_rng(seed)
    pool = np.arange(len(ids)) if select is None else np.flatnonzero([select(p) for p in ids])
    if not len(pool):
        raise ValueError("no probe of the source is selected")
    pick = np.sort(rng.choice(pool, size=min(max_probes, len(pool)), replace=False))
    ctxs: list[np.ndarray] = []
    owner: list[int] = []
    for j, u in enumerate(pick):
        key = ids[u] if ids[u] >= 0 else (1 << 40) + int(unit_rows[u][0])
        probe_rng = np.random.default_rng([seed, key])
        got = probe_contexts([src[r] for r in unit_rows[u]], contexts_per_probe, seq_len, probe_rng)
        ctxs += got
        owner += [j] * len(got)
    if progress:
        progress(f"privacy: scoring {len(ctxs)} contexts of {len(pick)} probes")
    nll_sum, count = _score_contexts(model, ctxs, seq_len, batch_size)
    owner_arr = np.asarray(owner, np.int64)
    p = len(pick)
    probe_sum = np.zeros((p, 5))
    probe_cnt = np.zeros((p, 5), np.int64)
    np.add.at(probe_sum, owner_arr, nll_sum)
    np.add.at(probe_cnt, owner_arr, count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(probe_cnt > 0, probe_sum / np.maximum(probe_cnt, 1), np.nan)
    return ProbeLosses(
        prb_id=np.asarray([ids[u] for u in pick], np.int64),
        loss=mean[:, 0],
        field_loss=mean[:, 1:],
        tokens=probe_cnt[:, 0],
        contexts=np.bincount(owner_arr, minlength=p).astype(np.int64),
        context_loss=nll_sum[:, 0] / np.maximum(count[:, 0], 1),
        context_probe=owner_arr,
    )


def probe_losses(
    model: Transformer,
    source: records.ProbeRecordSource | str | Path,
    max_probes: int = 200,
    contexts_per_probe: int = 4,
    seq_len: int = 512,
    seed: int = 0,
) -> np.ndarray:
    """Per-probe mean token NLL (nats), float64[p]: the input of `membership_audit`."""
    return probe_loss_table(model, source, max_probes, contexts_per_probe, seq_len, seed).loss
