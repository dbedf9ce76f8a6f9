"""The rule-based baseline of ProX's comparisons: datatrove's Gopher, C4 and FineWeb quality
filters with their published defaults, used as a library (document in, keep or drop with reason).

The filters run in a fixed order and the first that drops a document names the reason, as in a
datatrove pipeline. Word tokenisation is spaCy's blank English model (no download).
"""

from __future__ import annotations

from collections.abc import Sequence

FILTERS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")


def _filters():
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return [
        ("gopher_repetition", GopherRepetitionFilter()),
        ("gopher_quality", GopherQualityFilter()),
        ("c4_quality", C4QualityFilter(filter_no_terminal_punct=False)),
        ("fineweb_quality", FineWebQualityFilter()),
    ]


def rule_filter(texts: Sequence[str]) -> list[str | None]:
    """For each text: None when every filter keeps it, else ``"<filter>:<reason>"``."""
    from datatrove.data import Document

    filters = _filters()
    out: list[str | None] = []
    for i, text in enumerate(texts):
        reason = None
        for name, f in filters:
            verdict = f.filter(Document(text=text, id=str(i)))
            keep, why = (verdict, None) if isinstance(verdict, bool) else verdict
            if not keep:
                reason = f"{name}:{why or 'dropped'}"
                break
        out.append(reason)
    return out
