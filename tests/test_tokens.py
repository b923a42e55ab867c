"""Property tests for the token language: exact round trips, RTT code accuracy, strict decoding, grammar."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pingllm_core.data import tokens as T
from pingllm_core.data.tokens import (
    BYTE0,
    FIELD_TIME,
    GrammarState,
    Measurements,
    TokenDecodeError,
    allowed_next_tokens,
    bytes_to_ip,
    decode_rtt_code,
    decode_tokens,
    encode_measurements,
    encode_measurements_with_offsets,
    encode_rtt_ms,
    ip_to_bytes,
    token_group,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RTT_10_MIN_MS = 600_000.0


@st.composite
def addresses(draw) -> tuple[bytes, bool]:
    v6 = draw(st.booleans())
    raw = draw(st.binary(min_size=16 if v6 else 4, max_size=16 if v6 else 4))
    return raw.ljust(16, b"\0"), v6


@st.composite
def contexts(draw, max_n: int = 10) -> tuple[Measurements, np.ndarray, np.ndarray]:
    """A valid context: mixed families, RTTs 0..10 min or failed, any timestamp mode, random field orders."""
    n = draw(st.integers(0, max_n))
    mode = draw(st.sampled_from(["all", "none", "mixed"]))
    has_time = np.array([mode == "all" or (mode == "mixed" and draw(st.booleans())) for _ in range(n)], bool)
    start = draw(st.integers(0, 2**62))
    delta = st.one_of(
        st.integers(0, 300), st.sampled_from([255, 256, 2**32 - 1]), st.integers(256, 2**32 - 1)
    )
    time = start + np.cumsum([draw(delta) if has_time[i] else 0 for i in range(n)], dtype=np.int64)
    # Untimestamped measurements carry arbitrary times that the encoder must ignore.
    time = np.where(has_time, time, draw(st.integers(-5, 10**9)))
    rtt = [draw(st.one_of(st.just(-1.0), st.floats(0.0, RTT_10_MIN_MS))) for _ in range(n)]
    src = [draw(addresses()) for _ in range(n)]
    dst = [draw(addresses()) for _ in range(n)]
    order = np.array([draw(st.permutations(range(4))) for _ in range(n)], np.int8).reshape(n, 4)

    def pack(a: list[tuple[bytes, bool]]) -> tuple[np.ndarray, np.ndarray]:
        addr = np.frombuffer(b"".join(r for r, _ in a), np.uint8).reshape(n, 16)
        return addr, np.array([v for _, v in a], bool)

    (s, s6), (d, d6) = pack(src), pack(dst)
    return Measurements(time, s, s6, d, d6, rtt), has_time, order


def _expected_order(order: np.ndarray, has_time: np.ndarray) -> np.ndarray:
    """The order decode reports: as given, but 3-field measurements have FIELD_TIME moved last."""
    out = order.copy()
    for i in np.flatnonzero(~has_time):
        out[i] = [*(f for f in order[i] if f != FIELD_TIME), FIELD_TIME]
    return out


@FAST
@given(contexts())
def test_encode_then_decode_is_exact_up_to_rtt_quantisation(ctx) -> None:
    m, has_time, order = ctx
    toks, starts = encode_measurements_with_offsets(m, has_time, order)
    assert toks.dtype == np.int32 and toks.min(initial=0) >= 0 and toks.max(initial=0) < T.VOCAB_SIZE
    assert len(starts) == len(m) and np.all(toks[starts] == T.MEASUREMENT_START)
    assert np.sum(toks == T.MEASUREMENT_START) == len(m)
    d, d_has_time, d_order = decode_tokens(toks)
    assert np.array_equal(d_has_time, has_time)
    assert np.array_equal(d.time, np.where(has_time, m.time, -1))
    for a, b in [(d.src, m.src), (d.src_v6, m.src_v6), (d.dst, m.dst), (d.dst_v6, m.dst_v6)]:
        assert np.array_equal(a, b)
    ok = m.rtt >= 0
    assert np.array_equal(d.rtt[~ok], np.full((~ok).sum(), -1.0))
    assert np.array_equal(d.rtt[ok], decode_rtt_code(encode_rtt_ms(m.rtt[ok])))
    assert np.array_equal(d_order, _expected_order(order, has_time))
    assert np.array_equal(encode_measurements(d, d_has_time, d_order), toks)


@FAST
@given(contexts())
def test_timestamps_are_absolute_first_then_deltas_from_previous_timestamped(ctx) -> None:
    m, has_time, order = ctx
    toks = encode_measurements(m, has_time, order)
    markers = [t for t in toks.tolist() if t in (T.TIMESTAMP_ABS, T.TIMESTAMP_DELTA1, T.TIMESTAMP_DELTA4)]
    t = m.time[has_time]
    expect = [T.TIMESTAMP_ABS] * min(len(t), 1) + [
        T.TIMESTAMP_DELTA1 if d < 256 else T.TIMESTAMP_DELTA4 for d in np.diff(t)
    ]
    assert markers == expect


def _one(time: int, rtt: float = 1.0) -> Measurements:
    return Measurements.from_strings([time], ["192.0.2.1"], ["2001:db8::1"], [rtt])


def _time_tokens(times: list[int]) -> list[list[int]]:
    """Per measurement, the timestamp block (marker + bytes) with the time field first."""
    n = len(times)
    m = Measurements.from_strings(times, ["192.0.2.1"] * n, ["192.0.2.2"] * n, [1.0] * n)
    toks, starts = encode_measurements_with_offsets(m, np.ones(n, bool), np.tile([3, 0, 1, 2], (n, 1)))
    blocks = []
    for s in starts.tolist():
        marker = int(toks[s + 1])
        blocks.append([marker] + (toks[s + 2 : s + 2 + T._MARKER_NBYTES[marker]] - BYTE0).tolist())
    return blocks


@pytest.mark.parametrize(
    ("delta", "marker", "payload"),
    [
        (0, T.TIMESTAMP_DELTA1, [0]),
        (255, T.TIMESTAMP_DELTA1, [255]),
        (256, T.TIMESTAMP_DELTA4, [0, 0, 1, 0]),
        (2**32 - 1, T.TIMESTAMP_DELTA4, [255] * 4),
    ],
)
def test_delta_uses_one_byte_below_256_and_four_bytes_from_256(delta, marker, payload) -> None:
    first, second = _time_tokens([1_700_000_000, 1_700_000_000 + delta])
    assert first == [T.TIMESTAMP_ABS, *(1_700_000_000).to_bytes(8, "big")]
    assert second == [marker, *payload]


def test_absolute_timestamp_is_big_endian_u64() -> None:
    t = 2**62 + 0x0102030405
    assert _time_tokens([t]) == [[T.TIMESTAMP_ABS, *t.to_bytes(8, "big")]]
    assert decode_tokens(encode_measurements(_one(t), [True], [[0, 1, 2, 3]]))[0].time[0] == t


def test_time_going_backwards_or_too_far_is_rejected_with_the_index() -> None:
    m = Measurements.from_strings([10, 5, 20], ["192.0.2.1"] * 3, ["192.0.2.2"] * 3, [1.0] * 3)
    orders = np.tile(np.arange(4), (3, 1))
    with pytest.raises(ValueError, match="measurement 1"):
        encode_measurements(m, np.ones(3, bool), orders)
    encode_measurements(m, np.array([True, False, True]), orders)  # the untimestamped one may be anywhere
    far = Measurements.from_strings([0, 2**32], ["192.0.2.1"] * 2, ["192.0.2.2"] * 2, [1.0] * 2)
    with pytest.raises(ValueError, match="u32"):
        encode_measurements(far, np.ones(2, bool), orders[:2])


def test_invalid_encoder_inputs_raise_value_error() -> None:
    m = _one(5)
    with pytest.raises(ValueError, match="permutation"):
        encode_measurements(m, [True], [[0, 1, 1, 3]])
    with pytest.raises(ValueError, match="NaN"):
        encode_measurements(_one(5, float("nan")), [True], [[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="negative"):
        encode_measurements(_one(-3), [True], [[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="field_order"):
        encode_measurements(m, [True, False], [[0, 1, 2, 3]])
    m.src[0, 7] = 1  # an IPv4 row must keep zeros after its 4 bytes, else decoding could not restore it
    with pytest.raises(ValueError, match="IPv4"):
        encode_measurements(m, [True], [[0, 1, 2, 3]])


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, RTT_10_MIN_MS))
def test_rtt_code_error_bounds(rtt_ms: float) -> None:
    back = decode_rtt_code(encode_rtt_ms(np.array([rtt_ms])))[0]
    us, back_us = rtt_ms * 1000, back * 1000
    if us >= 1024:  # from 1.024 ms on, the 11-bit rounded mantissa bounds the relative error
        assert abs(back_us - us) <= us / 2048 * (1 + 1e-12)
    if us < 2048:  # exponent 0: rounded to whole microseconds
        assert abs(back_us - us) <= 0.5 + 1e-9 and abs(back_us - round(back_us)) < 1e-9


def test_rtt_below_2048_us_is_exact_in_whole_microseconds() -> None:
    us = np.arange(2048)
    assert np.array_equal(encode_rtt_ms(us / 1000.0), us.astype(np.uint16))
    assert np.allclose(decode_rtt_code(us) * 1000, us, rtol=0, atol=1e-9)


def test_every_canonical_code_round_trips_and_codes_are_monotone() -> None:
    codes = np.arange(2**16)
    canonical = codes[((codes >> 11) == 0) | ((codes & 0x7FF) >= 1024)]
    ms = decode_rtt_code(canonical)
    assert np.all(np.diff(ms) > 0)  # canonical codes are ordered like the RTTs they stand for
    assert np.array_equal(encode_rtt_ms(ms), canonical.astype(np.uint16))
    assert round(ms[-1] * 1000) == T.RTT_MAX_US and ms[-1] > RTT_10_MIN_MS


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 4.39e9), min_size=2, max_size=200))
def test_rtt_code_is_monotone_in_rtt(values: list[float]) -> None:
    codes = encode_rtt_ms(np.sort(np.array(values)))
    assert np.all(np.diff(codes.astype(np.int64)) >= 0)


def test_rtt_out_of_range_raises() -> None:
    for bad in (-0.5, float("nan"), float("inf"), T.RTT_MAX_US / 1000 * 1.01):
        with pytest.raises(ValueError):
            encode_rtt_ms(np.array([bad]))


@FAST
@given(st.lists(addresses(), max_size=20))
def test_ip_bytes_round_trip_through_canonical_strings(addrs) -> None:
    strs = [str(ipaddress.ip_address(raw if v6 else raw[:4])) for raw, v6 in addrs]
    packed, v6 = ip_to_bytes(strs)
    assert packed.shape == (len(strs), 16) and packed.dtype == np.uint8
    assert np.array_equal(packed, np.frombuffer(b"".join(r for r, _ in addrs), np.uint8).reshape(-1, 16))
    assert v6.tolist() == [v for _, v in addrs]
    assert bytes_to_ip(packed, v6) == strs


def test_ip_to_bytes_parses_repeated_strings_consistently() -> None:
    strs = ["2001:DB8:0:0::1", "10.0.0.1", "2001:db8::1", "10.0.0.1"] * 1000
    packed, v6 = ip_to_bytes(strs)
    assert bytes_to_ip(packed, v6)[:4] == ["2001:db8::1", "10.0.0.1", "2001:db8::1", "10.0.0.1"]
    assert np.array_equal(packed[::2], np.tile(packed[0], (2000, 1)))
    assert not packed[1, 4:].any()


@pytest.mark.parametrize("bad", ["", "1.2.3", "256.1.1.1", "hello", "1.2.3.4/24", "fe80::1%eth0", "::g"])
def test_ip_to_bytes_rejects_bad_strings_naming_them(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP|scoped") as err:
        ip_to_bytes(["192.0.2.1", bad])
    assert repr(bad) in str(err.value)


def _valid_context_tokens() -> np.ndarray:
    m = Measurements.from_strings([100, 0, 500], ["192.0.2.1", "2001:db8::9", "192.0.2.1"],
                                  ["2001:db8::1", "198.51.100.7", "192.0.2.9"], [12.5, -1.0, 3.0])  # fmt: skip
    return encode_measurements(
        m, np.array([True, False, True]), np.array([[0, 1, 2, 3], [2, 0, 1, 3], [3, 2, 1, 0]])
    )


def _decode_error(tokens) -> str:
    with pytest.raises(TokenDecodeError) as err:
        decode_tokens(tokens)
    assert str(err.value).startswith("position ")
    return str(err.value)


def test_truncated_sequences_raise_with_position() -> None:
    toks = _valid_context_tokens()
    raised = 0
    for cut in range(len(toks) + 1):
        g = GrammarState()
        for t in toks[:cut]:
            g.advance(int(t))
        if g.at_measurement_boundary:  # a cut between measurements (or after a 3-field one) is valid
            assert len(decode_tokens(toks[:cut])[0]) == np.sum(toks[:cut] == T.MEASUREMENT_START)
        else:
            assert f"position {cut}: sequence ends inside a measurement" in _decode_error(toks[:cut])
            raised += 1
    assert raised >= len(toks) - 6


_FIRST = [0, T.TIMESTAMP_ABS, *[BYTE0] * 8, T.FAILED, T.SRC_IPV4, *[BYTE0] * 4, T.DST_IPV4, *[BYTE0] * 4]


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        ([T.SRC_IPV4], "position 0: expected <MeasurementStart>"),
        ([BYTE0], "position 0: expected <MeasurementStart>"),
        (
            [0, T.SRC_IPV4, BYTE0, T.RTT_START],
            "position 3: expected a byte token after <SrcIPv4>, got <RttStart>",
        ),
        ([0, T.FAILED, T.FAILED], "position 2: Result field given twice"),
        ([0, T.FAILED, T.SRC_IPV4, *[BYTE0] * 4, 0], "position 7: .*lacks field\\(s\\) Dst"),
        ([0, T.TIMESTAMP_DELTA1], "position 1: <TimestampDelta1> before any <TimestampAbs>"),
        ([0, T.THROUGHPUT_START], "position 1: <ThroughputStart> is reserved"),
        ([0, T.TIMESTAMP_ABS, BYTE0 + 0x80], "position 2: .*non-canonical"),  # u64 above int64
        ([0, T.RTT_START, BYTE0 + 0b00001000], "position 2: .*non-canonical"),  # exponent 1, mantissa < 1024
        ([*_FIRST, 0, T.TIMESTAMP_ABS], "position 22: <TimestampAbs> after an earlier"),
        ([*_FIRST, 0, T.TIMESTAMP_DELTA4, BYTE0, BYTE0, BYTE0], "position 25: .*non-canonical"),
        ([*_FIRST, 0, T.TIMESTAMP_DELTA4, BYTE0, BYTE0], "position 25: sequence ends inside"),
        ([0, 267], "position 1: token id 267 outside"),
        ([0, -1], "position 1: token id -1 outside"),
    ],
)
def test_invalid_sequences_raise_token_decode_error_naming_position(seq, message) -> None:
    with pytest.raises(TokenDecodeError, match=message):
        decode_tokens(seq)


@st.composite
def token_soup(draw) -> list[int]:
    """Mostly near-valid sequences (valid ones with a few edits), sometimes uniform noise."""
    if draw(st.booleans()):
        return draw(st.lists(st.integers(0, T.VOCAB_SIZE - 1), max_size=40))
    m, has_time, order = draw(contexts(max_n=4))
    toks = encode_measurements(m, has_time, order).tolist()
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(toks)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
        tok = draw(st.one_of(st.integers(0, BYTE0 - 1), st.integers(0, T.VOCAB_SIZE - 1)))
        if op == "insert":
            toks.insert(i, tok)
        elif i < len(toks) and op == "delete":
            del toks[i]
        elif i < len(toks) and op == "replace":
            toks[i] = tok
        elif i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
    return toks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_soup())
def test_token_soup_decodes_to_a_re_encodable_context_or_raises_token_decode_error(toks) -> None:
    g, grammar_ok = GrammarState(), True
    for t in toks:
        try:
            g.advance(t)
        except TokenDecodeError:
            grammar_ok = False
            break
    try:
        m, has_time, order = decode_tokens(toks)
    except TokenDecodeError:
        assert not (grammar_ok and g.at_measurement_boundary)  # decoder and grammar agree
        return
    assert grammar_ok and g.at_measurement_boundary
    assert encode_measurements(m, has_time, order).tolist() == toks


@FAST
@given(contexts(max_n=5), st.data())
def test_grammar_accepts_valid_sequences_and_allowed_matches_advance(ctx, data) -> None:
    toks = encode_measurements(*ctx).tolist()
    g = GrammarState()
    assert g.at_measurement_boundary and np.flatnonzero(g.allowed()).tolist() == [T.MEASUREMENT_START]
    probe = set(data.draw(st.lists(st.integers(0, len(toks)), max_size=3)))
    for i, t in enumerate([*toks, None]):
        allowed = g.allowed()
        assert not allowed[T.THROUGHPUT_START]
        assert allowed[T.MEASUREMENT_START] == g.at_measurement_boundary
        if i in probe:  # allowed() is exactly the set of tokens advance() accepts here
            for cand in range(T.VOCAB_SIZE):
                h = g.copy()
                try:
                    h.advance(cand)
                    accepted = True
                except TokenDecodeError:
                    accepted = False
                assert accepted == allowed[cand], (i, cand)
        if t is None:
            break
        assert allowed[t]
        g.advance(t)
        assert g.position == i + 1
    assert g.at_measurement_boundary
    assert np.array_equal(allowed_next_tokens(toks), g.allowed())
    assert g.seen_timestamp == bool(ctx[1].any())


def test_grammar_rejects_obviously_invalid_tokens_and_copies_are_independent() -> None:
    g = GrammarState()
    for bad in (T.SRC_IPV4, BYTE0, T.FAILED):
        with pytest.raises(TokenDecodeError):
            g.advance(bad)
    g.advance(T.MEASUREMENT_START)
    assert not g.at_measurement_boundary and g.allowed()[[1, 2, 3, 4, 5, 8, 10]].all()
    assert not g.allowed()[
        [T.MEASUREMENT_START, T.TIMESTAMP_DELTA1, T.TIMESTAMP_DELTA4, T.THROUGHPUT_START]
    ].any()
    g.advance(T.SRC_IPV6)
    assert np.flatnonzero(g.allowed()).tolist() == list(range(BYTE0, T.VOCAB_SIZE))
    h = g.copy()
    for _ in range(16):
        h.advance(BYTE0 + 7)
    assert not h.allowed()[[T.SRC_IPV4, T.SRC_IPV6]].any() and h.allowed()[T.DST_IPV4]
    assert g.allowed()[BYTE0] and not g.allowed()[T.DST_IPV4]  # the original did not move
    with pytest.raises(TokenDecodeError):
        g.advance(T.DST_IPV4)
    assert g.position == 2  # a rejected token leaves the state unchanged


def test_token_group_labels_each_field_and_its_bytes() -> None:
    toks = _valid_context_tokens()
    groups = token_group(toks)
    assert groups.dtype == np.int8 and len(groups) == len(toks)
    assert np.all(groups[toks == T.MEASUREMENT_START] == T.GROUP_ROLE)
    counts = np.bincount(groups, minlength=5)
    # src: 5 + 17 + 5, dst: 17 + 5 + 5, rtt: 3 + 1 + 3, time: 9 + 2 (delta 400 s uses 4 bytes -> 5)
    assert counts.tolist() == [3, 27, 27, 7, 9 + 5]
    assert token_group([BYTE0, BYTE0, T.FAILED]).tolist() == [T.GROUP_ROLE, T.GROUP_ROLE, T.GROUP_RTT]
    assert token_group([]).shape == (0,)


def test_measurements_take_and_from_strings_with_datetime64() -> None:
    m = Measurements.from_strings(np.array(["2024-01-01T00:00:10", "2024-01-01T00:00:00"], "datetime64[s]"),
                                  ["192.0.2.1", "::1"], ["::2", "192.0.2.3"], [1.0, -1.0])  # fmt: skip
    assert m.time.tolist() == [1704067210, 1704067200] and len(m) == 2
    sub = m.take(np.array([1]))
    assert len(sub) == 1 and sub.src_v6.tolist() == [True] and sub.rtt.tolist() == [-1.0]
    with pytest.raises(ValueError, match="same length"):
        Measurements(m.time, m.src, m.src_v6, m.dst[:1], m.dst_v6, m.rtt)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, T.VOCAB_SIZE - 1), min_size=1, max_size=60), st.integers(0, 59))
def test_token_roles_are_causal_and_continue_from_any_cut(toks, cut):
    import jax.numpy as jnp

    t = np.array([toks], np.int32)
    cut = min(cut, len(toks) - 1)
    roles = T.token_roles(t)
    np.testing.assert_array_equal(np.asarray(T.token_roles(jnp.asarray(t), jnp)), roles)
    # a prefix's roles do not depend on what follows it
    np.testing.assert_array_equal(T.token_roles(t[:, : cut + 1]), roles[:, : cut + 1])
    # decoding continues from the role of the last cached token, or from nothing (-1)
    prev = roles[:, cut - 1] if cut else np.array([-1])
    np.testing.assert_array_equal(T.continue_roles(prev, t[:, cut:]), roles[:, cut:])
    assert roles.min() >= 0 and roles.max() < T.N_ROLES


def test_token_roles_name_the_field_and_byte():
    m = T.Measurements.from_strings(np.array([0]), ["192.0.2.1"], ["2001:db8::1"], np.array([12.5]))
    toks = T.encode_measurements(m, np.zeros(1, bool), np.array([[0, 1, 3, 2]], np.int8))
    roles = T.token_roles(toks[None])[0]
    dst = int(np.flatnonzero(toks == T.DST_IPV6)[0])
    assert roles[dst + 16] == T.DST_IPV6 * T.ROLE_OFFSETS + 16  # the last byte of the IPv6 destination
    rtt = int(np.flatnonzero(toks == T.RTT_START)[0])
    assert list(roles[rtt : rtt + 3]) == [T.RTT_START * T.ROLE_OFFSETS + i for i in range(3)]
    # a packed context restarts at its first token, whatever came before
    starts = np.zeros((1, len(toks)), bool)
    starts[0, 3] = True
    assert T.token_roles(toks[None], starts_BxL=starts)[0, 3] == 0
