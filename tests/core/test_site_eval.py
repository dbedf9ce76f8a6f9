"""Leave-one-site-out evaluation (issue 27): the path scores a labels-verbatim cleaner as perfect,
the random control as poor, and the C4 baseline by the filter's own line edits."""

from __future__ import annotations

import functools

import pytest

from prox_assets.core.chunking import split_lines, whitespace_token_counter
from prox_assets.core.real_pairs import Pair
from prox_assets.core.site_eval import (
    ALL_SITES,
    _lines_not_kept,
    c4_flags,
    dictionary_flags,
    figures,
    leave_one_site_out,
    results_table,
    run_flags,
    template_dictionary,
)
from prox_assets.core.site_pages import SITE_BY_NAME, label_page, missing_reason, page_paths

# sites with noise left after extraction, of three generators (Doxygen, DocBook, groff)
SITES_WITH_RESIDUAL_NOISE = ("lmdb", "debian-faq", "gettext-man")


@functools.cache
def _pages(site_name: str, n: int = 4) -> tuple[Pair, ...]:
    site = SITE_BY_NAME[site_name]
    if (why := missing_reason(site)) is not None:
        pytest.skip(f"{site_name}: {why}")
    pages = []
    for path in sorted(page_paths(site), key=lambda p: (p.stat().st_size, p.name)):
        if path.stat().st_size < 4000:
            continue
        page = label_page(site, path)
        if page is not None and page.pair.keep and any(lab is False for lab in page.pair.labels):
            pages.append(page.pair)
        if len(pages) == n:
            break
    assert pages, f"{site_name}: no page with noise left"
    return tuple(pages)


def _sites() -> dict[str, list[Pair]]:
    return {name: list(_pages(name)) for name in SITES_WITH_RESIDUAL_NOISE}


def test_labels_verbatim_score_perfect_and_the_control_does_not_through_the_path():
    results = leave_one_site_out(_sites(), whitespace_token_counter, window=120, seeds=2)
    by = {(r.site, r.cleaner): r.figures for r in results}
    for site in [*SITES_WITH_RESIDUAL_NOISE, ALL_SITES]:
        ceiling = by[(site, "perfect-imitator")]
        # windows, programs and the executor in between: the ceiling of the path is still ~1
        assert ceiling["noise_removed"][0] >= 0.95 and ceiling["body_kept"][0] >= 0.95, site
        assert by[(site, "extractor")]["noise_removed"][0] == 0.0  # extracted text: nothing more
        control = by[(site, "random-control")]
        assert control["noise_removed"][0] < 0.5 and control["line_f1"][0] < ceiling["line_f1"][0]
    pooled = by[(ALL_SITES, "perfect-imitator")]["noise_removed"]
    assert pooled[1] <= pooled[0] <= pooled[2]  # an interval around the value
    table = results_table(results)
    assert "| lmdb | perfect-imitator |" in table and "[" in table


def test_a_cleaner_that_learns_never_sees_the_site_it_is_judged_on():
    """The template dictionary of the other sites holds none of this site's own template lines
    unless another site has them too: a leak would make it score like the imitator."""
    sites = _sites()
    for site, pages in sites.items():
        train = [p for other, ps in sites.items() if other != site for p in ps]
        own = template_dictionary(pages, k=1)
        learned = template_dictionary(train, k=1)
        assert own - learned, f"{site}: its own noise lines all came from other sites"
    results = leave_one_site_out(sites, whitespace_token_counter, window=120, seeds=1)
    by = {(r.site, r.cleaner): r.figures for r in results}
    assert by[(ALL_SITES, "template-dictionary")]["noise_removed"][0] < 0.9


def test_c4_baseline_keeps_the_filters_own_line_edits():
    """A page C4 keeps but edits scores differently from the raw page: the removed lines are the
    ones datatrove's C4QualityFilter took out (here: lines without terminal punctuation)."""
    body = [
        f"Sentence number {i} is a complete sentence with enough words in it." for i in range(8)
    ]
    text = "\n".join(["Home | Docs | Search", *body, "Copyright 2024 Example Corp", "Next"])
    labels = [False] + [True] * len(body) + [False, False]
    page = Pair("edited:1", "edited", text, "\n".join(body), labels, True)
    flags = c4_flags([page])[0]
    assert flags == [True] + [False] * len(body) + [True, True]  # the filter's own edits
    edited = figures(run_flags([page], [flags], whitespace_token_counter, 120))
    raw = figures(run_flags([page], [[False] * len(labels)], whitespace_token_counter, 120))
    assert edited["noise_removed"] == 1.0 and raw["noise_removed"] == 0.0
    assert edited["body_kept"] == raw["body_kept"] == 1.0
    # a page C4 drops (a curly bracket: code) loses every line
    code = Pair(
        "code:1",
        "code",
        text + "\nThe call f() { return 0; } compiles fine.",
        "",
        [*labels, True],
        True,
    )
    assert all(c4_flags([code])[0][i] for i, ln in enumerate(split_lines(code.page_text)) if ln)


def test_lines_not_kept_follows_order_and_blank_lines():
    lines = ["a", "", "b", "d", "c  e"]
    assert _lines_not_kept(lines, ["a", " c e"]) == [False, False, True, True, False]
    assert dictionary_flags(
        [Pair("p", "d", "Next\nBody text", "", [False, True], True)], {"next"}
    ) == [[True, False]]
