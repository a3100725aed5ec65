"""The stored form as api/dataset_formats.py writes it: hashed while written, readable by NumPy and
memory-mapped by the service, and kept byte for byte when uploaded again."""

import hashlib
import io
import struct
import zipfile

import numpy as np
import pytest

from api import dataset_formats as formats, dataset_json
from api.errors import InvalidInput, PayloadTooLarge
from tests.api.conftest import npz_with_zeros, peak_bytes


def write_csv(path, rows) -> None:
    path.write_text("a,b,c,label\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))


def test_csv_conversion_returns_the_sha256_of_the_bytes_written(tmp_path):
    rows = [[i, -i, i * 0.5, i % 3] for i in range(1000)]
    write_csv(tmp_path / "d.csv", rows)
    digest = formats.convert_csv(tmp_path / "d.csv", tmp_path / "d.npz", 10_000)
    assert digest == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    inputs, targets = formats.load(tmp_path / "d.npz")
    assert isinstance(inputs, np.memmap) and isinstance(targets, np.memmap)  # uncompressed members, mapped
    np.testing.assert_array_equal(inputs, np.array(rows, np.float32)[:, :3])
    np.testing.assert_array_equal(targets, [i % 3 for i in range(1000)])
    with np.load(tmp_path / "d.npz") as stored:  # any NumPy reads it
        np.testing.assert_array_equal(stored["inputs"], inputs)
    with zipfile.ZipFile(tmp_path / "d.npz") as archive:
        assert archive.testzip() is None  # every member's CRC checks


def test_a_written_stored_form_is_kept_as_uploaded_when_sent_again(tmp_path):
    digest = formats.write_arrays(tmp_path / "a.npz", np.arange(12.0).reshape(4, 3), np.array([0, 1, 0, 1]))
    assert digest == hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    assert formats.convert_npz(tmp_path / "a.npz", tmp_path / "b.npz", 10) is None  # nothing rewritten
    assert not (tmp_path / "b.npz").exists()


def test_json_and_converted_npz_return_the_sha256_of_what_they_wrote(tmp_path):
    (tmp_path / "d.json").write_text('{"inputs": [[1, 2], [3, 4]], "targets": [0, 1]}')
    digest = dataset_json.convert_json(tmp_path / "d.json", tmp_path / "j.npz", 10)
    assert digest == hashlib.sha256((tmp_path / "j.npz").read_bytes()).hexdigest()
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((3, 2)), y=np.zeros(3))
    digest = formats.convert_npz(tmp_path / "c.npz", tmp_path / "n.npz", 10)
    assert digest == hashlib.sha256((tmp_path / "n.npz").read_bytes()).hexdigest()


# -- uploads that hold much more than they weigh --------------------------------------------------------
def test_an_npz_member_never_used_is_never_read(tmp_path):
    """A 1 MB upload whose member junk.npy holds 200 MB of zeros: it was decompressed into memory."""
    npz_with_zeros(tmp_path / "bomb.npz", {"inputs": np.ones((1000, 4), np.float32), "targets": np.zeros(1000, np.int64),
                                           "junk": ((50_000_000,), "<f4")})
    assert (tmp_path / "bomb.npz").stat().st_size < 2_000_000
    digest, peak = peak_bytes(formats.convert_npz, tmp_path / "bomb.npz", tmp_path / "out.npz", 10_000)
    assert digest == hashlib.sha256((tmp_path / "out.npz").read_bytes()).hexdigest()
    inputs, targets = formats.load(tmp_path / "out.npz")
    assert inputs.shape == (1000, 4) and targets.shape == (1000,)
    assert peak < 16_000_000, peak


def test_a_deflated_member_is_decompressed_in_chunks_to_the_disk(tmp_path):
    npz_with_zeros(tmp_path / "big.npz", {"inputs": ((500_000, 50), "<f4"), "targets": ((500_000,), "<i8")})
    digest, peak = peak_bytes(formats.convert_npz, tmp_path / "big.npz", tmp_path / "out.npz", 10**6)
    assert digest is not None and formats.describe(tmp_path / "out.npz")["n_samples"] == 500_000
    assert peak < 16_000_000, peak  # the inputs alone are 100 MB


@pytest.mark.parametrize("members, limits, words", [
    ({"inputs": ((25_000, 100), "<f8"), "targets": ((25_000,), "<i8")}, (10**6, 10**7),
     "array 'inputs' of the NPZ file is 20000000 bytes uncompressed (shape (25000, 100), float64); a dataset's "
     "arrays hold at most 10000000 bytes (NN_MAX_DATASET_BYTES): split the data into several datasets"),
    ({"x": ((2_000_000, 1), "<f4"), "y": ((2_000_000,), "<i8")}, (10**6, 2**31),
     "array 'x' of the NPZ file has 2000000 rows; a dataset holds at most 1000000 samples (NN_MAX_DATASET_ROWS)"),
])
def test_members_over_the_limits_are_refused_from_their_headers(tmp_path, members, limits, words):
    npz_with_zeros(tmp_path / "big.npz", members)
    with pytest.raises(PayloadTooLarge) as refused:
        formats.convert_npz(tmp_path / "big.npz", tmp_path / "out.npz", limits[0], max_bytes=limits[1])
    assert str(refused.value) == words
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz"]  # nothing was decompressed


@pytest.mark.parametrize("extra, words", [
    (bytes(1000), "array 'inputs' of the NPZ file cannot be read: it holds more than the 80 bytes its header promises"),
    (-8, "array 'inputs' of the NPZ file: its header promises 80 bytes of data that are not there"),
])
def test_a_deflated_member_longer_or_shorter_than_its_header_is_refused(tmp_path, extra, words):
    with zipfile.ZipFile(tmp_path / "bad.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("inputs", np.ones((10, 2), np.float32)), ("targets", np.zeros(10, np.int64))):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            data = buffer.getvalue()
            if name == "inputs":
                data = data + extra if isinstance(extra, bytes) else data[:extra]
            archive.writestr(f"{name}.npy", data)
    with pytest.raises(InvalidInput) as refused:
        formats.convert_npz(tmp_path / "bad.npz", tmp_path / "out.npz", 100)
    assert str(refused.value).startswith(words)


def test_an_npz_of_very_many_members_is_refused_before_they_are_listed(tmp_path):
    """zipfile holds an object per member: 200,000 empty ones (17 MB) took 111 MB."""
    with zipfile.ZipFile(tmp_path / "many.npz", "w") as archive:
        for name, array in (("inputs", np.ones((2, 2))), ("targets", np.zeros(2))):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())
        for i in range(20_000):
            archive.writestr(str(i), b"")
    with pytest.raises(InvalidInput) as refused:
        formats.convert_npz(tmp_path / "many.npz", tmp_path / "out.npz", 100)
    assert str(refused.value).startswith("the NPZ file has 20002 members; a dataset's has at most 1024")


def _npz_promising_more_than_it_holds(path) -> None:
    """A stored NPZ whose inputs.npy header and directory entry both promise 8 MB of data; the file holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1000, 1000)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inputs.npy", header.getvalue() + bytes(16))
        targets = io.BytesIO()
        np.save(targets, np.zeros(1000, np.int64))
        archive.writestr("targets.npy", targets.getvalue())
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the directory's entry of inputs.npy: its compressed and uncompressed sizes
    struct.pack_into("<II", data, entry + 20, len(header.getvalue()) + 8_000_000, len(header.getvalue()) + 8_000_000)
    path.write_bytes(data)


def test_a_stored_member_past_the_end_of_the_file_is_refused_not_mapped(tmp_path):
    """Its size was checked against the directory's file_size, not the file's: np.memmap raised "mmap length is
    greater than file size", a 500 on every use of the dataset (and on upload with its CRC forged to match)."""
    _npz_promising_more_than_it_holds(tmp_path / "short.npz")
    for read in (lambda: formats.load(tmp_path / "short.npz"),
                 lambda: formats.convert_npz(tmp_path / "short.npz", tmp_path / "out.npz", 10**6)):
        with pytest.raises(InvalidInput) as refused:
            read()
        assert str(refused.value).startswith("array 'inputs' of the NPZ file: its 8000128 bytes would end at byte "
                                             "8000168 of a "), refused.value
        assert str(refused.value).endswith("-byte file; the file is truncated or corrupt")
    # a file cut short after its headers were read: no ValueError escapes the memory map
    formats.write_arrays(tmp_path / "d.npz", np.ones((1000, 4)), np.arange(1000))
    with zipfile.ZipFile(tmp_path / "d.npz") as archive:
        member = formats._member(tmp_path / "d.npz", archive, "inputs.npy")
        with open(tmp_path / "d.npz", "r+b") as handle:
            handle.truncate(1000)
        with pytest.raises(InvalidInput, match="array 'inputs' of the NPZ file cannot be read: .*truncated or corrupt"):
            formats._member_array(tmp_path / "d.npz", archive, member, None)


def _npz_of_many_members(path, extra: int, said: int | None = None) -> None:
    """inputs, targets and ``extra`` empty members; with ``said``, the end record (zip64's too) counts that many."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in (("inputs", np.ones((2, 2))), ("targets", np.zeros(2))):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())
        for i in range(extra):
            archive.writestr(str(i), b"")
    if said is not None:
        data = bytearray(path.read_bytes())
        end = data.rindex(b"PK\x05\x06")
        struct.pack_into("<HH", data, end + 8, said, said)
        path.write_bytes(data)


def _refusal(*args):
    try:
        formats.convert_npz(*args)
    except InvalidInput as exc:
        return str(exc)


@pytest.mark.parametrize("extra, words", [
    (20_000, "the NPZ file has more than 1024 members (its end record says 2); a dataset's has at most 1024"),
    (30_000, "the NPZ file's list of members (its central directory) is 1519003 bytes; a dataset's takes at most "
             "1048576 (1024 members at most)"),
])
def test_members_beyond_the_count_in_the_end_record_are_refused_from_the_directory(tmp_path, extra, words):
    """zipfile parses every header the directory's byte size covers, whatever the end record counts: 300,000 empty
    members under a count of 2 (a 26 MB upload) were a 201 after 30 s and 1 GB. Only 1024 headers are walked."""
    _npz_of_many_members(tmp_path / "many.npz", extra, said=2)
    refused, peak = peak_bytes(_refusal, tmp_path / "many.npz", tmp_path / "out.npz", 100)
    assert refused is not None and refused.startswith(words), refused
    assert peak < 1_500_000, peak  # the directory read once, no object per member
    _npz_of_many_members(tmp_path / "full.npz", formats.MAX_NPZ_MEMBERS - 2)  # at the limit: read
    assert formats.convert_npz(tmp_path / "full.npz", tmp_path / "out.npz", 100) is not None


def test_a_member_named_twice_is_refused_on_upload_and_use(tmp_path):
    """A stored NPZ's directory listed three times over (its end record still counting 2) passed as the stored form
    and was kept as uploaded: 400,000 copies made a 45 MB file of a 200 x 4 dataset, reparsed on every use."""
    formats.write_arrays(tmp_path / "a.npz", np.ones((4, 2)), np.arange(4))
    data = (tmp_path / "a.npz").read_bytes()
    end = data.rindex(b"PK\x05\x06")
    size, offset = struct.unpack_from("<II", data, end + 12)
    record = bytearray(data[end:])
    struct.pack_into("<HHI", record, 8, 2, 2, 3 * size)
    (tmp_path / "dup.npz").write_bytes(data[:offset] + data[offset:offset + size] * 3 + record)
    with zipfile.ZipFile(tmp_path / "dup.npz") as archive:
        assert len(archive.infolist()) == 6
    for read in (lambda: formats.convert_npz(tmp_path / "dup.npz", tmp_path / "out.npz", 10),
                 lambda: formats.load(tmp_path / "dup.npz")):
        with pytest.raises(InvalidInput) as refused:
            read()
        assert str(refused.value) == ("the NPZ file holds the member 'inputs.npy' more than once, so which is the array "
                                      "is ambiguous; save it with numpy.savez(path, inputs=..., targets=...)")


@pytest.mark.parametrize("dtype", [">f8", "<f8", ">f4"])
def test_inputs_keep_their_precision_whatever_their_byte_order(tmp_path, dtype):
    """'>f8' == np.float64 is false: big-endian float64 inputs were stored as float32 (README: float64 NPZ inputs
    stay float64). The stored form is little endian, of the same precision."""
    inputs = (np.arange(8.0).reshape(4, 2) + 1 / 3).astype(dtype)
    np.savez(tmp_path / "d.npz", inputs=inputs, targets=np.array([0, 1, 0, 1], ">i8"))
    assert formats.convert_npz(tmp_path / "d.npz", tmp_path / "out.npz", 10) is not None  # not little endian: written
    stored, targets = formats.load(tmp_path / "out.npz")
    assert stored.dtype.str == "<" + dtype[1:] and targets.dtype.str == "<i8"
    np.testing.assert_array_equal(stored, inputs)
