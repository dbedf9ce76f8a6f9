"""Hostile inputs cost only themselves: per-record isolation, bounded memory, exact counts.

Each case asserts that reading finishes, ``n_read = n_ingested + n_quarantined``, the reason is
recorded, and (for the memory cases, in a subprocess) a peak-RSS bound.
"""

import io
import json
import subprocess

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prox_assets.benchmarks import gzip_bomb, ingest_in_subprocess, jsonl_shard, warc_header_bomb
from prox_assets.core.ingest import QUARANTINE_SAMPLES, read_documents
from tests.support.paths import BIN
from tests.support.pipeline import ingest_shard


def read(data: bytes, name: str):
    return read_documents(io.BytesIO(data), name, "hostile")


def reconciles(r) -> bool:
    return (
        r.tally.n_read == r.tally.n_ingested + r.tally.n_quarantined
        and r.tally.n_ingested == len(r.documents)
    )


def test_deeply_nested_json_and_huge_integers_are_quarantined_records():
    data = (
        b"\n".join(
            [
                json.dumps({"text": "before"}).encode(),
                b'{"text": "x", "a": '
                + b"[" * 100_000
                + b"]" * 100_000
                + b"}",  # RecursionError in json
                b'{"text": "y", "n": ' + b"9" * 5_000 + b"}",  # past Python's integer digit limit
                json.dumps({"text": "after"}).encode(),
            ]
        )
        + b"\n"
    )
    r = read(data, "h.jsonl")
    assert [d["text"] for d in r.documents] == ["before", "after"]
    assert [(q.locator, q.reason) for q in r.quarantined] == [
        ("line:2", "malformed_json"),
        ("line:3", "malformed_json"),
    ]
    assert "RecursionError" in r.quarantined[0].detail and "ValueError" in r.quarantined[1].detail
    assert reconciles(r) and r.n_read == 4


def _warc_record(uri: bytes | None, body: bytes, extra: bytes = b"") -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
    head = b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:1>\r\n"
    if uri:
        head += b"WARC-Target-URI: " + uri + b"\r\n"
    head += extra + b"Content-Type: application/http; msgtype=response\r\n"
    return head + b"Content-Length: " + str(len(http)).encode() + b"\r\n\r\n" + http + b"\r\n\r\n"


def test_warc_record_without_target_uri_is_a_document_without_url():
    data = _warc_record(None, b"<p>no address</p>") + _warc_record(
        b"http://b.example/", b"<p>fine</p>"
    )
    r = read(data, "h.warc")
    assert [(d["url"], d["text"].strip()) for d in r.documents] == [
        (None, "no address"),
        ("http://b.example/", "fine"),
    ]
    assert reconciles(r)


def test_warc_header_too_long_stops_reading_but_keeps_what_was_read():
    data = _warc_record(b"http://a.example/", b"<p>first</p>") + _warc_record(
        b"http://b.example/", b"<p>second</p>", b"X-Junk: " + b"a" * (1 << 20) + b"\r\n"
    )
    r = read(data, "h.warc")
    assert [d["url"] for d in r.documents] == ["http://a.example/"]
    assert (
        r.quarantined[-1].reason == "corrupt_file" and "header" in r.quarantined[-1].detail.lower()
    )
    assert reconciles(r)


def _parquet_with_row_groups(n_groups: int, rows: int, **kw) -> bytes:
    buf = io.BytesIO()
    table = pa.table({"text": [f"document {i} " + "word " * 40 for i in range(n_groups * rows)]})
    pq.write_table(
        table,
        buf,
        row_group_size=rows,
        compression="snappy",
        write_page_checksum=True,
        use_dictionary=False,
        **kw,
    )
    return buf.getvalue()


def test_one_corrupt_row_group_of_twenty_costs_only_its_rows():
    data = bytearray(_parquet_with_row_groups(20, 50))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(7).column(0)
    middle = meta.data_page_offset + meta.total_compressed_size // 2
    data[middle : middle + 64] = b"\x00" * 64
    r = read(bytes(data), "h.parquet")
    assert len(r.documents) == 19 * 50
    [bad] = r.quarantined
    assert (bad.locator, bad.reason, bad.n_records) == ("rows:350-399", "corrupt_row_group", 50)
    assert r.n_read == 1000 and reconciles(r)


def test_dictionary_encoded_text_column_is_read():
    buf = io.BytesIO()
    table = pa.table(
        {"text": pa.array(["same text", "other text", "same text 2"]).dictionary_encode()}
    )
    pq.write_table(table, buf)
    r = read(buf.getvalue(), "d.parquet")
    assert [d["text"] for d in r.documents] == ["same text", "other text", "same text 2"]
    # written with its dictionary type kept in the Arrow schema too
    buf2 = io.BytesIO()
    pq.write_table(table, buf2, store_schema=True)
    assert pa.types.is_dictionary(
        pq.ParquetFile(io.BytesIO(buf2.getvalue())).schema_arrow.field("text").type
    )
    assert len(read(buf2.getvalue(), "d2.parquet").documents) == 3


def test_lone_surrogates_outside_the_text_never_reach_the_writer():
    data = (
        "\n".join(
            [
                '{"text": "ok", "source": "\\ud800", "url": "http://\\udfff", "meta": "\\ud800"}',
            ]
        ).encode()
        + b"\n"
    )
    r = read(data, "s.jsonl")
    [doc] = r.documents
    assert doc["source"] == "hostile" and doc["url"] is None
    doc["metadata"].encode("utf-8")
    pl.DataFrame([doc]).write_parquet(io.BytesIO())


# --- memory: measured in a subprocess, peak RSS against a bound --------------------------------
def test_gzip_of_a_million_bad_lines_keeps_exact_counts_and_bounded_samples(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    gzip_bomb(path, lines=1_000_000)
    assert path.stat().st_size < 20_000
    got = ingest_in_subprocess(path)
    assert got["n_read"] == got["n_quarantined"] == 1_000_000 and got["n_ingested"] == 0
    assert got["reasons"] == {"malformed_json": 1_000_000} and got["samples"] == QUARANTINE_SAMPLES
    assert got["rss_mb"] < 300, got


def test_warc_gz_with_a_512_mb_header_line_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "header.warc.gz"
    warc_header_bomb(path, header_mb=512)
    assert path.stat().st_size < 1_000_000
    got = ingest_in_subprocess(path)
    assert got["n_ingested"] == 1 and got["reasons"] == {"corrupt_file": 1}, got
    assert got["rss_mb"] < 300, got


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_shard(tmp_path):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    n_small, n_large = jsonl_shard(small, 20), jsonl_shard(large, 250)
    a, b = ingest_in_subprocess(small), ingest_in_subprocess(large)
    assert (a["n_ingested"], b["n_ingested"]) == (n_small, n_large)
    # the whole-shard reader held ~13x the file; streaming holds one batch whatever the size
    assert b["rss_mb"] < 450 and b["rss_mb"] - a["rss_mb"] < 120, (a, b)


def test_raw_corpus_records_a_failed_ingestion_and_its_quarantine(prox_env):
    """A shard whose every record is bad: the run fails, and the counts and reasons are in the catalog."""
    bad = prox_env / "allbad.jsonl"
    bad.write_bytes(b'{"text": ' + b"[" * 50_000 + b"\n" + b'{"n": ' + b"1" * 5000 + b"}\n")
    out = subprocess.run(
        [str(BIN / "prox"), "ingest", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0 and "nothing could be read" in out.stdout + out.stderr
    from prox_resources.catalog import Catalog

    catalog = Catalog()
    rows = catalog.query(
        "SELECT n_read, n_ingested, n_quarantined, raw_path FROM ingestions"
    ).rows()
    assert rows == [(2, 0, 2, None)]
    assert catalog.query("SELECT reason, count(*) FROM quarantine GROUP BY 1").rows() == [
        ("malformed_json", 2)
    ]


# --- through the asset: crash leftovers, duplicates across shards ------------------------------
def _materialize(shard: str):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return ingest_shard(instance, shard)


def test_a_raw_file_left_by_a_killed_run_never_looks_current_and_is_reconciled(prox_env):
    from prox_assets.ingest import raw_key
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore

    store, catalog = ObjectStore(), Catalog()
    store.write_bytes("incoming/web-00.jsonl", b'{"text": "one"}\n{"text": "two"}\n')
    first = _materialize("web-00")
    assert first.success
    current = raw_key(catalog, "web-00")
    # what a run killed after its raw write and before its catalog commit leaves behind
    orphan = "raw/web-00/killed-run.parquet"
    store.write_parquet(orphan, pl.DataFrame({"doc_id": ["x"], "text": ["half-finished"]}))
    assert raw_key(catalog, "web-00") == current  # readers follow the catalog, not the newest file
    again = _materialize("web-00")
    assert again.success
    assert (
        store.list("raw/web-00/") == [raw_key(catalog, "web-00")] != [current]
    )  # orphan and old file gone
    assert catalog.query("SELECT count(*) FROM documents").item() == 2


def test_duplicates_across_shards_are_reported_and_both_kept(prox_env):
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore

    store = ObjectStore()
    store.write_bytes("incoming/a-00.jsonl", b'{"text": "shared page"}\n{"text": "only in a"}\n')
    store.write_bytes("incoming/b-00.jsonl", b'{"text": "shared page"}\n{"text": "only in b"}\n')
    assert _materialize("a-00").success
    result = _materialize("b-00")
    assert result.success
    meta = result.asset_materializations_for_node("raw_corpus")[0].metadata
    assert "a-00" in meta["duplicates_in_other_shards"].value
    assert Catalog().query("SELECT count(*) FROM documents").item() == 4


# --- issue 32: one odd value costs only itself; reads bounded by bytes; pages with a time budget --
def _parquet_bytes(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def _invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string column holding bytes that are not UTF-8 (what a careless writer stores)."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_one_odd_value_costs_only_itself_not_its_row_group():
    """Before: one invalid string, a timestamp past 9999 or an unknown time zone quarantined the
    rest of the row group (488 of 1,000 rows for one value)."""
    n, bad = 1000, 512
    texts = [f"document {i} with some words".encode() for i in range(n)]
    texts[bad] = b"bad \xff\xfe bytes"
    never_read = [b"title"] * n
    never_read[3] = b"\xc3\x28"
    table = pa.table(
        {
            "text": _invalid_utf8(texts),
            "url": _invalid_utf8([f"http://x.example/{i}".encode() for i in range(n)]),
            "title": _invalid_utf8(never_read),  # a column the platform never reads
            "when": pa.array(
                [0] * 5 + [300_000_000_000_000_000] + [0] * (n - 6), pa.timestamp("us")
            ),
            "zone": pa.array([0] * n, pa.timestamp("s", tz="Mars/Olympus_Mons")),
        }
    )
    data = _parquet_bytes(table, row_group_size=n)
    r = read(data, "odd.parquet")
    assert r.n_read == n and reconciles(r)
    assert [(q.locator, q.reason) for q in r.quarantined] == [(f"row:{bad}", "undecodable_bytes")]
    assert (
        len(r.documents) == n - 1
        and r.documents[bad]["text"] == f"document {bad + 1} with some words"
    )
    # an odd value in a column that is read (url) leaves that field out, not the document
    table = table.set_column(
        1, "url", _invalid_utf8([b"http://ok/"] * 9 + [b"\xff"] + [b"http://ok/"] * (n - 10))
    )
    r = read(_parquet_bytes(table, row_group_size=n), "odd2.parquet")
    assert r.n_read == n and len(r.documents) == n - 1 and reconciles(r)
    ninth = r.documents[9]
    assert ninth["url"] is None and "url" in json.loads(ninth["metadata"])["unreadable_fields"]


_INGEST_SCRIPT = """
import json, os, sys, tempfile, time
from prox_assets.benchmarks import peak_rss_mb
from prox_assets.core.ingest import write_shard
path, html_seconds = sys.argv[1], float(sys.argv[2])
started = time.perf_counter()
with open(path, "rb") as f, tempfile.TemporaryDirectory() as tmp:
    tally = write_shard(f, os.path.basename(path), "s", os.path.join(tmp, "d.parquet"),
                        os.path.join(tmp, "i.parquet"), html_seconds=html_seconds)
print(json.dumps({"n_read": tally.n_read, "n_ingested": tally.n_ingested,
                  "n_quarantined": tally.n_quarantined, "reasons": dict(tally.reasons),
                  "seconds": round(time.perf_counter() - started, 2), "rss_mb": peak_rss_mb()}))
"""


def _ingest(path, html_seconds: float = 10.0, timeout: int = 60) -> dict:
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _INGEST_SCRIPT, str(path), str(html_seconds)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n_read"] == got["n_ingested"] + got["n_quarantined"], got
    return got


def test_a_parquet_file_of_huge_values_is_read_in_bounded_memory(tmp_path):
    """Before: 48 rows of one 8 MB value (a 14 KB file) took 1.87 GB, since 256 rows were read at
    once; a 200 MB value took about 5 times its size. Now a batch holds about 16 MB, a repeated
    value is decoded once, and a value over the document limit never becomes a Python string."""
    repeated = tmp_path / "repeated.parquet"
    value = "x" * (8 << 20)
    pq.write_table(pa.table({"text": [value] * 48}), repeated, compression="zstd")
    assert repeated.stat().st_size < 100_000
    got = _ingest(repeated)
    assert got["n_ingested"] == 1 and got["reasons"] == {"duplicate_in_shard": 47}, got
    assert got["rss_mb"] < 400, got
    huge = tmp_path / "huge.parquet"
    texts = ["small document"] * 100 + ["y" * (200 << 20)] + ["another one"]
    pq.write_table(pa.table({"text": texts}), huge, compression="zstd", use_dictionary=False)
    del texts
    got = _ingest(huge)
    assert got["n_ingested"] == 2 and got["reasons"] == {
        "document_too_large": 1,
        "duplicate_in_shard": 99,
    }, got
    assert got["rss_mb"] < 700, got


def test_a_shards_ids_cost_bytes_not_a_python_set(tmp_path):
    """Before: a set of every id, ~120 bytes a document (1.5 M documents +158 MB over 200 k); now
    16 bytes a document (about twice that while two runs merge): 600 k tiny documents cost
    little more than 20 k."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    for path, n in ((small, 20_000), (large, 600_000)):
        path.write_bytes(b"".join(b'{"text": "d%d"}\n' % i for i in range(n)))
    a, b = _ingest(small), _ingest(large)
    assert (a["n_ingested"], b["n_ingested"]) == (20_000, 600_000)
    assert b["rss_mb"] - a["rss_mb"] < 40, (a, b)


def _nested_divs(n_bytes: int) -> bytes:
    return b"<html><body>" + b"<div>" * (n_bytes // 5) + b"deep" + b"</div>" * (n_bytes // 5)


def _attributes(n_bytes: int) -> bytes:  # distinct names: each is checked against the others
    attrs = b"".join(b' a%d="b"' % i for i in range(n_bytes // 10))
    return b"<html><body><p " + attrs + b">text</p></body></html>"


def test_html_that_takes_forever_is_quarantined_and_the_shard_goes_on(tmp_path):
    """Before: a 2 MB page of nested divs did not finish in 120 s (868 KB of attributes: 61 s),
    and nothing of its shard or batch was recorded. Now each page has a time budget."""
    page = tmp_path / "deep.html"
    page.write_bytes(_nested_divs(2 << 20))
    got = _ingest(page, html_seconds=1.0, timeout=30)
    assert got["reasons"] == {"html_timeout": 1} and got["n_ingested"] == 0, got
    assert got["seconds"] < 5, got
    # a WARC of hostile pages between ordinary ones: the ordinary ones are ingested
    records = [
        _warc_record(b"http://a.example/", b"<p>first</p>"),
        _warc_record(b"http://deep.example/", _nested_divs(2 << 20)),
        _warc_record(b"http://attrs.example/", _attributes(868_000)),
        _warc_record(b"http://b.example/", b"<p>last</p>"),
    ]
    warc = tmp_path / "mixed.warc"
    warc.write_bytes(b"".join(records))
    got = _ingest(warc, html_seconds=1.0, timeout=30)
    assert got["n_ingested"] == 2 and got["reasons"] == {"html_timeout": 2}, got
    assert got["seconds"] < 8 and got["rss_mb"] < 400, got


# --- issue 32, item 11: BOM, declared charsets, NaN, empty and UTF-16 files ---------------------
def test_a_utf8_bom_costs_nothing_and_metadata_is_strict_json():
    data = b"\xef\xbb\xbf" + b'{"text": "first", "score": NaN, "m": {"x": [Infinity, 1]}}\n'
    data += b'{"text": "second"}\n'
    r = read(data, "bom.jsonl")
    assert [d["text"] for d in r.documents] == ["first", "second"] and reconciles(r)

    def strict(constant):
        raise ValueError(constant)

    meta = json.loads(r.documents[0]["metadata"], parse_constant=strict)
    assert meta == {"score": None, "m": {"x": [None, 1]}}


def test_a_warc_records_declared_charset_is_used():
    body = "<p>café crème</p>".encode("latin-1")
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=ISO-8859-1\r\n\r\n" + body
    plain = "naïve text".encode("latin-1")
    http2 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n" + plain
    head = b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://a/\r\n"
    head += b"Content-Type: application/http; msgtype=response\r\n"
    data = b"".join(
        head + b"Content-Length: " + str(len(h)).encode() + b"\r\n\r\n" + h + b"\r\n\r\n"
        for h in (http, http2)
    )
    r = read(data, "latin.warc")
    assert [d["text"].strip() for d in r.documents] == ["café crème", "naïve text"]


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("empty-jsonl.jsonl", b"", "no records"),
        ("empty-gz.jsonl.gz", b"", "no records"),
        ("empty-parquet.parquet", b"", "not a readable Parquet"),
        ("empty-html.html", b"", None),
        ("empty-warc.warc", b"", "not a readable WARC"),
        ("utf16.jsonl", '{"text": "hello"}\n'.encode("utf-16"), "UTF-16"),
    ],
)
def test_empty_and_utf16_files_are_an_ingestion_row_that_says_why(prox_env, name, data, why):
    from prox_assets.core.names import shard_name
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore

    ObjectStore().write_bytes(f"incoming/{name}", data)
    shard = shard_name(name)
    result = _materialize(shard)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "nothing could be read" in str(failure.event_specific_data.error.message)
    catalog = Catalog()
    rows = catalog.query("SELECT n_read, n_ingested, n_quarantined FROM ingestions").rows()
    assert rows == [(1, 0, 1)]
    [(reason, detail)] = catalog.query("SELECT reason, detail FROM quarantine").rows()
    if why is None:  # an empty page is one empty document
        assert reason == "empty_document"
    else:
        assert reason == "unreadable_file" and why in detail, detail


@pytest.mark.slow  # through the CLI: ~15 s of start and run, plus the page's 10 s budget
def test_a_folder_with_a_page_that_takes_forever_records_every_shard(prox_env):
    """Before: a folder of such pages and one ordinary JSONL ran 6 minutes and recorded nothing.
    Now the page costs its time budget (HTML_SECONDS) and its own shard; the JSONL is ingested."""
    import time

    from prox_assets.core.html_text import HTML_SECONDS
    from prox_resources.catalog import Catalog

    folder = prox_env / "drop"
    folder.mkdir()
    (folder / "deep.html").write_bytes(_nested_divs(2 << 20))
    (folder / "plain.jsonl").write_bytes(b'{"text": "an ordinary document"}\n')
    started = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "prox"), "ingest", str(folder)], capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - started
    assert out.returncode != 0 and "1 shard(s) failed: deep" in out.stdout + out.stderr, out
    assert seconds < HTML_SECONDS + 60, seconds  # the CLI's own start and run included
    catalog = Catalog()
    rows = catalog.query(
        "SELECT shard, n_read, n_ingested, n_quarantined FROM ingestions ORDER BY shard"
    ).rows()
    assert rows == [("deep", 1, 0, 1), ("plain", 1, 1, 0)]
    [(reason, detail)] = catalog.query("SELECT reason, detail FROM quarantine").rows()
    assert reason == "html_timeout" and f"{HTML_SECONDS:g} s" in detail, detail
