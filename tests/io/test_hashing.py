import hashlib

from align.io import hashing
from align.io.hashing import sha256_file


def test_sha256_of_a_file_equals_hashlib_over_its_bytes_across_chunks(tmp_path, monkeypatch):
    data = bytes(range(256)) * 1000 + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    monkeypatch.setattr(hashing, "CHUNK", 4096)  # many chunks, the last one partial
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_one_flipped_byte_changes_the_hash(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 10_000)
    before = sha256_file(path)
    path.write_bytes(b"x" * 5_000 + b"y" + b"x" * 4_999)
    assert sha256_file(path) != before


def test_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
