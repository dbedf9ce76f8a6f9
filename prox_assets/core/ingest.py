"""Reading raw inputs into one document schema, quarantining what cannot be read.

Formats: JSONL (optionally gzipped), Parquet, single HTML pages and WARC archives. HTML is turned
into crawler-like plain text that *keeps* the boilerplate (navigation, footers, link lists), the
way a crawl extractor such as Common Crawl's WET does, because removing it is the refiner's job.

Every candidate record ends in exactly one of two places: the shard's documents, or the
quarantine with a reason, so ``n_read == n_ingested + n_quarantined`` always. Errors are isolated
per record (per row group for Parquet, per record for WARC): one bad record never costs the
others. Reading streams: documents are written in bounded batches as they are read, the
quarantine keeps exact counts but a bounded number of sample rows, and line and header lengths
are capped, so memory does not grow with the size of a shard.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prox_assets.core.unicode import is_valid_unicode

if TYPE_CHECKING:
    from resiliparse.parse.html import HTMLTree

MAX_DOC_BYTES = 10 * 1024 * 1024
MAX_WARC_HEADER_BYTES = 64 * 1024  # a WARC or HTTP header block longer than this is not a crawl
QUARANTINE_SAMPLES = 1_000  # quarantine rows kept per file; the counts stay exact
BATCH_DOCUMENTS = 2_048  # documents per written batch (one Parquet row group) ...
BATCH_BYTES = 32 * 1024 * 1024  # ... or fewer, once their text reaches this many bytes
SUPPORTED_SUFFIXES = (
    ".jsonl",
    ".jsonl.gz",
    ".ndjson",
    ".ndjson.gz",
    ".parquet",
    ".html",
    ".htm",
    ".warc",
    ".warc.gz",
)

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
_DOCUMENT_ARROW = pa.schema(
    [
        (name, pa.int64() if dtype == pl.Int64 else pa.string())
        for name, dtype in DOCUMENT_SCHEMA.items()
    ]
)
# What the catalog indexes per document (everything but the text), plus its row in the shard file.
INDEX_COLUMNS = ("doc_id", "shard", "source", "url", "n_chars", "n_words")
_INDEX_ARROW = pa.schema(
    [_DOCUMENT_ARROW.field(c) for c in INDEX_COLUMNS] + [("row_index", pa.int64())]
)


class UnreadableInput(Exception):
    """Nothing at all could be read from a file."""


@dataclass(frozen=True)
class Quarantined:
    locator: str  # line:N, row:N, rows:N-M, record:N, or file
    reason: str
    detail: str = ""
    sample: str = ""
    n_records: int = 1  # a corrupt Parquet row group quarantines all its rows at once


@dataclass
class IngestTally:
    """Exact counts of one file's ingestion, with a bounded sample of its quarantine."""

    n_ingested: int = 0
    n_quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)  # quarantined records per reason
    samples: list[Quarantined] = field(default_factory=list)
    max_samples: int = QUARANTINE_SAMPLES
    preview: list[dict] = field(default_factory=list)  # the first few documents, text cut short

    @property
    def n_read(self) -> int:
        return self.n_ingested + self.n_quarantined

    @property
    def n_unsampled(self) -> int:
        """Quarantined records without a sample row (beyond ``max_samples``)."""
        return self.n_quarantined - sum(q.n_records for q in self.samples)

    def quarantine(self, item: Quarantined) -> None:
        self.n_quarantined += item.n_records
        self.reasons[item.reason] += item.n_records
        if len(self.samples) < self.max_samples:
            self.samples.append(item)

    def ingest(self, doc: dict) -> None:
        self.n_ingested += 1
        if len(self.preview) < 5:
            self.preview.append(
                {**doc, "text": doc["text"][:300], "metadata": doc["metadata"][:300]}
            )


@dataclass
class IngestResult:
    """A whole file read into memory: for small inputs and tests (assets stream with ``write_shard``)."""

    documents: list[dict] = field(default_factory=list)
    tally: IngestTally = field(default_factory=IngestTally)

    @property
    def quarantined(self) -> list[Quarantined]:
        return self.tally.samples

    @property
    def n_read(self) -> int:
        return self.tally.n_read

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.documents, schema=DOCUMENT_SCHEMA)


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


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:500]}"


# --- readers: each yields (locator, raw fields) or a Quarantined, and handles its own records'
# errors; an exception escaping a reader means the rest of the file cannot be read ----------------
Raw = tuple[str, dict]


def _read_jsonl(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    # a buffered reader gives readline(limit) over any binary file (s3fs's files take no limit)
    stream = (
        gzip.GzipFile(fileobj=f)
        if filename.lower().endswith(".gz")
        else io.BufferedReader(cast(io.RawIOBase, f), 1 << 20)
    )
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
                yield Quarantined(
                    f"line:{lineno}",
                    "document_too_large",
                    f"line longer than {max_bytes} bytes",
                    _sample(line),
                )
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
            # ValueError covers JSONDecodeError and integers past Python's digit limit;
            # RecursionError comes from deeply nested arrays
            except (ValueError, RecursionError) as exc:
                yield Quarantined(f"line:{lineno}", "malformed_json", _error(exc), _sample(decoded))
                continue
            if not isinstance(record, dict):
                yield Quarantined(
                    f"line:{lineno}",
                    "wrong_schema",
                    f"expected an object, got {type(record).__name__}",
                    _sample(decoded),
                )
                continue
            yield f"line:{lineno}", record
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
        yield Quarantined(f"line:{lineno + 1}", "corrupt_file", f"stopped reading: {exc}")


def _is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text_type(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _read_parquet(f: IO[bytes], filename: str, max_bytes: int) -> Iterator[Raw | Quarantined]:
    try:
        pf = pq.ParquetFile(f, page_checksum_verification=True)  # when the writer stored checksums
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UnreadableInput(f"{filename}: not a readable Parquet file ({exc})") from exc
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise UnreadableInput(f"{filename}: no 'text' column (columns: {schema.names})")
    if not _is_text_type(schema.field("text").type):
        raise UnreadableInput(
            f"{filename}: column 'text' is {schema.field('text').type}, not string"
        )
    first = 0
    for group in range(pf.num_row_groups):
        n_rows = pf.metadata.row_group(group).num_rows
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=256, row_groups=[group]):
                for record in batch.to_pylist():
                    yield f"row:{first + done}", record
                    done += 1
        except Exception as exc:  # noqa: BLE001  a corrupt page or row group: the rest of the file may be fine
            if done < n_rows:
                yield Quarantined(
                    f"rows:{first + done}-{first + n_rows - 1}",
                    "corrupt_row_group",
                    f"row group {group}: {_error(exc)}",
                    n_records=n_rows - done,
                )
        first += n_rows


def extract_text(html: str | HTMLTree, main_content: bool = False) -> str:
    """A page's text with the settings every page gets here (formatting and list bullets kept;
    no alt texts, link targets, form fields or noscript); with ``main_content``, what resiliparse's
    main-content heuristics leave of it."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(
        html,
        main_content=main_content,
        preserve_formatting=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
    )


def _html_to_text(data: bytes) -> tuple[str | None, str]:
    """Crawler-like text of a page (boilerplate kept) or (None, why)."""
    from resiliparse.parse.encoding import detect_encoding
    from resiliparse.parse.html import HTMLTree

    encoding = detect_encoding(data) or "utf-8"
    try:
        html = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        return None, f"{encoding}: {exc}"
    tree = HTMLTree.parse(html)
    return extract_text(tree), ""


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
    # FastWARC: C++ parsing with a header length limit (warcio reads a header line of any length)
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    content = [
        (WarcRecordType.response, "response"),
        (WarcRecordType.resource, "resource"),
        (WarcRecordType.conversion, "conversion"),
    ]  # the enum is not hashable
    records = ArchiveIterator(
        f,
        record_types=WarcRecordType.any_type,
        parse_http=True,
        max_header_len=MAX_WARC_HEADER_BYTES,
        auto_decode="all",
    )
    n_records = n = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except Exception as exc:
            if n_records == 0:
                raise UnreadableInput(f"{filename}: not a readable WARC file ({exc})") from exc
            yield Quarantined(f"record:{n + 1}", "corrupt_file", f"stopped reading: {_error(exc)}")
            return
        n_records += 1
        rec_type = next((name for t, name in content if record.record_type == t), None)
        if rec_type is None:  # requests, metadata, warcinfo: not documents
            continue
        n += 1
        locator = f"record:{n}"
        try:
            yield _warc_document(record, rec_type, locator, max_bytes)
        except Exception as exc:  # noqa: BLE001  one odd record (headers, payload) costs only itself
            yield Quarantined(locator, "unreadable_record", _error(exc))
    if n_records == 0:
        raise UnreadableInput(f"{filename}: not a readable WARC file (no WARC records)")


def _warc_document(record, rec_type: str, locator: str, max_bytes: int) -> Raw | Quarantined:
    url = record.headers.get("WARC-Target-URI")
    if rec_type == "response":
        ctype = (record.http_headers.get("Content-Type") or "") if record.http_headers else ""
    else:
        ctype = record.headers.get("Content-Type") or ""
    data = record.reader.read(max_bytes * 4 + 1)
    if len(data) > max_bytes * 4:
        return Quarantined(locator, "document_too_large", url or "")
    if "html" in ctype.lower():
        text, why = _html_to_text(data)
        if text is None:
            return Quarantined(locator, "undecodable_bytes", why, _sample(data))
    elif ctype.lower().startswith("text/"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Quarantined(locator, "undecodable_bytes", str(exc), _sample(data))
    else:
        return Quarantined(locator, "unsupported_content_type", ctype[:200], url or "")
    return locator, {
        "text": text,
        "url": url,
        "metadata": {"warc_date": record.headers.get("WARC-Date"), "content_type": ctype},
    }


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "html": _read_html, "warc": _read_warc}


def iter_documents(
    f: IO[bytes],
    filename: str,
    shard: str,
    tally: IngestTally,
    default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> Iterator[dict]:
    """The documents of one input file, in order; everything else is counted in ``tally``.

    Raises ``UnreadableInput`` (naming the file) when the file as a whole cannot be read.
    """
    fmt = format_of(filename)
    if fmt is None:
        raise UnreadableInput(
            f"{filename}: unsupported format (expected one of {SUPPORTED_SUFFIXES})"
        )
    seen: set[bytes] = set()  # 16-byte ids: duplicates are found without holding the texts
    source_default = default_source or shard
    items = _READERS[fmt](f, filename, max_doc_bytes)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except UnreadableInput:
            raise
        except Exception as exc:  # noqa: BLE001  a library failing on hostile bytes: keep what was read
            tally.quarantine(
                Quarantined(
                    f"after:{tally.n_read}", "corrupt_file", f"stopped reading: {_error(exc)}"
                )
            )
            return
        if isinstance(item, Quarantined):
            tally.quarantine(item)
            continue
        locator, record = item
        try:
            doc = _normalize(record, shard, source_default, max_doc_bytes)
        except Exception as exc:  # noqa: BLE001  a record shaped in a way nothing above foresaw
            doc = Quarantined("", "unreadable_record", _error(exc))
        if isinstance(doc, Quarantined):
            tally.quarantine(Quarantined(locator, doc.reason, doc.detail, doc.sample))
            continue
        digest = bytes.fromhex(doc["doc_id"])
        if digest in seen:
            tally.quarantine(Quarantined(locator, "duplicate_in_shard", doc["doc_id"]))
            continue
        seen.add(digest)
        tally.ingest(doc)
        yield doc


def read_documents(
    f: IO[bytes],
    filename: str,
    shard: str,
    default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> IngestResult:
    """Read one whole input file into memory (small inputs; see ``write_shard`` for streaming)."""
    result = IngestResult()
    result.documents = list(
        iter_documents(f, filename, shard, result.tally, default_source, max_doc_bytes)
    )
    return result


def write_shard(
    f: IO[bytes],
    filename: str,
    shard: str,
    documents_out: IO[bytes] | str,
    index_out: IO[bytes] | str,
    default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> IngestTally:
    """Stream one input file into a documents Parquet file and a catalog index Parquet file.

    Memory is bounded by two batches (``BATCH_DOCUMENTS`` / ``BATCH_BYTES``) whatever the file's
    size: one being read while the previous one is written by a thread (Parquet encoding and
    compression release the GIL, so the two overlap). Raises ``UnreadableInput`` when the file as a
    whole cannot be read.
    """
    tally = IngestTally()
    # dictionary encoding only where values repeat: trying it on every text costs time for nothing
    options = {"compression": "zstd", "use_dictionary": ["shard", "source"]}
    with (
        pq.ParquetWriter(documents_out, _DOCUMENT_ARROW, **options) as documents,
        pq.ParquetWriter(index_out, _INDEX_ARROW, **options) as index,
        ThreadPoolExecutor(max_workers=1) as writer,
    ):

        def write(batch: list[dict], first: int) -> None:
            table = pl.DataFrame(batch, schema=DOCUMENT_SCHEMA).to_arrow().cast(_DOCUMENT_ARROW)
            documents.write_table(table)
            index.write_table(
                table.select(list(INDEX_COLUMNS)).append_column(
                    "row_index", pa.array(range(first, first + len(batch)), pa.int64())
                )
            )

        pending: Future | None = None

        def flush(batch: list[dict]) -> None:
            nonlocal pending
            if pending is not None:
                pending.result()  # at most one batch in flight; re-raises a write error
            pending = writer.submit(write, batch, tally.n_ingested - len(batch))

        batch: list[dict] = []
        batch_bytes = 0
        for doc in iter_documents(f, filename, shard, tally, default_source, max_doc_bytes):
            batch.append(doc)
            batch_bytes += doc["n_chars"]
            if len(batch) >= BATCH_DOCUMENTS or batch_bytes >= BATCH_BYTES:
                flush(batch)
                batch, batch_bytes = [], 0
        if batch:
            flush(batch)
        if pending is not None:
            pending.result()
    return tally


_RESERVED = {"text", "id", "url", "source", "metadata"}


def _normalize(record: dict, shard: str, default_source: str, max_bytes: int) -> dict | Quarantined:
    text = record.get("text")
    if text is None:
        return Quarantined("", "missing_text", f"fields: {sorted(map(str, record))[:20]}")
    if not isinstance(text, str):
        return Quarantined(
            "", "wrong_schema", f"'text' is {type(text).__name__}", _sample(repr(text)[:200])
        )
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from \ud800-style JSON escapes
        return Quarantined("", "invalid_unicode", str(exc), _sample(text))
    if len(encoded) > max_bytes:
        return Quarantined("", "document_too_large", f"{len(encoded)} bytes > {max_bytes}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return Quarantined("", "empty_document")
    metadata = m if isinstance(m := record.get("metadata"), dict) else {}
    extra = {k: v for k, v in record.items() if k not in _RESERVED}
    if record.get("id") is not None:
        extra["source_id"] = record["id"]
    try:
        metadata_json = json.dumps({**metadata, **extra}, ensure_ascii=False, default=str)
        metadata_json.encode("utf-8")  # a lone surrogate in a metadata string
    except (TypeError, ValueError, RecursionError):
        metadata_json = "{}"
    url = record.get("url")
    source = record.get("source")
    return {
        "doc_id": doc_id_of(text),
        "shard": shard,
        "source": source
        if isinstance(source, str) and source and is_valid_unicode(source)
        else default_source,
        "url": url if isinstance(url, str) and is_valid_unicode(url) else None,
        "text": text,
        "metadata": metadata_json,
        "n_chars": len(text),
        "n_words": len(text.split()),
    }
