"""Text every tokenizer and writer accepts: valid Unicode (no lone surrogates)."""

from __future__ import annotations


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
