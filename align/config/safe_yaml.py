"""YAML for configs, read with bounds.

``yaml.safe_load`` runs no code, but it expands aliases without limit: a 500-byte "billion laughs"
document (nine anchors, each a list of nine aliases to the one before) loads as a shared graph and
then becomes 9**9 values the first time anything walks it (pydantic validating adapter options),
which exhausted memory. Configs do use anchors and merge keys (``{<<: *cancer, split: test}``,
``label_names: *digits``), so aliases stay allowed; what is bounded is the size of the document
with every alias expanded, counted on the composed node graph before any Python object is built,
and the size of the file itself. Every refusal names the file (or the override) it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from align.errors import ConfigError

MAX_BYTES = 4 << 20  # a config is kilobytes; even ImageNet's classnames and CuPL prompts fit many times
MAX_NODES = 1_000_000  # scalars, lists and mappings with aliases expanded (the shipped configs: < 2000)


class _SizeError(Exception):
    """Raised inside the loader; turned into a ConfigError naming the file by ``load_yaml_text``."""


def expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` holds once every alias is expanded, stopping past ``limit``.

    An alias is composed as a second reference to its anchor's node, so the composed graph is as small
    as the text; each node's expanded size is computed once (memoised) and the walk is iterative, so
    neither a wide nor a deep document costs more than its own size here. A node that contains itself
    (``a: &a [*a]``) has no finite expansion and is refused."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > limit:
                raise _SizeError(f"more than {limit} values once its aliases are expanded (an alias bomb?)")
            continue
        if key in open_nodes:
            raise _SizeError(f"an alias refers to itself (line {node.start_mark.line + 1}), which never ends")
        open_nodes.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in open_nodes:
                raise _SizeError(f"an alias refers to itself (line {kid.start_mark.line + 1}), which never ends")
            if id(kid) not in sizes:
                stack.append((kid, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks each document's expanded size before constructing it."""

    def compose_document(self):  # noqa: D102 -- PyYAML's hook: the whole node graph, no objects yet
        node = super().compose_document()
        expanded_size(node, MAX_NODES)
        return node


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document with the bounds above; ``where`` (a file, an override) starts each error."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 -- BoundedLoader is a SafeLoader
    except _SizeError as err:
        raise ConfigError(f"{where}: refused: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: refused: nested too deeply to be a config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None


def load_yaml_file(path: str | Path) -> Any:
    """Read a config file: missing, oversized (checked before reading) or unbounded ones are ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: refused: {size} bytes, more than a config's limit of {MAX_BYTES}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config: {err}") from None
    return load_yaml_text(text, str(path))
