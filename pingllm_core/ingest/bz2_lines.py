"""bz2 dump files as blocks of whole lines in reused buffers, for the parser (parse.py).

Two decoders give the same text. `FastBz2Lines` (indexed_bzip2, single-threaded: ~12% less CPU than libbz2
on the dumps) takes every file first and accepts only a clean, complete one: any damage, or data after the
last stream, raises `FastDecodeFailed`, and the caller parses the file again with `Bz2Lines` (the standard
library's decoder), which is the reference for what a damaged file keeps. Damaged files are rare, so the second
pass costs little; the fast decoder never decides anything about damage.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import mmap
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:  # pinned in pyproject.toml; without it every file takes the reference decoder
    import indexed_bzip2
except ImportError:  # pragma: no cover - only where the wheel is missing
    indexed_bzip2 = None

_READ_BYTES = 1 << 20  # compressed bytes per read (and per decompress call, for what a damaged file keeps)
_PIECE = 1 << 14  # decompressed bytes taken out of the decompressor at a time (see Bz2Lines)


class FastDecodeFailed(Exception):
    """The fast decoder did not read the file cleanly to its end; parse it again with `Bz2Lines`."""


def fast_decoder_available() -> bool:
    return indexed_bzip2 is not None


class Block:
    """Whole lines at the start of a reusable buffer: `data[:size]`; `release()` hands the buffer back."""

    __slots__ = ("data", "size", "_released")

    def __init__(self, data: mmap.mmap, size: int) -> None:
        self.data, self.size, self._released = data, size, False

    def view(self) -> memoryview:
        return memoryview(self.data)[: self.size]

    def release(self) -> None:
        if not self._released:
            self._released = True
            _give_buffer(self.data)


# Decompressed text goes into a few reusable anonymous mappings, not into fresh memory per block: a fresh page
# costs a fault and kernel zeroing, which was a fifth of the non-decompression CPU. An mmap (unlike bytearray)
# is not zero-filled by us, and it has find/rfind for the line scan. At most _POOL_KEEP stay with the process.
_POOL: collections.deque = collections.deque()
_POOL_KEEP = 4


def clear_pool() -> None:
    """Drop the kept buffers (a forked worker must not write into its parent's; a call keeps them no longer)."""
    _POOL.clear()


os.register_at_fork(after_in_child=clear_pool)


def _anonymous(size: int) -> mmap.mmap:
    # private: Python's default (MAP_SHARED) would let a forked pool worker write into its parent's buffers
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _take_buffer(size: int) -> mmap.mmap:
    while True:
        try:
            buf = _POOL.pop()
        except IndexError:
            return _anonymous(size)
        if len(buf) >= size:
            return buf


def _give_buffer(buf: mmap.mmap) -> None:
    if len(_POOL) < _POOL_KEEP:
        _POOL.append(buf)


class Bz2Lines:
    """Decompresses a bz2 file (possibly multi-stream) into blocks of whole lines; records damage.

    Output is taken in pieces of at most _PIECE bytes (small allocations that malloc reuses), but the pieces
    of one decompress call on one compressed chunk are kept or dropped together, so a damaged file keeps
    exactly the text it kept when each chunk was decompressed in one call."""

    def __init__(self, path: Path, block_bytes: int) -> None:
        self.path, self.block_bytes = path, block_bytes
        self.truncated, self.error = False, None

    def __iter__(self) -> Iterator[Block]:
        buf, pos = _take_buffer(self.block_bytes), 0  # buf[:pos] holds decompressed bytes not yet handed out

        def append(piece: bytes) -> None:
            nonlocal buf, pos
            end = pos + len(piece)
            if end > len(buf):  # a line longer than a block
                buf = _grown(buf, pos, max(2 * len(buf), end + 1))
            buf[pos:end] = piece
            pos = end

        dec, started, total_in, mark, most = bz2.BZ2Decompressor(), False, 0, 0, 0
        with open(self.path, "rb") as fh:  # a missing or unreadable file raises here: not "truncated"
            try:
                while chunk := fh.read(_READ_BYTES):
                    # hand out the whole lines so far when the next chunk's text might not fit (a block never
                    # ends inside one chunk's text: see the class doc)
                    if pos + most >= len(buf):
                        block, buf, pos = _split(buf, pos, self.block_bytes)
                        if block is not None:
                            yield block
                    total_in += len(chunk)
                    before = pos
                    while chunk or not (dec.needs_input or dec.eof):
                        if chunk:
                            started, mark = True, pos
                        append(dec.decompress(chunk, _PIECE))
                        chunk = b""
                        if dec.eof:  # a concatenated stream (pbzip2 output) may follow this one
                            chunk, dec, started = dec.unused_data, bz2.BZ2Decompressor(), False
                    most = max(most, pos - before)
                if total_in == 0:
                    self._damaged("empty file, not a bz2 stream")
                elif started:
                    self._damaged("bz2 stream ends before its end-of-stream marker (truncated)")
            except (OSError, EOFError, ValueError) as exc:
                pos = min(pos, mark)  # the failed call's output is dropped, as a single call would have
                self._damaged(f"corrupt bz2 data after {total_in} compressed bytes ({exc})")
        # A damaged file keeps its whole lines only; its partial last line is dropped.
        keep = buf.rfind(b"\n", 0, pos) + 1 if self.truncated else pos
        if keep:
            if buf[keep - 1] != 10:
                append(b"\n")
                keep += 1
            yield Block(buf, keep)
        else:
            _give_buffer(buf)

    def _damaged(self, message: str) -> None:
        self.truncated, self.error = True, f"{self.path.name}: {message}"


_UTF8_SCAN = 1 << 18  # bytes compared at a time when looking for non-ASCII bytes (cache-sized slices)


def invalid_utf8_lines(block: memoryview, ends: np.ndarray) -> np.ndarray:
    """Indices of the lines that are not valid UTF-8, in a block of lines ending at `ends` (offsets after each
    newline). Dumps are almost all ASCII: a slice without a byte >= 0x80 is skipped after one max() (~9 ms per
    64 MB), and only lines holding such a byte are decoded."""
    data = np.frombuffer(block, np.uint8)
    suspects = []
    for i in range(0, len(data), _UTF8_SCAN):
        part = data[i : i + _UTF8_SCAN]
        if len(part) and part.max() >= 0x80:
            suspects.append(np.flatnonzero(part >= 0x80) + i)
    if not suspects:
        return np.zeros(0, np.int64)
    lines = np.unique(np.searchsorted(ends, np.concatenate(suspects), side="right"))
    bad = []
    for k in lines.tolist():
        try:
            bytes(block[int(ends[k - 1]) if k else 0 : int(ends[k])]).decode("utf-8")
        except UnicodeDecodeError:
            bad.append(k)
    return np.array(bad, np.int64)


_DONE = object()


def prefetch(blocks: Iterator[Block], depth: int = 1) -> Iterator[Block]:
    """Run `blocks` in a thread, `depth` blocks ahead: decompression of the next block overlaps DuckDB's parse of
    this one (DuckDB releases the GIL, and so does the standard library's bz2). Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for block in blocks:
                if not put(block):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=run, name="bz2-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _split(buf: mmap.mmap, pos: int, block_bytes: int) -> tuple[Block | None, mmap.mmap, int]:
    """Hand out the whole lines of buf[:pos]: (their block, a next buffer holding the partial last line, its
    length); (None, buf, pos) when there is no newline yet."""
    cut = buf.rfind(b"\n", 0, pos) + 1
    if not cut:
        return None, buf, pos
    nxt = _take_buffer(max(block_bytes, 2 * (pos - cut)))  # the rest may be a long line too
    nxt[: pos - cut] = buf[cut:pos]  # the partial last line starts the next block
    return Block(buf, cut), nxt, pos - cut


def _grown(buf: mmap.mmap, pos: int, size: int) -> mmap.mmap:
    """A buffer of `size` bytes holding buf[:pos] (for a line longer than a block); buf goes back to the pool."""
    bigger = _anonymous(size)
    bigger[:pos] = buf[:pos]
    _give_buffer(buf)
    return bigger


def _hand_out(buf: mmap.mmap, pos: int, block_bytes: int) -> tuple[Block | None, mmap.mmap, int]:
    """Make room in a full buffer: hand out its whole lines, or if it holds none, move to one twice as big."""
    block, buf, pos = _split(buf, pos, block_bytes)
    return (block, buf, pos) if block is not None else (None, _grown(buf, pos, 2 * len(buf)), pos)


@contextlib.contextmanager
def _decoder_errors(buf: mmap.mmap) -> Iterator[None]:
    """A decoder error (it raises RuntimeError, ValueError or OSError alike) as FastDecodeFailed."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only the decoder's own calls run inside
        _give_buffer(buf)
        raise FastDecodeFailed(f"{type(exc).__name__}: {exc}") from exc


class FastBz2Lines:
    """A clean bz2 file (possibly multi-stream) as blocks of whole lines, decoded by indexed_bzip2 straight
    into the buffers. Raises `FastDecodeFailed` for an empty file, any decoder error (truncation, a CRC
    mismatch, a bad header) or bytes after the last stream; blocks already handed out are then void."""

    truncated, error = False, None  # it never reports damage: it refuses the file instead

    def __init__(self, path: Path, block_bytes: int) -> None:
        self.path, self.block_bytes = path, block_bytes

    def __iter__(self) -> Iterator[Block]:
        size = os.path.getsize(self.path)  # a missing or unreadable file raises here, like Bz2Lines
        if size == 0:
            raise FastDecodeFailed("empty file")
        buf, pos = _take_buffer(self.block_bytes), 0
        with _decoder_errors(buf):
            fh = indexed_bzip2.open(str(self.path), parallelization=1)
        with fh:
            while True:
                if pos == len(buf):
                    block, buf, pos = _hand_out(buf, pos, self.block_bytes)
                    if block is not None:
                        yield block
                with _decoder_errors(buf), memoryview(buf) as view:
                    n = fh.readinto(view[pos:])
                if not n:
                    break
                pos += n
            consumed_bits = fh.tell_compressed()
        if consumed_bits < 8 * size:  # bytes after the last stream: the reference decoder calls that damage
            _give_buffer(buf)
            raise FastDecodeFailed(f"{size - consumed_bits // 8} bytes after the last bz2 stream")
        if pos and buf[pos - 1] != 10:  # a last line without its newline gets one, as in Bz2Lines
            if pos == len(buf):
                block, buf, pos = _hand_out(buf, pos, self.block_bytes)
                if block is not None:
                    yield block
            buf[pos] = 10
            pos += 1
        if pos:
            yield Block(buf, pos)
        else:
            _give_buffer(buf)
