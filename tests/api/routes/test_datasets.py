"""Datasets: every upload format, every bad upload as a 4xx naming the problem, and their use by
training jobs, searches, /evaluate and /samples (embedded backend; Redis in test_redis_backend.py)."""

import gzip
import hashlib
import io
import json

import numpy as np
import pytest

from tests.api.conftest import (IRIS as IRIS_MODEL, X4, Y3, create, idle_client, npz_with_zeros, peak_bytes, running_app,
                                wait_job)

HEADER = b"sepal_length,sepal_width,petal_length,petal_width,species\n"
IRIS_CSV = HEADER + b"".join(b",".join(str(v).encode() for v in x + [y]) + b"\n" for x, y in zip(X4, Y3))


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


IRIS_NPZ = npz_bytes(inputs=np.array(X4, np.float32), targets=np.array(Y3, np.int64))
NPY = b"\x93NUMPY" + npz_bytes(inputs=np.ones((2, 2)))[40:]  # the magic is what counts
def _flipped(data: bytes, marker: bytes) -> bytes:
    corrupt = bytearray(data)
    corrupt[data.find(marker) + 4] ^= 0x40  # one bit of the member's data
    return bytes(corrupt)


BAD_CRC = _flipped(IRIS_NPZ, np.array(X4, np.float32).tobytes())


def _encrypted(data: bytes) -> bytes:
    """The zip's encryption flag set on every member, in its local and central headers (the data unchanged)."""
    flagged = bytearray(data)
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = flagged.find(signature)
        while at >= 0:
            flagged[at + flags] |= 1
            at = flagged.find(signature, at + 4)
    return bytes(flagged)


ENCRYPTED = _encrypted(IRIS_NPZ)
TRUNCATED_MULTIPART = (b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\nContent-Type: text/csv\r\n'
                       b"\r\n" + IRIS_CSV)  # no closing --XYZ--: the last line may be cut short
LONG_LINE = "line 3 is longer than 2304 bytes, more than a row of the header's 5 columns can take"


def upload(client, content: bytes, media: str = "application/octet-stream", **params):
    return client.post("/datasets", content=content, headers={"content-type": media}, params=params)


def created(response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("data")) as client:
        create(client, model_id="iris")
        yield client


# -- formats ---------------------------------------------------------------------------------------
def test_npz_in_the_stored_form_is_kept_as_uploaded(app):
    body = created(upload(app, IRIS_NPZ, "application/x-npz", name="iris", dataset_id="iris-npz"))
    assert body["dataset_id"] == "iris-npz" and body["name"] == "iris" and body["format"] == "npz"
    assert (body["n_samples"], body["n_features"], body["dtype"]) == (6, 4, "float32")
    assert body["targets"]["classes"] == [0, 1, 2] and body["targets"]["counts"] == [2, 2, 2]
    assert body["bytes"] == len(IRIS_NPZ) and body["sha256"] == hashlib.sha256(IRIS_NPZ).hexdigest()
    assert app.get("/datasets/iris-npz").json() == body
    download = app.get("/datasets/iris-npz/download")
    assert download.status_code == 200 and download.content == IRIS_NPZ
    listed = app.get("/datasets", params={"limit": 500}).json()
    assert body in listed["data"] and listed["count"] >= 1 and listed["next_offset"] is None
    if listed["count"] > 1:  # paged as the model and job lists: next_offset says where the next page begins
        assert app.get("/datasets", params={"limit": 1}).json()["next_offset"] == 1


@pytest.mark.parametrize("inputs, targets", [
    (np.ones((3, 2), np.float32), np.array([0.5, 1.5, 2.5])),  # float64 targets beside float32 inputs: were cast
    (np.ones((3, 2), np.float64), np.array([[0.5], [1.5], [2.5]], np.float32)),
])
def test_npz_of_float32_and_float64_arrays_is_kept_byte_for_byte_whichever_mix(app, inputs, targets):
    data = npz_bytes(inputs=inputs, targets=targets)
    body = created(upload(app, data, "application/x-npz"))
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["dtype"] == inputs.dtype.name
    assert app.get(f"/datasets/{body['dataset_id']}/download").content == data


def test_a_json_file_that_begins_with_a_utf8_bom_is_recognised_by_its_content(app):
    """Sent with no Content-Type, it was read as CSV: "a CSV dataset needs a header row naming at least two columns"."""
    body = created(app.post("/datasets", content=b'\xef\xbb\xbf{"inputs": [[1, 2]], "targets": [0]}'))
    assert body["format"] == "json" and body["n_samples"] == 1


def test_whole_number_float_labels_are_counted_as_classes_whether_kept_or_converted(app):
    """Kept as uploaded (uncompressed), float labels 0/1/2 had `classes: null`; converted (compressed), int64 classes."""
    labels = np.array([0.0, 1.0, 2.0, 1.0])
    kept = created(upload(app, npz_bytes(inputs=np.ones((4, 2)), targets=labels), "application/x-npz"))
    converted = created(upload(app, npz_bytes(compressed=True, inputs=np.ones((4, 2)), targets=labels), "application/x-npz"))
    assert kept["targets"] == converted["targets"] and kept["targets"]["classes"] == [0, 1, 2]
    assert kept["targets"]["counts"] == [1, 2, 1]


def test_a_multipart_body_with_two_file_fields_is_refused_rather_than_half_read(app):
    files = [("file", ("a.csv", IRIS_CSV, "text/csv")), ("file", ("b.csv", IRIS_CSV, "text/csv"))]
    before = app.get("/datasets").json()["count"]
    response = app.post("/datasets", files=files)
    assert response.status_code == 422 and "has 2 fields named `file`; an upload is one file" in response.json()["detail"]
    assert app.get("/datasets").json()["count"] == before


def test_a_csv_header_of_pandas_default_column_names_is_a_header(app):
    """DataFrame(array).to_csv(index=False) names the columns 0, 1, ..., n-1: a header, though it is numbers."""
    body = created(upload(app, b"0,1,2\n1,2,0\n3,4,1\n", "text/csv"))
    assert (body["n_samples"], body["n_features"]) == (2, 2)


def test_a_download_is_revalidated_by_its_etag_and_answers_head(app):
    """The ETag was Starlette's (mtime and size of the file on this replica) and If-None-Match still sent the file;
    HEAD was a 405."""
    body = created(upload(app, IRIS_NPZ, "application/x-npz"))
    url = f"/datasets/{body['dataset_id']}/download"
    first = app.get(url)
    assert first.headers["etag"] == f'"{body["sha256"]}"'
    again = app.get(url, headers={"If-None-Match": f'W/"x", {first.headers["etag"]}'})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert app.get(url, headers={"If-None-Match": '"other"'}).content == IRIS_NPZ
    head = app.head(url)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(IRIS_NPZ)
    assert app.head(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert app.head("/datasets/nope/download").status_code == 404


def test_npz_multipart_with_x_y_compressed_and_integer_inputs_is_converted(app):
    x = np.arange(24, dtype=np.uint8).reshape(6, 4)
    data = npz_bytes(compressed=True, x=x, y=np.eye(3)[Y3])
    body = created(app.post("/datasets", files={"file": ("pixels.npz", data, "application/octet-stream")}))
    assert (body["n_samples"], body["n_features"], body["dtype"]) == (6, 4, "float32")
    assert body["targets"]["shape"] == [6, 3] and body["targets"]["counts"] == [2, 2, 2]
    stored = np.load(io.BytesIO(app.get(f"/datasets/{body['dataset_id']}/download").content))
    assert sorted(stored.files) == ["inputs", "targets"] and stored["inputs"].dtype == np.float32
    np.testing.assert_array_equal(stored["inputs"], x)
    assert body["sha256"] == hashlib.sha256(app.get(f"/datasets/{body['dataset_id']}/download").content).hexdigest()


def test_csv_default_target_is_the_last_column(app):
    body = created(upload(app, IRIS_CSV, "text/csv"))
    assert (body["n_samples"], body["n_features"], body["format"]) == (6, 4, "csv")
    assert body["targets"]["classes"] == [0, 1, 2]
    download = app.get(f"/datasets/{body['dataset_id']}/download").content
    np.testing.assert_allclose(np.load(io.BytesIO(download))["inputs"], np.array(X4, np.float32))
    assert body["sha256"] == hashlib.sha256(download).hexdigest()  # hashed while written, of the stored bytes


def test_csv_named_targets_quotes_crlf_and_exponents(app):
    text = b'a,b,"c",d\r\n1,2e0,"3",4\r\n-5.5,6,7,8\r\n\r\n'
    body = created(upload(app, text, "text/csv", target=["a", "c"]))
    assert (body["n_samples"], body["n_features"]) == (2, 2)
    assert body["targets"]["shape"] == [2, 2] and body["targets"]["min"] == -5.5
    stored = np.load(io.BytesIO(app.get(f"/datasets/{body['dataset_id']}/download").content))
    np.testing.assert_array_equal(stored["inputs"], [[2, 4], [6, 8]])
    np.testing.assert_array_equal(stored["targets"], [[1, 3], [-5.5, 7]])


def test_csv_multipart_by_file_name(app):
    body = created(app.post("/datasets", files={"file": ("iris.csv", IRIS_CSV)}, params={"target": "species"}))
    assert body["format"] == "csv" and body["n_features"] == 4
    assert body["n_samples"] == 6  # rows counted from the file part's line ends only, not the multipart framing's


def test_rows_are_counted_as_the_body_streams_in_whatever_its_chunks(app):
    """The upload counts its \\n bytes on the way to disk; the count decides the rows: a body in chunks that
    split \\r\\n pairs, a multipart part and an unnamed format all give the file's own rows."""
    crlf = IRIS_CSV.replace(b"\n", b"\r\n") + b"\r\n\r\n"
    chunked = (crlf[i:i + 7] for i in range(0, len(crlf), 7))
    assert created(upload(app, chunked, "text/csv"))["n_samples"] == 6
    assert created(upload(app, IRIS_CSV, "application/octet-stream"))["n_samples"] == 6  # sniffed
    parts = {"file": ("iris", IRIS_CSV + b"\n\n", "text/csv")}
    assert created(app.post("/datasets", files=parts))["n_samples"] == 6


@pytest.mark.parametrize("text", [b"PK_id,b,t\n1,2,0\n3,4,1\n", b"[mm],b,t\n1,2,0\n3,4,1\n"])
def test_csv_sniffed_from_its_first_bytes_whatever_its_first_column(app, text):
    """Without a Content-Type, a header starting "PK" was read as a zip ("not a readable NPZ (zip) file") and one
    starting "[" as JSON."""
    body = created(upload(app, text))
    assert (body["format"], body["n_samples"], body["n_features"]) == ("csv", 2, 2)


def test_json_for_small_data(app):
    body = created(app.post("/datasets", json={"inputs": X4, "targets": Y3}, params={"dtype": "float64"}))
    assert (body["format"], body["dtype"], body["n_samples"]) == ("json", "float64", 6)
    assert body["sha256"] == hashlib.sha256(app.get(f"/datasets/{body['dataset_id']}/download").content).hexdigest()


def test_regression_targets_summarised_by_min_max_mean(app):
    body = created(upload(app, npz_bytes(inputs=np.ones((4, 2)), targets=np.array([0.5, 1.5, 2.0, 4.0])), format="npz"))
    summary = body["targets"]
    assert summary["classes"] is None and (summary["min"], summary["max"], summary["mean"]) == (0.5, 4.0, 2.0)
    assert body["dtype"] == "float64"  # float64 NPZ inputs stay float64


# -- bad uploads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, media, params, status, words", [
    (IRIS_NPZ[:len(IRIS_NPZ) // 2], "application/x-npz", {}, 422, "truncated"),
    (npz_bytes(features=np.ones((2, 2))), "application/x-npz", {}, 422, "no array 'inputs'"),
    # a CSV sent as NPZ was told "the file may be truncated. Save it with numpy.savez(...)"
    (IRIS_CSV, "application/x-npz", {}, 422, "not an NPZ (zip) file: it begins b'sepal_length,sep', where a zip "
     "begins b'PK'. Send a CSV or JSON file with ?format=csv (or json)"),

    (npz_bytes(inputs=np.ones(3), targets=np.ones(3)), "application/x-npz", {}, 422, "2-D"),
    (npz_bytes(inputs=np.ones((3, 2)), targets=np.ones(2)), "application/x-npz", {}, 422, "3 rows but targets has 2"),
    (npz_bytes(inputs=np.array([[1.0, np.nan]]), targets=np.ones(1)), "application/x-npz", {}, 422, "inputs[0, 1] is nan"),
    (npz_bytes(inputs=np.array([["a", "b"]]), targets=np.ones(1)), "application/x-npz", {}, 422, "numbers"),
    (HEADER + b"1,2,3,4,0\n1,2,3\n", "text/csv", {}, 422, "line 3 has 3 values but the header names 5"),
    (HEADER + b"1,2,3,4,0\n1,x,3,4,0\n", "text/csv", {}, 422, "line 3, column 'sepal_width': 'x' is not a number"),
    (HEADER + b"1,2,3,4,0\n1,nan,3,4,0\n", "text/csv", {}, 422, "line 3, column 'sepal_width' is nan"),
    (HEADER + b"1,2,3,4,0\n1,-Inf,3,4,0\n", "text/csv", {}, 422, "line 3, column 'sepal_width' is -inf: datasets"),
    # 400 digits were reported as "is inf", a value the file does not hold
    (HEADER + b"1,2,3,4,0\n1,2," + b"9" * 400 + b",4,0\n", "text/csv", {}, 422, "line 3, column 'petal_length' is "
     "999999999999999999999999..., beyond float64"),
    (HEADER + b"1,2,3,4,0\n1,\xff,3,4,0\n", "text/csv", {}, 422, "line 3 is not UTF-8"),
    (b"\xff\xfe,a\n1,2\n", "text/csv", {}, 422, "not UTF-8"),
    (HEADER + b"1,2,3,4,0\n\n1,2,3,4,0\n", "text/csv", {}, 422, "line 3 is empty"),
    (IRIS_CSV, "text/csv", {"target": "label"}, 422, "no column 'label'"),
    (b"a,b,c,c\n1,2,3,4\n", "text/csv", {"target": "c"}, 422, "?target=c is ambiguous"),  # which c was it?
    (b"a,b,c\n1,2,3\n", "text/csv", {"target": ["c", "c"]}, 422, "?target=c is ambiguous"),
    (HEADER, "text/csv", {}, 422, "no data lines"),
    (HEADER[:-1], "text/csv", {}, 422, "has a header but no data lines"),  # was "needs ... at least two columns"
    (IRIS_NPZ, "application/x-npz", {"target": "species"}, 422, "?target= names CSV columns"),
    (b"", "text/csv", {}, 422, "holds no file"),
    (b'{"inputs": [[1, 2], [3]], "targets": [0, 1]}', "application/json", {}, 422,
     "inputs[1] has 1 values where inputs[0] has 2; every row needs the same number"),
    # JSON nested 5,000 deep overflowed the parser's stack (a 500); 100 deep was "values that are not numbers"
    (b'{"inputs": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b', "targets": [0]}', "application/json", {}, 422,
     "the JSON nests arrays and objects 5001 deep; a JSON dataset nests 3 deep"),
    (b'{"inputs": ' + b"[" * 100 + b"1" + b"]" * 100 + b', "targets": [0]}', "application/json", {}, 422, "101 deep"),
    # null was "inputs[0, 1] is nan"; a string named no position and blamed the rows' lengths
    (b'{"inputs": [[1, null]], "targets": [0]}', "application/json", {}, 422, "inputs[0, 1] is null: datasets must "
     "hold numbers; drop or fill the missing values"),
    (b'{"inputs": [[1, "x"]], "targets": [0]}', "application/json", {}, 422, 'inputs[0, 1] is "x", not a number'),
    (b'{"inputs": [[1, NaN]], "targets": [0]}', "application/json", {}, 422, "the JSON holds NaN, which is not JSON"),
    (b'{"inputs": [[1, 2]], "targets": [1' + b"0" * 400 + b"]}", "application/json", {}, 422,
     "targets[0] is a whole number of 401 digits, beyond float64"),  # OverflowError: a 500
    # files of another kind were "line 1 (the header) is not UTF-8 text; save the file as CSV UTF-8"
    (IRIS_NPZ, "text/csv", {}, 422, "the file is an NPZ (zip) file, not CSV: send it with ?format=npz"),
    (IRIS_NPZ, "application/json", {}, 422, "the file is an NPZ (zip) file, not JSON"),
    (gzip.compress(IRIS_CSV), "application/octet-stream", {}, 422, "the file is gzip-compressed; the service reads "
     "NPZ, CSV and JSON files as they are: gunzip it first"),
    (NPY, "application/octet-stream", {}, 422, "the file is one .npy array; a dataset holds inputs and targets"),
    (NPY, "application/x-npz", {}, 422, "the file is one .npy array"),
    # kept as uploaded although a member failed its CRC: served values numpy.load refuses to read
    (BAD_CRC, "application/x-npz", {}, 422, "array 'inputs' of the NPZ file fails its CRC-32 check"),
    # bytes before the zip, or members flagged encrypted: kept although numpy.load refuses the file
    (b"junk" + IRIS_NPZ, "application/x-npz", {}, 422, "the NPZ file begins b'junkPK\\x03\\x04', where an NPZ begins "
     "b'PK\\x03\\x04': bytes come before its zip"),
    (ENCRYPTED, "application/x-npz", {}, 422, "array 'inputs' of the NPZ file is encrypted"),
    # uint64 labels beyond int64 were stored wrapped to negative numbers
    (npz_bytes(inputs=np.ones((3, 2)), targets=np.array([0, 1, 2**63 + 5], np.uint64)), "application/x-npz", {}, 422,
     "targets[2] is 9223372036854775813, beyond int64"),
    # NumPy read "2" as 2.0 and true as 1.0; a repeated key kept its last value
    (b'{"inputs": [[1, "2"]], "targets": [0]}', "application/json", {}, 422, 'inputs[0, 1] is "2", not a number'),
    (b'{"inputs": [[1, true]], "targets": [0]}', "application/json", {}, 422, "inputs[0, 1] is true, not a number; "
     "send 1 or 0"),
    (b'{"inputs": [[1, 2]], "targets": [0], "targets": [1]}', "application/json", {}, 422,
     "the JSON names 'targets' more than once"),
    (b'{"inputs": [[1, 2]], "targets": [1' + b"0" * 5000 + b"]}", "application/json", {}, 422,
     "a whole number of more than 4300 digits"),  # was Python's advice to call sys.set_int_max_str_digits()
    (b'{"inputs": [], "targets": []}', "application/json", {}, 422, "inputs is empty: a dataset needs at least one"),
    (b'{"inputs": [[1, 2]], "targets": [0]}', "text/csv", {}, 422, "the file is JSON, not CSV: send it with "
     "?format=json"),  # was "the CSV file has a header but no data lines"
    # a CSV without a header lost its first sample as the column names
    (b"1,2,0\n3,4,1\n", "text/csv", {}, 422, "line 1 is '1,2,0': numbers, not column names"),
    (b'{"inputs": [[1, 2]]}', "application/json", {}, 422, "exactly"),
    (b"\xff{", "application/json", {}, 422, "JSON"),
    # finite in JSON and float64, beyond float32: it was stored as inf (found by the fuzz test)
    (b'{"inputs": [[1, 3.4028235677973366e+38]], "targets": [0]}', "application/json", {}, 422,
     "inputs[0, 1] is 3.4028235677973366e+38, too large for float32"),
    (b'{"inputs": [[1, 2]], "targets": [[1e39]]}', "application/json", {}, 422, "targets[0, 0] is 1e+39, too large"),
    (npz_bytes(inputs=np.array([[1.0], [-1e300]]), targets=np.ones(2)), "application/x-npz", {"dtype": "float32"}, 422,
     "inputs[1, 0] is -1e+300, too large for float32 (at most 3.40282e+38 in magnitude)"),
    # a target beyond float32 was "targets too large for float32": no line, no column, no way out
    (HEADER + b"1,2,3,4,0\n1,2,3,4,0.5\n1,2,3,4,-1e39\n", "text/csv", {}, 422, "line 4, column 'species' is -1e+39, too "
     "large for float32 (at most 3.40282e+38 in magnitude); scale the values down, or keep them as float64 "
     "(?dtype=float64 on POST /datasets"),
    # a \r that ends no line: csv.reader raised "new-line character seen in unquoted field", a 500
    (b"a,b\rx,t\n1,2,3,0\n", "text/csv", {}, 422, "line 1 (the header), column 2 holds a carriage return (\\r) that "
     "ends no line; remove it, or save the file as CSV UTF-8 (lines ending in \\n or \\r\\n)"),
    (b"a,b,t\n1,2\r,0\n3,4,1\n", "text/csv", {}, 422, "line 2, column 'b' holds a carriage return"),
    (b"a,b,t\r\n1,2,0\r\r\n3,4,1\r\n", "text/csv", {}, 422, "line 2, column 't' holds a carriage return"),
    (HEADER + b"1,2,3,4,0\n" + b"1," * 50_000 + b"0\n" + b"1,2,3,4,0\n", "text/csv", {}, 422, LONG_LINE),
    # the parser's words alone: "Expected boundary character 45, got 104 at index 2"
    (b"hello", "multipart/form-data; boundary=XYZ", {}, 422, "cannot be parsed (Expected boundary character '-', got "
     "'h' at index 2): it begins with the line --XYZ (the boundary of its Content-Type)"),
    (TRUNCATED_MULTIPART, "multipart/mixed; boundary=XYZ", {}, 422,
     "a multipart/mixed body is not read; send the file as the raw body"),  # was read as CSV
    (TRUNCATED_MULTIPART, "multipart/form-data; boundary=XYZ", {}, 422, "the multipart/form-data body is truncated: it "
     "has no closing boundary (--XYZ--)"),
])
def test_bad_upload(app, content, media, params, status, words):
    before = app.get("/datasets").json()["count"]
    response = upload(app, content, media, **params)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert app.get("/datasets").json()["count"] == before


def test_csv_with_classic_mac_line_ends(app):
    """Lines ended by a lone \r (Excel's "CSV (Macintosh)"): a 500 before."""
    body = created(upload(app, IRIS_CSV.replace(b"\n", b"\r"), "text/csv"))
    stored = np.load(io.BytesIO(app.get(f"/datasets/{body['dataset_id']}/download").content))
    np.testing.assert_array_equal(stored["inputs"], np.array(X4, np.float32))
    np.testing.assert_array_equal(stored["targets"], Y3)
    response = upload(app, HEADER.replace(b"\n", b"\r") + b"1,2,3,4,0\r1,2\r3,4,0\r", "text/csv")
    assert response.status_code == 422 and "line 3 has 2 values" in response.json()["detail"]


def test_a_very_long_csv_line_is_refused_while_it_streams_in(app):
    """One 10 MB line: the right 422, but the line was held whole several times over (a 200 MB one took 3.5 GB)."""
    before = app.get("/datasets").json()["count"]
    response, peak = peak_bytes(upload, app, b"a,b\n" + b"1," * 5_000_000 + b"0\n", "text/csv")
    assert response.status_code == 422
    assert response.json()["detail"] == ("line 2 is longer than 1536 bytes, more than a row of the header's 2 columns "
                                         "can take; put one sample on each line, each line ending in \\n or \\r\\n")
    assert peak < 24_000_000, peak  # a 2 MB block or so, twice
    assert app.get("/datasets").json()["count"] == before


def test_npz_members_other_than_inputs_and_targets_are_never_read(app, tmp_path):
    """junk.npy, 200 MB of zeros in a 1 MB file, was decompressed into memory, on /datasets and on /samples."""
    npz_with_zeros(tmp_path / "bomb.npz", {"inputs": np.ones((1000, 4), np.float32),
                                           "targets": np.zeros(1000, np.int64), "junk": ((50_000_000,), "<f4")})
    bomb = (tmp_path / "bomb.npz").read_bytes()
    response, peak = peak_bytes(upload, app, bomb, "application/x-npz")
    assert created(response)["n_samples"] == 1000 and peak < 24_000_000, peak
    create(app, model_id="bombed")
    response, peak = peak_bytes(app.post, "/models/bombed/samples", content=bomb, headers={"content-type": "application/x-npz"})
    assert response.status_code == 200 and response.json()["buffer_size"] == 1000 and peak < 24_000_000, peak


def test_multipart_without_a_file_field(app):
    response = app.post("/datasets", files={"data": ("a.csv", IRIS_CSV)})
    assert response.status_code == 422 and "no field named `file`" in response.json()["detail"]


def test_taken_id_and_unknown_id(app):
    created(upload(app, IRIS_NPZ, dataset_id="taken"))
    response = upload(app, IRIS_NPZ, dataset_id="taken")
    assert response.status_code == 409 and "already exists" in response.json()["detail"]
    for path in ("/datasets/nope", "/datasets/nope/download"):
        response = app.get(path)
        assert response.status_code == 404 and "GET /datasets" in response.json()["detail"]
    # ids no upload can have (the fuzz test found a 500 for one longer than a file name may be)
    for dataset_id in ("x" * 300, "x" * 65, "-dash-first", "a b"):
        for method, path in (("GET", f"/datasets/{dataset_id}"), ("GET", f"/datasets/{dataset_id}/download"),
                             ("DELETE", f"/datasets/{dataset_id}")):
            response = app.request(method, path)
            assert response.status_code == 404 and "GET /datasets" in response.json()["detail"], (method, path)
    # a name where the id belongs (the README's uploads give ?name=): the 404 says whose name it is
    named = created(upload(app, IRIS_NPZ, name="flowers-data"))["dataset_id"]
    for response in (app.get("/datasets/flowers-data"), app.post("/models/iris/evaluate", json={"dataset": "flowers-data"})):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == (f"dataset 'flowers-data' does not exist; 'flowers-data' is the name of dataset "
                                             f"{named!r}: give its dataset_id")


def test_size_and_row_limits(tmp_path):
    with running_app(tmp_path, workers=0, max_dataset_bytes=2048, max_dataset_rows=5, max_request_bytes=1024) as small:
        big = npz_bytes(inputs=np.ones((100, 10)), targets=np.ones(100))
        response = upload(small, big, "application/x-npz")
        assert response.status_code == 413 and "NN_MAX_DATASET_BYTES" in response.json()["detail"]
        chunked = small.post("/datasets", content=iter([big[:1000], big[1000:]]), headers={"content-type": "application/x-npz"})
        assert chunked.status_code == 413 and "NN_MAX_DATASET_BYTES" in chunked.json()["detail"]
        response = upload(small, IRIS_CSV, "text/csv")
        assert response.status_code == 413 and "NN_MAX_DATASET_ROWS" in response.json()["detail"]
        response = upload(small, IRIS_NPZ, "application/x-npz")
        assert response.status_code == 413 and "NN_MAX_DATASET_ROWS" in response.json()["detail"]
        response = small.post("/datasets", json={"inputs": [[0.123456] * 10] * 30, "targets": [0] * 30})
        assert response.status_code == 413 and "NN_MAX_REQUEST_BYTES" in response.json()["detail"]
        # ?format= says what the body is: a CSV sent as application/json was held to the JSON limit, a 413 saying
        # "JSON is for small data; upload NPZ or CSV"
        csv_text = b"a,b,t\n" + b"0.%s,1,0\n" % (b"1" * 300) * 4
        assert 1024 < len(csv_text) < 2048
        response = small.post("/datasets?format=csv", content=csv_text, headers={"content-type": "application/json"})
        assert response.status_code == 201, response.text
        small.delete(f"/datasets/{response.json()['dataset_id']}")
        # 500 bytes that hold 64 kB: the limit is on the arrays, not on what they weigh compressed
        zeros = npz_bytes(compressed=True, inputs=np.zeros((4, 2000)), targets=np.zeros(4))
        create(small, model_id="wide", layer_sizes=[2000, 2], activations=["softmax"])
        for path in ("/datasets", "/models/wide/samples"):
            response = small.post(path, content=zeros, headers={"content-type": "application/x-npz"})
            assert response.status_code == 413, response.text
            assert response.json()["detail"] == ("array 'inputs' of the NPZ file is 64000 bytes uncompressed (shape (4, 2000), "
                                                 "float64); a dataset's arrays hold at most 2048 bytes (NN_MAX_DATASET_BYTES): "
                                                 "split the data into several datasets")
        assert small.get("/datasets").json()["count"] == 0


# -- use ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris_id(app):
    return created(upload(app, IRIS_CSV, "text/csv"))["dataset_id"]


@pytest.fixture(scope="module")
def wide_id(app):
    return created(upload(app, npz_bytes(inputs=np.ones((6, 5), np.float32), targets=np.eye(4)[[0, 1, 2, 3, 0, 1]])))["dataset_id"]


def test_evaluate_on_a_dataset_equals_inline(app, iris_id):
    by_id = app.post("/models/iris/evaluate", json={"dataset": iris_id})
    inline = app.post("/models/iris/evaluate", json={"inputs": X4, "targets": Y3})
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["n_samples"] == 6
    assert by_id.json()["metrics"]["loss"] == pytest.approx(inline.json()["metrics"]["loss"], rel=1e-5)


@pytest.mark.parametrize("body, words", [
    ({"dataset": "WIDE"}, "has 5 features per sample but model 'iris' takes 4 inputs"),
    ({"dataset": "IRIS", "inputs": X4, "targets": Y3}, "not both"),
    ({"dataset": "missing"}, "does not exist"),
    ({"inputs": X4}, "give `inputs` and `targets`"),
])
def test_evaluate_bad_dataset(app, iris_id, wide_id, body, words):
    body = {k: {"WIDE": wide_id, "IRIS": iris_id}.get(v, v) if k == "dataset" else v for k, v in body.items()}
    response = app.post("/models/iris/evaluate", json=body)
    assert response.status_code in (404, 422), response.text
    assert words in response.json()["detail"]


def test_targets_shape_checked_against_the_model(app):
    create(app, model_id="three-out", layer_sizes=[5, 4, 3], activations=["relu", "sigmoid"])
    wide = created(upload(app, npz_bytes(inputs=np.ones((2, 5)), targets=np.ones((2, 4)))))["dataset_id"]
    response = app.post("/models/three-out/evaluate", json={"dataset": wide})
    assert response.status_code == 422
    assert "has 4 targets per sample but model 'three-out' has 3 outputs" in response.json()["detail"]
    labels = created(upload(app, npz_bytes(inputs=np.ones((2, 4)), targets=np.array([0, 7]))))["dataset_id"]
    response = app.post("/models/iris/samples", json={"dataset": labels})
    assert response.status_code == 422 and response.json()["detail"].endswith("targets[1] is 7")


def test_a_file_sent_to_samples_without_a_content_type_is_told_to_say_its_type(app):
    """It was "the body is not valid JSON: str is not valid UTF-8", which says nothing of the file's type."""
    response = app.post("/models/iris/samples", content=IRIS_NPZ)
    assert response.status_code == 422 and "Content-type" not in response.request.headers
    assert response.json()["detail"].endswith("With no Content-Type the body is read as JSON samples: send a file "
                                              "with its type (text/csv, application/x-npz) or ?format=npz|csv|json")


def test_samples_from_a_dataset_and_from_file_bodies(app, iris_id):
    create(app, model_id="buffered")
    assert app.post("/models/buffered/samples", json={"dataset": iris_id}).json()["buffer_size"] == 6
    response = app.post("/models/buffered/samples", content=IRIS_CSV, headers={"content-type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.json()["buffer_size"] == 12
    response = app.post("/models/buffered/samples", files={"file": ("iris.npz", IRIS_NPZ)})
    assert response.json()["buffer_size"] == 18
    response = app.post("/models/buffered/samples", content=HEADER + b"1,2,3\n", headers={"content-type": "text/csv"})
    assert response.status_code == 422 and "line 2 has 3 values" in response.json()["detail"]
    response = app.post("/models/buffered/samples", content=b"a,b\n1,0\n", headers={"content-type": "text/csv"})
    assert response.status_code == 422 and "1 features per sample but model 'buffered' takes 4" in response.json()["detail"]
    response = app.post("/models/buffered/samples?target=species", json={"inputs": X4[:1], "targets": Y3[:1]})
    assert response.status_code == 422 and "a JSON body gives its `targets`" in response.json()["detail"]  # was ignored
    assert app.get("/models/buffered/samples").json()["buffer_size"] == 18
    response = app.post("/models/nope/samples", content=IRIS_CSV, headers={"content-type": "text/csv"})
    assert response.status_code == 404
    response = app.post("/models/buffered/samples", content=IRIS_CSV.replace(b"\n", b"\r"), headers={"content-type": "text/csv"})
    assert response.status_code == 200 and response.json()["buffer_size"] == 24
    for content, media, words in ((b"a,b,c,d,t\n1,2\r,0,0,1\n", "text/csv", "line 2, column 'b' holds a carriage return"),
                                  (HEADER + b"1," * 5_000_000 + b"0\n", "text/csv", "line 2 is longer than 2304 bytes"),
                                  (TRUNCATED_MULTIPART, "multipart/form-data; boundary=XYZ", "body is truncated")):
        response = app.post("/models/buffered/samples", content=content, headers={"content-type": media})
        assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert app.get("/models/buffered/samples").json()["buffer_size"] == 24


def test_training_job_from_a_dataset_with_a_validation_dataset(app, iris_id):
    create(app, model_id="trained")
    app.post("/models/trained/samples", json={"inputs": X4[:2], "targets": Y3[:2]})
    job = app.post("/models/trained/training-jobs", json={"dataset": iris_id, "validation_dataset": iris_id,
                                                         "epochs": 3, "batch_size": 2, "seed": 0})
    assert job.status_code == 202, job.text
    assert job.json()["params"]["dataset"] == iris_id
    done = wait_job(app, job.json()["job_id"])
    assert done["status"] == "succeeded", done
    assert done["n_samples"] == 6 and "val_loss" in done["history"][-1]
    assert done["metrics"]["on"] == "validation" and done["metrics"]["samples"] == 6
    assert app.get("/models/trained/samples").json()["buffer_size"] == 2  # the buffer is left as it was


@pytest.mark.parametrize("body, words", [
    ({"dataset": "WIDE"}, "5 features per sample but model 'iris' takes 4"),
    ({"dataset": "IRIS", "min_samples": 5}, "`min_samples` applies to the buffer; a job with `dataset` trains on the "
     "dataset, so leave it out"),
    ({"dataset": "IRIS", "min_samples": 5, "consume_buffer": False}, "`consume_buffer` and `min_samples` apply to the buffer"),
    ({"dataset": "IRIS", "inputs": X4, "targets": Y3}, "not both"),
    ({"validation_dataset": "IRIS", "validation_split": 0.2}, "not both"),
    ({"validation_dataset": "missing"}, "does not exist"),
])
def test_bad_dataset_jobs(app, iris_id, wide_id, body, words):
    body = {k: {"WIDE": wide_id, "IRIS": iris_id}.get(v, v) if "dataset" in k else v for k, v in body.items()}
    response = app.post("/models/iris/training-jobs", json=body)
    assert response.status_code in (404, 422), response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize("arrays, words", [
    ({"inputs": np.ones((2, 4), np.float32), "targets": np.array([0.5, 1.0])},
     "cross_entropy integer labels must be whole numbers in [0, 2]; targets[0] is 0.5"),
    # a label beyond the classes was "holds class labels from 0 to 7 but model 'iris' has 3 classes": no row
    ({"inputs": np.ones((3, 4), np.float32), "targets": np.array([0, 7, 1])},
     "cross_entropy integer labels must be whole numbers in [0, 2]; targets[1] is 7"),
    ({"inputs": np.array([[1e39, 0, 0, 0], [0, 0, 0, 0]]), "targets": np.array([0, 1])},
     "holds inputs too large for float32; scale them"),
])
def test_a_job_is_refused_at_submit_where_evaluate_refuses_the_dataset(app, iris_id, arrays, words):
    """Width and target shape fit, the values do not: every use answers /evaluate's 422, none stores a job that fails
    when it runs (a search's every trial failed; a training job failed)."""
    dataset = created(upload(app, npz_bytes(**arrays), "application/x-npz"))["dataset_id"]
    evaluated = app.post("/models/iris/evaluate", json={"dataset": dataset})
    assert evaluated.status_code == 422 and words in evaluated.json()["detail"], evaluated.text
    jobs_before, buffer_before = app.get("/jobs").json()["count"], app.get("/models/iris/samples").json()["buffer_size"]
    for path, body, what in (("samples", {"dataset": dataset}, "dataset"),
                             ("training-jobs", {"dataset": dataset}, "dataset"),
                             ("training-jobs", {"dataset": iris_id, "validation_dataset": dataset}, "validation_dataset"),
                             ("training-jobs", {"validation_dataset": dataset}, "validation_dataset"),
                             ("search-jobs", {"dataset": dataset, "space": {"learning_rate": [0.01]}}, "dataset")):
        response = app.post(f"/models/iris/{path}", json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["detail"] == evaluated.json()["detail"].replace("dataset", what, 1), (path, body)
    assert app.get("/jobs").json()["count"] == jobs_before
    assert app.get("/models/iris/samples").json()["buffer_size"] == buffer_before


def test_targets_beyond_the_models_dtype_are_a_422_everywhere(app):
    create(app, model_id="regressor", layer_sizes=[4, 1], activations=["linear"])
    dataset = created(upload(app, npz_bytes(inputs=np.ones((2, 4)), targets=np.array([[1e39], [0.0]]))))["dataset_id"]
    for path, body in (("evaluate", {"dataset": dataset}), ("samples", {"dataset": dataset}),
                       ("training-jobs", {"dataset": dataset}), ("training-jobs", {"validation_dataset": dataset})):
        response = app.post(f"/models/regressor/{path}", json=body)
        assert response.status_code == 422 and "holds targets too large for float32" in response.json()["detail"], path


def test_the_submit_check_reads_the_file_a_block_at_a_time_and_once(app, monkeypatch):
    """A bad label in the last block is found, named by its row in the whole dataset (a block's own index would say
    targets[1]), and the file is not read whole to say so; a job whose dataset is also its validation_dataset reads
    the file once."""
    import api.dataset_service
    import api.datasets

    monkeypatch.setattr(api.datasets, "CHUNK_BYTES", 64)  # 2 rows of 4 float64 inputs per block
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1.5])
    bad = created(upload(app, npz_bytes(inputs=np.ones((12, 4)), targets=labels), dtype="float64"))["dataset_id"]
    with monkeypatch.context() as patched:  # the whole targets, one-hot, would be n x classes in memory
        patched.setattr(api.datasets, "_prepared", lambda *a: pytest.fail("the submit prepared the whole dataset"))
        response = app.post("/models/iris/training-jobs", json={"dataset": bad})
    assert response.status_code == 422
    assert response.json()["detail"].endswith("must be whole numbers in [0, 2]; targets[11] is 1.5")
    reads, check = [], api.datasets.check_values
    monkeypatch.setattr(api.dataset_service, "check_values", lambda *a: reads.append(a[3]) or check(*a))
    good = created(upload(app, npz_bytes(inputs=np.ones((12, 4)), targets=labels.round() % 3), dtype="float64"))
    response = app.post("/models/iris/training-jobs", json={"dataset": good["dataset_id"], "epochs": 1,
                                                           "validation_dataset": good["dataset_id"]})
    assert response.status_code == 202, response.text
    assert reads == [f"dataset {good['dataset_id']!r}"]
    wait_job(app, response.json()["job_id"])


def test_search_on_a_dataset(app, iris_id):
    create(app, model_id="searched")
    response = app.post("/models/searched/search-jobs", json={
        "dataset": iris_id, "space": {"learning_rate": [0.01, 0.05]}, "folds": 2, "epochs": 2, "batch_size": 2})
    assert response.status_code == 202, response.text
    done = wait_job(app, response.json()["job_id"])
    assert done["status"] == "succeeded", done
    assert done["search"]["trials_done"] == 2 and done["search"]["best"] is not None
    both = app.post("/models/searched/search-jobs", json={  # one inline row: the error named is the both, not the count
        "dataset": iris_id, "inputs": X4[:1], "targets": Y3[:1], "space": {"learning_rate": [0.01]}})
    assert both.status_code == 422 and "give either `dataset` or inline" in both.json()["detail"], both.text


def test_delete_answers_409_while_a_job_uses_the_dataset(tmp_path):
    with running_app(tmp_path, workers=0) as idle:
        create(idle, model_id="iris")
        dataset = created(upload(idle, IRIS_CSV, "text/csv"))["dataset_id"]
        job = idle.post("/models/iris/training-jobs", json={"dataset": dataset, "epochs": 1}).json()
        assert job["status"] == "queued"  # no buffer to wait for
        response = idle.delete(f"/datasets/{dataset}")
        assert response.status_code == 409 and job["job_id"] in response.json()["detail"]
        search = idle.post("/models/iris/search-jobs", json={"dataset": dataset, "space": {"epochs": [1]}}).json()
        idle.post(f"/jobs/{job['job_id']}/cancel")
        response = idle.delete(f"/datasets/{dataset}")
        assert response.status_code == 409 and search["job_id"] in response.json()["detail"]
        idle.post(f"/jobs/{search['job_id']}/cancel")
        assert idle.delete(f"/datasets/{dataset}").status_code == 204
        assert idle.get(f"/datasets/{dataset}").status_code == 404
        assert idle.delete(f"/datasets/{dataset}").status_code == 404
        response = idle.post("/models/iris/training-jobs", json={"dataset": dataset})
        assert response.status_code == 404


def test_openapi_documents_the_file_bodies(app):
    spec = app.get("/openapi.json").json()
    body = spec["paths"]["/datasets"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "text/csv", "application/x-npz", "application/json"} <= set(body)
    samples = spec["paths"]["/models/{model_id}/samples"]["post"]["requestBody"]["content"]
    assert "dataset" in samples["application/json"]["schema"]["properties"] and "text/csv" in samples
    assert json.dumps(spec)  # serialisable


def test_tenancy_a_dataset_is_its_uploaders(tmp_path):
    keys = "alice:alice-key:train,bob:bob-key:train,root:root-key:admin"
    alice, bob, root = ({"Authorization": f"Bearer {k}"} for k in ("alice-key", "bob-key", "root-key"))
    with running_app(tmp_path, workers=0, api_keys=keys, tenancy=True) as client:
        for headers, model in ((alice, "a"), (bob, "b")):
            assert client.post("/models", json={**IRIS_MODEL, "model_id": model}, headers=headers).status_code == 201
        mine = client.post("/datasets", content=IRIS_CSV, headers={**alice, "content-type": "text/csv"}).json()
        assert mine["owner"] == "alice"
        dataset = mine["dataset_id"]
        assert client.get("/datasets", headers=alice).json()["count"] == 1
        assert client.get("/datasets", headers=bob).json() == {"data": [], "count": 0, "next_offset": None}
        assert client.get("/datasets", headers=root).json()["count"] == 1
        for method, path, body in (("GET", f"/datasets/{dataset}", None), ("GET", f"/datasets/{dataset}/download", None),
                                   ("POST", "/models/b/evaluate", {"dataset": dataset}),
                                   ("POST", "/models/b/samples", {"dataset": dataset}),
                                   ("POST", "/models/b/training-jobs", {"dataset": dataset}),
                                   ("POST", "/models/b/training-jobs", {"validation_dataset": dataset}),
                                   ("POST", "/models/b/search-jobs", {"dataset": dataset, "space": {"epochs": [1]}})):
            response = client.request(method, path, json=body, headers=bob)
            assert response.status_code == 404 and f"dataset {dataset!r} does not exist" in response.json()["detail"], path
        assert client.post("/models/a/evaluate", json={"dataset": dataset}, headers=alice).status_code == 200
        assert client.get(f"/datasets/{dataset}", headers=root).status_code == 200
        assert client.delete(f"/datasets/{dataset}", headers=root).status_code == 204


@pytest.mark.parametrize("name, body", [
    ("rows.csv", b"a,b,y\n0.1234567890123,1e-50,0.3333333333333\n"),
    ("rows.json", b'{"inputs": [[0.1234567890123, 1e-50]], "targets": [0.3333333333333]}'),
])
def test_a_file_body_appended_to_a_float64_model_keeps_float64(idle_client, name, body):
    """CSV and JSON file bodies were parsed as float32 whatever the model: 1e-50 became 0.0."""
    model = f"reg64-{name.split('.')[1]}"
    create(idle_client, model_id=model, layer_sizes=[2, 1], activations=["linear"], dtype="float64")
    job_id = idle_client.post(f"/models/{model}/training-jobs", json={"min_samples": 1, "epochs": 1}).json()["job_id"]
    response = idle_client.post(f"/models/{model}/samples", files={"file": (name, body)})
    assert response.status_code == 200, response.text
    x, y = idle_client.app.state.service.store.job_samples(job_id)
    assert x.dtype == np.float64 and x.tolist() == [[0.1234567890123, 1e-50]]
    assert y.ravel().tolist() == [0.3333333333333]
    create(idle_client, model_id=model + "-32", layer_sizes=[2, 1], activations=["linear"])
    response = idle_client.post(f"/models/{model}-32/samples", files={"file": (name, body.replace(b"1e-50", b"1e50"))})
    assert response.status_code == 422 and response.json()["detail"].endswith("a float64 model's /samples)")
