"""The 267-token measurement language (SPEC section 4): vectorised encoder, strict decoder, grammar.

One module: the token ids, the encoder, the strict decoder and the grammar state machine are one language
definition, checked against each other; a change to one is a change to all (and to every checkpoint).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Token ids are fixed by the spec; checkpoints depend on them.
MEASUREMENT_START, SRC_IPV4, SRC_IPV6, DST_IPV4, DST_IPV6 = 0, 1, 2, 3, 4
TIMESTAMP_ABS, TIMESTAMP_DELTA1, TIMESTAMP_DELTA4 = 5, 6, 7
RTT_START, THROUGHPUT_START, FAILED = 8, 9, 10
BYTE0 = 11  # <ByteK> has id BYTE0 + K
VOCAB_SIZE = 267
TOKEN_NAMES: list[str] = [
    "<MeasurementStart>", "<SrcIPv4>", "<SrcIPv6>", "<DstIPv4>", "<DstIPv6>", "<TimestampAbs>",
    "<TimestampDelta1>", "<TimestampDelta4>", "<RttStart>", "<ThroughputStart>", "<Failed>",
] + [f"<Byte{k}>" for k in range(256)]  # fmt: skip

FIELD_SRC, FIELD_DST, FIELD_RESULT, FIELD_TIME = 0, 1, 2, 3
FIELD_NAMES = ("Src", "Dst", "Result", "Timestamp")
GROUP_ROLE, GROUP_SRC, GROUP_DST, GROUP_RTT, GROUP_TIME = 0, 1, 2, 3, 4

RTT_MAX_US = 2047 * 2**31  # largest representable RTT in microseconds (about 51 days)
_W = 17  # widest field block: marker + 16 address bytes
_REQUIRED = 0b0111  # Src, Dst and Result must all appear; Timestamp is optional
# Per marker: the field it opens and how many byte tokens follow it (-1 = not a field marker).
_MARKER_FIELD = (-1, FIELD_SRC, FIELD_SRC, FIELD_DST, FIELD_DST, FIELD_TIME, FIELD_TIME, FIELD_TIME,
                 FIELD_RESULT, FIELD_RESULT, FIELD_RESULT)  # fmt: skip
_MARKER_NBYTES = (0, 4, 16, 4, 16, 8, 1, 4, 2, 0, 0)
_FIELD_MARKERS = ((SRC_IPV4, SRC_IPV6), (DST_IPV4, DST_IPV6), (RTT_START, FAILED))
# Canonical-form byte masks, so that every decodable sequence re-encodes to itself:
_BYTES = np.arange(256)
_RTT_HI_OK = ((_BYTES >> 3) == 0) | ((_BYTES & 0b100) != 0)  # exponent > 0 needs a mantissa >= 1024
_ABS_HI_OK = _BYTES < 0x80  # u64 seconds must fit int64
_NONZERO = _BYTES > 0  # <TimestampDelta4> value must be >= 256: its top three bytes are not all zero
_MARKER_GROUP = np.array([GROUP_ROLE, GROUP_SRC, GROUP_SRC, GROUP_DST, GROUP_DST, GROUP_TIME, GROUP_TIME,
                          GROUP_TIME, GROUP_RTT, GROUP_RTT, GROUP_RTT], np.int8)  # fmt: skip


class TokenDecodeError(ValueError):
    """A token sequence that is not a valid measurement sentence; the message names the position."""


_POW2_NEG = np.ldexp(1.0, -np.arange(32))  # 2**-e for the 32 RTT exponents
_RTT_LIMIT_US = 2047.5 * 2**31  # from here on the mantissa rounds to 2048 at exponent 31: not representable


def after_rtt_start(tokens_BxL, offset: int, xp=np):
    """True where a token is `offset` places after an <RttStart> (1: the RTT's byte 1, 2: its byte 2), along
    the last axis of a 2-D batch. `xp` is the array module (numpy, or jax.numpy inside a jitted step)."""
    start_BxL = tokens_BxL == RTT_START
    return xp.pad(start_BxL[:, :-offset], ((0, 0), (offset, 0)))


N_MARKERS = BYTE0  # role tokens are the ids below the first byte token
ROLE_OFFSETS = _W  # a token sits 0..16 places after the marker that opened its field
N_ROLES = N_MARKERS * ROLE_OFFSETS


def token_roles(tokens_BxL, xp=np, starts_BxL=None):
    """Grammar role of every token along the last axis: (last marker at or before it) * 17 + its distance
    from that marker, e.g. "byte 3 of a destination IPv4 address" or "byte 1 of an RTT". A function of the
    tokens so far (causal), so a model may embed it. `starts_BxL` marks where packed contexts begin (nothing
    before them counts); tokens before any marker count from the context's start as if after
    <MeasurementStart>."""
    seq = tokens_BxL.shape[-1]
    idx_L = xp.arange(seq)
    reset = tokens_BxL < N_MARKERS
    if starts_BxL is not None:
        reset = reset | starts_BxL
    last_BxL = xp.where(reset, idx_L, 0)
    last_BxL = cummax(last_BxL, xp)
    marker_BxL = xp.take_along_axis(tokens_BxL, last_BxL, axis=-1)
    marker_BxL = xp.where(marker_BxL < N_MARKERS, marker_BxL, 0)
    return marker_BxL * ROLE_OFFSETS + xp.minimum(idx_L - last_BxL, ROLE_OFFSETS - 1)


def role_after_bytes(role_B, n_bytes, xp=np):
    """The role `n_bytes` byte tokens after one of role `role_B` in the same field (at most its last offset)."""
    cap_B = (role_B // ROLE_OFFSETS) * ROLE_OFFSETS + ROLE_OFFSETS - 1
    return xp.minimum(role_B + n_bytes, cap_B)


def continue_roles(prev_role_B, tokens_BxT, xp=np):
    """`token_roles` of T tokens that follow a sequence whose last token had role `prev_role_B` (per row; -1:
    nothing before them): what decoding needs when it appends tokens to a cached prefix."""
    out = []
    role_B = xp.asarray(prev_role_B)
    for t in range(tokens_BxT.shape[-1]):
        tok_B = tokens_BxT[..., t]
        byte_B = xp.where(role_B < 0, 0, role_after_bytes(role_B, 1, xp))
        role_B = xp.where(tok_B < N_MARKERS, tok_B * ROLE_OFFSETS, byte_B)
        out.append(role_B)
    return xp.stack(out, axis=-1) if out else xp.zeros(tokens_BxT.shape, xp.int32)


def cummax(x, xp=np):
    """Running maximum along the last axis, in numpy or (traceable) jax.numpy."""
    if xp is np:
        return np.maximum.accumulate(x, axis=-1)
    import jax

    return jax.lax.cummax(x, axis=x.ndim - 1)


def encode_rtt_ms(rtt_ms: np.ndarray) -> np.ndarray:
    """RTTs in ms (>= 0) to uint16 codes `EEEEEMMM MMMMMMMM` = round(us / 2**e) with the smallest fitting e."""
    us = np.asarray(np.asarray(rtt_ms, np.float64) * 1000.0)
    if us.size and not (us.min() >= 0 and us.max() < _RTT_LIMIT_US):  # NaN fails both comparisons
        bad = ~(np.isfinite(us) & (us >= 0))
        if bad.any():
            raise ValueError(f"RTT must be finite and >= 0 ms, got {np.asarray(rtt_ms).flat[np.argmax(bad)]}")
        raise ValueError(f"RTT above the representable maximum of {RTT_MAX_US / 1000:.0f} ms")
    # us = f * 2**x with f in [0.5, 1) and x = biased exponent - 1022 (read from the float's bits; 0 and
    # subnormals give e = 0): the smallest e leaving <= 11 bits is x - 11. Scaling by 2**-e is exact.
    e = np.maximum((us.view(np.int64) >> 52) - 1033, 0)
    m = np.rint(us * _POW2_NEG.take(e)).astype(np.int64)
    # m reaches 2048 only by rounding up: that is the next exponent with mantissa 1024 (+2048, then +1024).
    return ((e << 11) + m + ((m >> 11) << 10)).astype(np.uint16)


def decode_rtt_code(codes: np.ndarray) -> np.ndarray:
    """uint16 RTT codes to float64 milliseconds (exact: mantissa * 2**exponent microseconds / 1000)."""
    c = np.asarray(codes).astype(np.int64)
    return np.ldexp((c & 0x7FF).astype(np.float64), c >> 11) / 1000.0


def ip_to_bytes(addrs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Address strings to (uint8[n, 16], is_v6 bool[n]); IPv4 uses the first 4 bytes, zeros after."""
    seq = addrs.reshape(-1).tolist() if isinstance(addrs, np.ndarray) else list(addrs)
    # Parse each distinct string once; a dict is ~10x faster than np.unique's sort on strings.
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(s, len(first)) for s in seq), np.int64, count=len(seq))
    packed = np.zeros((len(first), 16), np.uint8)
    is_v6 = np.zeros(len(first), bool)
    for i, s in enumerate(first):
        try:
            if not isinstance(s, str):
                raise ValueError
            ip = ipaddress.ip_address(s)
        except ValueError:
            raise ValueError(f"not an IP address: {s!r}") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise ValueError(f"scoped IPv6 address cannot be encoded: {s!r}")
        raw = ip.packed
        packed[i, : len(raw)] = np.frombuffer(raw, np.uint8)
        is_v6[i] = len(raw) == 16
    return packed[inverse], is_v6[inverse]


def bytes_to_ip(addr: np.ndarray, is_v6: np.ndarray) -> list[str]:
    """(uint8[n, 16], bool[n]) to canonical compressed address strings."""
    addr = np.asarray(addr, np.uint8).reshape(-1, 16)
    v6 = np.asarray(is_v6, np.uint8).reshape(-1, 1)
    rows = np.ascontiguousarray(np.concatenate([v6, addr], axis=1)).view("S17").reshape(-1).tolist()
    # Format each distinct address once. numpy bytes drop trailing zeros, so pad back to 17.
    first: dict[bytes, int] = {}
    inverse = [first.setdefault(r, len(first)) for r in rows]
    names = []
    for r in first:
        r = r.ljust(17, b"\0")
        names.append(str(ipaddress.IPv6Address(r[1:]) if r[0] else ipaddress.IPv4Address(r[1:5])))
    return [names[i] for i in inverse]


@dataclass
class Measurements:
    """Struct of arrays: one entry per measurement (time s, addresses as 16 bytes + family, RTT ms)."""

    time: np.ndarray  # int64[n] unix seconds (UTC); -1 where decoded without a timestamp
    src: np.ndarray  # uint8[n, 16]
    src_v6: np.ndarray  # bool[n]
    dst: np.ndarray  # uint8[n, 16]
    dst_v6: np.ndarray  # bool[n]
    rtt: np.ndarray  # float64[n] ms; -1.0 = failed

    def __post_init__(self) -> None:
        self.time = np.asarray(self.time, np.int64).reshape(-1)
        self.src = np.asarray(self.src, np.uint8).reshape(-1, 16)
        self.dst = np.asarray(self.dst, np.uint8).reshape(-1, 16)
        self.src_v6 = np.asarray(self.src_v6, bool).reshape(-1)
        self.dst_v6 = np.asarray(self.dst_v6, bool).reshape(-1)
        self.rtt = np.asarray(self.rtt, np.float64).reshape(-1)
        n = len(self.time)
        if any(len(a) != n for a in (self.src, self.src_v6, self.dst, self.dst_v6, self.rtt)):
            raise ValueError("Measurements arrays must all have the same length")

    @classmethod
    def from_strings(cls, times, srcs: Sequence[str], dsts: Sequence[str], rtts) -> Measurements:
        """Build from unix seconds (or datetime64), address strings and RTTs in ms."""
        t = np.asarray(times)
        if np.issubdtype(t.dtype, np.datetime64):
            t = t.astype("datetime64[s]").astype(np.int64)
        src, src_v6 = ip_to_bytes(srcs)
        dst, dst_v6 = ip_to_bytes(dsts)
        return cls(t, src, src_v6, dst, dst_v6, rtts)

    def __len__(self) -> int:
        return len(self.time)

    def take(self, idx) -> Measurements:
        """The measurements at `idx` (indices or a boolean mask), in that order."""
        return Measurements(self.time[idx], self.src[idx], self.src_v6[idx], self.dst[idx], self.dst_v6[idx],
                            self.rtt[idx])  # fmt: skip


def _byte_tokens(big_endian: np.ndarray, width: int) -> np.ndarray:
    # Widen before adding BYTE0: uint8 + 11 would wrap around.
    return big_endian.view(np.uint8).reshape(-1, width).astype(np.int32) + BYTE0


def _fill_addr(buf: np.ndarray, lens: np.ndarray, addr, v6, tok4: int, tok6: int, what: str) -> None:
    if (addr[~v6, 4:] != 0).any():
        raise ValueError(f"{what}: IPv4 address with non-zero bytes after the first 4")
    buf[:, 0] = np.where(v6, tok6, tok4)
    buf[:, 1:17] = addr.astype(np.int32) + BYTE0
    lens[:] = np.where(v6, 17, 5)


def encode_measurements_with_offsets(
    m: Measurements, has_time: np.ndarray, field_order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Encode measurements in the given order; return (int32 tokens, int64 start offset of each measurement)."""
    n = len(m)
    has_time = np.asarray(has_time, bool).reshape(-1)
    order = np.asarray(field_order, np.int64).reshape(-1, 4) if n else np.zeros((0, 4), np.int64)
    if has_time.shape != (n,) or order.shape != (n, 4):
        raise ValueError(f"has_time must be [{n}] and field_order [{n}, 4]")
    bad = (np.sort(order, axis=1) != np.arange(4)).any(axis=1)
    if bad.any():
        raise ValueError(
            f"measurement {np.argmax(bad)}: field_order {order[np.argmax(bad)]} is not a permutation"
        )
    buf = np.zeros((n, 4, _W), np.int32)  # per-field token blocks, padded to the widest
    lens = np.zeros((n, 4), np.int64)
    _fill_addr(buf[:, FIELD_SRC], lens[:, FIELD_SRC], m.src, m.src_v6, SRC_IPV4, SRC_IPV6, "src")
    _fill_addr(buf[:, FIELD_DST], lens[:, FIELD_DST], m.dst, m.dst_v6, DST_IPV4, DST_IPV6, "dst")

    if np.isnan(m.rtt).any():
        raise ValueError(f"measurement {np.argmax(np.isnan(m.rtt))}: RTT is NaN")
    failed = m.rtt < 0
    codes = encode_rtt_ms(np.where(failed, 0.0, m.rtt))
    buf[:, FIELD_RESULT, 0] = np.where(failed, FAILED, RTT_START)
    buf[:, FIELD_RESULT, 1:3] = _byte_tokens(codes.astype(">u2"), 2)
    lens[:, FIELD_RESULT] = np.where(failed, 1, 3)

    ti = np.flatnonzero(has_time)
    if len(ti):
        t = m.time[ti]
        if t[0] < 0:
            raise ValueError(f"measurement {ti[0]}: negative timestamp {t[0]}")
        delta = np.diff(t)  # seconds since the previous timestamped measurement
        if (delta < 0).any():
            i = np.argmax(delta < 0)
            raise ValueError(f"measurement {ti[i + 1]}: time {t[i + 1]} before previous timestamped {t[i]}")
        if (delta >= 2**32).any():
            raise ValueError(f"measurement {ti[np.argmax(delta >= 2**32) + 1]}: time delta does not fit u32")
        buf[ti[0], FIELD_TIME, 0] = TIMESTAMP_ABS
        buf[ti[0], FIELD_TIME, 1:9] = _byte_tokens(t[:1].astype(">u8"), 8)
        lens[ti[0], FIELD_TIME] = 9
        rest, small = ti[1:], delta < 256
        buf[rest, FIELD_TIME, 0] = np.where(small, TIMESTAMP_DELTA1, TIMESTAMP_DELTA4)
        buf[rest[small], FIELD_TIME, 1] = delta[small] + BYTE0
        buf[rest[~small], FIELD_TIME, 1:5] = _byte_tokens(delta[~small].astype(">u4"), 4)
        lens[rest, FIELD_TIME] = np.where(small, 2, 5)

    rows = np.arange(n)[:, None]
    blocks = buf[rows, order].reshape(n, 4 * _W)  # fields in each measurement's own order
    keep = (np.arange(_W) < lens[rows, order][..., None]).reshape(n, 4 * _W)
    full = np.concatenate([np.full((n, 1), MEASUREMENT_START, np.int32), blocks], axis=1)
    mask = np.concatenate([np.ones((n, 1), bool), keep], axis=1)
    tokens = full[mask]
    sizes = 1 + lens.sum(axis=1)
    return tokens, (np.cumsum(sizes) - sizes).astype(np.int64)


def encode_measurements(m: Measurements, has_time: np.ndarray, field_order: np.ndarray) -> np.ndarray:
    """Encode measurements in the given order to one int32 token sequence (vectorised)."""
    return encode_measurements_with_offsets(m, has_time, field_order)[0]


class GrammarState:
    """Incremental parser of the token language: which tokens may come next, and the values decoded so far."""

    def __init__(self) -> None:
        self._pos = 0  # tokens consumed
        self._in_meas = False  # a <MeasurementStart> has been seen
        self._used = 0  # bitmask of fields given in the current measurement
        self._order: list[int] = []  # fields of the current measurement, in order
        self._marker = -1  # marker of the field being read
        self._need = 0  # byte tokens still expected for that field
        self._buf: list[int] = []  # bytes read for that field
        self._last_time: int | None = None  # unix s of the latest timestamped measurement
        self._cur: dict = {}  # decoded values of the current measurement
        self._done: list[tuple[dict, list[int]]] | None = None  # finished measurements, when collecting

    def copy(self) -> GrammarState:
        """An independent copy (for branching during constrained decoding)."""
        new = GrammarState.__new__(GrammarState)
        new.__dict__.update(self.__dict__)
        new._order, new._buf, new._cur = list(self._order), list(self._buf), dict(self._cur)
        new._done = None
        return new

    @property
    def seen_timestamp(self) -> bool:
        """True once any timestamp was read, so the next one must be a delta."""
        return self._last_time is not None

    @property
    def last_time(self) -> int | None:
        """Unix seconds of the latest timestamp read, or None."""
        return self._last_time

    @property
    def position(self) -> int:
        """Number of tokens consumed."""
        return self._pos

    @property
    def _complete(self) -> bool:
        return self._need == 0 and (self._used & _REQUIRED) == _REQUIRED

    @property
    def at_measurement_boundary(self) -> bool:
        """True where the sequence may end or a new measurement may start."""
        return not self._in_meas or self._complete

    def _byte_mask(self) -> np.ndarray | None:
        i = len(self._buf)
        if self._marker == RTT_START and i == 0:
            return _RTT_HI_OK
        if self._marker == TIMESTAMP_ABS and i == 0:
            return _ABS_HI_OK
        if self._marker == TIMESTAMP_DELTA4 and i == 2 and self._buf[0] == self._buf[1] == 0:
            return _NONZERO
        return None

    def allowed(self) -> np.ndarray:
        """bool[VOCAB_SIZE]: the tokens that may come next."""
        ok = np.zeros(VOCAB_SIZE, bool)
        if self._need:
            bm = self._byte_mask()
            ok[BYTE0:] = True if bm is None else bm
            return ok
        if self.at_measurement_boundary:
            ok[MEASUREMENT_START] = True
        if self._in_meas:
            for f, markers in enumerate(_FIELD_MARKERS):
                if not self._used >> f & 1:
                    ok[list(markers)] = True
            if not self._used >> FIELD_TIME & 1:
                ok[[TIMESTAMP_DELTA1, TIMESTAMP_DELTA4] if self.seen_timestamp else [TIMESTAMP_ABS]] = True
        return ok

    def _expected(self) -> str:
        ok = self.allowed()
        names = [TOKEN_NAMES[t] for t in np.flatnonzero(ok[:BYTE0])]
        if ok[BYTE0:].any():
            names.append("a byte token" if ok[BYTE0:].all() else "a canonical byte token")
        return " or ".join(names)

    def _error(self, msg: str) -> TokenDecodeError:
        return TokenDecodeError(f"position {self._pos}: {msg}")

    def advance(self, token: int) -> None:
        """Consume one token; raise TokenDecodeError (state unchanged) if the grammar forbids it."""
        tok = int(token)
        if not 0 <= tok < VOCAB_SIZE:
            raise self._error(f"token id {tok} outside the vocabulary")
        name = TOKEN_NAMES[tok]
        if self._need:
            if tok < BYTE0:
                raise self._error(f"expected a byte token after {TOKEN_NAMES[self._marker]}, got {name}")
            bm = self._byte_mask()
            if bm is not None and not bm[tok - BYTE0]:
                raise self._error(f"{name} makes a non-canonical {TOKEN_NAMES[self._marker]} value")
            if self._need == 1:
                self._finish_field(self._buf + [tok - BYTE0])  # may raise; state still unchanged
            else:
                self._buf.append(tok - BYTE0)
            self._need -= 1
        elif tok == MEASUREMENT_START:
            if not self.at_measurement_boundary:
                missing = [FIELD_NAMES[f] for f in range(3) if not self._used >> f & 1]
                raise self._error(f"got {name} but the measurement lacks field(s) {', '.join(missing)}")
            if self._in_meas and self._done is not None:
                self._done.append((self._cur, self._order))
            self._in_meas, self._used, self._order, self._cur = True, 0, [], {}
        elif tok >= BYTE0 or not self._in_meas:
            raise self._error(f"expected {self._expected()}, got {name}")
        else:
            if tok == THROUGHPUT_START:
                raise self._error(f"{name} is reserved and not supported")
            field = _MARKER_FIELD[tok]
            if self._used >> field & 1:
                raise self._error(f"{FIELD_NAMES[field]} field given twice in one measurement ({name})")
            if tok == TIMESTAMP_ABS and self.seen_timestamp:
                raise self._error(f"{name} after an earlier timestamp; expected a delta")
            if tok in (TIMESTAMP_DELTA1, TIMESTAMP_DELTA4) and not self.seen_timestamp:
                raise self._error(f"{name} before any <TimestampAbs>")
            self._marker, self._need, self._buf = tok, _MARKER_NBYTES[tok], []
            if self._need == 0:
                self._finish_field([])
            self._used |= 1 << field
            self._order.append(field)
        self._pos += 1

    def _finish_field(self, data: list[int]) -> None:
        mk = self._marker
        if mk in (SRC_IPV4, SRC_IPV6, DST_IPV4, DST_IPV6):
            self._cur["src" if mk < DST_IPV4 else "dst"] = (bytes(data), len(data) == 16)
        elif mk in (RTT_START, FAILED):
            self._cur["rtt"] = data[0] << 8 | data[1] if data else -1  # -1 marks <Failed>
        else:
            value = int.from_bytes(bytes(data), "big")
            t = value if mk == TIMESTAMP_ABS else self._last_time + value
            if t >= 2**63:
                raise self._error("timestamp overflows int64")
            self._last_time = self._cur["time"] = t


def allowed_next_tokens(prefix_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """bool[VOCAB_SIZE]: tokens the grammar allows after `prefix_tokens` (which must itself be valid)."""
    state = GrammarState()
    for tok in np.asarray(prefix_tokens, np.int64).reshape(-1).tolist():
        state.advance(tok)
    return state.allowed()


def decode_tokens(tokens: Sequence[int] | np.ndarray) -> tuple[Measurements, np.ndarray, np.ndarray]:
    """Token sequence to (Measurements, has_time bool[n], field_order int8[n, 4]); strict inverse of encoding."""
    toks = np.asarray(tokens).reshape(-1)
    if toks.size and not np.issubdtype(toks.dtype, np.integer):
        raise TokenDecodeError(f"position 0: token ids must be integers, got dtype {toks.dtype}")
    state = GrammarState()
    state._done = []
    for tok in toks.tolist():
        state.advance(tok)
    if not state.at_measurement_boundary:
        raise state._error(f"sequence ends inside a measurement; expected {state._expected()}")
    if state._in_meas:
        state._done.append((state._cur, state._order))
    n = len(state._done)
    src, dst = np.zeros((n, 16), np.uint8), np.zeros((n, 16), np.uint8)
    src_v6, dst_v6 = np.zeros(n, bool), np.zeros(n, bool)
    time, codes = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    order = np.full((n, 4), FIELD_TIME, np.int8)  # 3-field measurements put FIELD_TIME last
    for i, (cur, fields) in enumerate(state._done):
        (s, src_v6[i]), (d, dst_v6[i]) = cur["src"], cur["dst"]
        src[i, : len(s)] = np.frombuffer(s, np.uint8)
        dst[i, : len(d)] = np.frombuffer(d, np.uint8)
        codes[i] = cur["rtt"]
        time[i] = cur.get("time", -1)
        order[i, : len(fields)] = fields
    has_time = np.array([len(f) == 4 for _, f in state._done], bool)
    rtt = np.where(codes < 0, -1.0, decode_rtt_code(np.maximum(codes, 0)))
    return Measurements(time, src, src_v6, dst, dst_v6, rtt), has_time, order


def token_group(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """int8 group per token (GROUP_*): markers label their field; bytes take the group of the last marker."""
    toks = np.asarray(tokens, np.int64).reshape(-1)
    is_marker = toks < BYTE0
    last = np.maximum.accumulate(np.where(is_marker, np.arange(len(toks)), -1)) if len(toks) else toks
    # Bytes before any marker (a window cut mid-field) have no known field: labelled GROUP_ROLE.
    return np.where(
        last >= 0, _MARKER_GROUP[np.clip(toks[np.maximum(last, 0)], 0, BYTE0 - 1)], GROUP_ROLE
    ).astype(np.int8)
