"""The stored form as api/dataset_formats.py writes it: hashed while written, readable by NumPy and
memory-mapped by the service, and kept byte for byte when uploaded again."""

import hashlib
import zipfile

import numpy as np

from api import dataset_formats as formats


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
    digest = formats.convert_json(tmp_path / "d.json", tmp_path / "j.npz", 10)
    assert digest == hashlib.sha256((tmp_path / "j.npz").read_bytes()).hexdigest()
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((3, 2)), y=np.zeros(3))
    digest = formats.convert_npz(tmp_path / "c.npz", tmp_path / "n.npz", 10)
    assert digest == hashlib.sha256((tmp_path / "n.npz").read_bytes()).hexdigest()
