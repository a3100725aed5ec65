"""CSV text to rows of numbers, read from a file: the header, the data lines counted, then blocks of about
512 KB parsed in threads. Only here is CSV syntax known; api/dataset_formats.py turns the rows into a
dataset. Memory holds a few blocks whatever the file's size: a line longer than any row of the header's
columns can be is refused while it streams in, before it is held whole.

Lines end with ``\\n`` or ``\\r\\n``; a file whose first line ends with a lone ``\\r`` (classic Mac OS, Excel's
"CSV (Macintosh)") is read with ``\\r`` line ends. A ``\\r`` anywhere else is a 422 naming its line and column.
"""

import contextlib
import csv
import io
import mmap
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from api.errors import InvalidInput

CSV_BLOCK = 512 * 1024  # bytes of CSV text parsed at a time: the parser's arrays stay in the CPU's cache
# blocks parsed at once: one more than cores, as the thread writing the NPZ waits for them much of the time
PARSE_THREADS = min(4, (os.cpu_count() or 1) + 1)
_PARSERS = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="csv-parse")  # one pool for every upload's blocks
HEADER_BYTES = 1 << 20  # the longest header line read
CELL_BYTES = 256  # generous bytes per value (a float64 takes 24 at most): a longer line holds no sane row
COUNT_BYTES = 16 * 1024 * 1024  # read at a time when counting lines
_POW10 = np.array([10.0 ** i for i in range(40)])
# _integers: a field of k digits read as a little-endian word keeps its top k bytes, and the SWAR steps
# (scale, shift, mask) combine neighbouring digits, then pairs, then quads
_WORDS = {
    4: (np.uint32, np.array([0] + [(1 << 32) - (1 << 8 * (4 - k)) for k in range(1, 5)], np.uint32),
        [(10, 8, 0x00FF00FF), (100, 16, 0x0000FFFF)]),
    8: (np.uint64, np.array([0] + [(1 << 64) - (1 << 8 * (8 - k)) for k in range(1, 9)], np.uint64),
        [(10, 8, 0x00FF00FF00FF00FF), (100, 16, 0x0000FFFF0000FFFF), (10000, 32, 0xFFFFFFFF)]),
}
# a number as a header cell: the first line is then data (pandas' default names 0, 1, ..., n-1 are a header)
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
SAVE_AS = "save the file as CSV UTF-8 (lines ending in \\n or \\r\\n)"


@dataclass
class Header:
    columns: list[str]
    end: int  # where the data lines start, in bytes
    eol: bytes  # b"\n" (\r\n too) or b"\r" (classic Mac OS)

    @property
    def max_line(self) -> int:
        return len(self.columns) * CELL_BYTES + 1024


def read_header(path: Path) -> Header:
    """The header row's column names; a 422 when it is not UTF-8, names fewer than two columns, or holds a \\r
    that ends no line."""
    with open(path, "rb") as handle:
        first = handle.readline(HEADER_BYTES)
    eol = b"\n"
    if b"\r" in first and b"\n" not in first:  # classic Mac OS line ends
        eol, first = b"\r", first[:first.index(b"\r") + 1]
    elif len(first) == HEADER_BYTES and not first.endswith(b"\n"):
        raise InvalidInput(f"line 1 (the header) is longer than {HEADER_BYTES} bytes; a header names the columns, "
                           "one line of names separated by commas")
    try:
        header = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InvalidInput(f"line 1 (the header) is not UTF-8 text; {SAVE_AS}") from None
    if "\r" in header:
        column = header[:header.index("\r")].count(",") + 1
        raise InvalidInput(f"line 1 (the header), column {column} holds a carriage return (\\r) that ends no line; "
                           f"remove it, or {SAVE_AS}")
    columns = next(csv.reader([header]), [])
    if len(columns) < 2:
        raise InvalidInput("a CSV dataset needs a header row naming at least two columns (features and a target), "
                           "then one line per sample")
    if all(NUMBER.fullmatch(name.strip()) for name in columns) and columns != [str(i) for i in range(len(columns))]:
        shown = header if len(header) <= 60 else header[:57] + "..."
        raise InvalidInput(f"line 1 is {shown!r}: numbers, not column names, so it would be read as a header and its "
                           "sample lost. A CSV dataset's first line names its columns: add one (e.g. x1,x2,label), "
                           "then one line per sample")
    if not first.endswith(eol):  # the file ends within its first line
        raise InvalidInput("the CSV file has a header but no data lines")
    return Header(columns, len(first), eol)


def data_end(path: Path, header: Header) -> int:
    """Where the last data line ends: blank lines and spaces at the end of the file are not rows."""
    end = path.stat().st_size
    with open(path, "rb") as handle:
        while end > header.end:  # 64 KB at a time from the end, however long the blank end is
            handle.seek(max(header.end, end - 65536))
            tail = handle.read(end - handle.tell())
            kept = len(tail.rstrip(b"\r\n \t"))
            end -= len(tail) - kept
            if kept:
                break
    return end


def count_rows(path: Path, header: Header, end: int, newlines: int | None = None) -> int:
    """The data lines between the header and byte ``end`` (from ``data_end``). ``newlines``: the file's \\n
    bytes when counted already; then only the blank end of the file is read."""
    if end <= header.end:
        return 0
    with open(path, "rb") as handle:
        if newlines is not None and header.eol == b"\n":
            handle.seek(end)  # the header's \n out, the last row's (cut off at end) in
            return newlines - sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(COUNT_BYTES), b""))
        handle.seek(header.end)
        count = 0
        while handle.tell() < end:
            chunk = handle.read(min(COUNT_BYTES, end - handle.tell()))
            if header.eol == b"\r" and b"\n" in chunk:
                line = 2 + count + chunk.count(b"\r", 0, chunk.index(b"\n"))
                raise InvalidInput(f"line {line} ends with \\n but line 1 with a lone \\r; {SAVE_AS}")
            count += chunk.count(header.eol)
    return count + 1


def _line_at(path: Path, header: Header, offset: int) -> int:
    """The file line that starts at byte ``offset`` (for messages: it reads the file up to there)."""
    return 1 + count_rows(path, header, offset) if offset > header.end else 2


def _too_long(line: int, header: Header) -> InvalidInput:
    return InvalidInput(f"line {line} is longer than {header.max_line} bytes, more than a row of the header's "
                        f"{len(header.columns)} columns can take; put one sample on each line, each line ending in \\n "
                        "or \\r\\n")


def spans(path: Path, header: Header, end: int) -> Iterator[tuple[int, int]]:
    """The data lines up to byte ``end`` as (start, stop) byte ranges of about CSV_BLOCK that end at a line end;
    only line ends are looked for, so no byte is copied. A 422 as soon as a line runs past ``header.max_line``."""
    eol = header.eol
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text:
        start = header.end
        while start < end:
            stop = min(start + CSV_BLOCK, end)
            if stop < end:
                cut = text.rfind(eol, start, stop)
                if cut < 0:  # no line end in a whole block: a line that long must end within max_line
                    cut = text.find(eol, stop, min(end, start + header.max_line + 1))
                    if cut < 0 and start + header.max_line < end:
                        raise _too_long(_line_at(path, header, start), header)
                stop = cut + 1 if cut >= 0 else end
            yield start, stop
            start = stop


def parse_file(function, path: Path, header: Header, end: int, workers: int = PARSE_THREADS) -> Iterator:
    """``function(block, first_line)`` for each block of the data lines, in order, ``workers`` blocks at a time in
    threads that read their own block (NumPy releases the GIL in the parser's array operations); memory holds at
    most ``workers + 1`` blocks. A thread cannot know its block's first line while the blocks before it are
    still being read, so it parses with a provisional one: when that raises InvalidInput, the block is parsed
    again here with its true line, for the message."""
    eol = header.eol
    descriptor = os.open(path, os.O_RDONLY)

    def run(start: int, stop: int) -> tuple:
        block = os.pread(descriptor, stop - start, start)
        block = block if block.endswith(eol) else block + eol
        try:
            return function(block, 2), block.count(eol), None
        except InvalidInput:
            return None, block.count(eol), block

    try:
        line = 2
        with contextlib.closing(in_threads(run, spans(path, header, end), workers)) as results:
            for result, lines, failed in results:
                yield function(failed, line) if failed is not None else result
                line += lines
    finally:  # the threads have stopped: closing in_threads waited for them
        os.close(descriptor)


def _integers(block: bytes, n_columns: int) -> np.ndarray | None:
    """Unsigned integers of at most 8 digits separated by ',' and '\\n' (pixels, counts, labels), as uint32 or
    uint64, about twice as fast as the general path below: the bytes before each separator are read as one word
    and their digits combined in a few whole-array steps (SIMD within a register). None for anything else."""
    b = np.frombuffer(block, np.uint8)
    digits = np.empty(len(b) + 8, np.uint8)  # 0-9 for a digit, 8 zeros in front for the first field's word
    digits[:8] = 0
    np.subtract(b, np.uint8(48), out=digits[8:])
    separators = digits[8:] >= 10
    n_rows = block.count(b"\n")
    n_fields = n_rows * n_columns
    if n_rows == 0 or np.count_nonzero(separators) != n_fields or np.count_nonzero(b == 44) != n_fields - n_rows:
        return None  # something other than digits, commas and line ends, or ragged rows
    ends = np.flatnonzero(separators)
    if not (b.take(ends[n_columns - 1::n_columns]) == 10).all():
        return None  # ragged rows that happen to add up: the slow path names them
    lengths = np.empty_like(ends)
    lengths[0] = ends[0]
    np.subtract(ends[1:], ends[:-1], out=lengths[1:])
    lengths[1:] -= 1
    longest = lengths.max()
    if longest > 8 or lengths.min() == 0:
        return None
    word, masks, steps = _WORDS[4 if longest <= 4 else 8]
    width = np.dtype(word).itemsize
    # the `width` bytes before each separator, as one word each
    words = np.ndarray((len(b) + 1,), word, digits, 8 - width, (1,)).take(ends)
    words &= masks.take(lengths)  # earlier fields' bytes become leading zeros
    for scale, bits, mask in steps:
        high = words >> word(bits)
        words *= word(scale)
        words += high
        words &= word(mask)
    return words.reshape(-1, n_columns)


def _fast_block(block: bytes, n_columns: int) -> np.ndarray | None:
    """Plain decimal numbers ([-]digits[.digits]) separated by ',' and '\\n', parsed with whole-array
    NumPy operations (several times faster than numpy.loadtxt); None when anything else is in the block."""
    b = np.frombuffer(block, np.uint8)
    is_newline = b == 10
    ends = np.flatnonzero(is_newline | (b == 44))
    n_fields = len(ends)
    n_rows = block.count(b"\n")
    if n_fields == 0 or n_fields != n_rows * n_columns:
        return None
    if not np.array_equal(np.searchsorted(ends, np.flatnonzero(is_newline)),
                          np.arange(n_columns - 1, n_fields, n_columns)):
        return None  # ragged rows that happen to add up: the slow path names them
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    longest = int(lengths.max())
    if lengths.min() == 0 or longest > 30:
        return None
    value = None  # set by the first character of every field
    digits_after_dot = None
    negative = None
    dot_seen = np.zeros(n_fields, bool)
    active = None  # None: every field
    for j in range(longest):
        if j:
            active = np.flatnonzero(lengths > j) if active is None else active[lengths[active] > j]
            chars = b[starts[active] + j]
        else:
            chars = b[starts]
        digit = chars - np.uint8(48)
        is_digit = digit < 10
        if is_digit.all():
            if value is None:
                value = digit.astype(np.float64)
            elif active is None:
                value *= 10
                value += digit
            else:
                value[active] = value[active] * 10 + digit
            continue
        odd = np.flatnonzero(~is_digit)
        fields = odd if active is None else active[odd]
        odd_chars = chars[odd]
        if j == 0 and (odd_chars == 45).all() and negative is None:
            negative = fields  # a leading minus
        elif (odd_chars == 46).all() and not dot_seen[fields].any():
            dot_seen[fields] = True
            digits_after_dot = digits_after_dot if digits_after_dot is not None else np.zeros(n_fields, np.int64)
            digits_after_dot[fields] = lengths[fields] - 1 - j
        else:
            return None
        digit[odd] = 0
        kept = np.where(is_digit, 10.0, 1.0)
        if value is None:
            value = digit.astype(np.float64)
        elif active is None:
            value = value * kept + digit
        else:
            value[active] = value[active] * kept + digit
    n_digits = lengths - dot_seen
    if negative is not None:
        n_digits[negative] -= 1
    if n_digits.min() == 0:
        return None  # a lone '-', '.' or '-.': no digit, not a number
    # float() rounds once: the digits as a whole number are exact below 2**53, and so is 10**k up to k = 22, so
    # their quotient is rounded once too; more digits than that go to numpy.loadtxt, which rounds as float() does
    if value.max() >= 2.0 ** 53 or (digits_after_dot is not None and digits_after_dot.max() > 22):
        return None
    if digits_after_dot is not None:
        value /= _POW10[digits_after_dot]
    if negative is not None:
        value[negative] = -value[negative]
    return value.reshape(-1, n_columns)


def _slow_block(block: bytes, first_line: int, header: Header) -> np.ndarray:
    """Anything the fast path does not take (quotes, spaces, exponents), or the exact bad cell."""
    columns = header.columns
    try:
        if b"\n\n" in block or block.startswith(b"\n"):
            raise ValueError("an empty line")  # loadtxt would skip it; the loop below names it
        rows = np.loadtxt(io.BytesIO(block), delimiter=",", dtype=np.float64, ndmin=2, comments=None, encoding="utf-8")
        if rows.shape[1] == len(columns):  # lines of another width, all alike: the loop below names the first
            return rows
    except (ValueError, UnicodeDecodeError):
        pass
    rows = []
    for offset, raw in enumerate(block.split(b"\n")[:-1] if block.endswith(b"\n") else block.split(b"\n")):
        line = first_line + offset
        if len(raw) > header.max_line:
            raise _too_long(line, header)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"line {line} is not UTF-8 text; {SAVE_AS}") from None
        if not text.strip():
            raise InvalidInput(f"line {line} is empty; remove empty lines from the CSV file")
        try:
            cells = next(csv.reader([text]))
        except csv.Error as exc:
            raise InvalidInput(f"line {line} is not CSV ({exc}); {SAVE_AS}") from None
        if len(cells) != len(columns):
            raise InvalidInput(f"line {line} has {len(cells)} values but the header names {len(columns)} columns")
        row = []
        for name, cell in zip(columns, cells):
            try:
                row.append(float(cell))
            except ValueError:
                raise InvalidInput(f"line {line}, column {name!r}: {cell[:40]!r} is not a number") from None
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, len(columns))


def _newlines(block: bytes, first_line: int, header: Header) -> bytes:
    """The block with \\n line ends; a \\r that ends no line is a 422 naming its line and column."""
    block = block.replace(b"\r", b"\n") if header.eol == b"\r" else block.replace(b"\r\n", b"\n")
    stray = block.find(b"\r")
    if stray >= 0:
        start = block.rfind(b"\n", 0, stray) + 1
        line = first_line + block.count(b"\n", 0, stray)
        column = header.columns[min(block.count(b",", start, stray), len(header.columns) - 1)]
        raise InvalidInput(f"line {line}, column {column!r} holds a carriage "
                           f"return (\\r) that ends no line; remove it, or {SAVE_AS}")
    return block


def parse_block(block: bytes, first_line: int, header: Header) -> np.ndarray:
    """The rows of a block (from ``spans``): unsigned integers (uint32 or uint64) when every value is one of at
    most 8 digits, else float64, every value finite; a 422 naming line and column for anything else."""
    if b"\r" in block:
        block = _newlines(block, first_line, header)
    rows = _integers(block, len(header.columns))
    if rows is not None:
        return rows
    rows = _fast_block(block, len(header.columns))
    if rows is None:
        rows = _slow_block(block, first_line, header)
    if not np.isfinite(rows).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(rows))[0])
        where, value = f"line {first_line + row}, column {header.columns[column]!r}", rows[row, column]
        line = block.split(b"\n")[row]
        cell = line.split(b",")[column].strip().lower() if b'"' not in line and not np.isnan(value) else b""
        if cell and cell.lstrip(b"+-") not in (b"inf", b"infinity"):  # digits beyond float64, read as inf
            raise InvalidInput(f"{where} is {cell[:24].decode('ascii', 'replace')}{'...' if len(cell) > 24 else ''}, "
                               "beyond float64 (at most 1.8e308 in magnitude); scale the values down")
        raise InvalidInput(f"{where} is {value}: datasets must hold finite numbers")
    return rows


def in_threads(function, items: Iterator[tuple], workers: int = PARSE_THREADS) -> Iterator:
    """``function(*item)`` for each item, in order, with at most ``workers + 1`` pending, on the threads every upload
    shares (a pool per upload: 16 CSV uploads at once ran 76 threads); closing it early cancels the pending ones and
    waits for those running."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(_PARSERS.submit(function, *item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        wait(pending)
