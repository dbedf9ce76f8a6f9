"""Reading raw inputs into one document schema, quarantining what cannot be read.

Formats: JSONL (optionally gzipped), Parquet, single HTML pages and WARC archives. HTML is turned
into crawler-like plain text that *keeps* the boilerplate (navigation, footers, link lists), the
way a crawl extractor such as Common Crawl's WET does, because removing it is the refiner's job.

Every candidate record ends in exactly one of two places: the shard's documents, or the
quarantine with a reason, so ``n_read == n_ingested + n_quarantined`` always. Errors are isolated
per record (per value for Parquet, which reads only the columns used; per record for WARC; a
corrupt Parquet page costs the rest of its row group): one bad record never costs the others.
Reading streams: documents are written in bounded batches as they are read, Parquet is read in
batches of about ``PARQUET_BATCH_BYTES``, the quarantine keeps exact counts but a bounded number
of sample rows, line and header lengths are capped, and in-shard dedup keeps 16 bytes per
document, so memory does not grow with the size of a value and barely with that of a shard.
An HTML page (a file or a WARC record) has a time budget (``core/html_text.py``).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prox_assets.core.html_text import (
    HTML_SECONDS,
    HtmlWorkerError,
    PageCrashed,
    PageTimeout,
    charset_of,
    decode_html,
    html_to_text_bounded,
)
from prox_assets.core.unicode import is_valid_unicode

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


@dataclass(frozen=True)
class ReadLimits:
    max_doc_bytes: int = MAX_DOC_BYTES
    html_seconds: float = HTML_SECONDS  # per HTML page (a file, or a WARC record)
    # HTML to text: "whole" keeps the page's boilerplate (what a crawl's WET text holds, and what
    # the refiners learn to remove today); "main_content" is resiliparse's main-content
    # extraction, as FineWeb and the corpora ProX was published on do
    html_text: str = "whole"

    def __post_init__(self) -> None:
        if self.html_text not in ("whole", "main_content"):
            raise ValueError(f"html_text must be 'whole' or 'main_content', not {self.html_text!r}")


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


class _IdSet:
    """The 16-byte ids seen in one shard, at 16 bytes each (a Python set of bytes costs about
    120): sorted numpy runs of their first 8 bytes (as integers, fast to search) beside their last
    8, each run at least twice the size of the next, so that there are at most log2(n) of them,
    asked about a batch of ids at once. Exact: two ids that share their first 8 bytes are told
    apart by the rest. The memory stays linear in the shard (24 MB for 1.5 M documents): exact
    in-shard dedup needs every id; a Bloom filter would drop documents it merely confuses."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (heads sorted, tails in that order)

    def _seen(self, head: int, tail: int) -> bool:
        for heads, tails in self.runs:
            at = int(np.searchsorted(heads, head))
            while at < len(heads) and heads[at] == head:
                if tails[at] == tail:
                    return True
                at += 1
        return False

    def add_new(self, ids: list[bytes]) -> list[bool]:
        """For each id in order: True if it was not seen before (then it is added)."""
        if not ids:
            return []
        pairs = np.frombuffer(b"".join(ids), dtype=np.uint64).reshape(-1, 2)
        heads, tails = pairs[:, 0].copy(), pairs[:, 1].copy()
        old = np.zeros(len(ids), dtype=bool)
        for run_heads, run_tails in self.runs:
            at = np.searchsorted(run_heads, heads).clip(max=len(run_heads) - 1)
            same_head = run_heads[at] == heads
            old |= same_head & (run_tails[at] == tails)
            # an equal head with another tail: more ids may share that head (about never)
            for k in np.flatnonzero(same_head & ~old).tolist():
                old[k] = self._seen(int(heads[k]), int(tails[k]))
        if len(set(ids)) == len(ids):
            fresh = (~old).tolist()
        else:  # the same id twice in this batch: the first is new, the second not
            fresh, here = [], set()
            for digest, was in zip(ids, old.tolist()):
                fresh.append(not was and digest not in here)
                here.add(digest)
        keep = np.array(fresh, dtype=bool)
        if keep.any():
            order = np.argsort(heads[keep], kind="stable")
            self.runs.append((heads[keep][order], tails[keep][order]))
        # each run at least twice the next: at most log2(n) runs, each id merged log2(n) times
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (h2, t2), (h1, t1) = self.runs.pop(), self.runs.pop()
            merged_heads, merged_tails = np.concatenate([h1, h2]), np.concatenate([t1, t2])
            del h1, h2, t1, t2
            order = np.argsort(merged_heads, kind="stable")  # two sorted runs: one merge pass
            self.runs.append((merged_heads[order], merged_tails[order]))
        return fresh


# --- readers: each yields (locator, raw fields) or a Quarantined, and handles its own records'
# errors; an exception escaping a reader means the rest of the file cannot be read ----------------
Raw = tuple[str, dict]


def _read_jsonl(f: IO[bytes], filename: str, limits: ReadLimits) -> Iterator[Raw | Quarantined]:
    max_bytes = limits.max_doc_bytes
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
            if lineno == 1:
                if line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise UnreadableInput(
                        f"{filename}: UTF-16 text (it starts with a UTF-16 byte-order mark); "
                        "JSONL is read as UTF-8: convert the file"
                    )
                # a UTF-8 byte-order mark is no part of the first record
                line = line.removeprefix(codecs.BOM_UTF8)
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


# The fields _normalize reads; a Parquet file's other columns are never read, so that a value
# there (an invalid string, a timestamp past 9999, an unknown time zone, a huge blob) costs nothing.
_PARQUET_COLUMNS = ("text", "id", "url", "source", "metadata")
PARQUET_BATCH_BYTES = 16 * 1024 * 1024  # uncompressed bytes per batch read, as the footer says


class _Unreadable:
    """A Parquet value that could not be read, and why (in place of the value)."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


def _arrow_values(arr: pa.Array, max_bytes: int) -> list:
    """The Python values of one column of a batch, each on its own: a value that cannot be
    converted, or a string longer than ``max_bytes``, is an ``_Unreadable`` in its place (and
    never becomes a Python object)."""
    if isinstance(arr, pa.DictionaryArray):
        # one Python object per distinct value: a repeated 8 MB value is not copied per row
        indices = arr.indices.to_pylist()
        used = sorted({i for i in indices if i is not None})
        if len(used) < len(arr.dictionary):  # a large dictionary: only the values this batch uses
            values = _arrow_values(arr.dictionary.take(pa.array(used, pa.int64())), max_bytes)
            lookup = dict(zip(used, values))
        else:
            lookup = dict(enumerate(_arrow_values(arr.dictionary, max_bytes)))
        return [None if i is None else lookup[i] for i in indices]
    too_large: set[int] = set()
    if (
        _is_text_type(arr.type)
        or pa.types.is_binary(arr.type)
        or pa.types.is_large_binary(arr.type)
    ):
        lengths = pc.binary_length(arr).to_pylist()
        too_large = {i for i, n in enumerate(lengths) if n is not None and n > max_bytes}
    if not too_large:
        try:
            return arr.to_pylist()
        except Exception:  # noqa: BLE001  one bad value: convert them one by one below
            pass
    out: list = []
    for i in range(len(arr)):
        if i in too_large:
            out.append(_Unreadable("document_too_large", f"value longer than {max_bytes} bytes"))
            continue
        try:
            out.append(arr[i].as_py())
        except Exception as exc:  # noqa: BLE001  invalid UTF-8, a date past 9999, an unknown zone
            reason = (
                "undecodable_bytes" if isinstance(exc, UnicodeDecodeError) else "unreadable_value"
            )
            out.append(_Unreadable(reason, _error(exc)))
    return out


def _parquet_batch_rows(pf: pq.ParquetFile, group: int, columns: list[str]) -> int:
    """Rows per batch so that a batch holds about PARQUET_BATCH_BYTES of the columns read (a
    fixed row count let 48 rows of 8 MB each make one 2 GB batch)."""
    meta = pf.metadata.row_group(group)
    n_bytes = sum(
        meta.column(i).total_uncompressed_size
        for i in range(meta.num_columns)
        if meta.column(i).path_in_schema.split(".")[0] in columns
    )
    per_row = max(1, n_bytes // max(1, meta.num_rows))
    return max(1, min(1024, PARQUET_BATCH_BYTES // per_row))


def _read_parquet(f: IO[bytes], filename: str, limits: ReadLimits) -> Iterator[Raw | Quarantined]:
    max_bytes = limits.max_doc_bytes
    try:
        pf = pq.ParquetFile(f, page_checksum_verification=True)  # when the writer stored checksums
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UnreadableInput(f"{filename}: not a readable Parquet file ({exc})") from exc
    if "text" not in schema.names:
        raise UnreadableInput(f"{filename}: no 'text' column (columns: {schema.names})")
    if not _is_text_type(schema.field("text").type):
        raise UnreadableInput(
            f"{filename}: column 'text' is {schema.field('text').type}, not string"
        )
    columns = [c for c in _PARQUET_COLUMNS if c in schema.names]
    text_leaf = next(
        i for i in range(pf.metadata.num_columns) if pf.metadata.schema.column(i).path == "text"
    )
    # Text whose row group has a dictionary page is read as a dictionary, so that a repeated value
    # is decoded once, not per row (a 14 KB file of one 8 MB value in 48 rows took 1.9 GB). Text
    # without one is read plain: as a dictionary, arrow would hash and copy every value.
    as_dictionary: pq.ParquetFile | None = None
    first = 0
    for group in range(pf.num_row_groups):
        n_rows = pf.metadata.row_group(group).num_rows
        done = 0
        reader = pf
        try:
            if pf.metadata.row_group(group).column(text_leaf).has_dictionary_page:
                if as_dictionary is None:
                    as_dictionary = pq.ParquetFile(
                        f,
                        metadata=pf.metadata,
                        page_checksum_verification=True,
                        read_dictionary=["text"],
                    )
                reader = as_dictionary
            batches = reader.iter_batches(
                batch_size=_parquet_batch_rows(pf, group, columns),
                row_groups=[group],
                columns=columns,
            )
            for batch in batches:
                values = {
                    name: _arrow_values(batch.column(name), max_bytes)
                    for name in batch.schema.names
                }
                for row in range(batch.num_rows):
                    yield _parquet_row(values, row, f"row:{first + done}")
                    done += 1
                del values, batch
        except Exception as exc:  # noqa: BLE001  a corrupt page or row group: the rest of the file may be fine
            if done < n_rows:
                yield Quarantined(
                    f"rows:{first + done}-{first + n_rows - 1}",
                    "corrupt_row_group",
                    f"row group {group}: {_error(exc)}",
                    n_records=n_rows - done,
                )
        first += n_rows


def _parquet_row(values: dict[str, list], row: int, locator: str) -> Raw | Quarantined:
    record, unreadable = {}, {}
    for name, column in values.items():
        value = column[row]
        if isinstance(value, _Unreadable):
            if name == "text":
                return Quarantined(locator, value.reason, value.detail)
            unreadable[name] = value.detail  # the field is left out; the document is kept
        else:
            record[name] = value
    if unreadable:
        record["unreadable_fields"] = unreadable  # kept in the document's metadata
    return locator, record


def _page_text(
    data: bytes, declared: str | None, limits: ReadLimits
) -> tuple[str | None, str, str]:
    """(text, "", "") or (None, reason, why) for one HTML page, within its time budget."""
    try:
        text, why = html_to_text_bounded(
            data, declared, limits.html_seconds, limits.html_text == "main_content"
        )
    except PageTimeout as exc:
        return None, "html_timeout", str(exc)
    except PageCrashed as exc:
        return None, "html_parser_crashed", str(exc)
    return (text, "", "") if text is not None else (None, "undecodable_bytes", why)


def _read_html(f: IO[bytes], filename: str, limits: ReadLimits) -> Iterator[Raw | Quarantined]:
    max_bytes = limits.max_doc_bytes
    data = f.read(max_bytes * 4 + 1)  # markup is larger than the text it carries
    if len(data) > max_bytes * 4:
        yield Quarantined("file", "document_too_large", f"page larger than {max_bytes * 4} bytes")
        return
    text, reason, why = _page_text(data, None, limits)
    if text is None:
        yield Quarantined("file", reason, why, _sample(data))
        return
    yield "file", {"text": text, "metadata": {"file": filename, "html_text": limits.html_text}}


def _read_warc(f: IO[bytes], filename: str, limits: ReadLimits) -> Iterator[Raw | Quarantined]:
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
            yield _warc_document(record, rec_type, locator, limits)
        except HtmlWorkerError:
            raise
        except Exception as exc:  # noqa: BLE001  one odd record (headers, payload) costs only itself
            yield Quarantined(locator, "unreadable_record", _error(exc))
    if n_records == 0:
        raise UnreadableInput(f"{filename}: not a readable WARC file (no WARC records)")


def _utf8(data: bytes) -> tuple[str | None, str]:
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, str(exc)


def _warc_document(record, rec_type: str, locator: str, limits: ReadLimits) -> Raw | Quarantined:
    max_bytes = limits.max_doc_bytes
    url = record.headers.get("WARC-Target-URI")
    if rec_type == "response":
        ctype = (record.http_headers.get("Content-Type") or "") if record.http_headers else ""
    else:
        ctype = record.headers.get("Content-Type") or ""
    data = record.reader.read(max_bytes * 4 + 1)
    if len(data) > max_bytes * 4:
        return Quarantined(locator, "document_too_large", url or "")
    declared = charset_of(ctype)  # a record's declared charset wins over detection
    if "html" in ctype.lower():
        text, reason, why = _page_text(data, declared, limits)
        if text is None:
            return Quarantined(locator, reason, why, _sample(data))
    elif ctype.lower().startswith("text/"):
        text, why = decode_html(data, declared) if declared else _utf8(data)
        if text is None:
            return Quarantined(locator, "undecodable_bytes", why, _sample(data))
    else:
        return Quarantined(locator, "unsupported_content_type", ctype[:200], url or "")
    metadata = {"warc_date": record.headers.get("WARC-Date"), "content_type": ctype}
    if "html" in ctype.lower():
        metadata["html_text"] = limits.html_text
    return locator, {"text": text, "url": url, "metadata": metadata}


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "html": _read_html, "warc": _read_warc}


def iter_documents(
    f: IO[bytes],
    filename: str,
    shard: str,
    tally: IngestTally,
    default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
    html_seconds: float = HTML_SECONDS,
    html_text: str = "whole",
) -> Iterator[dict]:
    """The documents of one input file, in order; everything else is counted in ``tally``.

    Raises ``UnreadableInput`` (naming the file) when the file as a whole cannot be read.
    """
    fmt = format_of(filename)
    if fmt is None:
        raise UnreadableInput(
            f"{filename}: unsupported format (expected one of {SUPPORTED_SUFFIXES})"
        )
    seen = _IdSet()
    # Read items wait here, in file order, until their ids are checked against `seen` together
    # (one numpy search per run for the lot, not a Python set entry per document).
    pending: list[tuple[str, dict | Quarantined]] = []
    pending_chars = 0

    def settle() -> list[dict]:
        nonlocal pending_chars
        docs = [d for _, d in pending if isinstance(d, dict)]
        fresh = iter(seen.add_new([bytes.fromhex(d["doc_id"]) for d in docs]))
        out = []
        for locator, item in pending:
            if isinstance(item, Quarantined):
                tally.quarantine(item)
            elif next(fresh):
                tally.ingest(item)
                out.append(item)
            else:
                tally.quarantine(Quarantined(locator, "duplicate_in_shard", item["doc_id"]))
        pending.clear()
        pending_chars = 0
        return out

    source_default = default_source or shard
    items = _READERS[fmt](f, filename, ReadLimits(max_doc_bytes, html_seconds, html_text))
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except (UnreadableInput, HtmlWorkerError):  # the file's or the installation's fault
            raise
        except Exception as exc:  # noqa: BLE001  a library failing on hostile bytes: keep what was read
            pending.append(
                (
                    "",
                    Quarantined(
                        f"after:{tally.n_read + len(pending)}",
                        "corrupt_file",
                        f"stopped reading: {_error(exc)}",
                    ),
                )
            )
            break
        if not isinstance(item, Quarantined):
            locator, record = item
            try:
                doc = _normalize(record, shard, source_default, max_doc_bytes)
            except Exception as exc:  # noqa: BLE001  a record shaped in a way nothing above foresaw
                doc = Quarantined("", "unreadable_record", _error(exc))
            if isinstance(doc, dict):
                pending.append((locator, doc))
                pending_chars += doc["n_chars"]
                if len(pending) >= _SETTLE_ITEMS or pending_chars >= _SETTLE_CHARS:
                    yield from settle()
                continue
            item = Quarantined(locator, doc.reason, doc.detail, doc.sample)
        if pending:  # behind documents whose ids are not checked yet: keep the file's order
            pending.append((item.locator, item))
            if len(pending) >= _SETTLE_ITEMS:
                yield from settle()
        else:
            tally.quarantine(item)
    yield from settle()
    if tally.n_read == 0:  # said once, as the file's reason, rather than an unexplained zero
        raise UnreadableInput(f"{filename}: no records (an empty file, or only blank lines)")


_SETTLE_ITEMS = 1024  # read items checked for duplicates at once ...
_SETTLE_CHARS = 4 * 1024 * 1024  # ... or fewer, once their texts reach this many characters


def read_documents(
    f: IO[bytes],
    filename: str,
    shard: str,
    default_source: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
    html_seconds: float = HTML_SECONDS,
    html_text: str = "whole",
) -> IngestResult:
    """Read one whole input file into memory (small inputs; see ``write_shard`` for streaming)."""
    result = IngestResult()
    result.documents = list(
        iter_documents(
            f, filename, shard, result.tally, default_source, max_doc_bytes, html_seconds, html_text
        )
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
    html_seconds: float = HTML_SECONDS,
    html_text: str = "whole",
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
        docs = iter_documents(
            f, filename, shard, tally, default_source, max_doc_bytes, html_seconds, html_text
        )
        for doc in docs:
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


def _metadata_json(metadata: dict) -> str:
    """Metadata as strict JSON: NaN and infinities (Python's json reads and writes them, no other
    JSON reader does) become null."""
    try:
        return json.dumps(metadata, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(metadata), ensure_ascii=False, default=str, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
        metadata_json = _metadata_json({**metadata, **extra})
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
