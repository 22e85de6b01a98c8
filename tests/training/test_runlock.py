"""An output_dir that cannot be written is reported as that, naming the folder and the OS error,
not as "in use by another run" nor as an unexpected NotADirectoryError / PermissionError: a path
under a regular file, a path that is a file, a folder whose lock file cannot be created, and (not
as root, where permissions do not stop writes) a read-only folder."""

from __future__ import annotations

import os

import pytest

from align.errors import AlignError
from align.training.runlock import LOCK_NAME, RunLock, make_run_dir


def refusal(path) -> str:
    with pytest.raises(AlignError) as info:
        RunLock(path).acquire()
    message = str(info.value)
    assert "in use" not in message and f"output_dir {path} cannot be written" in message, message
    return message


def test_a_path_under_a_regular_file_cannot_be_written(tmp_path):
    (tmp_path / "a-file").write_text("x")
    assert "Not a directory" in refusal(tmp_path / "a-file" / "run")
    with pytest.raises(AlignError, match="cannot be written: .*Not a directory"):
        make_run_dir(tmp_path / "a-file" / "run")


def test_a_path_that_is_a_file_cannot_be_written(tmp_path):
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in refusal(tmp_path / "a-file")


def test_a_lock_file_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # even root cannot open a folder as the lock file
    message = refusal(tmp_path)
    assert "Is a directory" in message and LOCK_NAME in message, message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0o500 folder")
def test_a_read_only_folder_cannot_be_written(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert "Permission denied" in refusal(folder)
        assert "Permission denied" in refusal(folder / "sub")
    finally:
        folder.chmod(0o700)


def test_a_writable_folder_is_still_locked_and_released(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert lock.held and (tmp_path / "run" / LOCK_NAME).exists()
    assert not lock.held
