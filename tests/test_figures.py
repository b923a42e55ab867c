"""Every evaluation figure is written as a valid, non-blank PNG; the Markdown table is well formed."""

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from pingllm_core.evaluation import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_real_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels[..., :3].var()) > 0.0  # something was drawn


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_timestamp_logprob_figure(tmp_path, rng):
    out = figures.fig_timestamp_logprob(
        rng.normal(-2, 1, 500), rng.normal(-3, 1, 500), tmp_path / "a" / "ts.png"
    )
    _assert_real_png(out)


def test_live_grid_figure_with_partial_last_row(tmp_path, rng):
    targets = [
        (f"probe {k} -> anchor", rng.lognormal(3, 0.3, 200), rng.lognormal(3.1, 0.3, 200)) for k in range(4)
    ]
    targets[0] = ("with failures", np.r_[targets[0][1], [-1.0, -1.0]], targets[0][2])
    _assert_real_png(figures.fig_live_grid(targets, [0.1, 0.2, 0.3, 0.4], tmp_path / "grid.png"))


def test_live_grid_plots_the_share_of_samples_per_bin_not_a_density():
    # 1% of the mass at 0.01 ms in a narrow log bin, 99% spread around 100 ms: as a density per ms the sliver
    # would be the tallest bar by far; as a share it is 0.01.
    real = np.concatenate([np.full(10, 0.01), np.linspace(80, 120, 990)])
    edges = figures._log_edges([real], 50)
    shares = figures.bin_shares(real, edges)
    assert abs(shares.sum() - 1) < 1e-12
    assert abs(shares[0] - 0.01) < 1e-12 and shares.max() > 0.05
    dens, _ = np.histogram(real, edges, density=True)
    assert dens.argmax() == 0  # what the figure used to show


def test_live_grid_rejects_mismatched_kl_list(tmp_path, rng):
    with pytest.raises(ValueError):
        figures.fig_live_grid([("x", np.ones(3), np.ones(3))], [], tmp_path / "bad.png")


def test_mode_accuracy_figure(tmp_path):
    table = {"src": 0.31, "dst": 0.42, "result": 0.18, "time": 0.05}
    _assert_real_png(figures.fig_mode_accuracy(table, tmp_path / "modes.png"))


def test_relative_error_cdf_figure_handles_exact_hits(tmp_path, rng):
    errors = {"model": np.r_[0.0, rng.exponential(0.1, 300)], "global_median": rng.exponential(0.5, 300)}
    _assert_real_png(figures.fig_relative_error_cdf(errors, tmp_path / "cdf.png"))


def test_error_vs_context_figure(tmp_path):
    sizes = [0, 1, 2, 5, 10, 64]
    errors = {"model": [0.4, 0.3, 0.25, 0.2, 0.15, 0.1], "vivaldi": [0.3] * 6}
    _assert_real_png(figures.fig_error_vs_context(sizes, errors, tmp_path / "ctx.png"))


def test_calibration_figure(tmp_path, rng):
    _assert_real_png(figures.fig_calibration(rng.uniform(size=1000), tmp_path / "pit.png"))


def test_loss_curve_figure_with_eval_history(tmp_path):
    hist = [(s, 5.0 / (1 + s / 100)) for s in range(0, 1000, 10)]
    out = figures.fig_loss_curve(hist, tmp_path / "loss.png", eval_history=[(0, 5.1), (500, 1.9), (999, 1.6)])
    _assert_real_png(out)


def test_loss_curve_shows_train_held_out_and_rtt_losses_and_the_bars_together(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig) or Path(path))
    hist = [(s, 5.0 / (1 + s / 100)) for s in range(1, 200)]
    rtt = [(s, 6.0 / (1 + s / 300)) for s in range(1, 200)]
    evals = [(50, 3.1, 5.2), (100, 2.5, 4.8), (199, 2.2, 4.6)]
    refs = {"unigram (held-out)": 4.0, "global RTT distribution": 5.0, "missing": float("nan")}
    figures.fig_loss_curve(hist, tmp_path / "loss.png", eval_history=evals, rtt_history=rtt, references=refs)
    (ax,) = saved[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train loss (all tokens)", "train RTT loss (RTT tokens)", "held-out loss",
                          "held-out RTT loss", "unigram (held-out)", "global RTT distribution"}  # fmt: skip
    assert list(lines["held-out RTT loss"].get_ydata()) == [5.2, 4.8, 4.6]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)


def test_markdown_table_formats_columns_in_first_seen_order():
    text = figures.markdown_table(
        [{"method": "model", "mae": 1.234567, "n": 10}, {"method": "a|b", "mae": float("nan"), "extra": True}]
    )
    lines = text.strip().splitlines()
    assert lines[0] == "| method | mae | n | extra |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| model | 1.235 | 10 |  |"
    assert lines[3] == "| a\\|b | n/a |  | True |"
    assert figures.markdown_table([]) == ""
