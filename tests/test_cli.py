"""`pingllm` CLI on a real (tiny, briefly trained) checkpoint: outputs, exit codes and messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from pingllm_core.cli import EXIT_BAD_INPUT, EXIT_OK, default_checkpoint, main
from pingllm_core.model import model_config
from pingllm_core.query import QueryEngine
from pingllm_core.tracking import NullTracker
from pingllm_core.train import TrainConfig, synthetic_batches, train

SRC = "193.0.14.129"


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
    path = tmp_path_factory.mktemp("ckpt")
    batches = synthetic_batches(2, batch=2, seq_len=64)
    cfg = TrainConfig(steps=2, warmup_steps=1, log_every=1, ckpt_every=2)
    train(model_config("tiny", max_len=128), cfg, lambda: _Batches(batches), path, NullTracker())
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_engine_loads_the_checkpoint_offline(ckpt):
    engine = QueryEngine.load(ckpt)
    assert engine.cfg.max_len == 128 and engine.cfg.d_model == 64
    assert engine.predict(SRC, "8.8.8.8").probs.sum() == pytest.approx(1.0)


def test_predict_prints_a_table_and_json(ckpt, capsys, tmp_path):
    code, out, _ = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "--quantiles", "0.25,0.5"
    )
    assert code == EXIT_OK
    for word in ("p_fail", "median_ms", "p25_ms", "p50_ms", "mean_ms"):
        assert word in out
    plot = tmp_path / "dist.png"
    code, out, _ = run(
        capsys, "predict", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "--json", "--plot", str(plot)
    )
    assert code == EXIT_OK
    data = json.loads(out)
    assert (
        0 < data["p_fail"] < 1
        and data["quantiles_ms"]["p10"] <= data["median_ms"] <= data["quantiles_ms"]["p90"]
    )
    assert sum(data["distribution"]["prob"]) == pytest.approx(1.0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000


def test_predict_with_context_file_and_time(ckpt, capsys, tmp_path):
    ctx = tmp_path / "ctx.csv"
    ctx.write_text(
        "time,src,dst,rtt_ms\n1700000000,193.0.14.129,8.8.8.8,12.5\n1700000100,193.0.14.129,9.9.9.9,\n"
    )
    code, out, _ = run(capsys, "predict", "--checkpoint", str(ckpt), SRC, "1.1.1.1", "--context", str(ctx),
                       "--time", "2023-11-14T22:30:00Z", "--json")  # fmt: skip
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["context_used"] == 2 and data["time"] == 1700001000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", SRC, "8.8.8.300"], "not an IPv4 or IPv6 address"),
        (["predict", SRC, "::ffff:8.8.8.8"], "mixed families"),
        (["predict", "10.0.0.0/8", "8.8.8.8"], "prefix"),
        (["predict", SRC, "8.8.8.8", "--time", "noon"], "ISO 8601"),
        (["predict", SRC, "8.8.8.8", "--context", "/nonexistent/ctx.csv"], "does not exist"),
        (["rank", SRC, "--candidates", "/nonexistent/cands.txt"], "does not exist"),
        (["when", SRC, "8.8.8.8", "12"], "needs --context"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(ckpt, capsys, argv, message):
    code, out, err = run(capsys, argv[0], "--checkpoint", str(ckpt), *argv[1:])
    assert code == EXIT_BAD_INPUT
    assert message in err and "Traceback" not in err and out == ""


def test_bad_arguments_exit_2(capsys):
    code, _, err = run(capsys, "predict", SRC, "8.8.8.8", "--quantiles", "0.5,2")
    assert code == EXIT_BAD_INPUT and "quantiles" in err
    assert run(capsys, "frobnicate")[0] == EXIT_BAD_INPUT


def test_missing_checkpoint_is_reported(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PINGLLM_CHECKPOINT", str(tmp_path / "nope"))
    code, _, err = run(capsys, "predict", SRC, "8.8.8.8")
    assert code == EXIT_BAD_INPUT and "does not exist" in err


def test_default_checkpoint_is_the_newest_under_the_data_root(ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CHECKPOINT", raising=False)
    monkeypatch.setenv("PINGLLM_DATA_ROOT", str(tmp_path))
    for name in ("old", "new"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "model_config.json").write_text("{}")
    assert default_checkpoint().name == "new"


def test_rank_reads_candidates_from_stdin_and_prints_json(ckpt, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("9.9.9.9\n8.8.8.8  # google\n\n2001:4860:4860::8888\n"))
    code, out, _ = run(capsys, "rank", "--checkpoint", str(ckpt), SRC, "--json", "--top", "2")
    assert code == EXIT_OK
    rows = json.loads(out)
    assert len(rows) == 2 and rows[0]["median_ms"] <= rows[1]["median_ms"]
    monkeypatch.setattr("sys.stdin", io.StringIO("9.9.9.9\n8.8.8.8\n"))
    code, out, _ = run(capsys, "rank", "--checkpoint", str(ckpt), SRC, "--threshold", "50")
    assert code == EXIT_OK and "P(rtt<=50ms)" in out and "9.9.9.9" in out


def test_inverse_commands_print_results(ckpt, capsys, tmp_path):
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_text('{"time": 1700000000, "src": "193.0.14.129", "dst": "8.8.8.8", "rtt_ms": 12.5}\n')
    code, out, _ = run(capsys, "destinations", "--checkpoint", str(ckpt), SRC, "10-40", "-n", "3", "--json")
    assert code == EXIT_OK and len(json.loads(out)) == 3
    code, out, _ = run(
        capsys, "when", "--checkpoint", str(ckpt), SRC, "8.8.8.8", "12", "--context", str(ctx), "--json"
    )
    assert code == EXIT_OK and all(r["time"] >= 1700000000 for r in json.loads(out))
    code, out, _ = run(capsys, "counterpart", "--checkpoint", str(ckpt), SRC, "-n", "2")
    assert code == EXIT_OK and out.count(":") >= 2


def test_console_script_keeps_compiled_programs_for_the_next_call(ckpt, tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, "PINGLLM_COMPILE_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "pingllm_core.cli",
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
