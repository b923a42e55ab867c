"""The evaluation report: the comparison table first, figures that load wherever the Markdown is shown."""

import base64
import re

import matplotlib.pyplot as plt

from pingllm_core.evaluation.report import best_baseline, comparison_rows, report_markdown, write_report

METRICS = {
    "splits": {
        "heldout_probes": {
            "rows": 20,
            "failed_rows": 2,
            "ground_truth_median": {"rel_p50": 0.01234, "mae": 0.5},
            "model": {"rel_p50": 0.123456, "mae": 4.0, "nll_code": 3.2},
            "global_median": {"rel_p50": 0.4, "mae": 9.0},
            "prefix_pair_median": {"rel_p50": 0.3, "mae": 7.0},
            "model_failure": {"roc_auc": 0.81, "pr_auc": 0.3, "note": ""},
            "destination_failure_rate_failure": {"roc_auc": 0.7, "pr_auc": 0.2, "note": ""},
        },
        "future": {
            "rows": 5,
            "failed_rows": 0,
            "model": {"rel_p50": float("nan"), "mae": 1.0},
            "global_median": {"rel_p50": 0.5, "mae": 2.0},
            "prefix_pair_median": {"rel_p50": 0.25, "mae": 2.0},
        },
    },
    "mode_nll": {"src_ip": 2.5, "rtt": 3.25},
    "live_kl": {"mean": 0.5, "per_target": [0.25, 0.75]},
}


def png(path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_comparison_puts_the_model_first_and_the_oracle_last_rounded_with_nan_as_none():
    rows = comparison_rows(METRICS)
    assert [r["method"] for r in rows] == [
        "model",
        "global_median",
        "prefix_pair_median",
        "ground_truth_median",
    ]
    assert rows[0] == {"method": "model", "heldout_probes": 0.123, "future": None}
    assert rows[-1] == {"method": "ground_truth_median", "heldout_probes": 0.012, "future": None}


def test_best_baseline_is_neither_the_model_nor_the_oracle():
    assert best_baseline(METRICS["splits"]["heldout_probes"]) == ("prefix_pair_median", 0.3)
    assert best_baseline(METRICS["splits"]["future"]) == ("prefix_pair_median", 0.25)
    name, value = best_baseline({"model": {"rel_p50": 0.1}})
    assert name == "" and value != value


def test_report_leads_with_the_table_and_embeds_every_figure_as_a_decodable_png(tmp_path):
    figures = [png(tmp_path / "relative_error_cdf.png"), png(tmp_path / "custom_plot.png")]
    text = report_markdown(METRICS, figures, {"seed": 0})
    body = text[: text.index("\n[relative_error_cdf]: ")]
    table_at = body.index("| method | heldout_probes | future |")
    assert table_at < body.index("![") < body.index("## heldout_probes")  # table, then figures, then details
    assert "| model | 0.123 | n/a |" in body
    assert "figures/" not in text  # no relative link (the Dagster UI resolves those against its own URL)
    for fig in figures:
        assert f"![{fig.stem}][{fig.stem}]" in body
        (uri,) = re.findall(rf"^\[{fig.stem}\]: data:image/png;base64,(\S+)$", text, flags=re.M)
        assert base64.b64decode(uri) == fig.read_bytes()
    assert "Failure prediction" in body and "destination_failure_rate" in body
    assert "| 2.5 | 3.25 |" in body and "0.25, 0.75" in body  # detail sections as tables, not JSON dumps
    out = write_report(tmp_path / "report.md", METRICS, figures, {"seed": 0})
    assert out.read_text() == text
