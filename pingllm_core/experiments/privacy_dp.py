"""A privacy mitigation with its own audit: probe-level DP-SGD, before and after (property 5 of the study).

`privacy.py` measures how well a loss-threshold attack tells training probes from others. This module
trains the same model twice on the same member probes, once plainly and once with DP-SGD, and audits
both, so the mitigation is judged by two numbers side by side: how much membership leaks (AUC, TPR at
low FPR) and what it costs (held-out NLL, overall and on the RTT field).

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) at the unit we protect, the
**probe** (user-level DP, McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018):

- every step samples each member probe independently with probability q (Poisson sampling);
- each sampled probe contributes exactly one sequence: a window of its own measurements (timestamps on,
  fields in the query order), so one row of the batch is one probe;
- each row's gradient is clipped to L2 norm C, the clipped gradients are summed, Gaussian noise of
  standard deviation sigma * C is added, and the sum is divided by the expected batch size q * N;
- AdamW then runs on that noisy mean (post-processing: no extra privacy cost).

The privacy loss is accounted with the Renyi-DP bound of the sampled Gaussian mechanism for integer
orders (Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019),
composed over steps and converted to (epsilon, delta) with the classical bound. The batch has a fixed
number of slots (jit needs one shape); if more probes are drawn than slots, the surplus is dropped and
counted (`truncated_draws`), which the guarantee does not cover: the slot count is chosen so that this
has probability below 1e-6 per step.

The plain run uses the same sampler and step with no clipping and no noise, so the only difference
between the two models is the mitigation. Pure library: no Dagster imports.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import special, stats

from pingllm_core.data import records
from pingllm_core.evaluation import figures, metrics
from pingllm_core.experiments import privacy
from pingllm_core.model.loop import StepInfo, TrainLoop
from pingllm_core.model.step import lr_schedule, weighted_xent
from pingllm_core.model.transformer import ModelConfig, Transformer, model_config

# ------------------------------------------------------------------------------------------ accounting


def rdp_sampled_gaussian(q: float, sigma: float, orders: Sequence[int]) -> np.ndarray:
    """Renyi-DP epsilon of one step of the Poisson-sampled Gaussian mechanism at each integer order.

    Mironov et al. 2019, Sec. 3.3: for integer alpha >= 2,
    A_alpha = sum_k C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2)),
    eps(alpha) = log(A_alpha) / (alpha - 1). With q = 1 this is the Gaussian mechanism's alpha / (2 sigma^2).
    """
    if not 0.0 < q <= 1.0 or sigma <= 0:
        raise ValueError(f"need 0 < q <= 1 and sigma > 0, got q={q}, sigma={sigma}")
    out = []
    for alpha in orders:
        if int(alpha) != alpha or alpha < 2:
            raise ValueError(f"orders must be integers >= 2, got {alpha}")
        k = np.arange(int(alpha) + 1, dtype=np.float64)
        log_terms = (
            special.gammaln(alpha + 1)
            - special.gammaln(k + 1)
            - special.gammaln(alpha - k + 1)
            + k * math.log(q)
            + (alpha - k) * (math.log1p(-q) if q < 1 else 0.0)
            + (k * k - k) / (2 * sigma * sigma)
        )
        if q == 1:
            log_terms = log_terms[-1:]  # (1 - q)^(alpha - k) is 0 except at k = alpha
        out.append(special.logsumexp(log_terms) / (alpha - 1))
    return np.asarray(out)


DEFAULT_ORDERS = tuple(range(2, 257))


def dp_epsilon(
    q: float, sigma: float, steps: int, delta: float, orders: Sequence[int] = DEFAULT_ORDERS
) -> tuple[float, int]:
    """(epsilon, best order) of `steps` compositions of the sampled Gaussian at a given delta.

    epsilon = min over orders of steps * eps_rdp(alpha) + log(1 / delta) / (alpha - 1) (Mironov 2017).
    sigma = 0 (no noise) gives infinity.
    """
    if steps < 0 or not 0.0 < delta < 1.0:
        raise ValueError(f"need steps >= 0 and 0 < delta < 1, got {steps}, {delta}")
    if sigma == 0:
        return math.inf, 0
    rdp = rdp_sampled_gaussian(q, sigma, orders)
    eps = steps * rdp + math.log(1.0 / delta) / (np.asarray(orders, np.float64) - 1)
    best = int(np.argmin(eps))
    return float(eps[best]), int(orders[best])


# ------------------------------------------------------------------------------------------- sampling


def batch_slots(n_members: int, q: float, tail: float = 1e-6) -> int:
    """Rows per batch: the (1 - tail) quantile of Binomial(n_members, q), at least 1."""
    return max(1, int(stats.binom.ppf(1.0 - tail, n_members, q)))


ROW_BUCKET = 4


class ProbeSampler:
    """Poisson sampling of member probes; each drawn probe gives one sequence of its own measurements."""

    def __init__(self, source: records.ProbeRecordSource, unit_rows: Sequence[Sequence[int]], q: float,
                 seq_len: int, seed: int) -> None:  # fmt: skip
        if not 0.0 < q <= 1.0:
            raise ValueError(f"sampling rate q must be in (0, 1], got {q}")
        self.units = [[source[r] for r in rows] for rows in unit_rows]
        self.q, self.seq_len = q, seq_len
        self.slots = batch_slots(len(self.units), q)
        self.rng = np.random.default_rng(seed)
        self.truncated_draws = 0  # probes drawn beyond the batch's slots, over all steps

    def next_batch(self) -> dict[str, np.ndarray]:
        """Tokens/segment_ids/positions/weights [rows, seq_len]; unused rows are all zero (no gradient)."""
        drawn = np.flatnonzero(self.rng.random(len(self.units)) < self.q)
        self.truncated_draws += max(0, len(drawn) - self.slots)
        # Rows rounded up to a multiple of ROW_BUCKET: a few jit shapes instead of always `slots` rows.
        b, n = min(self.slots, max(ROW_BUCKET, -(-len(drawn) // ROW_BUCKET) * ROW_BUCKET)), self.seq_len
        out = {k: np.zeros((b, n), np.int32) for k in ("tokens", "segment_ids", "positions")}
        out["weights"] = np.zeros((b, n), np.float32)
        for i, u in enumerate(drawn[:b]):
            toks = privacy.probe_contexts(self.units[u], 1, n, self.rng)[0]
            m = len(toks)
            out["tokens"][i, :m], out["segment_ids"][i, :m] = toks, 1
            out["positions"][i, :m] = np.arange(m)
            out["weights"][i, 1:m] = 1.0  # the first token of a sequence is not predicted
        return out


# ----------------------------------------------------------------------------------------------- step


def make_private_step(graphdef, rest, tx: optax.GradientTransformation, clip_norm: float | None,
                      noise_multiplier: float, expected_batch: float) -> Callable:  # fmt: skip
    """Jitted (params, opt_state, batch, key) -> (params, opt_state, metrics) with per-row gradients.

    Each row's loss is its mean token NLL. clip_norm=None means no clipping and then noise_multiplier must
    be 0 (the plain run). The update direction is (sum of clipped row gradients + noise) / expected_batch.
    """
    if clip_norm is None and noise_multiplier:
        raise ValueError("noise needs a clipping norm: the noise scale is noise_multiplier * clip_norm")

    def row_loss(params, toks, seg, pos, w):
        model = nnx.merge(graphdef, params, rest)
        logits = model(toks[None], seg[None], pos[None], deterministic=True)
        nll, wsum = weighted_xent(logits, {"tokens": toks[None], "weights": w[None]})
        return nll / jnp.maximum(wsum, 1.0)

    def step(params, opt_state, batch, key):
        args = (batch["tokens"], batch["segment_ids"], batch["positions"], batch["weights"])
        losses, grads = jax.vmap(jax.value_and_grad(row_loss), in_axes=(None, 0, 0, 0, 0))(params, *args)
        live = (batch["weights"].sum(axis=1) > 0).astype(jnp.float32)  # rows holding a probe
        sq = [jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in jax.tree.leaves(grads)]
        norms = jnp.sqrt(sum(sq))  # per-row gradient L2 norm [B]
        scale = live if clip_norm is None else live * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
        summed = jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1), grads)
        if noise_multiplier:
            leaves, tree = jax.tree.flatten(summed)
            keys = jax.random.split(key, len(leaves))
            std = noise_multiplier * clip_norm
            leaves = [
                x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
            ]
            summed = jax.tree.unflatten(tree, leaves)
        grad = jax.tree.map(lambda g: g / expected_batch, summed)
        updates, opt_state = tx.update(grad, opt_state, params)
        params = optax.apply_updates(params, updates)
        n_live = jnp.maximum(live.sum(), 1.0)
        metrics = {
            "loss": jnp.sum(losses * live) / n_live,
            "rows": live.sum(),
            "row_grad_norm": jnp.sum(norms * live) / n_live,
            "clipped": jnp.sum((norms > (clip_norm or jnp.inf)) * live) / n_live,
        }
        return params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


# ------------------------------------------------------------------------------------------ experiment


@dataclasses.dataclass(frozen=True)
class MitigationConfig:
    """The before/after experiment: which probes are members, how both models train, how they are audited."""

    n_members: int = 24  # train probes the models are trained on (few, so a plain model can memorise)
    expected_batch: float = 8.0  # q * n_members: probes per step on average
    steps: int = 300  # optimizer steps of each run
    lr: float = 3e-3  # peak AdamW learning rate (warmup 10%, cosine to 10%)
    weight_decay: float = 0.01
    tier: str = "tiny"  # model shape (max_len is set to seq_len)
    seq_len: int = 256  # tokens of one probe's sequence, in training and in the audit
    clip_norm: float = 1.0  # per-probe gradient L2 bound C of the DP runs
    noise_multipliers: tuple[float, ...] = (1.0,)  # one DP run per sigma; the plain run always comes first
    delta: float = 1e-5  # of (epsilon, delta); should be below 1 / n_members
    max_nonmembers: int = 120  # audit: unused train probes and held-out probes, at most this many
    contexts_per_probe: int = 2  # audit: scored sequences per probe
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_members < 2 or not 0 < self.expected_batch <= self.n_members:
            raise ValueError(f"need n_members >= 2 and 0 < expected_batch <= n_members, got "
                             f"{self.n_members}, {self.expected_batch}")  # fmt: skip
        if self.steps < 1 or self.clip_norm <= 0 or any(s < 0 for s in self.noise_multipliers):
            raise ValueError("need steps >= 1, clip_norm > 0 and noise multipliers >= 0")

    @property
    def q(self) -> float:
        """Per-step sampling probability of each member probe."""
        return self.expected_batch / self.n_members


@dataclasses.dataclass
class MitigationRun:
    """One trained variant: its audit, its accuracy and its privacy budget."""

    name: str
    clip_norm: float | None
    noise_multiplier: float
    epsilon: float  # inf for the plain run
    audit: dict  # privacy.membership_audit of member vs non-member probe losses
    member_nll: float  # mean token NLL of the member probes (training data)
    heldout_nll: float  # mean token NLL of held-out probes (accuracy)
    heldout_rtt_nll: float  # the same, RTT/failure tokens only
    final_loss: float  # mean training loss of the last 10% of steps
    truncated_draws: int
    seconds: float
    member_losses: np.ndarray = dataclasses.field(repr=False)
    nonmember_losses: np.ndarray = dataclasses.field(repr=False)

    def row(self) -> dict:
        """Flat numbers for tables, JSON and metadata."""
        a = self.audit
        return {"variant": self.name, "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
                "epsilon": self.epsilon, "auc": a["auc"], "auc_se": a["auc_se"],
                "tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"], "tpr_at_10pct_fpr": a["tpr_at_10pct_fpr"],
                "advantage": a["advantage"], "member_nll": self.member_nll, "heldout_nll": self.heldout_nll,
                "heldout_rtt_nll": self.heldout_rtt_nll, "final_train_loss": self.final_loss,
                "truncated_draws": self.truncated_draws, "seconds": self.seconds}  # fmt: skip


def variant_name(clip_norm: float, noise_multiplier: float) -> str:
    """ "DP-SGD sigma=1 C=1", or "clip only C=1" without noise (a regulariser with no formal guarantee)."""
    if noise_multiplier == 0:
        return f"clip only C={clip_norm:g}"
    return f"DP-SGD sigma={noise_multiplier:g} C={clip_norm:g}"


def train_variant(
    sampler: ProbeSampler,
    model_cfg: ModelConfig,
    cfg: MitigationConfig,
    clip_norm: float | None,
    noise_multiplier: float,
    progress: Callable[[str], None] | None = None,
    label: str = "",
) -> tuple[Transformer, list[float]]:
    """Train a fresh model with the probe-level private step; returns the model and per-step losses."""
    model = Transformer(model_cfg, rngs=nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = lr_schedule(cfg.lr, max(1, cfg.steps // 10), cfg.steps, 0.1)
    tx = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay)
    opt_state = tx.init(params)
    step = make_private_step(graphdef, rest, tx, clip_norm, noise_multiplier, cfg.expected_batch)

    def private_step(state):
        params, opt_state, key = state
        key, sub = jax.random.split(key)
        params, opt_state, metrics = step(params, opt_state, sampler.next_batch(), sub)
        return (params, opt_state, key), metrics

    loop = TrainLoop(private_step, cfg.steps, name=f"{label or 'private'} training loss")
    if progress:

        def report(info: StepInfo) -> None:
            m = info.metrics
            progress(f"{label} step {info.step}/{cfg.steps} loss {m['loss']:.3f} "
                     f"row grad norm {m['row_grad_norm']:.2f} clipped {m['clipped']:.0%}")  # fmt: skip

        loop.add_hook(report, every=max(1, cfg.steps // 5), last=True)
    params, _, _ = loop.run((params, opt_state, jax.random.key(cfg.seed + 17)))
    return nnx.merge(graphdef, params, rest), [m["loss"] for _, m in loop.history]


def run_mitigation(
    train_records: str | Path,
    heldout_records: str | Path,
    cfg: MitigationConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[MitigationRun]:
    """Train the plain model and one DP-SGD model per noise multiplier on the same members; audit each.

    Members: cfg.n_members probes of `train_records` drawn with cfg.seed. Non-members: the other train
    probes and the held-out probes (never trained on by these models), at most cfg.max_nonmembers.
    Every variant sees the same sampler seed, so the plain and DP runs draw the same probes and windows.
    """
    cfg = cfg or MitigationConfig()
    say = progress or (lambda _msg: None)
    source = records.ProbeRecordSource(train_records)
    ids, unit_rows = privacy.probe_units(Path(train_records))
    with_id = [i for i, p in enumerate(ids) if p >= 0]
    if len(with_id) < cfg.n_members + 1:
        raise ValueError(f"{train_records} has {len(with_id)} probes; the experiment needs more than "
                         f"n_members={cfg.n_members} (the rest are non-members)")  # fmt: skip
    pick = np.sort(np.random.default_rng(cfg.seed).choice(with_id, cfg.n_members, replace=False))
    members = {ids[u] for u in pick}
    model_cfg = model_config(cfg.tier, max_len=cfg.seq_len, dropout=0.0, dtype="float32")
    say(f"privacy mitigation: {cfg.n_members} member probes, q={cfg.q:.3f}, {cfg.steps} steps per run")
    audit_kw = dict(contexts_per_probe=cfg.contexts_per_probe, seq_len=cfg.seq_len, seed=cfg.seed + 1)
    variants = [("plain", None, 0.0)] + [
        (variant_name(cfg.clip_norm, s), cfg.clip_norm, s) for s in cfg.noise_multipliers
    ]
    runs = []
    for name, clip, sigma in variants:
        t0 = time.perf_counter()
        sampler = ProbeSampler(source, [unit_rows[u] for u in pick], cfg.q, cfg.seq_len, cfg.seed)
        model, losses = train_variant(sampler, model_cfg, cfg, clip, sigma, say, name)
        # The folder, not `source`: probe ids then come from index.parquet instead of decoding every row.
        mem = privacy.probe_loss_table(
            model, train_records, cfg.n_members, select=members.__contains__, **audit_kw
        )
        other = privacy.probe_loss_table(
            model, train_records, cfg.max_nonmembers, select=lambda p: p not in members, **audit_kw
        )
        held = privacy.probe_loss_table(model, heldout_records, cfg.max_nonmembers, **audit_kw)
        non = np.concatenate([held.loss, other.loss])[: cfg.max_nonmembers]
        eps = dp_epsilon(cfg.q, sigma, cfg.steps, cfg.delta)[0] if sigma else math.inf
        tail = losses[-max(1, len(losses) // 10) :]
        runs.append(MitigationRun(
            name=name, clip_norm=clip, noise_multiplier=sigma, epsilon=eps,
            audit=metrics.membership_audit(mem.loss, non), member_nll=float(np.nanmean(mem.loss)),
            heldout_nll=float(np.nanmean(held.loss)), heldout_rtt_nll=float(np.nanmean(held.field("result"))),
            final_loss=float(np.mean(tail)), truncated_draws=sampler.truncated_draws,
            seconds=time.perf_counter() - t0, member_losses=mem.loss, nonmember_losses=non,
        ))  # fmt: skip
        r = runs[-1]
        say(
            f"{name}: membership AUC {r.audit['auc']:.3f}, held-out NLL {r.heldout_nll:.3f}, epsilon {eps:.3g}"
        )
    return runs


def markdown_table(runs: Sequence[MitigationRun]) -> str:
    """The before/after table in Markdown (`figures.markdown_table` over cells formatted here)."""
    rows = [
        {
            "variant": r.name,
            "epsilon (delta)": "inf (no guarantee)" if math.isinf(r.epsilon) else f"{r.epsilon:.2f}",
            "membership AUC": f"{r.audit['auc']:.3f} ± {r.audit['auc_se']:.3f}",
            "TPR @ 1% FPR": f"{r.audit['tpr_at_1pct_fpr']:.3f}",
            "TPR @ 10% FPR": f"{r.audit['tpr_at_10pct_fpr']:.3f}",
            "member NLL": f"{r.member_nll:.3f}",
            "held-out NLL": f"{r.heldout_nll:.3f}",
            "held-out RTT NLL": f"{r.heldout_rtt_nll:.3f}",
        }
        for r in runs
    ]
    return figures.markdown_table(rows)
