"""CSV text to rows (api/csv_rows.py): the integer path and the general ones agree, blocks split at line ends,
and every message names the file's true line, whichever block the line fell in."""
import csv
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import csv_rows
from api.errors import InvalidInput


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 bytes: a few lines each, so every file below spans many blocks and threads."""
    monkeypatch.setattr(csv_rows, "CSV_BLOCK", 64)


def write(tmp_path, text: bytes):
    path = tmp_path / "data.csv"
    path.write_bytes(text)
    return path


def parse(path, newlines: int | None = None) -> np.ndarray:
    header = csv_rows.read_header(path)
    end = csv_rows.data_end(path, header)
    n = csv_rows.count_rows(path, header, end, newlines)
    parts = list(csv_rows.parse_file(lambda block, line: csv_rows.parse_block(block, line, header), path, header, end))
    rows = np.concatenate(parts).astype(np.float64)
    assert len(rows) == n
    return rows


def reference(text: bytes) -> np.ndarray:
    lines = list(csv.reader(io.StringIO(text.decode())))[1:]
    return np.array([[float(cell) for cell in line] for line in lines if line])


@pytest.mark.parametrize("values", [
    [0, 7, 255, 1000, 99_999_999, 12_345],  # the integer path: words of 4 and of 8 bytes
    [0.5, -3, 1e-3, 2.25, -0.125, 10],  # decimals and signs: the general fast path
    ["1e3", "2", " 3", "4.0e-2"],  # exponents and spaces: numpy.loadtxt
])
def test_every_path_gives_the_numbers_written(tmp_path, small_blocks, values):
    rng = np.random.default_rng(0)
    body = "".join(",".join(str(values[i]) for i in rng.integers(0, len(values), 3)) + "\n" for _ in range(200))
    text = b"a,b,t\n" + body.encode()
    assert np.array_equal(parse(write(tmp_path, text)), reference(text))


@pytest.mark.parametrize("cell", [b".", b"-.", b"-"])
def test_a_cell_without_a_digit_is_not_a_number(cell):
    """The fast path took '.' for 0 and '-.' for -0: float() refuses both."""
    header = csv_rows.Header(["a", "b"], 0, b"\n")
    with pytest.raises(InvalidInput, match=f"line 3, column 'a': {cell.decode()!r} is not a number"):
        csv_rows.parse_block(b"1,2\n" + cell + b",1\n", 2, header)


@pytest.mark.parametrize("cell", ["0.12345678901234567891", "12345678901234567891", "9007199254740993",
                                  "-0.000000000000000000000000123", "1.0000000000000000000000000001", "0.1", "-123.456"])
def test_long_decimals_are_rounded_once_as_float_rounds_them(cell):
    """The digits were summed in float64 past 2**53 and divided by an inexact 10**k: 1 ulp off float(), which
    a float64 dataset keeps (0.12345678901234569 for 0.12345678901234567891)."""
    header = csv_rows.Header(["a", "b"], 0, b"\n")
    rows = csv_rows.parse_block(f"{cell},1\n{cell},2\n".encode(), 2, header)
    assert rows[:, 0].tolist() == [float(cell)] * 2


def test_integers_come_back_as_unsigned_integers_and_the_rest_as_float64():
    header = csv_rows.Header(["a", "b"], 0, b"\n")
    assert csv_rows.parse_block(b"1,2\n30,400\n", 2, header).dtype == np.uint32
    assert csv_rows.parse_block(b"1,2\n30,123456789\n", 2, header).dtype == np.float64  # 9 digits: the general path
    assert csv_rows.parse_block(b"1,2\n30,12345678\n", 2, header).dtype == np.uint64
    assert csv_rows.parse_block(b"1,-2\n", 2, header).dtype == np.float64


@pytest.mark.parametrize("text", [
    b"a,b,t\r\n" + b"1,2,0\r\n" * 30 + b"3,4,1\r\n",  # Windows line ends
    b"a,b,t\r" + b"1,2,0\r" * 30 + b"3,4,1\r",  # classic Mac OS
    b"a,b,t\n" + b"1,2,0\n" * 30 + b"3,4,1",  # no line end after the last line
    b"a,b,t\n" + b"1,2,0\n" * 30 + b"3,4,1\n\n \n",  # blank lines at the end
])
def test_line_ends_and_the_end_of_the_file(tmp_path, small_blocks, text):
    rows = parse(write(tmp_path, text))
    assert rows.shape == (31, 3) and rows[-1].tolist() == [3, 4, 1]


@pytest.mark.parametrize("blank", [b"\n" * 100_000, b" " * 100_000, b"\r\n" * 40_000 + b" \t"])
def test_a_blank_end_longer_than_64_kb_is_not_rows(tmp_path, blank):
    """Only the last 64 KB were stripped: the rest of the blank end was refused as "line 4 is empty"."""
    text = b"a,b,t\n1,2,0\n3,4,1\n" + blank
    assert parse(write(tmp_path, text), text.count(b"\n")).tolist() == [[1, 2, 0], [3, 4, 1]]


def test_a_blank_end_is_counted_a_chunk_at_a_time(tmp_path, monkeypatch):
    from tests.api.conftest import peak_bytes
    monkeypatch.setattr(csv_rows, "COUNT_BYTES", 1 << 20)
    text = b"a,b,t\n1,2,0\n3,4,1\n" + b"\n" * 40_000_000
    path = write(tmp_path, text)
    header = csv_rows.read_header(path)
    end, peak = peak_bytes(csv_rows.data_end, path, header)
    rows, peak_count = peak_bytes(csv_rows.count_rows, path, header, end, text.count(b"\n"))
    assert rows == 2 and max(peak, peak_count) < 4 << 20


def test_rows_counted_as_the_upload_streamed_in_match_a_second_read(tmp_path):
    text = b"a,b,t\r\n" + b"1,2,0\r\n" * 30 + b"3,4,1\r\n\r\n"
    path = write(tmp_path, text)
    header = csv_rows.read_header(path)
    end = csv_rows.data_end(path, header)
    assert csv_rows.count_rows(path, header, end, text.count(b"\n")) == csv_rows.count_rows(path, header, end) == 31


@pytest.mark.parametrize("bad, message", [
    (b"1,x,0\n", "line 42, column 'b': 'x' is not a number"),
    (b"1,2\n", "line 42 has 2 values but the header names 3 columns"),
    (b"1,,0\n", "line 42, column 'b': '' is not a number"),
    (b"1,nan,0\n", "line 42, column 'b' is nan"),
    (b"1,2\r,0\n", "line 42, column 'b' holds a carriage return"),
    (b"1,2," + b"7" * 2000 + b"\n", "line 42 is longer than 1792 bytes"),
])
def test_a_bad_line_deep_in_the_file_is_named_by_its_true_line(tmp_path, small_blocks, bad, message):
    """Threads parse blocks before the lines ahead of them are counted: a message still names the file's line."""
    text = b"a,b,t\n" + b"1,2,0\n" * 40 + bad + b"1,2,0\n" * 40
    with pytest.raises(InvalidInput, match=message):
        parse(write(tmp_path, text))


@pytest.mark.parametrize("text", [b"a,b,t\n1.5,2,0,3,4,1\n", b"a,b,t\n1.5,2,0,3,4,1\n2.5,3,1,4,5,0\n"])
def test_lines_of_twice_the_columns_are_named_not_split_into_rows(tmp_path, text):
    """numpy.loadtxt read such lines as a table 6 wide, which was reshaped into twice the rows: the upload was
    refused as "line 3 is empty", a line that does not exist."""
    with pytest.raises(InvalidInput, match="line 2 has 6 values but the header names 3 columns"):
        parse(write(tmp_path, text))


@pytest.mark.parametrize("name", ["c", "é"])
def test_a_header_longer_than_it_can_be_is_named(tmp_path, name):
    """It was "needs a header row naming at least two columns" (200,000 were named), or "not UTF-8" where the
    first MiB ended inside a character."""
    text = ",".join(f"{name}{i}" for i in range(200_000)).encode() + b"\n" + b"1," * 199_999 + b"1\n"
    with pytest.raises(InvalidInput, match=f"line 1 \\(the header\\) is longer than {csv_rows.HEADER_BYTES} bytes"):
        csv_rows.read_header(write(tmp_path, text))


def test_a_line_longer_than_a_row_can_be_is_refused_before_it_is_read_whole(tmp_path, small_blocks):
    text = b"a,b,t\n" + b"1,2,0\n" * 10 + b"1," * 100_000 + b"0\n"
    with pytest.raises(InvalidInput, match="line 12 is longer than 1792 bytes"):
        list(csv_rows.spans(write(tmp_path, text), csv_rows.read_header(write(tmp_path, text)), len(text)))


def test_blocks_end_at_line_ends_and_cover_the_file(tmp_path, small_blocks):
    text = b"a,b,t\n" + b"".join(b"%d,%d,0\n" % (i, i * i) for i in range(100))
    path = write(tmp_path, text)
    header = csv_rows.read_header(path)
    spans = list(csv_rows.spans(path, header, len(text)))
    assert spans[0][0] == header.end and spans[-1][1] == len(text)
    assert all(stop == start for (_, stop), (start, _) in zip(spans, spans[1:]))
    assert all(text[stop - 1:stop] == b"\n" for _, stop in spans)


def _python_rows(block: bytes, n_columns: int) -> np.ndarray | None:
    """What the text means, by Python's float() cell by cell; None where it is not a table of finite numbers."""
    try:
        lines = block.decode().split("\n")[:-1]
        rows = [[float(cell) for cell in line.split(",")] for line in lines]
    except (UnicodeDecodeError, ValueError):
        return None
    if not rows or any(len(row) != n_columns for row in rows) or not np.isfinite(rows).all():
        return None
    return np.array(rows)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.text("0123456789-.,\n e", max_size=12), min_size=1, max_size=40))
def test_any_text_is_read_as_python_reads_it_or_refused(n_columns, cells):
    """Digits, signs, dots, separators and spaces in any order: every fast path gives Python's numbers, or the
    block is refused with a 422; none takes a malformed cell for a number."""
    block = ",".join(cells).encode() + b"\n"
    header = csv_rows.Header([f"c{i}" for i in range(n_columns)], 0, b"\n")
    expected = _python_rows(block, n_columns)
    try:
        rows = csv_rows.parse_block(block, 2, header)
    except InvalidInput:
        assert expected is None or block.count(b"\n\n") or block.startswith(b"\n")  # empty lines are refused
        return
    assert expected is not None, block
    np.testing.assert_array_equal(rows.astype(np.float64), expected)


cells = st.one_of(st.integers(0, 10**9).map(str), st.integers(-10**6, 10**6).map(str),
                  st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.{abs(hash(v)) % 7}f}"),
                  st.text("0123456789-. e", min_size=0, max_size=9))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.data())
def test_tables_of_numbers_and_near_numbers_are_read_as_python_reads_them(n_columns, n_rows, data):
    """Whole rows of integers (up to 10 digits), signed integers, decimals and cells that only look numeric."""
    table = [[data.draw(cells) for _ in range(n_columns)] for _ in range(n_rows)]
    block = "".join(",".join(row) + "\n" for row in table).encode()
    header = csv_rows.Header([f"c{i}" for i in range(n_columns)], 0, b"\n")
    expected = _python_rows(block, n_columns)
    try:
        rows = csv_rows.parse_block(block, 2, header)
    except InvalidInput:
        assert expected is None, block
        return
    assert expected is not None, block
    np.testing.assert_array_equal(rows.astype(np.float64), expected)


def test_uploads_parse_on_one_shared_pool_of_threads():
    """Each upload made its own pool of parsing threads: 16 CSV uploads at once ran 76 threads, and memory grew with
    the number of uploads. Eight parses at once here, interleaved, use PARSE_THREADS threads in all."""
    import threading

    names = set()

    def parse(block):
        names.add(threading.current_thread().name)
        return block

    parses = [csv_rows.in_threads(parse, ((k,) for k in range(20))) for _ in range(8)]
    results = [[] for _ in parses]
    for _ in range(20):
        for got, parse_ in zip(results, parses):
            got.append(next(parse_))
    assert all(got == list(range(20)) for got in results)
    assert len(names) <= csv_rows.PARSE_THREADS, names
    stopped = csv_rows.in_threads(parse, ((k,) for k in range(100)))
    assert next(stopped) == 0
    stopped.close()  # an error in the upload: the rest is cancelled, not parsed
