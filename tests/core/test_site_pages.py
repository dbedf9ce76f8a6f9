"""Labels from many sites: structural gold on real pages of each installed manual."""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections import Counter
from pathlib import Path

import pytest

from prox_assets.core.chunking import split_lines
from prox_assets.core.html_text import extract_text
from prox_assets.core.real_pairs import Pair
from prox_assets.core.site_pages import (
    SITES,
    Site,
    SitePage,
    _align_key,
    _dpkg_excludes,
    align,
    decode_page,
    label_page,
    missing_reason,
    page_paths,
    realign,
    repair,
    site_pages,
    site_stats,
    stats_table,
)

PAGES_PER_SITE = 3
REPO = Path(__file__).resolve().parents[2]


@functools.cache  # labelled once per test session: tests that change pages copy them first
def _small_labelled_pages(site: Site, n: int = PAGES_PER_SITE) -> list[SitePage]:
    """n labelled pages among the site's smallest with some prose (fast, and still real pages).
    A page may have no main-content text (a redirect, a link list); most must have one."""
    paths = sorted(page_paths(site), key=lambda p: (p.stat().st_size, p.name))
    tried = [p for p in paths if p.stat().st_size > 4000][: 2 * n] or paths[: 2 * n]
    pages: list[SitePage] = []
    for path in tried:
        if len(pages) == n:
            return pages
        if (page := label_page(site, path)) is not None:
            pages.append(page)
    assert len(pages) >= min(n, len(tried)), f"{site.name}: {len(pages)} of {len(tried)} labelled"
    return pages


def _installed(site: Site) -> Site:
    reason = missing_reason(site)
    if reason is not None:
        pytest.skip(f"{site.name}: {reason}")
    return site


@pytest.mark.parametrize("site", SITES, ids=lambda s: s.name)
def test_structural_gold_on_real_pages(site: Site) -> None:
    site = _installed(site)
    for page in _small_labelled_pages(site):
        name = page.pair.name
        lines = split_lines(page.pair.page_text)
        assert len(page.pair.labels) == len(lines)
        assert any(page.pair.labels), f"{name}: no line of the body element in the extraction"
        gold_keys = {_align_key(ln) for ln in split_lines(page.pair.gold_text) if ln.strip()}
        for line, label in zip(lines, page.structure):
            # blank lines are unlabelled, every body line is a line of the body element's text
            assert (label is None) == (not line.strip())
            if label:
                assert _align_key(line) in gold_keys, f"{name}: body line not in the body: {line!r}"
        assert name.startswith(f"{site.name}:") and page.pair.domain == site.name
        # the body element leaves out the site's template: fewer lines than the whole page's text
        path = site.root / (name.split(":", 1)[1] + ".html")
        whole_page = extract_text(decode_page(path.read_bytes()))
        gold_lines = [ln for ln in split_lines(page.pair.gold_text) if ln.strip()]
        whole_lines = [ln for ln in whole_page.splitlines() if ln.strip()]
        assert len(gold_lines) < len(whole_lines), f"{name}: `{site.body}` holds the whole page"


@pytest.mark.parametrize("site", [s for s in SITES if s.drop], ids=lambda s: s.name)
def test_drop_selectors_take_navigation_out_of_the_gold(site: Site) -> None:
    """The generator's navigation inside the body element leaves the gold and nothing else
    does: the gold with the drop is the gold without it less some lines, and no page line is
    body with the drop that was noise without it."""
    site = _installed(site)
    undropped = dataclasses.replace(site, drop="")
    for page in _small_labelled_pages(site)[:2]:
        path = site.root / (page.pair.name.split(":", 1)[1] + ".html")
        whole = label_page(undropped, path)
        assert whole is not None
        kept = [ln.strip() for ln in split_lines(page.pair.gold_text) if ln.strip()]
        before = [ln.strip() for ln in split_lines(whole.pair.gold_text) if ln.strip()]
        assert 0 < len(kept) < len(before), f"{path}: `{site.drop}` removed nothing or all"
        assert not Counter(kept) - Counter(before), f"{path}: the drop added gold lines"
        assert all(not a or b for a, b in zip(page.structure, whole.structure))


@pytest.mark.parametrize("site", SITES, ids=lambda s: s.name)
def test_the_whole_page_is_labelled_too(site: Site) -> None:
    """The unextracted page text (the ingest's today) comes with its own labels: more noise than
    the extracted text, and every body line of the extracted text is a body line there too."""
    site = _installed(site)
    page = _small_labelled_pages(site)[0]
    assert page.whole is not None
    whole = page.whole
    assert (
        len(whole.labels) == len(split_lines(whole.page_text))
        and whole.gold_text == page.pair.gold_text
    )
    assert whole.labels.count(False) >= page.pair.labels.count(False) - len(page.repaired)
    whole_body = {_align_key(ln) for ln, b in zip(split_lines(whole.page_text), whole.labels) if b}
    extracted = zip(split_lines(page.pair.page_text), page.structure)
    assert all(_align_key(ln) in whole_body for ln, b in extracted if b)


def test_known_residual_noise_is_labelled_noise() -> None:
    """Lines that main-content extraction leaves and that sit outside the body element: groff's
    table of contents of a man page, Doxygen's project name, texi2html's navigation bar."""
    expected = {
        "gettext-man": ("msgfmt.1.html", "SEE ALSO"),
        "lmdb": ("group__mdb.html", "LMDB"),
        "gettext": ("gettext_7.html", "[Top]"),
    }
    checked = 0
    for site in SITES:
        if site.name not in expected or missing_reason(site) is not None:
            continue
        name, text = expected[site.name]
        page = label_page(site, site.root / name)
        assert page is not None
        lines = split_lines(page.pair.page_text)
        labels = [lab for ln, lab in zip(lines, page.pair.labels) if text in ln]
        assert False in labels, f"{site.name}/{name}: {text!r} never labelled noise"
        checked += 1
    if not checked:
        pytest.skip("none of gettext-doc, lmdb-doc installed")


def test_a_site_whose_package_is_missing_is_skipped_with_its_package_named(tmp_path: Path) -> None:
    site = Site(
        "absent",
        "some-absent-doc",
        tmp_path / "not-installed",
        ("*.html",),
        "Sphinx",
        "alabaster",
        "none",
        "none",
        body="div.body",
    )
    reason = missing_reason(site)
    assert reason is not None and "some-absent-doc" in reason and "apt-get install" in reason
    assert site_pages(site) == []
    (tmp_path / "not-installed").mkdir()
    assert "no pages matching" in (missing_reason(site) or "")


def test_a_slim_image_that_excludes_the_pages_is_named(tmp_path: Path) -> None:
    """Slim Debian images install doc packages without /usr/share/doc: the reason says so."""
    config = tmp_path / "dpkg.cfg.d"
    config.mkdir()
    (config / "docker").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
    )
    assert _dpkg_excludes(Path("/usr/share/doc/absent-doc/html"), config)
    assert not _dpkg_excludes(Path("/usr/share/R/doc/manual"), config)
    assert not _dpkg_excludes(Path("/usr/share/doc/absent-doc/html"), tmp_path / "none")


def _page(lines: list[str], structure: list[bool]) -> SitePage:
    text = "\n".join(lines)
    return SitePage(Pair("t:p", "t", text, "", list(structure), True), list(structure), None)


def test_repair_relabels_template_text_inside_the_body_element_only() -> None:
    """Footer text that is noise on three pages and inside the body element on a fourth becomes
    noise there; a heading repeated as body on every page stays body."""
    pages = [
        _page([f"Intro {i}", "Parameters", "Generated by doxygen"], [True, True, False])
        for i in range(3)
    ]
    pages.append(_page(["Intro 3", "Parameters", "Generated by doxygen"], [True, True, True]))
    repair(pages)
    assert pages[3].pair.labels == [True, True, False] and pages[3].repaired == [2]
    assert all(p.pair.labels[:2] == [True, True] for p in pages)
    assert pages[0].template == [False, True, True]
    stats = site_stats(SITES[0], pages)
    assert stats["lines"] == 12 and stats["noise_share"] == pytest.approx(4 / 12)
    assert stats["repaired"] == pytest.approx(1 / 12)


def test_realign_takes_back_body_lines_the_extraction_garbled() -> None:
    """Main-content extraction drops inline text (``try…finally`` -> ``tryfinally``); such a line
    is body. A navigation bar made of two headings, or a heading repeated out of order, is not."""
    gold = "\n".join(
        [
            "Chapter 6. The Debian archives",
            "The try…finally statement always runs its cleanup clause when the block exits.",
            "Chapter 8. The Debian package management tools",
            "U-00000000 – U-0000007F",
        ]
    )
    page = "\n".join(
        [
            "The tryfinally statement always runs its cleanup clause when the block exits.",
            "Chapter 8. The Debian package management tools",
            "Chapter 6. The Debian archives  Chapter 8. The Debian package management tools",
            "Chapter 6. The Debian archives",
            "U-00000000U-0000007F",
            "Chapter 6",
        ]
    )
    structure = align(page, gold)
    assert structure == [False, True, False, False, False, False]
    labels, realigned = realign(page, gold, structure)
    assert labels == [True, True, False, False, True, False] and realigned == [0, 4]


def test_valid_utf8_is_read_as_utf8() -> None:
    html = "<html><body><p>Curaçao — naïve “quotes”</p></body></html>"
    assert decode_page(html.encode()) == html
    assert decode_page(html.encode("cp1252")).startswith("<html><body><p>Cura")


def test_stats_of_installed_sites() -> None:
    rows = []
    for site in SITES:
        if missing_reason(site) is None:
            pages = copy.deepcopy(_small_labelled_pages(site)[:1])
            repair(pages)
            rows.append(site_stats(site, pages))
    if not rows:
        pytest.skip("no site's package installed")
    for row in rows:
        assert row["pages"] > 0 and row["lines"] > 0, row
        assert 0.0 <= row["noise_share"] < 1.0, row
        assert row["body_kept"] is None or 0.0 < row["body_kept"] <= 1.0, row
        assert (row["source_body_kept"] is None) == (row["source_disagreed"] is None), row
    sources, figures = stats_table(rows).split("\n\n")
    assert sources.count("\n") == figures.count("\n") == len(rows) + 1


def test_the_extractor_is_judged_on_the_whole_page() -> None:
    """On a Sphinx page the sidebar, relbars and footer are whole-page noise that main-content
    extraction removes; a man page's own table of contents it keeps (residual noise)."""
    checked = 0
    for name, removes in (("flask", True), ("gettext-man", False)):
        site = next(s for s in SITES if s.name == name)
        if missing_reason(site) is not None:
            continue
        page = _small_labelled_pages(site)[0]
        counts = page.extractor["structure"]
        assert counts.noise > 0 and counts.body_kept <= counts.body
        assert (counts.noise_removed == counts.noise) == removes, (name, counts)
        assert (False in page.pair.labels) != removes, name
        checked += 1
    if not checked:
        pytest.skip("neither python-flask-doc nor gettext-doc installed")


def test_setup_installs_every_site_package() -> None:
    setup = (REPO / "deploy" / "setup.sh").read_text()
    listed = set(re.search(r"SITE_PACKAGES=\(([^)]*)\)", setup).group(1).split())  # type: ignore[union-attr]
    assert {site.package for site in SITES} <= listed | {"python3.11-doc"}


def test_the_ingest_decodes_valid_utf8_pages_as_utf8():
    """resiliparse's detector reads this valid UTF-8 page (no charset declared in HTTP) as cp1250
    and garbled its quotes and dashes; the ingest now tries UTF-8 before the detector."""
    from prox_assets.core.html_text import decode_html

    page = Path("/usr/share/doc/python-flask-doc/html/deploying/proxy_fix.html")
    if not page.is_file():
        pytest.skip("python-flask-doc is not installed (deploy/setup.sh installs it)")
    data = page.read_bytes()
    assert decode_html(data) == (data.decode("utf-8"), "")
    assert decode_html(b"caf\xe9 cr\xe8me")[0] == "café crème"  # not UTF-8: the detector decides
    assert decode_html("naïve".encode("latin-1"), "latin-1")[0] == "naïve"  # declared wins
