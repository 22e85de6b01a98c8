import os
import stat

import numpy as np
import pytest

from align.io.atomic import atomic_file, atomic_folder, write_atomic


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_write_atomic_writes_text_and_bytes_and_replaces(tmp_path):
    path = tmp_path / "out.json"
    write_atomic(path, "first")
    assert path.read_text() == "first"
    write_atomic(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(path) as tmp:
            tmp.write_text("half of the new")
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.tmp-")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C too
        with atomic_file(tmp_path / "new.txt") as tmp:
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_file_takes_any_writer_and_keeps_or_sets_the_mode(tmp_path):
    path = tmp_path / "a.f32"
    with atomic_file(path) as tmp:
        mm = np.memmap(tmp, np.float32, "w+", shape=(3, 2))
        mm[:] = 7
        mm.flush()
        del mm
    assert np.fromfile(path, np.float32).tolist() == [7.0] * 6
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    os.chmod(path, 0o640)
    write_atomic(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a replaced file keeps its mode
    write_atomic(path, "new", perms=0o604)
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


def test_atomic_folder_appears_whole(tmp_path):
    final = tmp_path / "store"
    with atomic_folder(final) as tmp:
        assert not final.exists()
        (tmp / "a.npy").write_bytes(b"a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_bytes(b"b")
    assert (final / "a.npy").read_bytes() == b"a" and (final / "sub" / "b").read_bytes() == b"b"
    assert leftovers(tmp_path) == []


def test_atomic_folder_failure_leaves_nothing(tmp_path):
    final = tmp_path / "store"
    with pytest.raises(ValueError):
        with atomic_folder(final) as tmp:
            (tmp / "a").write_bytes(b"a")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_if_it_exists_error_replace_or_keep(tmp_path):
    final = tmp_path / "store"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(FileExistsError, match="store"):
        with atomic_folder(final) as tmp:
            (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["old"] and leftovers(tmp_path) == []

    with atomic_folder(final, exists="keep") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["old"] and leftovers(tmp_path) == []

    with atomic_folder(final, exists="replace") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # the old one moved aside and removed


def test_atomic_folder_perms(tmp_path):
    with atomic_folder(tmp_path / "shared", perms=0o755) as tmp:
        (tmp / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


def test_temporaries_are_hidden_siblings_named_after_the_target(tmp_path):
    from align.io.atomic import temp_sibling

    assert temp_sibling(tmp_path / "latest").name.startswith(".latest.tmp-")
    assert temp_sibling(tmp_path / ".lock.json").name.startswith(".lock.json.tmp-")  # not '..lock.json'
    assert temp_sibling(tmp_path / "x") != temp_sibling(tmp_path / "x")
    assert temp_sibling(tmp_path / "x").parent == tmp_path
