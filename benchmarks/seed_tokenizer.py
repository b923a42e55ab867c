"""The seed project's tokenizer, re-implemented as it worked: pure Python, one measurement at a time.

Per measurement: `ipaddress.ip_address` parsing, `struct.pack` for numbers, Python lists of token ids,
`random.shuffle` of the field blocks. Contexts are sampled with `random` and padded to seq_len. This is the
baseline that `benchmarks/loader.py` compares the vectorised loader against; it speaks the same language
(its output decodes with `pingllm_core.data.tokens.decode_tokens`).
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import random
import struct

MEASUREMENT_START, SRC_IPV4, SRC_IPV6, DST_IPV4, DST_IPV6 = 0, 1, 2, 3, 4
TIMESTAMP_ABS, TIMESTAMP_DELTA1, TIMESTAMP_DELTA4 = 5, 6, 7
RTT_START, FAILED, BYTE0 = 8, 10, 11

Meas = tuple[int, str, str, float]  # (unix s, src, dst, rtt ms; -1 failed)


def encode_rtt(rtt_ms: float) -> bytes:
    """RTT in ms to the 2-byte exponent/mantissa code (microseconds, smallest exponent, rounded)."""
    us = rtt_ms * 1000.0
    e = 0
    while round(us / 2**e) > 2047:
        e += 1
    return struct.pack(">H", (e << 11) | int(round(us / 2**e)))


def tokenize_measurement(
    src: str, dst: str, rtt: float, ts: int | None, prev_ts: int | None, rng: random.Random
) -> list[int]:
    """One measurement to token ids, fields in random order (timestamp omitted when ts is None)."""
    fields: list[list[int]] = []
    s = ipaddress.ip_address(src)
    fields.append([SRC_IPV4 if s.version == 4 else SRC_IPV6] + [BYTE0 + b for b in s.packed])
    d = ipaddress.ip_address(dst)
    fields.append([DST_IPV4 if d.version == 4 else DST_IPV6] + [BYTE0 + b for b in d.packed])
    if rtt < 0:
        fields.append([FAILED])
    else:
        fields.append([RTT_START] + [BYTE0 + b for b in encode_rtt(rtt)])
    if ts is not None:
        if prev_ts is None:
            fields.append([TIMESTAMP_ABS] + [BYTE0 + b for b in struct.pack(">Q", ts)])
        elif ts - prev_ts < 256:
            fields.append([TIMESTAMP_DELTA1, BYTE0 + (ts - prev_ts)])
        else:
            fields.append([TIMESTAMP_DELTA4] + [BYTE0 + b for b in struct.pack(">I", ts - prev_ts)])
    rng.shuffle(fields)
    out = [MEASUREMENT_START]
    for f in fields:
        out.extend(f)
    return out


def tokenize_context(meas: list[Meas], mode: str, rng: random.Random, seq_len: int) -> list[int]:
    """A time-ordered list of measurements to one context under a timestamp mode, whole measurements only."""
    if mode == "full":
        plan = [(m, True) for m in meas]
    elif mode == "none":
        shuffled = list(meas)
        rng.shuffle(shuffled)
        plan = [(m, False) for m in shuffled]
    else:
        keep = set(rng.sample(range(len(meas)), max(1, round(rng.uniform(0.1, 0.9) * len(meas)))))
        timed = [m for i, m in enumerate(meas) if i in keep]
        untimed = [m for i, m in enumerate(meas) if i not in keep]
        rng.shuffle(untimed)
        plan = [(m, True) for m in timed]
        for m in untimed:
            plan.insert(rng.randint(0, len(plan)), (m, False))
    out: list[int] = []
    prev = None
    for (t, src, dst, rtt), timed in plan:
        toks = tokenize_measurement(src, dst, rtt, t if timed else None, prev, rng)
        if len(out) + len(toks) > seq_len:
            break
        out.extend(toks)
        if timed:
            prev = t
    return out


def row_contexts(meas: list[Meas], rng: random.Random, seq_len: int, target: int) -> list[list[int]]:
    """K = min(ceil(n/30), 16) contexts of a probe row: log-uniform window, subsample, mode, tokenize."""
    n = len(meas)
    times = [m[0] for m in meas]
    out = []
    for _ in range(max(1, min(math.ceil(n / 30), 16))):
        if n <= target:
            window = meas
        else:
            span = times[-1] - times[0]
            w = math.exp(rng.uniform(math.log(max(span * target / n, 1.0)), math.log(max(span, 1.0))))
            t0 = times[0] + rng.uniform(0, max(span - w, 0))
            a, b = bisect.bisect_left(times, t0), bisect.bisect_right(times, t0 + w)
            if b - a < target:
                a = min(max((a + b - target) // 2, 0), n - target)
                b = a + target
            window = [meas[i] for i in sorted(rng.sample(range(a, b), target))]
        mode = rng.choices(["full", "none", "mixed"], weights=[0.4, 0.3, 0.3])[0]
        out.append(tokenize_context(window, mode, rng, seq_len))
    return out


def pad_rows(contexts: list[list[int]], seq_len: int) -> list[list[int]]:
    """One context per row, padded with zeros to seq_len (the seed did not pack)."""
    return [c + [0] * (seq_len - len(c)) for c in contexts]
