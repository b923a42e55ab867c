"""Project settings: a TOML file, env vars on top, clear errors."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pingllm_core.settings import SettingsError, load_settings


def test_toml_file_then_env_vars_on_top(tmp_path, monkeypatch):
    cfg = tmp_path / "ripe.toml"
    cfg.write_text('source = "ripe"\nstart_day = "2024-07-30"\nend_day = "2024-08-02"\nsynth_probes = 7\n'
                   f'data_root = "{tmp_path / "data"}"\n')  # fmt: skip
    monkeypatch.setenv("PINGLLM_CONFIG", str(cfg))
    monkeypatch.setenv("PINGLLM_SYNTH_PROBES", "9")
    s = load_settings()
    assert (s.source, s.synth_probes, s.data_root) == ("ripe", 9, tmp_path / "data")
    assert s.days == [dt.date(2024, 7, 30), dt.date(2024, 7, 31), dt.date(2024, 8, 1), dt.date(2024, 8, 2)]
    assert s.layout.measurements == tmp_path / "data" / "parquet" / "measurements"


def test_env_data_root_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CONFIG", raising=False)
    monkeypatch.setenv("PINGLLM_DATA_ROOT", str(tmp_path))
    assert load_settings().data_root == tmp_path


def test_unknown_keys_bad_source_and_reversed_days_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CONFIG", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('sauce = "ripe"\n')
    with pytest.raises(ValueError, match="unknown keys.*sauce"):
        load_settings(bad)
    bad.write_text('source = "carrier-pigeon"\n')
    with pytest.raises(ValueError, match="source must be one of"):
        load_settings(bad)
    bad.write_text('start_day = "2024-07-02"\nend_day = "2024-07-01"\n')
    with pytest.raises(ValueError, match="before start_day"):
        load_settings(bad)
    bad.write_text("this is = not toml [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(bad)


def test_toml_native_dates_are_accepted(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGLLM_CONFIG", raising=False)
    cfg = tmp_path / "dates.toml"
    cfg.write_text("start_day = 2019-05-22\nend_day = 2019-05-23\n")  # TOML dates, not strings
    s = load_settings(cfg)
    assert (s.start_day, s.end_day) == ("2019-05-22", "2019-05-23")
    assert s.days == [dt.date(2019, 5, 22), dt.date(2019, 5, 23)]


@pytest.mark.parametrize(
    ("text", "env", "key", "origin"),
    [
        ("start_day = 2019-05-22T10:00:00\n", {}, "start_day", "settings file"),  # a time, not a day
        ('start_day = "22.05.2019"\n', {}, "start_day", "settings file"),
        ("start_day = 2019-5-22\n", {}, "start_day", "settings file"),  # not TOML at all
        ('synth_probes = "many"\n', {}, "synth_probes", "settings file"),
        ("synth_seed = true\n", {}, "synth_seed", "settings file"),
        ("ripe_base_url = 7\n", {}, "ripe_base_url", "settings file"),
        ('source = "ripe"\n', {"PINGLLM_SYNTH_PROBES": "12x"}, "synth_probes", "PINGLLM_SYNTH_PROBES"),
        ('end_day = "2024-06-30"\n', {}, "end_day", "settings file"),  # before the default start_day
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_where_it_came_from(
    tmp_path, monkeypatch, text, env, key, origin
):
    monkeypatch.delenv("PINGLLM_CONFIG", raising=False)
    for name in ("PINGLLM_DATA_ROOT", "PINGLLM_START_DAY", "PINGLLM_END_DAY", "PINGLLM_SYNTH_PROBES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(cfg)
    message = str(err.value)
    assert "\n" not in message and key in message and origin in message, message
    if origin == "settings file":
        assert str(cfg) in message


@pytest.mark.e2e
def test_a_bad_settings_file_stops_the_dagster_cli_with_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('source = "ripe"\nstart_day = "2019-02-30"\n')
    env = {**os.environ, "PINGLLM_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [
        str(dagster),
        "asset",
        "materialize",
        "-m",
        "pingllm_assets.definitions",
        "--select",
        "raw_ping_dumps",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "bad settings" in ln]
    assert lines == [
        f"pingllm: bad settings: settings file {cfg}: start_day must be a day YYYY-MM-DD, got '2019-02-30'"
    ]
