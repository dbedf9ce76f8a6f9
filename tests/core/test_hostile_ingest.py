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
