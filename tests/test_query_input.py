"""Query input rules without a model: RTTs and ranges, times, address families, candidate lists, context files."""

from __future__ import annotations

import json

import pytest

from pingllm_core.query.context import load_context
from pingllm_core.query.inputs import (
    FamilyError,
    QueryError,
    address_warnings,
    check_families,
    check_rtt,
    check_time_range,
    parse_rtt_range,
    read_candidates,
)

SRC = "193.0.14.129"


@pytest.mark.parametrize(
    "text, want",
    [("20", (20.0, 20.0)), ("10-30", (10.0, 30.0)), ("10:30", (10.0, 30.0)), ("0.5..2", (0.5, 2.0)),
     (" 1e-1 - 2e2 ", (0.1, 200.0)), ("600000", (600000.0, 600000.0))],
)  # fmt: skip
def test_rtt_ranges_parse_single_values_and_ranges(text, want):
    assert parse_rtt_range(text) == want


@pytest.mark.parametrize(
    "text, message",
    [("-5-10", "at or below 0"), ("-5", "at or below 0"), ("5--10", "at or below 0"), ("0-10", "at or below 0"),
     ("1e9-2e9", "600000"), ("inf", "600000"), ("nan", "600000"), ("30-10", "reversed"),
     ("abc", "LO-HI"), ("10-20-30", "LO-HI"), ("", "LO-HI")],
)  # fmt: skip
def test_bad_rtt_ranges_say_what_is_wrong(text, message):
    with pytest.raises(QueryError, match=message):
        parse_rtt_range(text)


def test_rtts_are_zero_to_ten_minutes_or_minus_one_for_failed():
    assert check_rtt("12.5") == 12.5 and check_rtt(-1) == -1.0 and check_rtt(0) == 0.0
    for bad in ("-50", "nan", "inf", 1e12, 600_000.1):
        with pytest.raises(QueryError, match="0 to 600000 ms"):
            check_rtt(bad)
    with pytest.raises(QueryError, match="not a number"):
        check_rtt("fast")
    with pytest.raises(QueryError, match="0 to 600000"):
        check_rtt(-1, failed_ok=False)


def test_times_outside_2000_to_2099_name_the_range_and_the_training_window():
    assert check_time_range(1_719_900_000) == 1_719_900_000
    with pytest.raises(QueryError, match=r"1970-01-01T00:00:00Z is outside 2000-01-01 \.\. 2099-12-31"):
        check_time_range(0)
    with pytest.raises(QueryError, match="99999999999999 .unix seconds.*trained on 2024-07-01 .. 2024-07-02"):
        check_time_range(99_999_999_999_999, window="2024-07-01 .. 2024-07-02")


def test_one_family_rule_for_pairs():
    check_families(SRC, "8.8.8.8")
    check_families("2001:db8::1", "2001:db8::2")
    check_families(SRC, "2001:db8::1", allow_mixed=True)
    with pytest.raises(FamilyError, match="source 193.0.14.129 is IPv4 but destination 2a01:4f8::1 is IPv6"):
        check_families(SRC, "2a01:4f8::1")


def test_private_addresses_get_one_warning():
    assert address_warnings([SRC, "8.8.8.8"]) == []
    (one,) = address_warnings([SRC, "10.0.0.1", "10.0.0.1"])
    assert one.startswith("10.0.0.1 is not a public address")
    (many,) = address_warnings(["10.0.0.1", "192.168.1.1", "::", "127.0.0.1", "fe80::1"])
    assert "and 2 more are not public addresses" in many


def test_candidates_report_bad_lines_by_file_line():
    text = "8.8.8.8\n# a comment\n\n9.9.9.9  # quad nine\n8.8.8.300\n2001:db8::1\n10.0.0.0/8\n1.1.1.1\n"
    c = read_candidates(text, SRC)
    assert c.addrs == ["8.8.8.8", "9.9.9.9", "1.1.1.1"]
    assert [n for n, _ in c.bad] == [5, 6, 7] and c.other_family == [6]
    assert (
        "not an IPv4 or IPv6" in c.bad[0][1]
        and "one address family" in c.bad[1][1]
        and "prefix" in c.bad[2][1]
    )
    mixed = read_candidates(text, SRC, allow_mixed_family=True)
    assert "2001:db8::1" in mixed.addrs and [n for n, _ in mixed.bad] == [5, 7]


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"ctx.csv is empty; a context CSV starts with the header time,src,dst,rtt_ms"),
        ("\n# only a comment\n", "is empty"),
        ("time;src;dst;rtt_ms\n1;2;3;4\n", r"ctx.csv line 1: columns must be separated by commas, found ';'"),
        ("time\tsrc\tdst\trtt_ms\n", "separated by commas, found '\\\\t'"),
        ("a,b\n1,2\n", "line 1: the header lacks column.s. src, dst"),
        ("1719900000,193.0.14.129,8.8.8.8,3\n", "line 1: the header lacks"),
        ("time,src,dst,rtt_ms\n", "holds no measurements"),
        (
            "time,src,dst,rtt_ms\n1719900000,193.0.14.129,8.8.8.8,-50\n",
            "line 2: rtt_ms '-50' .*0 to 600000 ms",
        ),
        ("time,src,dst,rtt_ms\n\n1719900000,193.0.14.129,8.8.8.8,nan\n", "line 3: rtt_ms 'nan'"),
        ("time,src,dst,rtt_ms\n1719900000,193.0.14.129,8.8.8.8,1e12\n", "line 2: .*representable"),
        (
            "time,src,dst,rtt_ms\n1970-01-01T00:00:00Z,193.0.14.129,8.8.8.8,3\n",
            "line 2: time 1970-01-01.*2000",
        ),
        ("time,src,dst,rtt_ms\n99999999999999,193.0.14.129,8.8.8.8,3\n", "line 2: time 99999999999999"),
        ("time,src,dst,rtt_ms\nnoon,193.0.14.129,8.8.8.8,3\n", "line 2: time 'noon'"),
        ("time,src,dst,rtt_ms\n1719900000,193.0.14.129,2001:db8::1,3\n", "line 2: .*one address family"),
        (
            "time,src,dst,rtt_ms\n1719900000,193.0.14.129,8.8.8.8,3,4\n",
            "line 2: 5 fields but the header has 4",
        ),
        ("time,src,dst,rtt_ms\n1719900000,193.0.14.129,,3\n", "line 2: needs both src and dst"),
        ('time,src,dst,rtt_ms\n1719900000,"193.0.14.129,8.8.8.8,3\n', "line 2: needs both src and dst"),
        ('{"src": "193.0.14.129", "dst": "8.8.8.8", "rtt_ms": -5}\n', "ctx.csv line 1: rtt_ms -5"),
        ('{"src": "193.0.14.129", "dst": "8.8.8.8"}\n{oops\n', "ctx.csv line 2: not valid JSON"),
    ],
)
def test_context_file_errors_name_the_file_line(tmp_path, text, message):
    with pytest.raises(QueryError, match=message):
        load_context(_write(tmp_path, "ctx.csv", text))


def test_context_csv_skips_comments_and_blank_lines_and_accepts_extra_columns(tmp_path):
    path = _write(tmp_path, "ctx.csv", "# mine\n\nTime, src ,dst,rtt_ms,note\n1719900000,193.0.14.129,8.8.8.8,3,x\n"
                  ",193.0.14.129,9.9.9.9,\n1719900060,193.0.14.129,8.8.8.8,-1\n")  # fmt: skip
    m = load_context(path)
    assert m.time.tolist() == [-1, 1719900000, 1719900060] and m.rtt.tolist() == [-1.0, 3.0, -1.0]


def test_the_sample_context_file_loads():
    from pathlib import Path

    m = load_context(Path(__file__).parent.parent / "docs" / "examples" / "context.csv")
    assert len(m) == 6 and (m.rtt == -1.0).sum() == 2 and m.src_v6.sum() == 1


def test_ripe_results_take_the_public_source_of_the_destination_family(tmp_path):
    result = {"type": "ping", "af": 6, "from": "83.58.123.236", "src_addr": "2001:67c:2e8:22::c100:68b",
              "dst_addr": "2001:4860:4860::8888", "timestamp": 1719900000, "result": [{"rtt": 8.9}]}  # fmt: skip
    m = load_context(_write(tmp_path, "ripe.json", json.dumps(result) + "\n"))
    assert m.src_v6.tolist() == [True] and m.dst_v6.tolist() == [True]
