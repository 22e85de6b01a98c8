"""Per-modality optional dependencies: ``pip install 'align[graph]'`` and friends.

The core install (image and text towers, training, evaluation, FAISS) runs the demo; each other
modality's readers come with an extra. A config that names a modality or a source whose packages
are missing fails at validation, naming the extra to install, instead of with an ImportError deep
inside a DataLoader worker.
"""

from __future__ import annotations

import importlib.util
import sys

from align.errors import ConfigError

# name -> (the extra that installs it, the modules it imports)
MODALITY_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "audio": ("audio", ("soundfile", "av")),
    "video": ("video", ("av",)),
    "graph": ("graph", ("torch_geometric", "rdkit", "networkx")),
    "pointcloud": ("pointcloud", ("trimesh",)),
}
SOURCE_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tu-dataset": ("graph", ("torch_geometric",)),
    "graph-nodes": ("graph", ("torch_geometric",)),
}


def installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def require(table: dict[str, tuple[str, tuple[str, ...]]], name: str, key: str) -> None:
    """Raise a ConfigError naming ``key`` and the extra when ``name`` needs packages that are not
    installed; names the table does not list need nothing beyond the core install."""
    extra, modules = table.get(name, (None, ()))
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise ConfigError(
            f"config key '{key}': '{name}' needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'align[{extra}]'"
        )


SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


def require_extra(extra: str, modules: tuple[str, ...], what: str) -> None:
    """One line naming ``what`` needs, and the extra that installs it (e.g. ``align serve`` and
    ``align[serve]``), instead of an ImportError from inside a command."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise ConfigError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'align[{extra}]'"
        )
