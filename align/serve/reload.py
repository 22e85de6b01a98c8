"""Picking up an index folder rebuilt on disk while ``align serve`` runs, without a restart.

Why polling a fingerprint: index folders are written by ``atomic_folder(exists="replace")`` (every
``EmbeddingIndex.save`` / ``align index build --overwrite`` / update), which renames a new folder in,
so the folder is a new inode afterwards; ``folder_fingerprint`` (``align/serve/indexes.py``) stats the
folder and its files, microseconds, portable (no inotify), and blind to the files' names but
``manifest.json``. ``IndexReloader`` polls it every ``interval`` seconds in a daemon thread; a
``POST /v1/indexes/{name}/reload`` (``align/serve/reload_route.py``) asks for a check at once.

A reload, for one index whose fingerprint differs from the loaded one's:

1. the new folder is loaded and checked exactly as at start-up (``LoadedIndex``: ``EmbeddingIndex.load``
   verifies every file, then the model identity and the dim) in the reloader's thread, off the
   request path: the worker thread goes on answering from the old index meanwhile (both are in memory
   for that moment);
2. the fingerprint is taken again: if the folder changed while it was read (a writer mid-way), the
   load is dropped and the next poll tries the newer folder;
3. ``Searcher.swap_index`` puts it in under the Searcher's lock: a search in progress finishes on the
   old index, the next one uses the new one, with the new one's metadata filter (it belongs to the
   ``LoadedIndex``); zero-shot classifiers belong to the model, which does not change.

A failed reload keeps the old index serving. A folder that is not there (the moment of a replace) or
that changed while being read is silently retried on the next poll. Any other failure (damaged,
half-written, built with another model) is logged once per fingerprint, one line naming the folder and
the error, counted in ``align_index_reloads_total{result="error"}``, and shown as the index's
``reload_error`` in ``/v1/health`` until a good folder (or the loaded one, put back) is there; polls do
not load the same failed fingerprint again, a forced check does.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from align.serve.indexes import Fingerprint, LoadedIndex, folder_fingerprint

if TYPE_CHECKING:
    from align.serve.metrics import Metrics
    from align.serve.searcher import Searcher

log = logging.getLogger("align.serve.reload")
Result = Literal["reloaded", "unchanged", "error"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What one check of an index folder did: ``size`` is the size of the index serving now;
    ``error`` says why the folder on disk is not the one serving (None when it is)."""

    index: str
    result: Result
    size: int
    previous_size: int
    error: str | None = None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text}"


class IndexReloader:
    """Checks a ``Searcher``'s index folders for changes and swaps in the ones that load and check.

    ``on_change`` runs (in the checking thread) after an index was swapped or an index's reload error
    appeared or cleared: what an HTTP layer uses to refresh the health and item tables it serves from."""

    def __init__(
        self,
        searcher: Searcher,
        *,
        metrics: Metrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.searcher, self.metrics, self.on_change = searcher, metrics, on_change
        self._lock = threading.Lock()  # one check at a time: the poll and a forced check never load twice
        self._failed: dict[str, tuple[Fingerprint, str]] = {}
        self._seen: tuple[int, tuple[tuple[str, str], ...]] = (self._generation(), ())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def errors(self) -> dict[str, str]:
        """Index name -> why its folder on disk is not the one serving (the last failed reload)."""
        return {name: message for name, (_, message) in sorted(dict(self._failed).items())}  # copied: checks write it

    # ------------------------------------------------------------------ checks
    def check(self, name: str, *, force: bool = False) -> ReloadOutcome:
        """Check ``name``'s folder now and reload it if it changed; ``force`` loads a fingerprint that
        already failed once again (a poll does not). ``SearchError`` for an unknown name."""
        self.searcher.loaded_index(name)  # unknown name: raised before taking the lock
        with self._lock:
            outcome = self._check(name, force)
        self._notify()
        return outcome

    def check_all(self) -> list[ReloadOutcome]:
        """One poll: every index checked (a failure of one does not stop the others)."""
        outcomes = []
        for name in list(self.searcher.indexes):
            with self._lock:
                try:
                    outcomes.append(self._check(name, False))
                except Exception:  # a bug here must not end the watcher: logged with its traceback
                    log.exception("checking index %r for changes failed", name)
        self._notify()
        return outcomes

    def _check(self, name: str, force: bool) -> ReloadOutcome:
        old = self.searcher.loaded_index(name)
        size = len(old)

        def outcome(result: Result, error: str | None = None, now: int = size) -> ReloadOutcome:
            return ReloadOutcome(name, result, now, size, error)

        try:
            before = folder_fingerprint(old.folder)
        except OSError as err:  # unreadable (permissions): as a failed load, reported
            return self._failed_load(name, old, ("unreadable", str(err)), err, force, outcome)
        if before is None:
            return outcome("error", f"index folder {old.folder} is not there now (being replaced?); retried")
        if before == old.fingerprint:
            self._failed.pop(name, None)  # the loaded folder (or an identical copy) is back: nothing is wrong
            return outcome("unchanged")
        failed = self._failed.get(name)
        if failed is not None and failed[0] == before and not force:
            return outcome("error", failed[1])
        identity, embed_dim = self.searcher.identity, self.searcher.cfg.model.embed_dim
        try:
            new = LoadedIndex(name, old.folder, identity, embed_dim, fingerprint=before)
        except Exception as err:  # noqa: BLE001 -- whatever it is, the old index keeps serving
            if _changed(old.folder, before):
                return outcome("error", f"index folder {old.folder} changed while it was read; retried")
            return self._failed_load(name, old, before, err, force, outcome)
        if _changed(old.folder, before):
            return outcome("error", f"index folder {old.folder} changed while it was read; retried")
        if not self.searcher.swap_index(name, new, old):  # another reloader swapped first
            return outcome("unchanged", now=len(self.searcher.loaded_index(name)))
        self._failed.pop(name, None)
        if self.metrics is not None:
            self.metrics.observe_reload(name, ok=True)
        log.info("index %r reloaded from %s: %d items (was %d)", name, old.folder, len(new), size)
        return outcome("reloaded", now=len(new))

    def _failed_load(
        self,
        name: str,
        old: LoadedIndex,
        fingerprint: Any,
        err: BaseException,
        force: bool,
        outcome: Callable[..., ReloadOutcome],
    ) -> ReloadOutcome:
        """Record a failed load; log it the first time this fingerprint fails."""
        message = f"not reloaded, still serving the previous {len(old)} items: {_one_line(err)}"
        previous = self._failed.get(name)
        if previous is None or previous[0] != fingerprint:
            log.warning("index %r (%s) %s", name, old.folder, message)
        if self.metrics is not None and (force or previous is None or previous[0] != fingerprint):
            self.metrics.observe_reload(name, ok=False)
        self._failed[name] = (fingerprint, message)
        return outcome("error", message)

    def _generation(self) -> int:
        """The Searcher's swap count (0 for a stand-in that has none: it never swaps)."""
        return getattr(self.searcher, "generation", 0)

    def _notify(self) -> None:
        state = (self._generation(), tuple(self.errors.items()))
        if state == self._seen or self.on_change is None:
            return
        self._seen = state
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 -- the watcher keeps running; the next change retries
            log.exception("refreshing after an index reload failed")

    # ------------------------------------------------------------------ the watcher thread
    def start(self, interval: float) -> None:
        """Poll every ``interval`` seconds in a daemon thread; 0 (or less) polls never (a forced
        ``check`` still works)."""
        if interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(interval,), name="align-serve-reload", daemon=True)
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_all()

    def stop(self, timeout: float | None = 30.0) -> None:
        """End the watcher; a load in progress is waited for up to ``timeout`` s (the thread is a
        daemon: a longer one cannot keep the process alive)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def log_to_stderr() -> None:
    """Reloads (INFO) and refused folders (WARNING) as ``align serve: ...`` lines on stderr, which
    ``align serve`` wants and a library user may not (Python's default shows WARNING only); once per
    process however often it is called."""
    if any(getattr(h, "_align_serve", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("align serve: %(message)s"))
    handler._align_serve = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _changed(folder: Any, before: Fingerprint) -> bool:
    try:
        return folder_fingerprint(folder) != before
    except OSError:
        return True
