"""Text every tokenizer and writer accepts: valid Unicode (no lone surrogates)."""

from __future__ import annotations

import unicodedata


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (a lone surrogate) written as an escape."""
    return (
        text if is_valid_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")
    )


# Characters a terminal may act on rather than show: controls (ESC starts a sequence that can
# recolour, move the cursor or set the title; C1 CSI too), format characters (bidirectional
# overrides reorder what is shown), lone surrogates and line or paragraph separators.
_UNSHOWN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal could act on written as an escape (``\\x1b``),
    newlines and tabs included: what comes from a document or a server stays one inert line."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _UNSHOWN else c
        for c in text
    )
