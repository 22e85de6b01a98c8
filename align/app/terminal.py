"""Text from data, made safe to print on a terminal.

Captions, labels and paths come from files anyone may have written. Printed raw, a caption holding
``ESC [2J`` clears the screen, ``ESC ]0;...BEL`` retitles the window, and a newline followed by
``  2. score 1.0000 ...`` forges a result line. ``printable`` shows every such character as a visible
escape (``\\x1b``, ``\\n``), the way ``repr`` would, but leaves ordinary Unicode (accents, CJK,
emoji) as it is, which ``repr`` / ``ascii`` would not.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# reorder what follows on the line (Trojan Source): shown, not obeyed
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@lru_cache(maxsize=4096)
def _escape(ch: str) -> str:
    """``ch`` itself, or its visible escape when it is a control (C0, DEL, C1), a line or paragraph
    separator, or a bidi control."""
    if unicodedata.category(ch) not in ("Cc", "Zl", "Zp") and ch not in BIDI:
        return ch
    if ch in SHORT:
        return SHORT[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def printable(value: Any) -> str:
    """``str(value)`` with every terminal control character shown as an escape: one line, inert."""
    text = str(value)
    if text.isprintable():  # the common case: nothing to escape (controls and separators are not printable)
        return text
    return "".join(_escape(ch) for ch in text)
