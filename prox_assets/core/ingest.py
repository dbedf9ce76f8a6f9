"""Reading raw inputs into one document schema, quarantining what cannot be read.

Formats: JSONL (optionally gzipped), Parquet, single HTML pages and WARC archives. HTML is turned
into crawler-like plain text that *keeps* the boilerplate (navigation, footers, link lists), the
way a crawl extractor such as Common Crawl's WET does, because removing it is the refiner's job.

Every candidate document ends in exactly one of two places: the shard's documents, or the
quarantine with a reason. ``IngestResult.n_read == len(documents) + len(quarantined)`` always.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import polars as pl

MAX_DOC_BYTES = 10 * 1024 * 1024
SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".parquet", ".html", ".htm",
                      ".warc", ".warc.gz")

DOCUMENT_SCHEMA = {
    "doc_id": pl.String,
    "shard": pl.String,
    "source": pl.String,
    "url": pl.String,
    "text": pl.String,
    "metadata": pl.String,  # JSON object
    "n_chars": pl.Int64,
    "n_words": pl.Int64,
}


class UnreadableInput(Exception):
    """Nothing at all could be read from a file."""


@dataclass(frozen=True)
class Quarantined:
    locator: str  # line:N, row:N, record:N, or file
    reason: str
    detail: str = ""
    sample: str = ""


@dataclass
class IngestResult:
    documents: list[dict] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def n_read(self) -> int:
        return len(self.documents) + len(self.quarantined)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.documents, schema=DOCUMENT_SCHEMA)


def shard_name(filename: str) -> str:
    """A partition key from a file name: lower case, [a-z0-9_-], supported suffix removed."""
    name = filename.rsplit("/", 1)[-1].lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-")
    return name or "shard"


def format_of(filename: str) -> str | None:
    name = filename.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".html", ".htm")):
        return "html"
    if name.endswith((".warc", ".warc.gz")):
        return "warc"
    return None


def doc_id_of(text: str) -> str:
    """Stable content hash: the same text always gets the same id, wherever it came from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _sample(data: bytes | str, n: int = 120) -> str:
    return repr(data[:n])


# --- readers: each yields (locator, raw fields) or a Quarantined -----------------------------
Raw = tuple[str, dict]


def _read_jsonl(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    stream = gzip.GzipFile(fileobj=f) if filename.lower().endswith(".gz") else f
    lineno = 0
    try:
        while True:
            line = stream.readline(max_bytes + 1)
            if not line:
                return
            lineno += 1
            if len(line) > max_bytes and not line.endswith(b"\n"):
                while chunk := stream.readline(1 << 20):  # skip the rest of this line
                    if chunk.endswith(b"\n"):
                        break
                yield Quarantined(f"line:{lineno}", "document_too_large",
                                  f"line longer than {max_bytes} bytes", _sample(line))
                continue
            if not line.strip():
                continue  # blank lines are not records
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Quarantined(f"line:{lineno}", "undecodable_bytes", str(exc), _sample(line))
                continue
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError as exc:
                yield Quarantined(f"line:{lineno}", "malformed_json", str(exc), _sample(decoded))
                continue
            if not isinstance(record, dict):
                yield Quarantined(f"line:{lineno}", "wrong_schema",
                                  f"expected an object, got {type(record).__name__}", _sample(decoded))
                continue
            yield f"line:{lineno}", record
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
        yield Quarantined(f"line:{lineno + 1}", "corrupt_file", f"stopped reading: {exc}")


def _read_parquet(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UnreadableInput(f"{filename}: not a readable Parquet file ({exc})") from exc
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise UnreadableInput(f"{filename}: no 'text' column (columns: {schema.names})")
    import pyarrow as pa

    if not (pa.types.is_string(schema.field("text").type) or pa.types.is_large_string(schema.field("text").type)):
        raise UnreadableInput(f"{filename}: column 'text' is {schema.field('text').type}, not string")
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"row:{row}", record
            row += 1


def _html_to_text(data: bytes) -> tuple[str | None, str]:
    """Crawler-like text of a page (boilerplate kept) or (None, why)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import detect_encoding
    from resiliparse.parse.html import HTMLTree

    encoding = detect_encoding(data)
    try:
        html = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        return None, f"{encoding}: {exc}"
    tree = HTMLTree.parse(html)
    text = extract_plain_text(
        tree, main_content=False, preserve_formatting=True, list_bullets=True,
        alt_texts=False, links=False, form_fields=False, noscript=False,
    )
    return text, ""


def _read_html(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    data = f.read(max_bytes * 4 + 1)  # markup is larger than the text it carries
    if len(data) > max_bytes * 4:
        yield Quarantined("file", "document_too_large", f"page larger than {max_bytes * 4} bytes")
        return
    text, why = _html_to_text(data)
    if text is None:
        yield Quarantined("file", "undecodable_bytes", why, _sample(data))
        return
    yield "file", {"text": text, "metadata": {"file": filename}}


def _read_warc(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    n = 0
    try:
        for record in ArchiveIterator(f):
            if record.format != "warc":  # warcio reads almost anything as an old ARC record
                raise ArchiveLoadFailed(f"record in {record.format!r} format, not WARC")
            if record.rec_type not in ("response", "conversion", "resource"):
                continue
            n += 1
            url = record.rec_headers.get_header("WARC-Target-URI")
            locator = f"record:{n}"
            if record.rec_type == "response":
                ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
            else:
                ctype = record.rec_headers.get_header("Content-Type") or ""
            data = record.content_stream().read(max_bytes * 4 + 1)
            if len(data) > max_bytes * 4:
                yield Quarantined(locator, "document_too_large", url or "")
                continue
            if "html" in ctype:
                text, why = _html_to_text(data)
                if text is None:
                    yield Quarantined(locator, "undecodable_bytes", why, _sample(data))
                    continue
            elif ctype.startswith("text/"):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield Quarantined(locator, "undecodable_bytes", str(exc), _sample(data))
                    continue
            else:
                yield Quarantined(locator, "unsupported_content_type", ctype, url or "")
                continue
            date = record.rec_headers.get_header("WARC-Date")
            yield locator, {"text": text, "url": url,
                            "metadata": {"warc_date": date, "content_type": ctype}}
    except (ArchiveLoadFailed, OSError, EOFError, zlib.error, ValueError) as exc:
        if n == 0:
            raise UnreadableInput(f"{filename}: not a readable WARC file ({exc})") from exc
        yield Quarantined(f"record:{n + 1}", "corrupt_file", f"stopped reading: {exc}")


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "html": _read_html, "warc": _read_warc}


def read_documents(
    f: IO[bytes], filename: str, shard: str, default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> IngestResult:
    """Read one input file into documents of ``shard``; everything else is quarantined.

    Raises ``UnreadableInput`` (naming the file) when the file as a whole cannot be read.
    """
    fmt = format_of(filename)
    if fmt is None:
        raise UnreadableInput(f"{filename}: unsupported format (expected one of {SUPPORTED_SUFFIXES})")
    result = IngestResult()
    seen: set[str] = set()
    source_default = default_source or shard
    for item in _READERS[fmt](f, filename, max_doc_bytes):
        if isinstance(item, Quarantined):
            result.quarantined.append(item)
            continue
        locator, record = item
        doc = _normalize(record, shard, source_default, max_doc_bytes)
        if isinstance(doc, Quarantined):
            result.quarantined.append(Quarantined(locator, doc.reason, doc.detail, doc.sample))
        elif doc["doc_id"] in seen:
            result.quarantined.append(Quarantined(locator, "duplicate_in_shard", doc["doc_id"]))
        else:
            seen.add(doc["doc_id"])
            result.documents.append(doc)
    return result


_RESERVED = {"text", "id", "url", "source", "metadata"}


def _normalize(record: dict, shard: str, default_source: str, max_bytes: int) -> dict | Quarantined:
    text = record.get("text")
    if text is None:
        return Quarantined("", "missing_text", f"fields: {sorted(record)[:20]}")
    if not isinstance(text, str):
        return Quarantined("", "wrong_schema", f"'text' is {type(text).__name__}", _sample(str(text)))
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from \ud800-style JSON escapes
        return Quarantined("", "invalid_unicode", str(exc), _sample(text))
    if len(encoded) > max_bytes:
        return Quarantined("", "document_too_large", f"{len(encoded)} bytes > {max_bytes}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return Quarantined("", "empty_document")
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    extra = {k: v for k, v in record.items() if k not in _RESERVED}
    if record.get("id") is not None:
        extra["source_id"] = record["id"]
    try:
        metadata_json = json.dumps({**metadata, **extra}, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        metadata_json = "{}"
    url = record.get("url")
    source = record.get("source")
    return {
        "doc_id": doc_id_of(text),
        "shard": shard,
        "source": source if isinstance(source, str) and source else default_source,
        "url": url if isinstance(url, str) else None,
        "text": text,
        "metadata": metadata_json,
        "n_chars": len(text),
        "n_words": len(text.split()),
    }
