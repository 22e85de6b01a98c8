"""Truncated webdataset shards: named as such, not as a bad sample.

A tar cut short (a copy or a download that stopped, a full disk) reads without complaint up to the cut
in datasets' webdataset builder: a cut inside a member's bytes stops the whole stream with tarfile's
"unexpected end of data" naming no shard, and a cut between members ends the shard silently, its last
sample missing members (a "missing label"), so under ``on_error: skip`` every sample after the cut
vanished as one skipped sample.

Before a stream opens, every local ``.tar`` shard's end is checked (a whole tar ends with the
two zero blocks of its end-of-archive marker, on a 512-byte boundary; a read of its last KiB), and a
shard failing that is walked header by header (member data is seeked over) to find the cut byte, the
samples wholly before it and the sample the cut went through. ``on_error: raise`` refuses the stream
naming the shard and the byte; ``on_error: skip`` warns and streams the whole samples before the cut
from a copy of them that ends cleanly (in a temporary folder, removed at exit; the checkpoint still
records the configured shards). How many samples were lost is the shard's count in the
``PREFIX.shards.json`` that ``align shards`` writes beside its shards (``align/data/shards.py``)
minus the whole ones; shards written by other tools have no such record, and the report says
"count unknown".

A cut that leaves zeros at the end (inside a run of zero bytes of a member) passes the end check; the
reader then stops mid-stream, and that error walks every shard to name the truncated one.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass

log = logging.getLogger("align.data.streaming")

BLOCK = tarfile.BLOCKSIZE
_walked: dict[tuple[str, int, int], Truncation | None] = {}
_copies: dict[tuple[str, int, int], str] = {}
_warned: set[tuple[str, int, int]] = set()
_copy_dir: list[str] = []


@dataclass(frozen=True)
class Truncation:
    """Where a shard was cut: ``size`` (its bytes now: the cut), the ``whole`` samples before it,
    the byte ``whole_end`` their members end at, and the sample ``cut_key`` the cut went through."""

    shard: str
    size: int
    whole: int
    whole_end: int
    cut_key: str | None

    @property
    def lost(self) -> int | None:
        """Samples lost to the cut (the one cut through included), from the count ``align shards``
        recorded; None when no record names the shard."""
        from align.data.shards import recorded_count

        count = recorded_count(self.shard)
        return None if count is None else max(count - self.whole, 0)

    def describe(self) -> str:
        cut = f", sample {self.cut_key!r} cut at it" if self.cut_key else ""
        lost = self.lost
        count = (
            f"{lost} of its {lost + self.whole} samples are lost"
            if lost is not None
            else f"the samples after byte {self.size} are lost (count unknown: no *.shards.json record names it)"
        )
        return (
            f"shard {os.path.basename(self.shard)} is truncated at byte {self.size} (samples after it are "
            f"lost): {self.whole} whole samples before the cut{cut}; {count}"
        )


def _identity(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def ends_whole(path: str) -> bool:
    """Whether the tar at ``path`` ends as a whole one does: its end-of-archive marker (1024 zero
    bytes, padded to a record) on a 512-byte boundary. Reads one KiB."""
    size = os.path.getsize(path)
    if size < 2 * BLOCK or size % BLOCK:
        return False
    with open(path, "rb") as f:
        f.seek(size - 2 * BLOCK)
        return f.read(2 * BLOCK) == bytes(2 * BLOCK)


def _sample_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member as webdataset splits it: the key ends at the basename's first '.'."""
    folder, base = os.path.split(name)
    if "." not in base or base.startswith((".", "__")):
        return None
    stem, ext = base.split(".", 1)
    return os.path.join(folder, stem), ext


def find_truncation(path: str) -> Truncation | None:
    """Walk the tar's headers (seeking over member data) to where it ends: None if it ends with the
    end-of-archive marker (or at a damaged header, which is not a cut); else where it was cut."""
    size = os.path.getsize(path)
    groups: list[list] = []  # [key, extensions, end byte of its last member], in shard order
    cut_inside = False
    with open(path, "rb") as f:
        try:
            tar = tarfile.TarFile(fileobj=f, mode="r")
        except tarfile.ReadError:
            return Truncation(path, size, 0, 0, None) if size < BLOCK else None  # cut in its first header
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError:  # the last member's padding runs past the end: its data is whole
                break
            if member is None:
                break
            tar.members = []
            split = _sample_key(member.name) if member.isreg() else None
            if split is None:
                continue
            if not groups or groups[-1][0] != split[0]:
                groups.append([split[0], set(), 0])
            if member.offset_data + member.size > size:
                cut_inside = True
                break
            groups[-1][1].add(split[1])
            groups[-1][2] = member.offset_data + member.size
        if not cut_inside:
            f.seek(tar.offset)
            if len(f.read(BLOCK)) == BLOCK:  # the end-of-archive marker, or a damaged header: not a cut
                return None
    # the last sample is whole when the cut is between members and it has every member the first one has
    last_whole = bool(groups) and not cut_inside and (len(groups) == 1 or groups[-1][1] == groups[0][1])
    whole = groups if last_whole else groups[:-1]
    end = -(-whole[-1][2] // BLOCK) * BLOCK if whole else 0
    return Truncation(path, size, len(whole), end, None if last_whole or not groups else groups[-1][0])


def truncation(path: str, thorough: bool = False) -> Truncation | None:
    """Where the local ``.tar`` shard ``path`` was cut short, if it was: walked (once per file version)
    when it fails the end check, or always when ``thorough``; None for other files."""
    if not (path.endswith(".tar") and os.path.isfile(path)):
        return None
    if not thorough and ends_whole(path):
        return None
    ident = _identity(path)
    if ident not in _walked:
        _walked[ident] = find_truncation(path)
    return _walked[ident]


def truncated_shards(files: list[str] | None, thorough: bool = False) -> list[Truncation]:
    """The shards among ``files`` that were cut short (see ``truncation``)."""
    return [t for t in (truncation(f, thorough) for f in files or []) if t is not None]


def missed_truncations(files: list[str] | None) -> list[Truncation]:
    """Shards cut short that passed the end check at open (a cut leaving zeros at the end), so were
    streamed as they are: every shard walked, for a reader that stopped mid-stream."""
    return [t for t in truncated_shards(files, thorough=True) if ends_whole(t.shard)]


def _readable_copy(cut: Truncation) -> str:
    """A copy of the shard's whole samples ending with an end-of-archive marker, named as the shard
    (so sample names and augmentation seeds stay the same), in a temporary folder removed at exit."""
    ident = _identity(cut.shard)
    if ident not in _copies:
        if not _copy_dir:
            _copy_dir.append(tempfile.mkdtemp(prefix="align-truncated-shards-"))
            atexit.register(shutil.rmtree, _copy_dir[0], True)
        folder = os.path.join(_copy_dir[0], str(len(_copies)))
        os.makedirs(folder)
        out = os.path.join(folder, os.path.basename(cut.shard))
        with open(cut.shard, "rb") as src, open(out, "wb") as dst:
            left = cut.whole_end
            while left:
                chunk = src.read(min(left, 1 << 20))
                dst.write(chunk)
                left -= len(chunk)
            dst.write(bytes(2 * BLOCK))
        _copies[ident] = out
    return _copies[ident]


def readable_data_files(spec, files: list[str] | None, key: str):
    """``data_files`` for datasets to stream: ``spec.data_files`` as given when no shard was cut short;
    else refused (``on_error: raise``) naming the shard and the byte, or (``skip``) the shard list with
    each truncated shard replaced by a copy of its whole samples (left out if it has none), warned
    about once."""
    from align.errors import DataError

    cut = {f: t for f in files or [] if (t := truncation(f)) is not None}
    if not cut:
        return spec.data_files
    first = next(iter(cut.values()))
    if spec.on_error == "raise":
        raise DataError(
            f"config key '{key}.data_files': {first.describe()}; write the shard again (align shards CONFIG "
            f"OUT_DIR), or set {key}.on_error: skip to read the whole samples before the cut"
        )
    for t in cut.values():
        if _identity(t.shard) not in _warned:
            _warned.add(_identity(t.shard))
            log.warning(
                "%s: %s; on_error skip: reading its %d whole samples, the rest is lost", key, t.describe(), t.whole
            )
    # a shard cut before its first whole sample is left out: datasets infers the columns from a sample
    return {spec.split: [_readable_copy(cut[f]) if f in cut else f for f in files if f not in cut or cut[f].whole]}
