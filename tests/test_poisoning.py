"""Poisoning detection: injection, the consistency detector, metrics, and a tiny end-to-end run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pingllm_core.evaluation.baselines import address_prefix
from pingllm_core.experiments import poisoning as P
from pingllm_core.experiments import poisoning_detect as PD
from pingllm_core.experiments import poisoning_inject as PI


def make_world(n_probes: int = 40, rows_per_pair: int = 6, seed: int = 0, t0: int = 1_720_000_000):
    """A metric toy internet: probes on a plane (1 unit = 1 ms), each pinging 5 others; RTT = distance + 2 + noise.

    Probe i has address 10+i in prefix (20 + i // 2).x.0.0/24 (two probes per /24), so (src prefix, dst
    prefix) groups have a second probe to compare with.
    """
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n_probes, 2))
    addr = [f"{20 + i // 2}.{seed}.0.{10 + i}" for i in range(n_probes)]
    rows = []
    for i in range(n_probes):
        targets = rng.choice([j for j in range(n_probes) if j != i], size=5, replace=False)
        for j in targets:
            d = float(np.hypot(*(xy[i] - xy[j])))
            for k in range(rows_per_pair):
                rtt = d + 2.0 + rng.exponential(0.5) if rng.random() > 0.02 else -1.0
                rows.append((t0 + 60 * (k * 7 + int(j)), addr[i], addr[j], 4, rtt, 1000 + i))
    df = pd.DataFrame(rows, columns=["t", "src_addr", "dst_addr", "ip_version", "rtt", "prb_id"])
    df.insert(0, "event_time", pd.to_datetime(df.pop("t"), unit="s", utc=True))
    df["ip_version"] = df["ip_version"].astype(np.int8)
    df["prb_id"] = df["prb_id"].astype(np.int32)
    return df.sort_values(["prb_id", "event_time"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ injection


def test_injection_labels_and_rewrites_exactly_what_it_says() -> None:
    clean = make_world()
    cfg = PI.PoisonConfig(liar_share=0.3, inflate_factor=2.0, inflate_offset_ms=30.0, deflate_factor=0.25,
                         fake_dst_share=0.5, sybil_count=4)  # fmt: skip
    df, truth = PI.inject_poison(clean, cfg, seed=3)
    lab = truth.labels.set_index("prb_id")["label"]
    counts = truth.counts()
    assert counts == {"honest": 28, "inflate": 4, "deflate": 4, "fake_dst": 4, "sybil": 4}
    assert len(truth.row_kind) == len(df)
    head = df.iloc[: len(clean)]  # original rows keep their order; Sybil rows are appended
    same_cols = ["event_time", "src_addr", "ip_version", "prb_id"]
    pd.testing.assert_frame_equal(head[same_cols], clean[same_cols])
    for p, kind in lab.items():
        rows = np.flatnonzero(clean.prb_id.to_numpy() == p)
        r0, r1 = clean.rtt.to_numpy()[rows], head.rtt.to_numpy()[rows]
        d0, d1 = clean.dst_addr.to_numpy()[rows], head.dst_addr.to_numpy()[rows]
        rk = truth.row_kind[rows]
        if kind == "honest":
            assert (r0 == r1).all() and (d0 == d1).all() and (rk == "").all()
        elif kind == "inflate":
            ok = r0 > 0
            np.testing.assert_allclose(r1[ok], r0[ok] * 2.0 + 30.0)
            assert (r1[~ok] == r0[~ok]).all() and (d0 == d1).all() and (rk[ok] == "inflate").all()
        elif kind == "deflate":
            ok = r0 > 0
            np.testing.assert_allclose(r1[ok], r0[ok] * 0.25)
            assert (d0 == d1).all() and (rk[ok] == "deflate").all() and (rk[~ok] == "").all()
        elif kind == "fake_dst":
            moved = rk == "fake_dst"
            assert moved.sum() == round(0.5 * len(rows))
            assert (d0[~moved] == d1[~moved]).all() and (r0[~moved] == r1[~moved]).all()
            assert set(address_prefix(d1[moved])) <= set(truth.fake_prefixes)
            assert not set(address_prefix(d1[moved])) & PI.used_prefixes(clean)  # unused prefixes
            assert np.isin(r1[moved], r0[r0 > 0]).all()  # plausible: the probe's own RTTs
    syb = df.iloc[len(clean) :]
    assert (truth.row_kind[len(clean) :] == "sybil").all()
    assert sorted(syb.prb_id.unique()) == sorted(lab[lab == "sybil"].index)
    assert set(address_prefix(syb.src_addr.to_numpy())) == {truth.sybil_prefix}
    at = syb[syb.dst_addr == truth.sybil_target]
    assert len(at) > 0 and (at.rtt.between(0.8, 1.2)).all()
    assert (truth.labels.set_index("prb_id").loc[lab[lab == "honest"].index, "rewritten"] == 0).all()
    again, truth2 = PI.inject_poison(clean, cfg, seed=3)
    pd.testing.assert_frame_equal(df, again)


def test_injection_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        PI.PoisonConfig(kinds=("teleport",))
    with pytest.raises(ValueError):
        PI.PoisonConfig(liar_share=1.5)


# ------------------------------------------------------------------------------------------ detectors


def test_consistency_ranks_blatant_liars_above_honest_probes() -> None:
    clean = make_world(n_probes=60, seed=1)
    cfg = PI.PoisonConfig(liar_share=0.2, inflate_factor=4.0, inflate_offset_ms=50.0, deflate_factor=0.1,
                         sybil_count=4, sybil_rtt_ms=0.5)  # fmt: skip
    df, truth = PI.inject_poison(clean, cfg, seed=0)
    cons = PD.consistency_scores(df)
    assert set(cons.index) == set(truth.labels.prb_id)
    table = PD.detection_table({"consistency": cons["score"]}, truth)["consistency"]
    assert table["all"]["roc_auc"] > 0.9
    for kind in PI.LIAR_KINDS:
        assert table[kind]["roc_auc"] > 0.85, (kind, table[kind])
    # On honest data nobody stands out much: few triangle failures, no uncorroborated destinations.
    honest = PD.consistency_scores(clean)
    assert honest["violation_share"].mean() < 0.05
    assert (honest["uncorroborated_share"] == 0).all()


def test_rank_average_and_metrics_by_hand() -> None:
    # Sorted by score (l = liar, h = honest): 0.9 l, 0.8 h, 0.7 l, 0.6 h, 0.5 h, 0.1 l
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    liar = np.array([1, 0, 1, 0, 0, 1], bool)
    m = PD.detection_metrics(score, liar)
    # Liar/honest pairs ranked right: 0.9 beats 3, 0.7 beats 2, 0.1 beats 0 -> 5 of 9.
    assert m["roc_auc"] == pytest.approx(5 / 9)
    # Average precision: precision at each liar = 1/1, 2/3, 3/6 -> mean 13/18.
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # FPR <= 5% with 3 honest probes means no false positive: only the top liar, TPR 1/3.
    assert m["tpr_at_5pct_fpr"] == pytest.approx(1 / 3)
    assert (m["n_liars"], m["n_honest"]) == (3, 3)
    assert math.isnan(PD.detection_metrics(score, np.ones(6, bool))["roc_auc"])
    r = PD.rank_average({"a": pd.Series([1.0, 2.0, 3.0]), "b": pd.Series([3.0, 2.0, 1.0])})
    np.testing.assert_allclose(r.to_numpy(), [2 / 3, 2 / 3, 2 / 3])


# -------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_on_a_small_split(tmp_path: Path) -> None:
    world = make_world(n_probes=24, rows_per_pair=4, seed=2)
    ids = world.prb_id.unique()
    held = world.prb_id.isin(ids[-3:])
    cut = world.event_time.quantile(0.8)
    splits = tmp_path / "splits"
    splits.mkdir()
    world[~held & (world.event_time <= cut)].to_parquet(splits / "train.parquet", index=False)
    world[held].to_parquet(splits / "heldout_probes.parquet", index=False)
    world[~held & (world.event_time > cut)].to_parquet(splits / "future.parquet", index=False)
    cfg = P.ExperimentConfig(poison=PI.PoisonConfig(liar_share=0.25, sybil_count=3), train_steps=3,
                             batch_size=2, seq_len=128, eval_batches=1, model_rows=4, nll_contexts=1)  # fmt: skip
    res = P.run_experiment(splits, tmp_path / "out", cfg)
    m = res.metrics
    for det in PD.DETECTORS:
        v = m["detection"][det]["all"]["roc_auc"]
        assert 0.0 <= v <= 1.0
    for ev in m["prefix_pair_median_rel_p50"].values():
        assert all(math.isfinite(x) for x in ev.values())
    assert all(math.isfinite(x) for x in m["model_eval_loss"].values())
    assert all(math.isfinite(x) for x in m["model_rel_p50"].values())
    assert m["cleaning"]["dropped"] == round(0.15 * len(res.scores))
    assert res.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res.figure.stat().st_size > 5000
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "probe_scores.csv").exists()
    assert set(res.scores.label) >= {"honest", "sybil"}
