"""The model card: sections from the train split and the evaluation metrics, merge, trust and time warnings."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA
from pingllm_core.model import model_card

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)


@pytest.fixture
def train_parquet(tmp_path):
    rows = [  # (minutes after T0, src, dst, ip_version, rtt, prb_id)
        (0, "193.0.14.129", "8.8.8.8", 4, 10.0, 1),
        (4, "193.0.14.129", "8.8.8.8", 4, 12.0, 1),
        (8, "193.0.14.129", "8.8.8.8", 4, -1.0, 1),
        (9, "193.0.14.129", "9.9.9.9", 4, 30.0, 1),
        (12, "2001:67c:2e8:22::c100:68b", "2001:4860:4860::8888", 6, 20.0, 1),
        (1440, "81.2.69.160", "1.1.1.1", 4, 50.0, 2),
    ]
    table = pa.Table.from_pylist(
        [{"event_time": T0 + dt.timedelta(minutes=m), "src_addr": s, "dst_addr": d, "ip_version": v, "rtt": r,
          "prb_id": p} for m, s, d, v, r, p in rows],
        schema=MEASUREMENT_SCHEMA,
    )  # fmt: skip
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    return path


def test_training_section_describes_the_train_split(train_parquet):
    t = model_card.training_section(train_parquet, tier="tiny", params=1234, steps=200, eval_rtt_loss=4.2,
                                    marginal_rtt_loss=float("nan"), examples=5)  # fmt: skip
    assert t["window"]["first"] == "2024-07-01T00:00:00Z" and t["window"]["last"] == "2024-07-02T00:00:00Z"
    assert t["rows"] == 6 and t["families"] == {"ipv4": 5 / 6, "ipv6": 1 / 6}
    assert t["probes"] == 2 and t["sources"] == 3
    assert t["eval_rtt_loss"] == 4.2 and t["marginal_rtt_loss"] is None  # NaN is "unknown", valid JSON
    # one example per source (its best-measured pair), best-measured first, per family
    assert [(x["src"], x["dst"], x["pings"]) for x in t["examples"]] == [
        ("193.0.14.129", "8.8.8.8", 3), ("81.2.69.160", "1.1.1.1", 1),
        ("2001:67c:2e8:22::c100:68b", "2001:4860:4860::8888", 1),
    ]  # fmt: skip
    assert t["examples"][0]["median_rtt_ms"] == 11.0  # failed pings left out


def test_evaluation_headline_names_the_best_baseline_but_not_ground_truth():
    splits = {
        "heldout_probes": {"rows": 150, "failed_rows": 3, "model": {"rel_p50": 0.53},
                           "global_median": {"rel_p50": 0.35}, "prefix_pair_median": {"rel_p50": 0.28},
                           "ground_truth_median": {"rel_p50": 0.01}, "model_failure": {"auc": 0.6},
                           "vivaldi": {"rel_p50": float("nan")}},
        "future": {"rows": 0, "model": {"rel_p50": 0.42}},
    }  # fmt: skip
    h = model_card.evaluation_section(splits)["headline"]
    assert h["heldout_probes"] == {"rows": 150, "model_rel_p50": 0.53, "best_baseline": "prefix_pair_median",
                                   "best_baseline_rel_p50": 0.28}  # fmt: skip
    assert h["future"]["best_baseline"] is None and h["future"]["model_rel_p50"] == 0.42


def test_write_replaces_and_update_merges_a_section(tmp_path):
    assert model_card.read(tmp_path) == {}
    model_card.write(tmp_path, {"training": {"tier": "tiny"}, "evaluation": {"old": True}})
    model_card.write(tmp_path, {"training": {"tier": "small"}})  # a retrained model: stale sections go
    card = model_card.update(tmp_path, "evaluation", {"headline": {}})
    assert card == model_card.read(tmp_path)
    assert (
        card["training"] == {"tier": "small"}
        and card["evaluation"] == {"headline": {}}
        and card["format"] == 1
    )


def test_a_damaged_card_is_reported_and_replaced_by_update(tmp_path):
    model_card.card_path(tmp_path).write_text("{not json")
    with pytest.raises(model_card.ModelCardError, match="cannot be read"):
        model_card.read(tmp_path)
    model_card.update(tmp_path, "evaluation", {"headline": {}})
    assert model_card.read(tmp_path)["evaluation"] == {"headline": {}}


def _card(eval_rtt: float | None, marginal: float | None) -> dict:
    window = {"first_unix": 1_719_792_000, "last_unix": 1_719_964_799}  # 2024-07-01 .. 2024-07-02
    return {"training": {"eval_rtt_loss": eval_rtt, "marginal_rtt_loss": marginal, "window": window}}


def test_answers_of_a_model_that_did_not_beat_the_marginal_carry_a_warning():
    (warning,) = model_card.trust_warnings(_card(4.83, 4.33))
    assert "did not beat one global RTT distribution" in warning and "4.830 vs marginal 4.330" in warning
    assert model_card.trust_warnings(_card(3.5, 4.33)) == []
    assert (
        model_card.trust_warnings(_card(None, 4.33)) == []
        and model_card.beat_marginal(_card(None, 4.33)) is None
    )
    assert model_card.trust_warnings({}) == []


def test_times_outside_the_training_window_are_named():
    card = _card(3.5, 4.33)
    assert model_card.window_text(card) == "2024-07-01T00:00:00Z .. 2024-07-02T23:59:59Z"
    assert model_card.time_warning(card, 1_719_900_000) is None
    warning = model_card.time_warning(card, 1_000_000_000)
    assert warning.startswith("time 2001-09-09T01:46:40Z is outside the training window 2024-07-01T00:00:00Z")
    assert model_card.time_warning({}, 1_000_000_000) is None
