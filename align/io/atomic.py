"""One atomic file write and one atomic folder write: whole or not there.

Both write under a temporary sibling name (``.<name>.tmp-<pid>-<random>``, in the same folder so the
rename never crosses file systems), fsync what was written, then rename it into place with one
``os.replace`` / ``os.rename``; on any failure (an exception, Ctrl-C) the temporary is removed, so
a crash leaves at worst a dot-named ``.tmp-`` leftover, never a half file under the real name.

Permissions: a new file or folder gets the usual ``0o666`` / ``0o777`` minus the umask (unlike
``tempfile.mkstemp``'s private 0600); a replaced file keeps the mode of the one it replaces;
``perms`` sets it explicitly.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

TMP_TAG = ".tmp-"  # in every temporary name: what leftover clean-up (align.training.resume) looks for


def temp_sibling(path: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<kind>-<pid>-<random>`` (``<name>.<kind>-...``
    when the name is hidden already, so ``.lock.json``'s temporaries start with ``.lock.json.``)."""
    path = Path(path)
    hidden = path.name if path.name.startswith(".") else f".{path.name}"
    return path.parent / f"{hidden}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _mode_for(path: Path, perms: int | None) -> int | None:
    if perms is not None:
        return perms
    try:
        return path.stat().st_mode & 0o7777  # replacing: keep the old file's mode
    except FileNotFoundError:
        return None


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, perms: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file, created exclusively) to write by any
    means (``open``, ``np.memmap``, a library's ``save(path)``); on leaving the block it is fsynced and
    renamed onto ``path``, or removed if the block raised. Returns nothing; ``path`` is then complete."""
    path = Path(path)
    mode = _mode_for(path, perms)
    tmp = temp_sibling(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes, *, perms: int | None = None, encoding: str = "utf-8"
) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (see ``atomic_file``); returns ``path``."""
    path = Path(path)
    with atomic_file(path, perms=perms) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode(encoding) if isinstance(data, str) else data)
    return path


@contextmanager
def atomic_folder(
    path: str | os.PathLike[str], *, exists: Literal["error", "replace", "keep"] = "error", perms: int | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on leaving the block its files and itself
    are fsynced and it is renamed to ``path`` (removed if the block raised). If ``path`` is there:
    ``error`` raises ``FileExistsError``; ``replace`` moves the old one aside, renames the new one in
    and then deletes the old (so the name is never empty for long); ``keep`` keeps the one there and
    discards ours (a cache another process filled first)."""
    path = Path(path)
    tmp = temp_sibling(path)
    os.mkdir(tmp)
    if perms is not None:
        os.chmod(tmp, perms)
    old = None
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file() and not child.is_symlink():
                _fsync_path(child)
        _fsync_path(tmp)
        if path.exists() or path.is_symlink():
            if exists == "error":
                raise FileExistsError(f"{path} already exists")
            if exists == "keep":
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = temp_sibling(path, "tmp-old")
            os.replace(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            if exists == "keep" and path.is_dir():  # lost a race to another writer: theirs stays
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if old is not None:
                os.replace(old, path)  # put the old one back rather than leave the name empty
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
