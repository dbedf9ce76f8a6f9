"""Real (noisy page, clean text) pairs: distant supervision for the refiners and their evaluation.

- **Python 3.11 documentation, layout gold.** Sphinx puts a page's body in ``div[role=main]``;
  the sidebar, the relbars, the navigation and the footer around it are noise. A page line (as
  the crawler-like extractor gives it) is *content* when it aligns with a line of the body's own
  extraction (``difflib`` on stripped lines: positions count, not just equal strings), *noise*
  otherwise. The ``.rst.txt`` source is the second opinion, and where the two disagree the
  layout wins: on 7 pages (6,765 lines) trigram containment against the source disagreed with
  the layout on 30% of lines, and every sampled disagreement was a trigram error (sidebar tables
  of contents and breadcrumbs repeat headings; "New in version 3.9.", role markup and pilcrows
  are generated, so they never match the source). The source is kept for reports
  (``source_agreement``).
- **newspaper4k's test pages** against their gold article text: trigram containment (no layout to
  read). An evaluation-only domain: no refiner trains on it.

Document level: a page is worth keeping unless it is an index or nearly empty: a docs page whose
body is one of Sphinx's index tables (``genindex-*``, ``py-modindex``), has fewer than 40 words
(``search``, stubs) or more than 60% of its words in links (``contents``, section index pages);
a news page whose gold article has fewer than 400 characters.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prox_assets.core.chunking import split_lines
from prox_assets.core.html_text import html_to_text
from prox_assets.core.samples import PYDOCS_HTML

_WORD = re.compile(r"\w+")
_LINK = re.compile(r"<a\b[^>]*>(.*?)</a>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
PYDOCS_URL = "https://docs.python.org/3.11/"
MIN_BODY_WORDS = 40
MAX_LINK_FRACTION = 0.6
MIN_NEWS_GOLD_CHARS = 400

Labels = list[bool | None]  # per page line: True content, False noise, None blank


@dataclass
class Pair:
    name: str  # "pydocs:library/json", "news:cnn_001.html"
    domain: str  # "pydocs" | "news"
    page_text: str  # what the crawler-like extractor gives (what the corpus holds)
    gold_text: str  # the clean text: the Sphinx body, or newspaper4k's gold article
    labels: Labels
    keep: bool  # the document-level label


def _lf(text: str) -> str:
    """Line ends as the ingest normalises them, so lines here are the corpus's lines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


def trigram_labels(page_text: str, gold_text: str) -> Labels:
    """Content when at least half of a line's word trigrams occur in the gold text (a line of
    fewer than four words: when its words occur there as a contiguous sequence)."""
    gold = _words(gold_text)
    gold_seq = " " + " ".join(gold) + " "
    gold_tri = set(zip(gold, gold[1:], gold[2:]))
    labels: Labels = []
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


def aligned_labels(page_text: str, body_text: str) -> Labels:
    """Content where a page line aligns with a body line (in order), noise elsewhere."""
    page = [ln.strip() for ln in split_lines(page_text)]
    body = [ln.strip() for ln in split_lines(body_text)]
    in_body = [False] * len(page)
    for a, _, n in difflib.SequenceMatcher(None, page, body, autojunk=False).get_matching_blocks():
        in_body[a : a + n] = [True] * n
    return [None if not ln else inside for ln, inside in zip(page, in_body)]


def sphinx_body(html: bytes) -> tuple[str, int, float] | None:
    """(body text, body words, share of body words inside links; 1.0 for Sphinx's own index
    tables), or None without a body."""
    from resiliparse.parse.html import HTMLTree

    from prox_assets.core.html_text import extract_text

    tree = HTMLTree.parse(html.decode("utf-8", "replace"))
    body = tree.body.query_selector('div[role="main"]') if tree.body else None
    if body is None:
        return None
    markup = body.html
    # the ingest extractor's settings, on the body alone
    text = extract_text(f"<html><body>{markup}</body></html>")
    words = len((body.text or "").split())
    if 'class="indextable' in markup:  # genindex-*, py-modindex: an index whatever its link share
        return _lf(text), words, 1.0
    link_words = sum(len(_TAG.sub(" ", m).split()) for m in _LINK.findall(markup))
    return _lf(text), words, link_words / max(words, 1)


def pydocs_keep(body_words: int, link_fraction: float) -> bool:
    return body_words >= MIN_BODY_WORDS and link_fraction <= MAX_LINK_FRACTION


def pydocs_rel(url: str | None) -> str | None:
    """``library/json`` for a docs.python.org/3.11 page URL, else None."""
    if not url or not url.startswith(PYDOCS_URL) or not url.endswith(".html"):
        return None
    return url[len(PYDOCS_URL) : -len(".html")]


def pydocs_pair(rel: str, page_text: str | None = None, root: Path = PYDOCS_HTML) -> Pair | None:
    """The layout-gold pair of one docs page; ``page_text``: the corpus's text of the page (its
    lines are the ones labelled), else the page extracted afresh."""
    path = root / f"{rel}.html"
    if not path.is_file():
        return None
    html = path.read_bytes()
    body = sphinx_body(html)
    if page_text is None:
        page_text, _ = html_to_text(html)
    if body is None or not page_text:
        return None
    page_text = _lf(page_text)
    body_text, words, link_fraction = body
    return Pair(
        f"pydocs:{rel}",
        "pydocs",
        page_text,
        body_text,
        aligned_labels(page_text, body_text),
        pydocs_keep(words, link_fraction),
    )


def pydocs_pairs(root: Path = PYDOCS_HTML) -> Iterator[Pair]:
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root).as_posix().removesuffix(".html")
        if not rel.startswith("_"):
            pair = pydocs_pair(rel, root=root)
            if pair is not None:
                yield pair


def source_agreement(pair: Pair, root: Path = PYDOCS_HTML) -> float | None:
    """Share of non-blank lines where the trigram labels against the .rst source agree with
    the layout gold (None when the page has no source)."""
    source = root / "_sources" / f"{pair.name.removeprefix('pydocs:')}.rst.txt"
    if not source.is_file():
        return None
    tri = trigram_labels(pair.page_text, source.read_text(errors="replace"))
    both = [(a, b) for a, b in zip(pair.labels, tri) if a is not None]
    return sum(a == b for a, b in both) / max(len(both), 1)


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
                    page, gold_file = (
                        tar.extractfile(members[name]),
                        tar.extractfile(members[gold_name]),
                    )
                    if page is None or gold_file is None:  # not regular files
                        continue
                    text, _ = html_to_text(page.read())
                    gold = gold_file.read().decode("utf-8", "replace")
                    if text:
                        text = _lf(text)
                        yield Pair(
                            f"news:{name.rsplit('/', 1)[-1]}",
                            "news",
                            text,
                            gold,
                            trigram_labels(text, gold),
                            len(gold.strip()) >= MIN_NEWS_GOLD_CHARS,
                        )


def page_split(name: str, heldout_fraction: float = 0.3, seed: int = 0) -> str:
    """ "train" or "heldout" by a keyed hash of the page name: stable, row-order free."""
    h = int(hashlib.sha256(f"page-split:{seed}:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def removal_metrics(pairs: Sequence[Pair], removed: Sequence[set[int]]) -> dict:
    """Removed lines against the gold's noise lines (precision, recall = noise removed, F1) and
    the share of gold content characters kept."""
    tp = fp = fn = 0
    content_chars = kept_chars = 0
    for pair, lines_removed in zip(pairs, removed):
        lines = split_lines(pair.page_text)
        for i, label in enumerate(pair.labels):
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
        "line_precision": precision,
        "noise_removed": recall,
        "line_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "gold_text_kept": kept_chars / content_chars if content_chars else 1.0,
    }
