"""One writer per run folder.

Two ``align train`` runs in one ``output_dir`` both used to exit 0 while interleaving
``train_log.jsonl``, mixing their checkpoints and deleting each other's log. A run therefore holds
``output_dir/.lock`` for its whole life: a ``filelock.FileLock`` taken without waiting, so the
second run fails at once, before it loads data or builds a model. The lock is an OS lock (flock),
which the kernel drops when the holder dies, so a run killed with SIGKILL never blocks its own
``--resume``. Beside it, ``.lock.json`` names the holder (pid, host, start time, command line): the
lock itself cannot say who holds it, and "in use" without a name sends the user hunting.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.io.atomic import write_atomic

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.json"
# A forked child shares the locked file description, so with filelock versions that leave it open
# in children, a worker orphaned by a SIGKILL holds the lock until it exits (seconds; one stuck
# worker was seen to live on for good). _drop_inherited_locks prevents that on Linux; elsewhere a
# dead holder's lock is waited for this long before giving up.
DEAD_HOLDER_WAIT_S = 15.0
_HELD: set[str] = set()  # real paths of the lock files this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (DataLoader workers): point inherited descriptors of our held locks at
    /dev/null. The child then neither keeps the parent's lock alive after the parent dies nor can
    unlock it (a child's LOCK_UN or close on the shared description would drop the parent's lock)."""
    if not _HELD:
        return
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # no /proc (macOS ...): DEAD_HOLDER_WAIT_S covers it
        return
    devnull = None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") not in _HELD:
                continue
            devnull = os.open(os.devnull, os.O_RDONLY) if devnull is None else devnull
            os.dup2(devnull, int(fd), inheritable=False)
        except OSError:
            continue
    if devnull is not None:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLockedError(AlignError, RuntimeError):
    """Another process holds the run folder; the message names it (pid, host, start, command)."""


class RunDirError(AlignError, OSError):
    """``output_dir`` cannot be created or written; the message names the folder and the OS error."""


def _unwritable(output_dir: Path, err: OSError) -> RunDirError:
    why = "it is a file, not a folder" if isinstance(err, FileExistsError) else str(err)
    return RunDirError(f"output_dir {output_dir} cannot be written: {why}; choose another output_dir")


def make_run_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` (and its parents), or say why it cannot be: a path under a regular file,
    a read-only parent, ... (an unexpected NotADirectoryError / PermissionError otherwise)."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(output_dir, err) from None
    return output_dir


def read_holder(output_dir: str | Path) -> dict[str, Any] | None:
    """The holder record written beside the lock, or None if there is none (or it is unreadable)."""
    try:
        holder = json.loads((Path(output_dir) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    return (
        f"pid {holder.get('pid')} on host {holder.get('hostname')} since {holder.get('started')} "
        f"(command: {holder.get('command')})"
    )


def _holder_is_dead(holder: dict[str, Any] | None) -> bool:
    """True only when the recorded holder is on this host and its pid no longer exists."""
    if not holder or holder.get("hostname") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


class RunLock:
    """``with RunLock(output_dir): ...`` or ``acquire()`` / ``release()``; raises
    :class:`RunLockedError` naming the holder when the folder is taken."""

    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        self.lock_path = self.dir / LOCK_NAME
        self.holder_path = self.dir / HOLDER_NAME
        self._lock = None

    def acquire(self) -> RunLock:
        from filelock import FileLock, Timeout

        make_run_dir(self.dir)
        try:  # our own open first: some filelock versions report an unwritable lock file as "held"
            os.close(os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as err:
            raise _unwritable(self.dir, err) from None
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = self._current_holder()
            if not _holder_is_dead(holder):
                raise RunLockedError(self._busy_message(holder)) from None
            try:  # its orphaned worker processes still hold the lock; they exit within seconds
                lock.acquire(timeout=DEAD_HOLDER_WAIT_S)
            except Timeout:
                raise RunLockedError(self._busy_message(read_holder(self.dir), dead=True)) from None
        try:
            self._write_holder()
        except BaseException as err:
            lock.release()
            if isinstance(err, OSError):  # a full disk, a quota: the folder cannot take the record
                raise _unwritable(self.dir, err) from None
            raise
        self._lock = lock
        _HELD.add(os.path.realpath(self.lock_path))
        return self

    def _current_holder(self) -> dict[str, Any] | None:
        """The holder record; the holder writes it just after taking the lock, so wait a moment for
        it rather than naming nobody (or a previous, dead holder)."""
        holder = read_holder(self.dir)
        for _ in range(10):
            if holder and not _holder_is_dead(holder):
                break
            time.sleep(0.1)
            holder = read_holder(self.dir)
        return holder

    def _busy_message(self, holder: dict[str, Any] | None, dead: bool = False) -> str:
        note = " (that process is gone, but something it started still holds the lock)" if dead else ""
        return (
            f"output_dir {self.dir} is in use by another run: {describe_holder(holder)}{note}; "
            f"two runs in one folder would mix their logs and checkpoints. Wait for it to finish, "
            f"stop it, or choose another output_dir (lock: {self.lock_path})"
        )

    def _write_holder(self) -> None:
        holder = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv),
        }
        write_atomic(
            self.holder_path, json.dumps(holder), perms=0o644
        )  # readable by whoever is told the folder is taken

    def release(self) -> None:
        """Drop the holder record (if still ours) and the lock; safe to call twice."""
        if self._lock is None:
            return
        try:
            if (read_holder(self.dir) or {}).get("pid") == os.getpid():
                self.holder_path.unlink(missing_ok=True)
        finally:
            _HELD.discard(os.path.realpath(self.lock_path))
            self._lock.release()
            self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(accelerator, output_dir: str | Path) -> RunLock | None:
    """Take the run lock on the main process only (the other processes of a multi-process run are
    part of the same run) and tell every process the outcome, so all of them stop together instead
    of the others hanging at the next collective when the main one fails."""
    lock, error, failure = None, None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(output_dir).acquire()
        except Exception as err:  # noqa: BLE001 -- re-raised below, after the others heard of it
            failure, error = err, str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error], from_process=0)[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise RunLockedError(f"the main process could not take the run lock: {error}")
    return lock
