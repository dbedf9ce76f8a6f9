"""Leave-one-site-out evaluation of line cleaners on sites they never saw (issue 27).

For each site, every cleaner that learns from labels learns from the *other* sites' pages only,
and is judged on this site's pages through the refined corpus's own path: the page is windowed
(``chunk_document``), each cleaner's decisions become one program per window
(``program_for_flags``, or the model's own programs), and the executor runs them. Cleaners:

- ``extractor``: resiliparse's main-content extraction alone. On extracted text (the field's data
  path, FineWeb's and the ProX corpora's) it removes nothing more; on whole-page text (the
  ingest's old behaviour) it removes the lines its extraction dropped.
- ``perfect-imitator``: the gold labels written as programs: the ceiling of this path.
- ``random-control``: each non-blank line removed with the training sites' noise rate.
- ``c4-rules``: datatrove's ``C4QualityFilter`` with its published defaults, its line edits kept
  (a line it removes is removed; a page it drops loses every line).
- ``template-dictionary``: model-free: a line is noise when its normalised text was gold noise on
  at least ``k`` training pages.
- ``refiner``: a chunk refiner (any ``generate`` backend), when one is given.

Figures per site and cleaner: the share of gold noise lines removed, of gold body lines kept, of
body characters kept, removal line-F1 and pages dropped, each with a page-bootstrap 95% interval.
"""

from __future__ import annotations

import difflib
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prox_assets.core.annotators import program_for_flags
from prox_assets.core.chunking import TokenCounter, Window, chunk_document, split_lines
from prox_assets.core.executor import execute_chunk_programs
from prox_assets.core.real_pairs import Pair

TEMPLATE_DICTIONARY_K = 3  # fixed before any result was seen: a template repeats on >= 3 pages
BOOTSTRAP_REPS = 1000
CLEANERS = (
    "extractor",
    "perfect-imitator",
    "random-control",
    "c4-rules",
    "template-dictionary",
)

# Per page and line: True where the cleaner removes the line. A cleaner sees the pages to judge
# (text and, for the imitator only, their labels) and the training pages of the other sites.
LineCleaner = Callable[[Sequence[Pair]], list[list[bool]]]
# A model: per page, its windows -> one program per window.
ProgramWriter = Callable[[Sequence[str], Sequence[list[Window]]], list[list[str]]]

_SPACE = re.compile(r"\s+")


def normalised(line: str) -> str:
    return _SPACE.sub(" ", line).strip().lower()


@dataclass
class PageScore:
    """One page's counts; a site's figure is a ratio of sums, so the bootstrap resamples these."""

    noise: int
    noise_removed: int
    body: int
    body_kept: int
    body_chars: int
    body_chars_kept: int
    removed_body: int  # false positives: body lines removed
    dropped: bool


def score_page(pair: Pair, removed: set[int], dropped: bool) -> PageScore:
    lines = split_lines(pair.page_text)
    s = PageScore(0, 0, 0, 0, 0, 0, 0, dropped)
    for i, label in enumerate(pair.labels):
        if label is None:
            continue
        gone = dropped or i in removed
        if label:
            s.body += 1
            s.body_kept += not gone
            s.removed_body += gone
            s.body_chars += len(lines[i])
            s.body_chars_kept += 0 if gone else len(lines[i])
        else:
            s.noise += 1
            s.noise_removed += gone
    return s


def figures(scores: Sequence[PageScore]) -> dict[str, float]:
    noise = sum(s.noise for s in scores)
    removed = sum(s.noise_removed for s in scores)
    body = sum(s.body for s in scores)
    false_pos = sum(s.removed_body for s in scores)
    precision = removed / (removed + false_pos) if removed + false_pos else 0.0
    recall = removed / noise if noise else float("nan")  # no noise to remove: undefined
    return {
        "noise_removed": recall,
        "body_kept": sum(s.body_kept for s in scores) / body if body else 1.0,
        "body_chars_kept": (
            sum(s.body_chars_kept for s in scores) / max(sum(s.body_chars for s in scores), 1)
        ),
        "line_f1": (
            2 * precision * recall / (precision + recall) if noise and precision + recall else 0.0
        ),
        "pages_dropped": sum(s.dropped for s in scores) / len(scores) if scores else 0.0,
    }


def bootstrap(
    scores: Sequence[PageScore], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, 2.5th percentile, 97.5th percentile) over pages resampled with
    replacement."""
    point = figures(scores)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(reps):
        sample = [scores[rng.randrange(len(scores))] for _ in scores]
        for k, v in figures(sample).items():
            draws[k].append(v)
    out = {}
    for k, v in point.items():
        d = sorted(x for x in draws[k] if x == x)  # a resample with no noise line has no recall
        if not d:
            out[k] = (v, float("nan"), float("nan"))
            continue
        out[k] = (v, d[int(0.025 * (len(d) - 1))], d[int(0.975 * (len(d) - 1))])
    return out


# --- running a cleaner through the refined corpus's path -------------------------------------
def run_flags(
    pages: Sequence[Pair], flags: Sequence[Sequence[bool]], count_tokens: TokenCounter, window: int
) -> list[PageScore]:
    """Each page's flags as programs per window, executed; scored against its gold."""
    out = []
    for pair, page_flags in zip(pages, flags):
        lines = split_lines(pair.page_text)
        windows = chunk_document(pair.page_text, count_tokens, window)
        programs = [
            program_for_flags(
                lines, [page_flags[i] for i in range(w.line_start, w.line_end + 1)], w
            )
            for w in windows
        ]
        out.append(_execute(pair, windows, programs))
    return out


def run_programs(
    pages: Sequence[Pair], writer: ProgramWriter, count_tokens: TokenCounter, window: int
) -> list[PageScore]:
    windows = [chunk_document(p.page_text, count_tokens, window) for p in pages]
    programs = writer([p.page_text for p in pages], windows)
    return [_execute(p, ws, ps) for p, ws, ps in zip(pages, windows, programs)]


def _execute(pair: Pair, windows: Sequence[Window], programs: Sequence[str]) -> PageScore:
    result = execute_chunk_programs(
        pair.page_text, [(w.line_start, w.line_end, p) for w, p in zip(windows, programs)]
    )
    removed = {
        i
        for e in result.edits
        if e.kind == "remove_lines"
        for i in range(e.line_start, e.line_end + 1)
    }
    return score_page(pair, removed, result.dropped)


# --- the cleaners -----------------------------------------------------------------------------
def imitator_flags(pages: Sequence[Pair]) -> list[list[bool]]:
    return [[label is False for label in p.labels] for p in pages]


def keep_all_flags(pages: Sequence[Pair]) -> list[list[bool]]:
    return [[False] * len(p.labels) for p in pages]


def noise_rate(pages: Sequence[Pair]) -> float:
    labels = [lab for p in pages for lab in p.labels if lab is not None]
    return sum(not lab for lab in labels) / max(len(labels), 1)


def random_flags(pages: Sequence[Pair], rate: float, seed: int) -> list[list[bool]]:
    rng = random.Random(seed)
    return [
        [bool(line.strip()) and rng.random() < rate for line in split_lines(p.page_text)]
        for p in pages
    ]


def template_dictionary(train: Sequence[Pair], k: int = TEMPLATE_DICTIONARY_K) -> set[str]:
    """Normalised lines that were gold noise on at least ``k`` training pages."""
    counts: Counter[str] = Counter()
    for p in train:
        lines = split_lines(p.page_text)
        counts.update({normalised(lines[i]) for i, lab in enumerate(p.labels) if lab is False})
    return {line for line, n in counts.items() if n >= k and line}


def dictionary_flags(pages: Sequence[Pair], dictionary: set[str]) -> list[list[bool]]:
    return [[normalised(ln) in dictionary for ln in split_lines(p.page_text)] for p in pages]


def c4_flags(pages: Sequence[Pair]) -> list[list[bool]]:
    """datatrove's C4QualityFilter with its published defaults on each page: its line edits (the
    lines its kept text no longer holds, in order) or, when it drops the page, every line."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    c4 = C4QualityFilter()  # published defaults, terminal punctuation rule included
    out = []
    for i, p in enumerate(pages):
        doc = Document(text=p.page_text, id=str(i))
        verdict = c4.filter(doc)
        keep = verdict if isinstance(verdict, bool) else verdict[0]
        lines = split_lines(p.page_text)
        if not keep:
            out.append([bool(ln.strip()) for ln in lines])
            continue
        out.append(_lines_not_kept(lines, split_lines(doc.text)))
    return out


def _lines_not_kept(lines: Sequence[str], kept: Sequence[str]) -> list[bool]:
    """True for each non-blank line of ``lines`` that ``kept`` (what a filter or an extractor left
    of them, in order) does not hold: lines aligned in order by their normalised text (difflib),
    so that re-spaced or re-indented lines still count as kept."""
    keys = [_edit_key(line) for line in lines]
    kept_keys = [_edit_key(k) for k in kept if k.strip()]
    present = [False] * len(lines)
    matcher = difflib.SequenceMatcher(None, keys, kept_keys, autojunk=False)
    for a, _b, n in matcher.get_matching_blocks():
        present[a : a + n] = [True] * n
    return [bool(key) and not here for key, here in zip(keys, present)]


def _edit_key(line: str) -> str:
    """A line as C4 may keep it edited (without citation marks, "[1]"), spaces normalised."""
    return _SPACE.sub(" ", _CITATION.sub("", line)).strip()


_CITATION = re.compile(r"\[\d*\]")


def extractor_flags(whole: Sequence[Pair], extracted: Sequence[Pair]) -> list[list[bool]]:
    """On whole-page text: the lines that main-content extraction dropped."""
    return [
        _lines_not_kept(split_lines(w.page_text), split_lines(e.page_text))
        for w, e in zip(whole, extracted)
    ]


# --- the table --------------------------------------------------------------------------------
@dataclass
class SiteResult:
    site: str  # or ALL_SITES: every site's pages pooled, each judged by cleaners that never saw it
    cleaner: str
    pages: int
    noise_lines: int
    figures: dict[str, tuple[float, float, float]]
    scores: list[PageScore]


ALL_SITES = "all (pooled)"


def leave_one_site_out(
    sites: Mapping[str, Sequence[Pair]],
    count_tokens: TokenCounter,
    window: int,
    whole: Mapping[str, Sequence[Pair]] | None = None,
    refiner: ProgramWriter | None = None,
    seeds: int = 5,
    log: Callable[[str], None] = lambda _m: None,
) -> list[SiteResult]:
    """Every cleaner on every site, learning from the other sites only. ``sites`` holds the pages
    the cleaners judge (extracted text, or whole pages); with ``whole`` (the same pages' whole
    text, by site) the judged pages are the whole pages and ``extractor`` removes what extraction
    dropped. The random control averages ``seeds`` draws (its interval pools their pages)."""
    results = []
    for site, pages in sites.items():
        if not pages:
            continue
        train = [p for other, ps in sites.items() if other != site for p in ps]
        judged = list(whole[site]) if whole is not None else list(pages)
        flags: dict[str, list[list[bool]]] = {
            "extractor": extractor_flags(judged, pages)
            if whole is not None
            else keep_all_flags(judged),
            "perfect-imitator": imitator_flags(judged),
            "c4-rules": c4_flags(judged),
            "template-dictionary": dictionary_flags(judged, template_dictionary(train)),
        }
        scores = {name: run_flags(judged, f, count_tokens, window) for name, f in flags.items()}
        rate = noise_rate(
            [p for other, ps in (whole or sites).items() if other != site for p in ps]
        )
        scores["random-control"] = [
            s
            for seed in range(seeds)
            for s in run_flags(judged, random_flags(judged, rate, seed), count_tokens, window)
        ]
        if refiner is not None:
            scores["refiner"] = run_programs(judged, refiner, count_tokens, window)
        noise = sum(lab is False for p in judged for lab in p.labels)
        for name, page_scores in scores.items():
            results.append(
                SiteResult(site, name, len(judged), noise, bootstrap(page_scores), page_scores)
            )
        log(f"{site}: {len(judged)} pages, {noise} noise lines judged")
    for name in dict.fromkeys(r.cleaner for r in results):
        mine = [r for r in results if r.cleaner == name]
        pooled = [s for r in mine for s in r.scores]
        results.append(
            SiteResult(
                ALL_SITES,
                name,
                sum(r.pages for r in mine),
                sum(r.noise_lines for r in mine),
                bootstrap(pooled),
                pooled,
            )
        )
    return results


def results_table(
    results: Sequence[SiteResult], metrics: Sequence[str] = ("noise_removed", "body_kept")
) -> str:
    """Markdown: one row per site and cleaner, each metric as value [low, high]."""
    head = "| site | cleaner | pages | noise lines | " + " | ".join(metrics) + " |"
    rule = "|---|---|---:|---:|" + "---:|" * len(metrics)
    rows = [head, rule]
    for r in results:
        cells = [_cell(r.figures[m]) for m in metrics]
        rows.append(
            f"| {r.site} | {r.cleaner} | {r.pages} | {r.noise_lines} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def _cell(figure: tuple[float, float, float]) -> str:
    value, low, high = figure
    if value != value:  # NaN: nothing to measure (no noise lines)
        return "—"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"
