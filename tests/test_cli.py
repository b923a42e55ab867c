"""`pingllm` CLI on a real (tiny, briefly trained) checkpoint: outputs, warnings, exit codes and messages.

One checkpoint serves the whole module, and commands run in-process (`main([...])`); two tests run the console
script itself.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pingllm_core.cli.info import default_checkpoint
from pingllm_core.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from pingllm_core.model import model_card
from pingllm_core.model.tracking import NullTracker
from pingllm_core.model.train import TrainConfig, synthetic_batches, train
from pingllm_core.model.transformer import model_config
from pingllm_core.query.engine import QueryEngine
from pingllm_core.query.inputs import is_public, parse_ip

SRC = "193.0.14.129"
SRC6 = "2001:67c:2e8:22::c100:68b"
WINDOW = {"first": "2024-07-01T00:00:00Z", "last": "2024-07-02T23:59:59Z",
          "first_unix": 1_719_792_000, "last_unix": 1_719_964_799}  # fmt: skip
CARD = {
    "training": {"tier": "tiny", "params": 123_456, "steps": 2, "rows": 5000, "window": WINDOW,
                 "families": {"ipv4": 0.75, "ipv6": 0.25}, "probes": 96, "sources": 150,
                 "eval_rtt_loss": 4.83, "marginal_rtt_loss": 4.33,
                 "examples": [{"src": SRC, "dst": "8.8.8.8", "ip_version": 4, "pings": 30, "median_rtt_ms": 12.5},
                              {"src": SRC6, "dst": "2001:4860:4860::8888", "ip_version": 6, "pings": 20,
                               "median_rtt_ms": 14.0}]},
    "evaluation": {"headline": {"heldout_probes": {"rows": 150, "model_rel_p50": 0.53,
                                                   "best_baseline": "prefix_pair_median",
                                                   "best_baseline_rel_p50": 0.28}}},
}  # fmt: skip
CONTEXT = (
    "time,src,dst,rtt_ms\n2024-07-02T17:40:00Z,193.0.14.129,8.8.8.8,12.5\n1719942000,193.0.14.129,9.9.9.9,\n"
)
EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback")


class _Batches:
    """A checkpointable iterator over fixed batches (train saves the data position with the model)."""

    def __init__(self, batches: list[dict]):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = state["i"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint whose card says it did not beat the marginal RTT loss (as the demo's does today)."""
    path = tmp_path_factory.mktemp("ckpt")
    batches = synthetic_batches(2, batch=2, seq_len=64)
    cfg = TrainConfig(steps=2, warmup_steps=1, log_every=1, ckpt_every=2)
    train(model_config("tiny", max_len=128), cfg, lambda: _Batches(batches), path, NullTracker())
    model_card.write(path, CARD)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, ckpt):
    """Input files for the bad-input table, by name."""
    root = tmp_path_factory.mktemp("inputs")
    texts = {
        "ctx.csv": CONTEXT,
        "untimed.csv": "src,dst,rtt_ms\n193.0.14.129,8.8.8.8,12.5\n",
        "semicolon.csv": "time;src;dst;rtt_ms\n1719942000;193.0.14.129;8.8.8.8;12\n",
        "empty.csv": "",
        "negative.csv": CONTEXT + "1719942100,193.0.14.129,8.8.8.8,-50\n",
        "nan.csv": "time,src,dst,rtt_ms\n1719942000,193.0.14.129,8.8.8.8,nan\n",
        "huge.csv": "time,src,dst,rtt_ms\n1719942000,193.0.14.129,8.8.8.8,1e12\n",
        "epoch.csv": "time,src,dst,rtt_ms\n1970-01-01T00:00:00Z,193.0.14.129,8.8.8.8,12\n",
        "mixed.csv": "time,src,dst,rtt_ms\n1719942000,193.0.14.129,2001:4860:4860::8888,12\n",
        "nocols.csv": "when,from,to\n1,2,3\n",
        "cands_bad.txt": "8.8.8.8\n# comment\n9.9.9.9\n\n8.8.8.300\n",
        "cands_v6.txt": "8.8.8.8\n2001:4860:4860::8888\n",
        "cands_both.txt": "8.8.8.8\nnot-an-address\n2001:4860:4860::8888\n",
        "cands_none.txt": "# nothing here\n\n",
        "notckpt/readme.txt": "",
        "nosteps/model_config.json": json.dumps(model_config("tiny").to_dict()),
        "damaged/model_config.json": "{not json",
        "damaged/1/x": "",
        "a_file": "",
    }
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# (argv after the command's --checkpoint, text the one-line error must contain); {f} is the input folder.
BAD_INPUTS = [
    # address families
    (["predict", "146.174.16.1", "2a01:4f8::1"], "IPv4 but destination 2a01:4f8::1 is IPv6.*--allow-mixed-family"),
    (["when", SRC, "2001:4860:4860::8888", "12", "--context", "{f}/ctx.csv"], "one address family"),
    (["rank", SRC, "--candidates", "{f}/cands_v6.txt"], r"cands_v6.txt line 2: .*--allow-mixed-family"),
    (["predict", "--context", "{f}/mixed.csv", SRC, "8.8.8.8"], "mixed.csv line 2: .*one address family"),
    # addresses
    (["predict", SRC, "8.8.8.300"], "not an IPv4 or IPv6 address"),
    (["predict", SRC, "::ffff:8.8.8.8"], "mixed families"),
    (["predict", "10.0.0.0/8", "8.8.8.8"], "prefix"),
    (["counterpart", "1.2.3"], "not an IPv4 or IPv6 address"),
    (["destinations", "fe80::1%eth0", "10"], "zone id"),
    # RTTs and ranges
    (["destinations", SRC, "-5-10"], "'-5-10' has a bound at or below 0"),
    (["destinations", SRC, "--", "-5-10"], "'-5-10' has a bound at or below 0"),
    (["destinations", SRC, "-5"], "at or below 0"),
    (["destinations", SRC, "0"], "at or below 0"),
    (["destinations", SRC, "1e9-2e9"], "representable range 0 .. 600000 ms"),
    (["destinations", SRC, "inf"], "representable range"),
    (["destinations", SRC, "-inf"], "representable range"),
    (["destinations", SRC, "nan"], "representable range"),
    (["destinations", SRC, "30-10"], "reversed"),
    (["destinations", SRC, "fast"], "MS or a range LO-HI"),
    (["destinations", SRC], "required: RTT"),
    (["when", SRC, "8.8.8.8", "1e12", "--context", "{f}/ctx.csv"], "0 to 600000 ms"),
    (["when", SRC, "8.8.8.8", "-50", "--context", "{f}/ctx.csv"], "or -1 for a failed ping"),
    (["when", SRC, "8.8.8.8", "inf", "--context", "{f}/ctx.csv"], "0 to 600000 ms"),
    (["rank", SRC, "--threshold", "-inf"], "0 to 600000 ms"),
    (["rank", SRC, "--threshold", "0"], "above 0 ms"),
    (["rank", SRC, "--threshold", "1e9"], "0 to 600000 ms"),
    # counts
    (["destinations", SRC, "10", "-n", "0"], "-n: must be between 1 and 100, got 0"),
    (["destinations", SRC, "10", "-n", "-2"], "-n: must be between 1 and 100"),
    (["destinations", SRC, "10", "-n", "100000"], "-n: must be between 1 and 100"),
    (["when", SRC, "8.8.8.8", "12", "-k", "0", "--context", "{f}/ctx.csv"], "-k: must be between 1 and 100"),
    (["counterpart", SRC, "-n", "0"], "-n: must be between 1 and 100"),
    (["counterpart", SRC, "-n", "two"], "-n: must be a whole number"),
    (["rank", SRC, "--top", "0"], "--top: must be at least 1"),
    (["rank", SRC, "--top", "-3"], "--top: must be at least 1"),
    (["predict", SRC, "8.8.8.8", "--quantiles", "0.5,2"], "quantiles must lie strictly between 0 and 1"),
    (["predict", SRC, "8.8.8.8", "--quantiles", "median"], "comma-separated numbers"),
    # times
    (["predict", SRC, "8.8.8.8", "--time", "noon"], "ISO 8601"),
    (["predict", SRC, "8.8.8.8", "--time", "99999999999999"], "outside 2000-01-01 .. 2099-12-31.*2024-07-01"),
    (["predict", SRC, "8.8.8.8", "--time", "1970-01-01T00:00:00Z"], "1970-01-01T00:00:00Z is outside.*trained on"),
    (["rank", SRC, "--time", "-5", "--candidates", "{f}/cands_bad.txt", "--skip-bad-lines"], "non-negative"),
    # --plot
    (["predict", SRC, "8.8.8.8", "--plot", "/missing_dir/x.png"], "--plot folder '/missing_dir' does not exist"),
    (["predict", SRC, "8.8.8.8", "--plot", "{f}/plot.txt"], "must end in .png, .svg, .pdf"),
    # context files
    (["predict", SRC, "8.8.8.8", "--context", "/nonexistent/ctx.csv"], "does not exist"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}"], "is a folder"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/semicolon.csv"], "line 1: columns must be separated by commas"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/empty.csv"], "empty.csv is empty.*time,src,dst,rtt_ms"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/nocols.csv"], "line 1: the header lacks column.s. src, dst"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/negative.csv"], "negative.csv line 4: rtt_ms '-50'"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/nan.csv"], "nan.csv line 2: rtt_ms 'nan'"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/huge.csv"], "huge.csv line 2: .*600000"),
    (["predict", SRC, "8.8.8.8", "--context", "{f}/epoch.csv"], "epoch.csv line 2: time 1970-01-01"),
    (["when", SRC, "8.8.8.8", "12"], "needs --context FILE with timestamps"),
    (["when", SRC, "8.8.8.8", "12", "--context", "{f}/untimed.csv"], "untimed.csv has none"),
    # rank's candidate list
    (["rank", SRC, "--candidates", "/nonexistent/cands.txt"], "does not exist"),
    (["rank", SRC, "--candidates", "{f}/cands_bad.txt"], "cands_bad.txt line 5: .*8.8.8.300.*--skip-bad-lines"),
    (["rank", SRC, "--candidates", "{f}/cands_none.txt"], "cands_none.txt holds no usable candidate"),
    (["rank", SRC, "--candidates", "{f}/cands_both.txt"], "line 2: .*--skip-bad-lines to skip such lines$"),
    # checkpoints
    (["predict", SRC, "8.8.8.8", "--checkpoint", "{f}/notckpt"], "not a pingllm checkpoint folder.*model_config"),
    (["predict", SRC, "8.8.8.8", "--checkpoint", "{f}/nosteps"], "holds no saved training step"),
    (["predict", SRC, "8.8.8.8", "--checkpoint", "{f}/damaged"], "model_config.json is damaged"),
    (["info", "--checkpoint", "{f}/a_file"], "is a file; a checkpoint is a folder"),
    (["examples", "--checkpoint", "{f}/missing"], "does not exist"),
    # commands and arguments
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["predict", SRC], "required: dst"),
    (["predict", SRC, "8.8.8.8", "--threshold", "5"], "unrecognized arguments: --threshold 5"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_every_bad_input_gets_one_line_and_exit_code_2(ckpt, files, capsys, argv, message):
    argv = [a.replace("{f}", str(files)) for a in argv]
    if argv[0] != "frobnicate" and "--checkpoint" not in argv:
        argv = [argv[0], "--checkpoint", str(ckpt), *argv[1:]]
    code, out, err = run(capsys, *argv)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.count("\n") == 1 and err.startswith("pingllm"), err  # one line
    assert re.search(message, err), err
    assert not EXCEPTION_NAME.search(err), err


def test_engine_loads_the_checkpoint_and_its_card_offline(ckpt):
    engine = QueryEngine.load(ckpt)
    assert engine.cfg.max_len == 128 and engine.cfg.d_model == 64
    assert engine.card["training"]["probes"] == 96
    assert engine.predict(SRC, "8.8.8.8").probs.sum() == pytest.approx(1.0)


def test_predict_prints_a_table_and_a_small_json(ckpt, capsys, tmp_path):
    code, out, err = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "--quantiles", "0.25,0.5"
    )
    assert code == EXIT_OK
    for word in ("p_fail", "median_ms", "p25_ms", "p50_ms", "mean_ms"):
        assert word in out
    assert "warning: this model did not beat one global RTT distribution" in err  # its card says so
    plot = tmp_path / "dist.png"
    code, out, _ = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "--json", "--plot", str(plot)
    )
    assert code == EXIT_OK and len(out) < 2000  # no 20,000-bin distribution by default
    data = json.loads(out)
    assert (
        0 < data["p_fail"] < 1
        and data["quantiles_ms"]["p10"] <= data["median_ms"] <= data["quantiles_ms"]["p90"]
    )
    assert "distribution" not in data and sum(data["histogram"]["prob"]) == pytest.approx(1.0)
    assert len(data["histogram"]["edges_ms"]) == len(data["histogram"]["prob"]) + 1
    assert any("did not beat" in w for w in data["warnings"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000
    code, out, _ = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "--json", "--full-distribution"
    )
    full = json.loads(out)["distribution"]
    assert code == EXIT_OK and sum(full["prob"]) == pytest.approx(1.0) and len(full["rtt_ms"]) > 1000


def test_predict_with_context_file_and_a_time_outside_the_training_window(ckpt, files, capsys):
    code, out, err = run(capsys, "predict", "--checkpoint", str(ckpt), SRC, "1.1.1.1", "--context",
                         str(files / "ctx.csv"), "--time", "2023-11-14T22:30:00Z", "--json")  # fmt: skip
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["context_used"] == 2 and data["time"] == 1700001000
    assert any(
        "outside the training window 2024-07-01T00:00:00Z .. 2024-07-02T23:59:59Z" in w
        for w in data["warnings"]
    )
    assert "warning: time 2023-11-14T22:30:00Z is outside the training window" in err


def test_mixed_family_pair_is_answered_only_when_asked(ckpt, capsys):
    code, out, _ = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "2a01:4f8::1", "--allow-mixed-family"
    )
    assert code == EXIT_OK and "2a01:4f8::1" in out


@pytest.mark.slow
def test_private_addresses_are_warned_about_in_every_command(ckpt, capsys, monkeypatch):
    private = "10.1.2.3"
    monkeypatch.setattr("sys.stdin", io.StringIO("8.8.8.8\n192.168.0.1\n"))
    for argv in (["predict", private, "8.8.8.8"], ["rank", private], ["counterpart", private, "-n", "1"],
                 ["destinations", private, "20", "-n", "1"]):  # fmt: skip
        code, _, err = run(capsys, argv[0], "--checkpoint", str(ckpt), *argv[1:])
        assert code == EXIT_OK and re.search(rf"warning: {private}.* not (a )?public address", err), argv


def test_rank_reads_candidates_from_stdin_and_skips_bad_lines_when_asked(ckpt, capsys, monkeypatch):
    lines = "9.9.9.9\n8.8.8.8  # google\n\n2001:4860:4860::8888\nnot-an-address\n1.1.1.1\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, out, err = run(
        capsys, "rank", "--checkpoint", str(ckpt), SRC, "--json", "--top", "2", "--skip-bad-lines"
    )
    assert code == EXIT_OK
    data = json.loads(out)
    rows = data["results"]
    assert len(rows) == 2 and rows[0]["median_ms"] <= rows[1]["median_ms"]
    assert "skipped 2 bad line(s) of stdin: 4, 5" in data["warnings"] and "skipped 2 bad line(s)" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, _, err = run(capsys, "rank", "--checkpoint", str(ckpt), SRC)
    assert code == EXIT_BAD_INPUT and "stdin line 4:" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("9.9.9.9\n8.8.8.8\n2001:4860:4860::8888\n"))
    code, out, _ = run(
        capsys, "rank", "--checkpoint", str(ckpt), SRC, "--threshold", "50", "--allow-mixed-family"
    )
    assert code == EXIT_OK and "P(rtt<=50ms)" in out and "2001:4860:4860::8888" in out


def test_inverse_commands_answer_in_the_source_family(ckpt, files, capsys):
    for src, v6 in ((SRC, False), (SRC6, True)):
        code, out, _ = run(
            capsys, "destinations", "--checkpoint", str(ckpt), src, "10-40", "-n", "3", "--json"
        )
        data = json.loads(out)  # a 2-step model: not every likely address is public, and the answer says so
        found = data["results"]
        assert code == EXIT_OK and all(parse_ip(f["dst"])[1] == v6 and is_public(f["dst"]) for f in found)
        assert len(found) == 3 or f"only {len(found)} public destination(s)" in " ".join(data["warnings"])
        assert found or v6  # IPv4 has public addresses enough even for this model
        code, out, _ = run(capsys, "counterpart", "--checkpoint", str(ckpt), src, "-n", "2", "--json")
        data = json.loads(out)  # a 2-step model: not every likely address is public, and the answer says so
        found = data["results"]
        assert code == EXIT_OK and all(parse_ip(f["addr"])[1] != v6 and is_public(f["addr"]) for f in found)
        assert len(found) == 2 or f"only {len(found)} public address(es)" in " ".join(data["warnings"])
    code, out, _ = run(capsys, "when", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "12", "-k", "2", "--context",
                       str(files / "ctx.csv"), "--json")  # fmt: skip
    found = json.loads(out)["results"]
    assert (
        code == EXIT_OK
        and len(found) == 2
        and all(r["time"] >= 1719942000 and r["utc"][:4] == "2024" for r in found)
    )


def test_info_shows_window_families_probes_losses_and_headline(ckpt, capsys):
    code, out, err = run(capsys, "info", "--checkpoint", str(ckpt))
    assert code == EXIT_OK
    for text in ("2024-07-01T00:00:00Z .. 2024-07-02T23:59:59Z", "IPv4 75%, IPv6 25%", "96 probes, 150 source",
                 "4.830 nats on held-out probes vs 4.330", "does NOT beat it", "heldout_probes",
                 "model 0.530  vs  prefix_pair_median 0.280", f"pingllm predict {SRC} 8.8.8.8"):  # fmt: skip
        assert text in out, text
    assert "did not beat" in err
    code, out, _ = run(capsys, "info", "--checkpoint", str(ckpt), "--json")
    data = json.loads(out)
    assert code == EXIT_OK and data["beat_marginal"] is False and data["missing"] == [] and data["step"] == 2


def test_info_on_a_checkpoint_without_a_card_says_what_is_missing(capsys, tmp_path):
    (tmp_path / "5").mkdir()
    (tmp_path / "model_config.json").write_text(json.dumps(model_config("tiny").to_dict()))
    code, out, err = run(capsys, "info", "--checkpoint", str(tmp_path))
    assert (
        code == EXIT_OK and "no model_card.json" in out and "evaluation   not recorded" in out and err == ""
    )
    data = json.loads(run(capsys, "info", "--checkpoint", str(tmp_path), "--json")[1])
    assert data["missing"] == ["training", "evaluation"] and data["beat_marginal"] is None
    code, _, err = run(capsys, "examples", "--checkpoint", str(tmp_path))
    assert code == EXIT_BAD_INPUT and "no model card with examples" in err and "train.parquet" in err


def test_examples_lists_trained_pairs_by_family(ckpt, capsys):
    code, out, _ = run(capsys, "examples", "--checkpoint", str(ckpt))
    assert code == EXIT_OK and SRC in out and SRC6 in out
    code, out, _ = run(capsys, "examples", "--checkpoint", str(ckpt), "--family", "6", "--json")
    assert code == EXIT_OK and [r["src"] for r in json.loads(out)["results"]] == [SRC6]


def test_help_documents_every_argument_and_the_context_format(capsys):
    from pingllm_core.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert [a.dest for a in parser._actions if not a.help] == [], name
        code, out, _ = run(capsys, name, "--help")
        assert code == EXIT_OK and out.startswith(f"usage: pingllm {name}")
    for name in ("predict", "rank", "destinations", "when", "counterpart"):
        out = run(capsys, name, "--help")[1]
        assert "time,src,dst,rtt_ms" in out and "docs/examples/context.csv" in out, name
    out = run(capsys, "--help")[1]
    assert "pingllm info" in out and "pingllm examples" in out


def test_default_checkpoint_is_the_newest_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CHECKPOINT", raising=False)
    monkeypatch.setenv("PINGLLM_DATA_ROOT", str(tmp_path))
    for name in ("old", "new"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "model_config.json").write_text("{}")
    assert default_checkpoint().name == "new"


def test_missing_checkpoint_is_reported(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PINGLLM_CHECKPOINT", str(tmp_path / "nope"))
    code, _, err = run(capsys, "predict", SRC, "8.8.8.8")
    assert code == EXIT_BAD_INPUT and "does not exist" in err


@pytest.mark.e2e
def test_console_script_reports_a_bad_range_in_one_line():
    script = Path(sys.executable).with_name("pingllm")
    done = subprocess.run(
        [str(script), "destinations", SRC, "-5-10"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == EXIT_BAD_INPUT and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "at or below 0" in done.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_console_script_keeps_compiled_programs_for_the_next_call(ckpt, tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, "PINGLLM_COMPILE_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "pingllm_core.cli.main",
        "predict",
        SRC,
        "8.8.8.8",
        "--checkpoint",
        str(ckpt),
        "--json",
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "no compiled program was written to the cache"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and json.loads(second.stdout) == json.loads(first.stdout)
    assert sorted(p.name for p in cache.iterdir()) == entries  # the second call compiled nothing new
    off = subprocess.run(
        cmd, env={**env, "PINGLLM_COMPILE_CACHE": ""}, capture_output=True, text=True, timeout=300
    )
    assert off.returncode == 0 and sorted(p.name for p in cache.iterdir()) == entries
