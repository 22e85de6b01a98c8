import hashlib
import json

import pytest

from align.io.manifest import MANIFEST, ManifestError, read_manifest, verify_file, verify_files, write_manifest


def folder_with_files(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 1000)
    (folder / "b.txt").write_text("hello")
    return folder


def flip(path, at):
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_written_manifest_lists_bytes_and_sha256_of_every_other_file(tmp_path):
    folder = folder_with_files(tmp_path)
    written = write_manifest(folder, {"format": "test/v1", "step": 3})
    on_disk = json.loads((folder / MANIFEST).read_text())
    assert on_disk == written
    assert on_disk["format"] == "test/v1" and on_disk["step"] == 3
    assert on_disk["files"] == {
        "a.bin": {"bytes": 1000, "sha256": hashlib.sha256(b"a" * 1000).hexdigest()},
        "b.txt": {"bytes": 5, "sha256": hashlib.sha256(b"hello").hexdigest()},
    }
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name] == []
    m = read_manifest(folder)
    verify_files(folder, ["a.bin", "b.txt"], m)


@pytest.mark.parametrize("key", ["size", "bytes"])
def test_both_old_schemas_read_as_one_and_are_verified(tmp_path, key):
    folder = folder_with_files(tmp_path)
    files = {
        n: {key: (folder / n).stat().st_size, "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest()}
        for n in ("a.bin", "b.txt")
    }
    (folder / MANIFEST).write_text(json.dumps({"format": "old", "files": files}))
    m = read_manifest(folder)
    assert m["files"]["a.bin"]["bytes"] == 1000 and "size" not in m["files"]["a.bin"]
    verify_files(folder, ["a.bin", "b.txt"], m)
    flip(folder / "a.bin", 500)
    with pytest.raises(ManifestError, match=r"a\.bin: content is damaged \(sha256 .* does not match manifest") as info:
        verify_files(folder, ["a.bin"], m)
    assert info.value.path == folder / "a.bin"
    (folder / "b.txt").write_text("hel")
    with pytest.raises(ManifestError, match=r"b\.txt: 3 bytes where manifest\.json says 5 \(truncated\)"):
        verify_file(folder, "b.txt", m["files"]["b.txt"])


def test_missing_unlisted_and_checksum_only_entries(tmp_path):
    folder = folder_with_files(tmp_path)
    m = write_manifest(folder, {})
    (folder / "c").write_text("new")
    with pytest.raises(ManifestError, match=r"f/c: not listed in .*manifest\.json"):
        verify_files(folder, ["c"], m)
    (folder / "b.txt").unlink()
    with pytest.raises(ManifestError, match=r"f/b\.txt: missing \(listed in manifest\.json with 5 bytes\)"):
        verify_files(folder, ["b.txt"], m)
    entry = {"sha256": hashlib.sha256(b"a" * 1000).hexdigest()}  # sha256 only (index format 1)
    verify_file(folder, "a.bin", entry)
    (folder / "a.bin").write_bytes(b"a" * 999)
    with pytest.raises(ManifestError, match=r"a\.bin: content is damaged"):
        verify_file(folder, "a.bin", entry)


def test_absent_and_unreadable_manifests(tmp_path):
    folder = folder_with_files(tmp_path)
    assert read_manifest(folder) is None
    for text in (
        "{not json",
        "[1, 2]",
        json.dumps({"step": 1}),
        json.dumps({"files": {"a": {"size": 1}}}),
        json.dumps({"files": {"../x": {"bytes": 1, "sha256": "0"}}}),
        json.dumps({"files": {"a": {"bytes": "big", "sha256": "0"}}}),
    ):
        (folder / MANIFEST).write_text(text)
        with pytest.raises(ManifestError, match=r"f/manifest\.json: unreadable manifest"):
            read_manifest(folder)
    (folder / MANIFEST).write_text(json.dumps({"step": 1}))
    assert read_manifest(folder, require_files=False) == {"step": 1}
