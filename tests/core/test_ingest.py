"""Readers and normalisation: every input ends as a document or a quarantine row with a reason."""

import gzip
import io
import json
from pathlib import Path

import polars as pl
import pytest

from prox_assets.core.ingest import UnreadableInput, doc_id_of, read_documents
from prox_assets.core.names import shard_name


def read(data: bytes, name: str, max_doc_bytes: int = 10 * 1024 * 1024):
    return read_documents(io.BytesIO(data), name, shard_name(name), max_doc_bytes=max_doc_bytes)


def jsonl(*records) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def test_shard_names():
    # a name that sanitising changes keeps a readable slug and a hash of the original name
    assert shard_name("incoming/My File.JSONL.gz") == "my-file--8b7b6cca"
    assert shard_name("pydocs-00.warc.gz") == "pydocs-00"
    assert shard_name("???.parquet") == "shard--b393cf18"


def test_jsonl_schema_and_stable_ids():
    data = jsonl(
        {"text": "Hello world", "url": "http://a", "id": 7, "lang": "en"},
        {"text": "Second doc", "source": "x"},
    )
    r = read(data, "s.jsonl")
    assert [d["text"] for d in r.documents] == ["Hello world", "Second doc"]
    first = r.documents[0]
    assert first["doc_id"] == doc_id_of("Hello world") and len(first["doc_id"]) == 32
    assert json.loads(first["metadata"]) == {"lang": "en", "source_id": 7}
    assert first["source"] == "s" and r.documents[1]["source"] == "x"
    assert r.frame().schema["n_words"] == pl.Int64


def test_malformed_records_are_quarantined_and_counts_reconcile():
    data = jsonl(
        {"text": "good one"},
        b'{"text": "broken',  # malformed JSON
        b'{"text": "bad \xff\xfe bytes"}',  # not UTF-8
        {"no_text": 1},  # missing field
        {"text": 42},  # wrong type
        b"[1, 2]",  # not an object
        {"text": "   \n "},  # empty
        {"text": "\ud800 lone surrogate"},  # invalid unicode once decoded
        {"text": "good one"},  # duplicate
        {"text": "Windows\r\nline\rendings"},
    )
    r = read(data, "bad.jsonl")
    reasons = [(q.locator, q.reason) for q in r.quarantined]
    assert reasons == [
        ("line:2", "malformed_json"),
        ("line:3", "undecodable_bytes"),
        ("line:4", "missing_text"),
        ("line:5", "wrong_schema"),
        ("line:6", "wrong_schema"),
        ("line:7", "empty_document"),
        ("line:8", "invalid_unicode"),
        ("line:9", "duplicate_in_shard"),
    ]
    assert [d["text"] for d in r.documents] == ["good one", "Windows\nline\nendings"]
    assert r.n_read == 10 == len(r.documents) + len(r.quarantined)


def test_enormous_documents_are_quarantined_without_reading_them_whole():
    big = json.dumps({"text": "x" * 5000}).encode()
    data = jsonl({"text": "small"}, big, {"text": "after"})
    r = read(data, "big.jsonl", max_doc_bytes=1000)
    assert [q.reason for q in r.quarantined] == ["document_too_large"]
    assert [d["text"] for d in r.documents] == ["small", "after"]


def test_truncated_gzip_keeps_what_was_read():
    full = gzip.compress(jsonl(*[{"text": f"document number {i} " * 20} for i in range(200)]))
    r = read(full[: len(full) // 2], "t.jsonl.gz")
    assert r.documents and r.quarantined[-1].reason == "corrupt_file"


def test_parquet_good_and_wrong_schema():
    buf = io.BytesIO()
    pl.DataFrame({"text": ["a b c", None, "d e f"], "url": ["u1", None, "u3"]}).write_parquet(buf)
    r = read(buf.getvalue(), "p.parquet")
    assert [d["url"] for d in r.documents] == ["u1", "u3"]
    assert [(q.locator, q.reason) for q in r.quarantined] == [("row:1", "missing_text")]

    wrong = io.BytesIO()
    pl.DataFrame({"body": ["x"]}).write_parquet(wrong)
    with pytest.raises(UnreadableInput, match=r"w\.parquet: no 'text' column"):
        read(wrong.getvalue(), "w.parquet")
    typed = io.BytesIO()
    pl.DataFrame({"text": [1, 2]}).write_parquet(typed)
    with pytest.raises(UnreadableInput, match="not string"):
        read(typed.getvalue(), "t.parquet")
    with pytest.raises(UnreadableInput, match=r"g\.parquet: not a readable Parquet"):
        read(b"PAR1 garbage", "g.parquet")


def test_html_keeps_boilerplate_like_a_crawl_extractor():
    html = b"""<html><head><title>T</title><script>var x=1;</script></head><body>
    <nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li></ul></nav>
    <article><p>The actual article text is here.</p></article>
    <footer>Copyright 2026 Example Corp. All rights reserved.</footer></body></html>"""
    r = read(html, "page.html")
    text = r.documents[0]["text"]
    assert (
        "Home" in text and "The actual article text is here." in text and "Copyright 2026" in text
    )
    assert "var x" not in text


def test_main_content_extraction_is_a_setting_and_says_so(sample_files):
    """PROX_HTML_TEXT=main_content: resiliparse's main content, as FineWeb's corpora are made;
    the default keeps the whole page. Each document records which it got."""
    page = Path("/usr/share/doc/python3.11/html/library/json.html").read_bytes()
    whole = read_documents(io.BytesIO(page), "json.html", "t")
    main = read_documents(io.BytesIO(page), "json.html", "t", html_text="main_content")
    whole_text, main_text = whole.documents[0]["text"], main.documents[0]["text"]
    assert "Navigation" in whole_text and "Navigation" not in main_text
    assert "json.dumps" in main_text and len(main_text) < 0.95 * len(whole_text)
    assert json.loads(whole.documents[0]["metadata"])["html_text"] == "whole"
    assert json.loads(main.documents[0]["metadata"])["html_text"] == "main_content"
    warc = next(p for p in sample_files if p.name == "news-00.warc.gz")
    warc_main = read_documents(
        io.BytesIO(warc.read_bytes()), warc.name, "w", html_text="main_content"
    )
    warc_whole = read_documents(io.BytesIO(warc.read_bytes()), warc.name, "w")
    assert sum(len(d["text"]) for d in warc_main.documents) < sum(
        len(d["text"]) for d in warc_whole.documents
    )
    assert all(
        json.loads(d["metadata"])["html_text"] == "main_content" for d in warc_main.documents
    )
    with pytest.raises(ValueError, match="html_text"):
        read_documents(io.BytesIO(page), "json.html", "t", html_text="main")


def test_warc_records(sample_files):
    warc = next(p for p in sample_files if p.name == "news-00.warc.gz")
    r = read(warc.read_bytes(), warc.name)
    assert r.n_read == 30 and len(r.documents) >= 25
    assert all(d["url"] for d in r.documents)
    with pytest.raises(UnreadableInput, match=r"x\.warc: not a readable WARC"):
        read(b"this is not a warc file at all\n" * 10, "x.warc")


def test_unsupported_format():
    with pytest.raises(UnreadableInput, match=r"notes\.txt: unsupported format"):
        read(b"hello", "notes.txt")
