"""Data printed to a terminal shows its control characters as visible escapes, so a caption cannot
clear the screen, retitle the window or add fake lines, while ordinary Unicode stays as it is."""

from __future__ import annotations

import pytest

from align.app.terminal import printable


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("one\n  2. score 1.0000  id 9", "one\\n  2. score 1.0000  id 9"),
        ("tab\there\rback", "tab\\there\\rback"),
        ("del\x7f c1\x9b31m nul\x00", "del\\x7f c1\\x9b31m nul\\x00"),
        ("a back\\slash stays", "a back\\slash stays"),
        ("café 数字 ✓ emoji 🙂", "café 数字 ✓ emoji 🙂"),
        ("bidi \u202eevil\u202c \u2066x\u2069 a\u2028b", "bidi \\u202eevil\\u202c \\u2066x\\u2069 a\\u2028b"),
        ("zero\u200bwidth, joiner \U0001f469\u200d\U0001f4bb", "zero\u200bwidth, joiner \U0001f469\u200d\U0001f4bb"),
    ],
)
def test_controls_are_escaped_and_unicode_kept(raw, shown):
    assert printable(raw) == shown
    assert "\n" not in printable(raw) and "\x1b" not in printable(raw)


def test_non_strings_are_printed_by_their_str():
    assert printable(3) == "3" and printable(None) == "None" and printable(["a\nb"]) == "['a\\nb']"
