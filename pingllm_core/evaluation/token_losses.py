"""Reference losses on token batches (nats per token): what a held-out loss must beat to mean anything.

The unigram bar (no context at all), the RTT marginal (one RTT distribution for every pair, counted on the
train split) and the model's loss on each RTT byte next to the marginal's. Batches are the loader's
(tokens, weights, ...).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pingllm_core.data import tokens as T


def unigram_cross_entropy(batches: Iterable[dict]) -> float:
    """Cross-entropy (nats/token) of the best unigram model on the weighted target tokens of `batches`."""
    counts = np.zeros(T.VOCAB_SIZE)
    for b in batches:
        toks, w = np.asarray(b["tokens"])[:, 1:], np.asarray(b["weights"])[:, 1:]
        counts += np.bincount(toks.ravel(), weights=w.ravel(), minlength=T.VOCAB_SIZE)
    p = counts / max(counts.sum(), 1.0)
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


def _rtt_byte_counts(batches: Iterable[dict]) -> np.ndarray:
    """Weighted counts [2, vocab] of RTT byte 1 and byte 2 (the two tokens after each <RttStart>)."""
    counts = np.zeros((2, T.VOCAB_SIZE))
    for b in batches:
        toks, w = np.asarray(b["tokens"])[:, 1:], np.asarray(b["weights"])[:, 1:]
        for i in (1, 2):
            sel = T.after_rtt_start(toks, i)
            counts[i - 1] += np.bincount(toks[sel], weights=w[sel], minlength=T.VOCAB_SIZE)
    return counts


def rtt_marginal_loss(
    eval_batches: Iterable[dict], fit_batches: Iterable[dict], smoothing: float = 0.5
) -> float:
    """NLL (nats/token) on the RTT bytes of `eval_batches` of a model that ignores the pair and the context.

    The model: byte 1 and byte 2 of the RTT each get one distribution, counted on `fit_batches` (the train
    split; add-`smoothing` counts so unseen bytes stay finite). A model whose held-out RTT loss
    (`TrainResult.eval_rtt_loss`) is not below this predicts one global RTT distribution for every query.
    """
    nll, n = _marginal_byte_nll(eval_batches, fit_batches, smoothing)
    return float(nll.sum() / n.sum()) if n.sum() else float("nan")


def _marginal_byte_nll(eval_batches, fit_batches, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Per RTT byte: (NLL summed over `eval_batches`, weighted count) of that byte's marginal on `fit_batches`."""
    ev, fit = _rtt_byte_counts(eval_batches), _rtt_byte_counts(fit_batches) + smoothing
    p = fit / np.maximum(fit.sum(axis=1, keepdims=True), 1e-300)
    with np.errstate(divide="ignore"):
        logp = np.where(ev > 0, np.log(p), 0.0)
    return -(ev * logp).sum(axis=1), ev.sum(axis=1)


def rtt_byte_losses(model, eval_batches: list[dict], fit_batches: list[dict], smoothing: float = 0.5) -> dict:
    """Held-out NLL (nats) of each RTT byte, for `model` and for the marginal counted on `fit_batches`.

    Byte 1 holds the exponent and the top 3 mantissa bits: which quarter octave (a band 14-25% wide) the RTT is
    in, where what a model knows about the pair shows. Byte 2 is the rest of the mantissa, steps of 0.05-0.1% of
    the RTT: finer than ping jitter, so close to uniform (log 256 = 5.55 nats) for any model. The RTT loss
    averages the two.
    """
    import jax
    import jax.numpy as jnp

    logp = jax.jit(lambda t, s, q: jax.nn.log_softmax(model(t, s, q, deterministic=True).astype(jnp.float32)))
    sums = np.zeros((2, 2))  # [byte, (nll, count)]
    for b in eval_batches:
        lp = np.asarray(logp(*(jnp.asarray(b[k]) for k in ("tokens", "segment_ids", "positions"))))[:, :-1]
        toks, w = np.asarray(b["tokens"])[:, 1:], np.asarray(b["weights"])[:, 1:]
        nll = -np.take_along_axis(lp, toks[..., None], axis=-1)[..., 0]
        for i in (1, 2):
            sel = T.after_rtt_start(toks, i)
            sums[i - 1] += [(nll * w)[sel].sum(), w[sel].sum()]
    marg_nll, marg_n = _marginal_byte_nll(eval_batches, fit_batches, smoothing)
    with np.errstate(divide="ignore", invalid="ignore"):
        marg, model_loss = marg_nll / marg_n, sums[:, 0] / sums[:, 1]
    return {f"{who}rtt_byte{i + 1}_loss": float(v[i]) for who, v in (("", model_loss), ("marginal_", marg))
            for i in (0, 1)}  # fmt: skip
