"""The one error the search API raises for a request it cannot answer."""

from __future__ import annotations

from align.errors import AlignError


class SearchError(AlignError, ValueError):
    """A request the ``Searcher`` refuses: an unknown modality or index, a bad ``k``, an empty batch,
    an item that cannot be read (its position in the batch named), an unknown filter field. A
    ``ValueError`` so an HTTP layer can map it to 400 Bad Request without knowing each case, and an
    ``AlignError`` so the CLI prints it as one line; the message says what was wrong and what would
    be accepted."""
