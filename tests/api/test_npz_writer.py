"""api/npz_writer.py: the stored form written front to back from chunks, hashed as it is written."""

import hashlib
import zipfile

import numpy as np

from api.npz_writer import NpzWriter


def test_members_from_chunks_and_the_hash_of_the_bytes_written(tmp_path):
    inputs = np.arange(600, dtype=np.float32).reshape(200, 3)
    writer = NpzWriter(tmp_path / "d.npz")
    writer.member("inputs", np.float32, inputs.shape, (inputs[i:i + 64] for i in range(0, 200, 64)))
    writer.array("targets", np.arange(200) % 2, np.int64)
    writer.close()
    assert writer.sha256 == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()
    with zipfile.ZipFile(tmp_path / "d.npz") as archive:
        assert archive.testzip() is None
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    with np.load(tmp_path / "d.npz") as stored:
        np.testing.assert_array_equal(stored["inputs"], inputs)
        np.testing.assert_array_equal(stored["targets"], np.arange(200) % 2)
