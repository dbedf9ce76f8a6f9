"""Labels from many sites: real HTML manuals built by different generators, themes and domains,
each page's main-content text labelled line by line from the page's own structure.

A page's text is what resiliparse's main-content extraction leaves of it (``main_content=True``,
the ingest's other settings): what FineWeb-style corpora hold and what a refiner has to clean.
Gold is structural: each site names the element(s) that hold a page's body (``Site.body``) and the
navigation its generator puts inside them (``Site.drop``); the body, cut out of the parsed page, is
extracted with the same settings (no main-content pruning) into the gold text. A page line is
*body* where it aligns with a gold line (``difflib`` over the lines' lower-cased words, in order,
like ``real_pairs.aligned_labels``), *noise* elsewhere. Two repairs:

- **realigned** (against the body's own text): a noise line that equals no gold line but shares
  80% of its word trigrams with one is that body line as the extractor garbled it (it drops
  inline text: ``try…finally`` becomes ``tryfinally``), so body;
- **repaired** (against the site's template): a body line whose text occurs on at least
  ``TEMPLATE_SHARE`` of the site's pages and is structural noise on most of them is template
  text inside the body element, so noise.

The source text the page was built from (reStructuredText ``_sources``, AsciiDoc ``.txt``) is a
second opinion that is reported, not followed: its trigram verdict disagrees with the structure on
11–39% of lines, and in 99.9% of those it calls noise a body line the generator wrote ("New in
version 3.3.", "Return type:", autodoc docstrings, one-symbol code lines). Judged by that opinion
resiliparse removes 4–83% of a page's noise; judged by the structure, 100% on the Sphinx, MkDocs,
AsciiDoc and RDoc sites (``site_stats``: ``source_noise_removed`` vs ``noise_removed``).

The output has ``real_pairs.Pair``'s shape (``domain`` is the site's name), so code written for the
Python docs takes any site; ``SitePage`` adds what each opinion said. A site whose Debian package is
missing yields no pages, and ``missing_reason`` says which package to install.

``python -m prox_assets.core.site_pages [SITE ...]`` prints the per-site tables (docs/sites.md).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

from prox_assets.core.chunking import split_lines
from prox_assets.core.html_text import extract_text
from prox_assets.core.real_pairs import (
    _LINK,
    _TAG,
    Labels,
    Pair,
    _lf,
    pydocs_keep,
    trigram_labels,
)

if TYPE_CHECKING:
    from resiliparse.parse.html import DOMNode, ElementNode, HTMLTree

DPKG_CONFIG = Path("/etc/dpkg/dpkg.cfg.d")
TEMPLATE_SHARE = 0.3
TEMPLATE_MIN_PAGES = 3
REALIGN_MIN_WORDS = 6
REALIGN_SHARE = 0.8
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Site:
    name: str
    package: str  # the Debian package that ships the pages (deploy/setup.sh installs it)
    root: Path
    pages: tuple[str, ...]  # globs under root
    generator: str
    theme: str
    domain: str
    licence: str
    body: str  # CSS selector of the element(s) that hold a page's body
    drop: str = ""  # CSS selector of navigation the generator puts inside the body element
    source: str = ""  # a page's source text, relative to root ({rel}: the page path sans .html)
    skip: tuple[str, ...] = ()  # globs of files that are not pages (assets, search results)


SITES: tuple[Site, ...] = (
    Site(
        "pydocs",
        "python3.11-doc",
        Path("/usr/share/doc/python3.11/html"),
        ("**/*.html",),
        "Sphinx 5",
        "python-docs-theme",
        "programming language",
        "PSF-2.0",
        body='div[role="main"]',
        source="_sources/{rel}.rst.txt",
        skip=("_*",),
    ),
    Site(
        "flask",
        "python-flask-doc",
        Path("/usr/share/doc/python-flask-doc/html"),
        ("**/*.html",),
        "Sphinx 5",
        "pallets (flask)",
        "web framework",
        "BSD-3-clause",
        body='div.body[role="main"]',
        source="_sources/{rel}.rst.txt",
        skip=("_*",),
    ),
    Site(
        "csvkit",
        "csvkit-doc",
        Path("/usr/share/doc/csvkit/html"),
        ("**/*.html",),
        "Sphinx 5",
        "sphinx_rtd_theme",
        "data tools (CLI)",
        "Expat",
        body='div[itemprop="articleBody"]',
        source="_sources/{rel}.rst.txt",
        skip=("_*",),
    ),
    Site(
        "mkdocs",
        "mkdocs-doc",
        Path("/usr/share/doc/mkdocs/html"),
        ("**/*.html",),
        "MkDocs 1.4",
        "mkdocs (Bootstrap 4)",
        "documentation tooling",
        "BSD-2-clause",
        body='div[role="main"]',
    ),
    Site(
        "git",
        "git-doc",
        Path("/usr/share/doc/git-doc"),
        ("*.html", "howto/*.html", "technical/*.html"),
        "AsciiDoc",
        "asciidoc default",
        "version control",
        "GPL-2",
        body="div#header, div#content",
        source="{rel}.txt",
    ),
    Site(
        "lmdb",
        "lmdb-doc",
        Path("/usr/share/doc/lmdb-doc/html"),
        ("*.html",),
        "Doxygen",
        "doxygen default",
        "database library (C API)",
        "OpenLDAP-2.8",
        body="div.header, div.contents",
    ),
    Site(
        "debian-faq",
        "debian-faq",
        Path("/usr/share/doc/debian/FAQ"),
        ("*.en.html",),
        "DocBook XSL (chunked)",
        "docbook default",
        "operating system FAQ",
        "verbatim-copying permission (SPI)",
        body="body",
        drop="div.navheader, div.navfooter, div.toc",  # the chapter's own table of contents too
    ),
    Site(
        "gettext",
        "gettext-doc",
        Path("/usr/share/doc/gettext"),
        ("gettext_*.html",),
        "texi2html 1.78",
        "texi2html default",
        "internationalisation tools",
        "GFDL-1.2+ or GPL-2+",
        body="body",
        drop='table[cellpadding="1"], font[size="-1"]',
    ),
    Site(
        "gettext-man",
        "gettext-doc",
        Path("/usr/share/doc/gettext"),
        ("*.1.html", "*.3.html"),
        "groff -Thtml",
        "man page",
        "command-line manual pages",
        "GFDL-1.2+ or GPL-2+",
        body="body",
        drop='body > a[href^="#"]',  # the table of contents groff puts before the page
    ),
    Site(
        "r-manuals",
        "r-doc-html",
        Path("/usr/share/R/doc/manual"),
        ("R-*.html",),
        "makeinfo (Texinfo 6)",
        "texinfo default, one page per manual",
        "statistics language",
        "R FAQ GPL-2+; other manuals verbatim-copying permission (R Core)",
        body="body",
        # node headers (Next/Previous/Up), tables of contents, node menus, the indices
        drop="div.header, h2.contents-heading, div.contents, ul.section-toc, table.index-cp, "
        "table.index-fn, table.index-vr, table.index-ky, table.index-pg, table.index-tp",
    ),
    Site(
        "libsoup",
        "libsoup2.4-doc",
        Path("/usr/share/gtk-doc/html/libsoup-2.4"),
        ("*.html",),
        "GTK-Doc 1.33 (DocBook XSL)",
        "gtk-doc default",
        "HTTP library (C API)",
        "LGPL-2+",
        body="body",
        drop="table.navigation, div.footer",
    ),
    Site(
        "json-glib",
        "libjson-glib-doc",
        Path("/usr/share/doc/json-glib-1.0"),
        ("*.html",),
        "gi-docgen 2022",
        "gi-docgen (sidebar, search)",
        "JSON library (GObject API)",
        "LGPL-2.1+",
        body="section#main",
    ),
    Site(
        "jcdf",
        "libjcdf-java-doc",
        Path("/usr/share/doc/libjcdf-java-doc/api"),
        ("**/*.html",),
        "Javadoc (JDK 11+)",
        "javadoc HTML5",
        "scientific data format (Java API)",
        "LGPL-3",
        body='main[role="main"]',
        skip=("jquery/*", "resources/*"),
    ),
    Site(
        "asciidoctor-api",
        "asciidoctor-doc",
        Path("/usr/share/doc/asciidoctor-doc/html"),
        ("**/*.html",),
        "RDoc 6 (darkfish)",
        "darkfish",
        "text processing library (Ruby API)",
        "Expat",
        body='main[role="main"]',
        skip=("js/*", "css/*", "fonts/*", "images/*"),
    ),
)
SITE_BY_NAME = {site.name: site for site in SITES}


@dataclass
class Removal:
    """What main-content extraction did to the lines of the whole page's text, by one gold."""

    noise: int = 0
    noise_removed: int = 0
    body: int = 0
    body_kept: int = 0

    def add(self, gold: Labels, kept: Labels) -> None:
        for is_body, was_kept in zip(gold, kept):
            if is_body is None or was_kept is None:
                continue
            if is_body:
                self.body += 1
                self.body_kept += was_kept
            else:
                self.noise += 1
                self.noise_removed += not was_kept


@dataclass
class SitePage:
    """One page's gold: ``pair.labels`` per line of the main-content text (repaired), with what
    each opinion said."""

    pair: Pair
    structure: Labels  # the body element's alignment alone, before repair
    source: Labels | None  # True where the source text holds the line; None without a source
    template: list[bool] = field(default_factory=list)  # per line: site template (by repair)
    repaired: list[int] = field(default_factory=list)  # lines the template opinion relabelled
    # noise by alignment, body by their words: a body line the extraction garbled
    realigned: list[int] = field(default_factory=list)
    # the extractor on the whole page, judged by the structure and (where one exists) the source
    extractor: dict[str, Removal] = field(default_factory=dict)
    # the whole page's text (no main-content extraction: the ingest's text today) with its
    # structural labels, realigned but not template-repaired: for audit and the old behaviour
    whole: Pair | None = None


def _dpkg_excludes(root: Path, config: Path = DPKG_CONFIG) -> bool:
    """Whether a dpkg path-exclude drops files under root (slim container images exclude
    /usr/share/doc: the package installs and its pages are not there)."""
    if not config.is_dir():
        return False
    for conf in config.iterdir():
        for line in conf.read_text(errors="replace").splitlines():
            if line.startswith("path-exclude") and fnmatch(f"{root}/x.html", line.split()[-1]):
                return True
    return False


def missing_reason(site: Site) -> str | None:
    """Why the site's pages cannot be read here (its package is not installed), or None."""
    if not site.root.is_dir():
        why = f"{site.root} missing: apt-get install --no-install-recommends {site.package}"
        if _dpkg_excludes(site.root):
            why += f" (and lift the dpkg path-exclude in {DPKG_CONFIG} that drops its pages)"
        return why
    if not page_paths(site, limit=1):
        return f"no pages matching {site.pages} under {site.root} (package {site.package})"
    return None


def page_paths(site: Site, limit: int | None = None) -> list[Path]:
    """The site's HTML pages in a stable order (symlinked duplicates left out)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for pattern in site.pages:
        for path in sorted(site.root.glob(pattern)):
            rel = path.relative_to(site.root).as_posix()
            if path.is_symlink() or not path.is_file() or path in seen:
                continue
            if any(fnmatch(rel, skip) for skip in site.skip):
                continue
            seen.add(path)
            paths.append(path)
            if limit is not None and len(paths) >= limit:
                return paths
    return paths


def page_rel(site: Site, path: Path) -> str:
    return path.relative_to(site.root).as_posix().removesuffix(".html")


def decode_page(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else what resiliparse detects. Not the ingest's
    decoding: resiliparse's detector reads valid UTF-8 as cp1252, cp1250 or iso8859-7 (796 of the
    1,544 pages here) and garbles the 26 of those that carry non-ASCII text; gold is clean text."""
    from resiliparse.parse.encoding import detect_encoding

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(detect_encoding(data) or "utf-8", "replace")


def main_content_text(html: str) -> str:
    """What resiliparse's main-content extraction leaves of a page (the ingest settings)."""
    return _lf(extract_text(html, main_content=True))


def body_tree(html: str, site: Site) -> tuple[HTMLTree, list[ElementNode]] | None:
    """The page's tree cut down to the element(s) holding its body, without the navigation the
    site's generator puts inside them, and those elements; None when the page has none.

    Cut in the parsed tree, not serialised and parsed again: resiliparse's extraction of a
    re-parsed manual keeps the source line breaks of whole chapters (R-exts: 3,745 of 7,959 body
    lines broke differently from the page's own extraction)."""
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    if tree.document is None:
        return None
    nodes = list(tree.document.query_selector_all(site.body))
    # a match inside another match is already part of that one
    tops = [n for n in nodes if not any(o != n and o.contains(n) for o in nodes)]
    if not tops:
        return None
    if site.drop:
        for node in list(tree.document.query_selector_all(site.drop)):
            if any(top.contains(node) for top in tops):
                node.decompose()

    def prune(node: DOMNode) -> None:
        for child in list(node.child_nodes):
            if not any(child.contains(top) for top in tops):
                child.decompose()
            elif not any(child == top for top in tops):
                prune(child)

    prune(tree.document)
    return tree, tops


def body_text(tree: HTMLTree) -> str:
    """The body's text as the ingest extractor gives it (no main-content pruning: all of it)."""
    return _lf(extract_text(tree))


def body_keep(tops: Sequence[ElementNode]) -> bool:
    """The document-level label, as for the Python docs: enough words, not mostly links."""
    markup = "".join(top.html for top in tops)
    words = len(_TAG.sub(" ", markup).split())
    link_words = sum(len(_TAG.sub(" ", m).split()) for m in _LINK.findall(markup))
    return pydocs_keep(words, link_words / max(words, 1))


def _align_key(line: str) -> str:
    """A line's words, lower-cased: what main-content extraction changes about a body line
    (permalink pilcrows it drops, spacing) does not break the alignment; a line of symbols only
    ("}", "...") is its own key."""
    words = _WORD.findall(line.lower())
    return " ".join(words) if words else line.strip()


def align(page_text: str, gold_text: str) -> Labels:
    """Per page line: True where it aligns with a gold line (in order), False elsewhere, None
    when blank."""
    page = [_align_key(ln) for ln in split_lines(page_text)]
    gold = [key for ln in split_lines(gold_text) if (key := _align_key(ln))]
    # blank lines left out of the alignment: they would be its most frequent element, and
    # difflib without autojunk is quadratic in such elements (minutes on a one-page manual)
    filled = [i for i, ln in enumerate(page) if ln]
    in_gold = [False] * len(page)
    matcher = difflib.SequenceMatcher(None, [page[i] for i in filled], gold, autojunk=False)
    for a, _, n in matcher.get_matching_blocks():
        for i in filled[a : a + n]:
            in_gold[i] = True
    return [None if not ln else inside for ln, inside in zip(page, in_gold)]


def _trigrams(line: str) -> list[tuple[str, ...]]:
    words = _WORD.findall(line.lower())
    return list(zip(words, words[1:], words[2:]))


def realign(page_text: str, gold_text: str, structure: Labels) -> tuple[Labels, list[int]]:
    """(labels, lines relabelled body): a noise line that equals no gold line but whose words
    run together equal a gold line's, or (of at least REALIGN_MIN_WORDS words) that shares
    REALIGN_SHARE of its word trigrams with one gold line, is that body line as the main-content
    extraction garbled it (it drops inline text: ``try…finally`` becomes ``tryfinally``,
    ``U+0000–U+10FFFF`` becomes ``U+0000U+10FFFF``). One gold line, not
    the gold as a whole: a navigation bar that strings two headings together ("Chapter 6. ...
    Chapter 8. ...") and a line equal to a heading stay noise."""
    gold_lines = split_lines(gold_text)
    gold_keys = {_align_key(ln) for ln in gold_lines}
    # a short line garbled the same way has too few trigrams: equal words run together instead
    # ("ifelse" for "if … else", "U-00000000U-0000007F" for "U-00000000 – U-0000007F")
    run_together = {key.replace(" ", "") for key in gold_keys} - {""}
    holders: dict[tuple[str, ...], set[int]] = {}
    for j, line in enumerate(gold_lines):
        for tri in _trigrams(line):
            holders.setdefault(tri, set()).add(j)
    labels = list(structure)
    realigned = []
    for i, line in enumerate(split_lines(page_text)):
        if labels[i] is not False or (key := _align_key(line)) in gold_keys:
            continue
        if _WORD.search(line) and key.replace(" ", "") in run_together:
            labels[i] = True
            realigned.append(i)
            continue
        if len(_WORD.findall(line)) < REALIGN_MIN_WORDS:
            continue
        tris = _trigrams(line)
        shared = Counter(j for tri in tris for j in holders.get(tri, ()))
        if shared and max(shared.values()) >= REALIGN_SHARE * len(tris):
            labels[i] = True
            realigned.append(i)
    return labels, realigned


def normalised(line: str) -> str:
    return _SPACE.sub(" ", line.strip().lower())


def label_page(site: Site, path: Path) -> SitePage | None:
    """The structural gold of one page (not yet repaired: that needs the whole site), or None
    when it has no body element or no main-content text."""
    html = decode_page(path.read_bytes())
    page_text = main_content_text(html)
    if not page_text.strip():
        return None
    body = body_tree(html, site)
    if body is None:
        return None
    tree, tops = body
    gold = body_text(tree)
    structure = align(page_text, gold)
    labels, realigned = realign(page_text, gold, structure)
    # the whole page's text: what the extractor removed of its noise and kept of its body
    whole = _lf(extract_text(html))
    kept = align(whole, page_text)
    whole_structure = align(whole, gold)
    extractor = {"structure": Removal()}
    extractor["structure"].add(whole_structure, kept)
    source = None
    if site.source:
        source_path = site.root / site.source.format(rel=page_rel(site, path))
        if source_path.is_file():
            source_text = source_path.read_text(errors="replace")
            source = trigram_labels(page_text, source_text)
            extractor["source"] = Removal()
            extractor["source"].add(trigram_labels(whole, source_text), kept)
    name, keep = f"{site.name}:{page_rel(site, path)}", body_keep(tops)
    pair = Pair(name, site.name, page_text, gold, labels, keep)
    whole_labels, _ = realign(whole, gold, whole_structure)
    return SitePage(
        pair,
        structure,
        source,
        realigned=realigned,
        extractor=extractor,
        whole=Pair(name, site.name, whole, gold, whole_labels, keep),
    )


def template_lines(pages: Sequence[SitePage]) -> set[str]:
    """Normalised lines that occur on at least TEMPLATE_SHARE of the pages (and on at least
    TEMPLATE_MIN_PAGES): the site's template by repetition."""
    counts: Counter[str] = Counter()
    for page in pages:
        counts.update({normalised(ln) for ln in split_lines(page.pair.page_text) if ln.strip()})
    floor = max(TEMPLATE_MIN_PAGES, TEMPLATE_SHARE * len(pages))
    return {line for line, n in counts.items() if n >= floor}


def repair(pages: Sequence[SitePage]) -> None:
    """Mark, in place, each page's template lines, and relabel as noise the body lines that are
    template and structural noise on most pages where they occur: template text a generator also
    put inside the body element. A template line that is mostly body (a repeated heading such as
    "Parameters", "SYNOPSIS") stays body."""
    template = template_lines(pages)
    as_noise: Counter[str] = Counter()
    as_body: Counter[str] = Counter()
    for page in pages:
        keys = [normalised(ln) for ln in split_lines(page.pair.page_text)]
        page.template = [key in template for key in keys]
        for key, label, is_template in zip(keys, page.structure, page.template):
            if label is not None and is_template:
                (as_body if label else as_noise)[key] += 1
    for page in pages:
        for i, line in enumerate(split_lines(page.pair.page_text)):
            key = normalised(line)
            if page.structure[i] and page.template[i] and as_noise[key] > as_body[key]:
                page.pair.labels[i] = False
                page.repaired.append(i)


def site_pages(site: Site, limit: int | None = None) -> list[SitePage]:
    """The site's labelled pages (the first ``limit`` pages only, when given), repaired against
    the template of those pages. Empty when the site's package is missing."""
    if missing_reason(site) is not None:
        return []
    pages = [p for path in page_paths(site, limit) if (p := label_page(site, path)) is not None]
    repair(pages)
    return pages


def gold_method(site: Site) -> str:
    """The structural gold: the body element(s), less the generator's navigation inside them."""
    return f"`{site.body}`" + (f" minus `{site.drop}`" if site.drop else "")


def second_opinions(site: Site) -> str:
    return "template, source (reported)" if site.source else "template"


def site_stats(site: Site, pages: Sequence[SitePage]) -> dict:
    """Per-site figures: pages, lines, the noise share the extractor left; on the whole pages, the
    share of noise it removed and of body it kept (content pages only: index pages are lists of
    links that it rightly drops), by the structure and by the source; how often each second
    opinion disagreed with the structure (template: a body line that is template text or a noise
    line that is not; source: its trigram verdict differs)."""
    lines = noise = repaired = realigned = template_disagreed = 0
    source_lines = source_disagreed = 0
    removal = {"structure": Removal(), "source": Removal()}
    for page in pages:
        judged = [(s, t) for s, t in zip(page.structure, page.template) if s is not None]
        lines += len(judged)
        noise += sum(label is False for label in page.pair.labels)
        repaired += len(page.repaired)
        realigned += len(page.realigned)
        template_disagreed += sum(s == t for s, t in judged)  # body and template, or neither
        for gold, counts in page.extractor.items():
            total = removal[gold]
            total.noise += counts.noise
            total.noise_removed += counts.noise_removed
            if page.pair.keep:
                total.body += counts.body
                total.body_kept += counts.body_kept
        if page.source is not None:
            both = [(s, o) for s, o in zip(page.structure, page.source) if s is not None]
            source_lines += len(both)
            source_disagreed += sum(s != o for s, o in both)

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "site": site.name,
        "package": site.package,
        "generator": site.generator,
        "theme": site.theme,
        "domain": site.domain,
        "licence": site.licence,
        "pages": len(pages),
        "kept_pages": sum(p.pair.keep for p in pages),
        "lines": lines,
        "noise_share": noise / lines if lines else 0.0,
        "gold": gold_method(site),
        "second_opinions": second_opinions(site),
        "noise_removed": share(removal["structure"].noise_removed, removal["structure"].noise),
        "body_kept": share(removal["structure"].body_kept, removal["structure"].body),
        "source_noise_removed": share(removal["source"].noise_removed, removal["source"].noise),
        "source_body_kept": share(removal["source"].body_kept, removal["source"].body),
        "realigned": realigned / lines if lines else 0.0,
        "repaired": repaired / lines if lines else 0.0,
        "template_disagreed": template_disagreed / lines if lines else 0.0,
        "source_disagreed": share(source_disagreed, source_lines),
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}%}"


def stats_table(rows: Iterable[dict]) -> str:
    """Markdown tables of ``site_stats`` rows: the sources, then the figures."""
    sources = [
        "| site | package | generator | theme | domain | licence | gold: body element | 2nd opinions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    figures = [
        "| site | pages (content) | lines | noise left | extractor: noise removed | body kept "
        "| by source: noise removed | body kept | realigned | repaired | template disagreed "
        "| source disagreed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sources.append(
            f"| {r['site']} | {r['package']} | {r['generator']} | {r['theme']} | {r['domain']} "
            f"| {r['licence']} | {r['gold']} | {r['second_opinions']} |"
        )
        figures.append(
            f"| {r['site']} | {r['pages']} ({r['kept_pages']}) | {r['lines']:,} "
            f"| {_pct(r['noise_share'])} | {_pct(r['noise_removed'])} | {_pct(r['body_kept'])} "
            f"| {_pct(r['source_noise_removed'])} | {_pct(r['source_body_kept'])} "
            f"| {_pct(r['realigned'], 2)} | {_pct(r['repaired'], 2)} "
            f"| {_pct(r['template_disagreed'])} "
            f"| {_pct(r['source_disagreed'])} |"
        )
    return "\n".join(sources) + "\n\n" + "\n".join(figures)


def main(argv: Sequence[str] = ()) -> int:
    names = list(argv) or [site.name for site in SITES]
    rows = []
    for name in names:
        site = SITE_BY_NAME[name]
        reason = missing_reason(site)
        if reason is not None:
            print(f"skipped {site.name}: {reason}", file=sys.stderr)
            continue
        rows.append(site_stats(site, site_pages(site)))
    print(stats_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
