"""The evaluation report: the model against every baseline first, then the figures, then the details.

`report.md` is one self-contained file: the figures are embedded as data URIs in reference-style image
links at its end, so the text stays readable in a terminal and the images load in any Markdown view,
the Dagster UI's included (which resolves relative links against its own URL, where no figure lives).
`jsonable` prepares metrics for a metrics.json (this report's and the experiments').
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pingllm_core.evaluation.figures import markdown_table

HEADLINE = "rel_p50"  # median |predicted - true| / true of the RTT on rows that did not fail
ORACLE = "ground_truth_median"  # the synthetic internet's true median: a floor, not a competitor
CAPTIONS = {
    "relative_error_cdf": "Relative RTT error, model and baselines (CDF over every evaluated row)",
    "calibration_pit": "Calibration of the model's RTT distribution (PIT histogram; flat = calibrated)",
    "error_vs_context": "Median relative error against the number of the probe's own recent pings given",
    "timestamp_logprob": "log P(true RTT) with and without timestamps, same rows and context",
    "live_ping_grid": "Fresh pings against model samples for held-out pairs (KL per pair)",
    "mode_accuracy": "Mean P(correct token) with each field predicted last",
}
DETAIL_SECTIONS = ("context", "timestamp_logp", "pair_kl", "live_kl", "mode_accuracy", "mode_nll")


def _round(value: object, digits: int) -> float | None:
    """A number rounded to `digits` decimals; None for NaN, infinities and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), digits)


def comparison_rows(metrics: Mapping, metric: str = HEADLINE, digits: int = 3) -> list[dict[str, object]]:
    """One row per method (model first, the ground-truth oracle last), one column per split: `metric`."""
    splits: Mapping[str, Mapping] = metrics.get("splits", {})
    methods: list[str] = []
    for per_split in splits.values():
        methods += [
            k for k, v in per_split.items() if isinstance(v, Mapping) and metric in v and k not in methods
        ]
    methods.sort(key=lambda k: (k != "model", k == ORACLE))  # stable: baselines keep the metrics' order
    return [
        {
            "method": m,
            **{s: _round(per_split.get(m, {}).get(metric), digits) for s, per_split in splits.items()},
        }
        for m in methods
    ]


def best_baseline(per_split: Mapping, metric: str = HEADLINE) -> tuple[str, float]:
    """The baseline with the lowest `metric` in one split's numbers (neither the model nor the oracle)."""
    scores = {
        k: float(v[metric])
        for k, v in per_split.items()
        if isinstance(v, Mapping) and k not in ("model", ORACLE) and _round(v.get(metric), 9) is not None
    }
    if not scores:
        return "", float("nan")
    name = min(scores, key=scores.__getitem__)
    return name, scores[name]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _detail_table(value: object) -> str:
    """A details section as a table: rows for a dict of dicts, else one row of its numbers."""
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        return markdown_table([{"key": k, **v} for k, v in value.items()])
    if isinstance(value, Mapping):
        row = {k: ", ".join(f"{x:.3g}" for x in v) if isinstance(v, list) else v for k, v in value.items()}
        return markdown_table([row])
    return f"`{json.dumps(value, default=str)}`\n"


def report_markdown(metrics: Mapping, figures: Sequence[Path], config: Mapping[str, object]) -> str:
    """The report's Markdown: comparison table, figures, per-split details, other numbers, config."""
    splits: Mapping[str, Mapping] = metrics.get("splits", {})
    sizes = ", ".join(
        f"{s} {m.get('rows', 0)} rows ({m.get('failed_rows', 0)} failed)" for s, m in splits.items()
    )
    nan = float("nan")  # shown as n/a
    table = [{k: nan if v is None else v for k, v in row.items()} for row in comparison_rows(metrics)]
    lines = ["# pingllm evaluation", "",
             "Median relative RTT error, abs(predicted - true) / true, per split (lower is better; "
             f"`{ORACLE}` is the synthetic internet's truth, a floor):", "",
             markdown_table(table), f"Rows: {sizes}.", "",
             "These rows are cold: the model is asked with no context measurements, and every baseline answers "
             "from what it fitted on the train split. In the `context` table below, the model and "
             "`source_last_seen` get the same k measurements of the probe just before each row (the baseline "
             "uses the last one to the same destination, else its train answer).", ""]  # fmt: skip
    if figures:
        lines += ["## Figures", ""]
    for p in figures:
        lines += [f"**{CAPTIONS.get(p.stem, p.stem)}**", "", f"![{p.stem}][{p.stem}]", ""]
    for split, m in splits.items():
        lines += [f"## {split}", ""]
        point = [{"method": k, **v} for k, v in m.items() if isinstance(v, Mapping) and HEADLINE in v]
        lines += [markdown_table(point)]
        failure = [
            {"method": k.removesuffix("_failure"), **{c: x for c, x in v.items() if x != ""}}
            for k, v in m.items()
            if k.endswith("_failure")
        ]
        if failure:
            lines += ["Failure prediction:", "", markdown_table(failure)]
    for key in DETAIL_SECTIONS:
        if key in metrics:
            lines += [f"## {key}", "", _detail_table(metrics[key])]
    lines += ["## Config", "", f"`{json.dumps(dict(config), default=str)}`", ""]
    lines += [f"[{p.stem}]: {_data_uri(p)}" for p in figures]
    return "\n".join(lines) + "\n"


def write_report(path: Path, metrics: Mapping, figures: Sequence[Path], config: Mapping[str, object]) -> Path:
    """Write report.md (see `report_markdown`) and return its path."""
    path.write_text(report_markdown(metrics, figures, config))
    return path


def jsonable(x: object, nan: object = math.nan) -> object:
    """`x` with numpy scalars as Python numbers, tuples as lists, dict keys JSON cannot hold as str, float NaN
    as `nan` (None writes null, the default NaN writes `NaN`) and anything else JSON cannot hold as str(x)."""
    if isinstance(x, dict):
        keys = (str, int, float, bool, type(None))
        return {(k if isinstance(k, keys) else str(k)): jsonable(v, nan) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v, nan) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and x != x:
        return nan
    return x if isinstance(x, str | int | float | bool | type(None)) else str(x)
