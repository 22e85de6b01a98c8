"""Read the pickle files some data formats are shipped as, without letting them run code.

Planetoid's raw files (``ind.citeseer.x``, ``.graph``, ...; Cora, CiteSeer and PubMed as
distributed since 2016) are Python pickles, and PyG reads them with a plain ``pickle.load``: a
crafted file in a data folder would run arbitrary code while the table loads. Those files only
ever need numpy arrays, scipy CSR matrices and a ``defaultdict`` of lists, so PyG's reader runs here
with an unpickler that resolves those globals and refuses every other one (``exec``, ``os.system``,
any class): a refused file is an error naming the global, and nothing of it runs.
"""

from __future__ import annotations

import contextlib
import pickle
from types import ModuleType
from typing import Any, Iterator

# (module, name) pairs the Planetoid files reference (checked with pickletools on all 7 files),
# under both their Python 2 / numpy 1 names and today's
PLANETOID_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("scipy.sparse.csr", "csr_matrix"),
        ("scipy.sparse._csr", "csr_matrix"),
        ("collections", "defaultdict"),
        ("__builtin__", "list"),
        ("builtins", "list"),
    }
)


class RefusedPickle(pickle.UnpicklingError):
    """A pickle referenced a global outside the allowed set."""


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, allowed: frozenset[tuple[str, str]] = PLANETOID_GLOBALS, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise RefusedPickle(
                f"refused to load global '{module}.{name}' (only plain arrays and containers are allowed in this file)"
            )
        return super().find_class(module, name)


class _RestrictedPickleModule:
    """Stands in for the ``pickle`` module inside a reader: ``load`` is the restricted one."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


@contextlib.contextmanager
def restricted_pickle(reader_module: ModuleType) -> Iterator[None]:
    """Within the block, ``reader_module.pickle.load`` only resolves allowed globals."""
    original = reader_module.pickle
    reader_module.pickle = _RestrictedPickleModule
    try:
        yield
    finally:
        reader_module.pickle = original
