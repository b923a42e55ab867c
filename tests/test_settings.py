"""Project settings: a TOML file, env vars on top, clear errors."""

import datetime as dt

import pytest

from pingllm_core.settings import load_settings


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
    with pytest.raises(ValueError, match="unknown settings.*sauce"):
        load_settings(bad)
    bad.write_text('source = "carrier-pigeon"\n')
    with pytest.raises(ValueError, match="source must be one of"):
        load_settings(bad)
    bad.write_text('start_day = "2024-07-02"\nend_day = "2024-07-01"\n')
    with pytest.raises(ValueError, match="before start_day"):
        load_settings(bad)
    bad.write_text("this is = not toml [")
    with pytest.raises(ValueError, match="cannot read settings file"):
        load_settings(bad)
