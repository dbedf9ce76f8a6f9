"""Real (noisy page, clean text) pairs for evaluating what a refiner removes.

- the Python 3.11 documentation: each HTML page against its reStructuredText source
  (``_sources/<page>.rst.txt``);
- newspaper4k's test pages against their gold article text (``tests/data/txt``).

A page's lines (as the crawler-like extractor gives them) are labelled *content* when they occur
in the clean text and *noise* otherwise: a line of four words or more is content when at least
half of its word trigrams occur in the clean text; a shorter line when its words occur there as
a contiguous sequence. The labels are approximate (a breadcrumb that repeats the page title
counts as content), which makes the measured noise recall a lower bound.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prox_assets.core.chunking import split_lines
from prox_assets.core.ingest import _html_to_text
from prox_assets.core.samples import PYDOCS_HTML

_WORD = re.compile(r"\w+")


@dataclass
class Pair:
    name: str
    page_text: str
    gold_text: str


def _words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


def label_lines(page_text: str, gold_text: str) -> list[bool | None]:
    """Per page line: True (content), False (noise), None (blank)."""
    gold = _words(gold_text)
    gold_seq = " " + " ".join(gold) + " "
    gold_tri = set(zip(gold, gold[1:], gold[2:]))
    labels: list[bool | None] = []
    for line in split_lines(page_text):
        w = _words(line)
        if not w:
            labels.append(None)
        elif len(w) < 4:
            labels.append(f" {' '.join(w)} " in gold_seq)
        else:
            tri = list(zip(w, w[1:], w[2:]))
            labels.append(sum(t in gold_tri for t in tri) / len(tri) >= 0.5)
    return labels


def pydocs_pairs(root: Path = PYDOCS_HTML) -> Iterator[Pair]:
    for source in sorted((root / "_sources").rglob("*.rst.txt")):
        rel = source.relative_to(root / "_sources").as_posix().removesuffix(".rst.txt")
        page = root / f"{rel}.html"
        if page.exists():
            text, _ = _html_to_text(page.read_bytes())
            if text:
                yield Pair(f"pydocs:{rel}", text.replace("\r\n", "\n"), source.read_text(errors="replace"))


def news_pairs(downloads: Path) -> Iterator[Pair]:
    sdists = sorted(downloads.glob("newspaper4k-*.tar.gz"))
    if not sdists:
        return
    with tarfile.open(sdists[-1]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in sorted(members):
            if "/tests/data/html/" in name and name.endswith(".html"):
                gold_name = name.replace("/html/", "/txt/").removesuffix(".html") + ".txt"
                if gold_name in members:
                    text, _ = _html_to_text(tar.extractfile(members[name]).read())
                    gold = tar.extractfile(members[gold_name]).read().decode("utf-8", "replace")
                    if text:
                        yield Pair(f"news:{name.rsplit('/', 1)[-1]}", text.replace("\r\n", "\n"), gold)


def removal_metrics(pairs: list[Pair], refined_texts: list[str], removed: list[set[int]]) -> dict:
    """Precision/recall of removed lines against noise, and the share of content text kept."""
    tp = fp = fn = 0
    content_chars = kept_chars = 0
    for pair, lines_removed in zip(pairs, removed):
        lines = split_lines(pair.page_text)
        for i, label in enumerate(label_lines(pair.page_text, pair.gold_text)):
            if label is None:
                continue
            gone = i in lines_removed
            tp += gone and not label
            fp += gone and label
            fn += (not gone) and (not label)
            if label:
                content_chars += len(lines[i])
                kept_chars += 0 if gone else len(lines[i])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "pages": len(pairs),
        "removed_line_precision": precision,
        "removed_line_recall": recall,
        "gold_text_kept": kept_chars / content_chars if content_chars else 0.0,
    }
