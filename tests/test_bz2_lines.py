"""The two bz2 decoders: the fast one gives the reference's text on clean files and refuses every damaged one,
and the parser then gives exactly the reference-only answer, through parse_file and through the pool."""

import bz2
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pingllm_core.ingest.bz2_lines as bz2_lines
import pingllm_core.ingest.parse as parse_mod
from pingllm_core.ingest.bz2_lines import Bz2Lines, FastBz2Lines, FastDecodeFailed
from pingllm_core.ingest.parse import parse_file, parse_files
from pingllm_core.ingest.parse_block import MEASUREMENT_SCHEMA, ParseConfig


def _text(blocks) -> bytes:
    out = []
    for block in blocks:
        out.append(bytes(block.view()))
        assert out[-1].endswith(b"\n")  # whole lines only
        block.release()
    return b"".join(out)


lines = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=60)


@settings(max_examples=40, deadline=None)
@given(
    streams=st.lists(lines, min_size=1, max_size=3), block_bytes=st.integers(1024, 4096), tail=st.booleans()
)
def test_fast_decoder_gives_the_reference_text_on_clean_files(tmp_path_factory, streams, block_bytes, tail):
    path = tmp_path_factory.mktemp("bz") / "f.bz2"
    texts = [b"\n".join(s) + (b"\n" if s else b"") for s in streams]
    if tail and texts[-1]:
        texts[-1] = texts[-1][:-1]  # the last line has no newline
    data = b"".join(bz2.compress(t) for t in texts)  # multi-stream, like pbzip2 output
    path.write_bytes(data)
    fast = _text(FastBz2Lines(path, block_bytes))
    assert fast == _text(Bz2Lines(path, block_bytes))
    assert fast.rstrip(b"\n") == b"".join(texts).rstrip(b"\n")


def test_a_line_longer_than_a_block_grows_the_buffer(tmp_path: Path):
    path = tmp_path / "long.bz2"
    text = b"short\n" + b"x" * 10_000 + b"\n" + b"y" * 5000 + b"\nz" * 3000 + b"\n" + b"w" * 9000 + b"\nend\n"
    path.write_bytes(bz2.compress(text))
    assert _text(FastBz2Lines(path, 1024)) == text
    assert _text(Bz2Lines(path, 1024)) == text


def _damaged(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x55
    crc = bytearray(good)
    crc[-5] ^= 0x01
    return {
        "empty": b"",
        "header only": good[:3],
        "cut at three quarters": good[: len(good) * 3 // 4],
        "last byte missing": good[:-1],
        "flipped byte": bytes(flipped),
        "stream crc": bytes(crc),
        "bytes after the stream": good + b"garbage",
        "not bz2": b"hello\n" * 100,
    }


def _ping_lines(n: int) -> list[str]:
    return [
        json.dumps(
            {"fw": 5080, "af": 4, "type": "ping", "prb_id": 10 + i % 300, "timestamp": 1_700_000_000 + i,
             "from": f"81.{i % 200}.3.4", "src_addr": f"81.{i % 200}.3.4", "dst_addr": f"9.9.{i % 250}.1",
             "result": [{"rtt": 10.0 + i % 97}, {"x": "*"}, {"rtt": 11.5}], "msm_id": 1000 + i % 7}
        )
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def good_dump() -> bytes:
    return bz2.compress(("\n".join(_ping_lines(60_000)) + "\n").encode(), 1)


def test_fast_decoder_refuses_every_damaged_file(tmp_path: Path, good_dump: bytes):
    for name, data in _damaged(good_dump).items():
        path = tmp_path / "d.bz2"
        path.write_bytes(data)
        with pytest.raises(FastDecodeFailed):
            _text(FastBz2Lines(path, 1 << 16))
        reference = Bz2Lines(path, 1 << 16)
        _text(reference)
        assert reference.truncated, name  # the reference calls each of them damage too


def test_damaged_files_parse_exactly_as_with_the_reference_decoder(
    tmp_path: Path, good_dump: bytes, monkeypatch
):
    monkeypatch.setattr(bz2_lines, "_READ_BYTES", 1 << 14)  # several blocks before the damage
    refused = []
    real = parse_mod.FastBz2Lines

    class Spy(real):
        def __iter__(self):
            try:
                yield from super().__iter__()
            except FastDecodeFailed:
                refused.append(self.path.name)
                raise

    monkeypatch.setattr(parse_mod, "FastBz2Lines", Spy)
    cases = {"good": good_dump, **_damaged(good_dump)}
    for i, (name, data) in enumerate(cases.items()):
        path = tmp_path / f"ping-{i}.bz2"
        path.write_bytes(data)
        cfg = {"block_bytes": 1 << 16, "reject_sample": 5}
        both = parse_file(path, ParseConfig(**cfg))
        ref = parse_file(path, ParseConfig(fast_bz2=False, **cfg))
        assert both.table.equals(ref.table) and both.stats == ref.stats and both.rejects == ref.rejects, name
        assert (both.truncated, both.error) == (ref.truncated, ref.error), name
        assert (path.name in refused) == (name != "good"), name
    assert parse_file(tmp_path / "ping-0.bz2").stats["results"] == 60_000
    assert parse_file(tmp_path / "ping-3.bz2").stats["results"] > 10_000  # rows before the cut are kept


def test_pool_workers_restart_a_refused_file_in_its_part(tmp_path: Path, good_dump: bytes, monkeypatch):
    monkeypatch.setattr(bz2_lines, "_READ_BYTES", 1 << 14)
    cut = tmp_path / "ping-cut.bz2"
    cut.write_bytes(good_dump[: len(good_dump) * 3 // 4])
    good = tmp_path / "ping-good.bz2"
    good.write_bytes(good_dump)
    cfg = {"block_bytes": 1 << 16}
    summary = parse_files([good, cut], tmp_path / "out" / "part-0.parquet", ParseConfig(workers=2, **cfg))
    for part, src in zip(summary.parts, [good, cut], strict=True):
        expected = parse_file(src, ParseConfig(fast_bz2=False, **cfg)).table
        assert pq.read_table(part).cast(MEASUREMENT_SCHEMA).equals(expected)
    assert [Path(p).name for p in summary.truncated_files] == ["ping-cut.bz2"]


def test_random_cuts_always_match_the_reference(tmp_path: Path, good_dump: bytes):
    rng = random.Random(7)
    path = tmp_path / "ping-r.bz2"
    for cut in sorted(rng.sample(range(1, len(good_dump)), 6)):
        path.write_bytes(good_dump[:cut])
        both, ref = parse_file(path), parse_file(path, ParseConfig(fast_bz2=False))
        assert both.table.equals(ref.table) and both.stats == ref.stats and both.error == ref.error
