"""Hostile names, links, races and SQL against the command line and the store (issue 15, items 4-6
and 8): every case ends with a clear error or a success, never with a file outside the store, a
shard that hides another, or a traceback; where ingestion runs, its counts reconcile."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from contextlib import contextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prox_assets.core.names import (
    MAX_NAME_CHARS,
    InvalidName,
    check_input_file_name,
    shard_name,
    split_suffix,
    validate_name,
)
from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN

SUFFIXES = [".jsonl", ".jsonl.gz", ".ndjson", ".parquet", ".html", ".warc.gz", ".JSONL", ".Parquet"]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_"))}
    return {**env, "PROX_HOME": str(home), **extra}


def prox(
    home: Path, *args, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [BIN / "prox", *(a if isinstance(a, bytes) else str(a) for a in args)],  # bytes: as given
        cwd=REPO_ROOT,
        env=env or _env(home),
        capture_output=True,
        text=True,
        errors="backslashreplace",  # output that is not UTF-8 fails the assertions, not the read
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"prox {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a message, not a traceback, naming every needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def query(home: Path, sql: str) -> list[dict]:
    return json.loads(prox(home, "catalog", "--json", sql).stdout)


def tree(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` (but not under ``skip``) with its bytes; links as their target."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        if skip is not None and Path(dirpath).is_relative_to(skip):
            continue
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (
                os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
            )
    return out


def jsonl(path: Path, *texts: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return path


def incoming(home: Path) -> list[str]:
    folder = home / "store" / "incoming"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def reconciles(home: Path) -> dict:
    totals = query(
        home,
        "SELECT count(*) AS shards, sum(n_read) AS n_read, sum(n_ingested) AS n_ingested, "
        "sum(n_quarantined) AS n_quarantined FROM ingestions",
    )[0]
    assert totals["n_read"] == totals["n_ingested"] + totals["n_quarantined"], totals
    assert query(home, "SELECT count(*) AS n FROM documents")[0]["n"] == totals["n_ingested"]
    return totals


# --- one validator, one shard-name function --------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "../../etc",
        "a/b",
        "a|b",
        "A",
        "Gsm8k",
        ".hidden",
        "-x",
        "_x",
        "a b",
        "a.b",
        "a\nb",
        "a\0b",
        "x" * (MAX_NAME_CHARS + 1),
        "x" * 248,
        "日本",
        "a..b",
    ],
)
def test_the_validator_refuses_names_that_could_break_a_key_or_a_path(name):
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize(
    "name",
    ["gsm8k", "arc-challenge", "pydocs-00", "d1a2b3c4d-c5e6f7a8", "a_b", "x" * MAX_NAME_CHARS],
)
def test_the_validator_accepts_ordinary_names(name):
    assert validate_name(name) == name


def test_shard_names_are_distinct_for_case_and_script_and_stable():
    names = [
        "again.jsonl",
        "AGAIN.jsonl",
        "Again.jsonl",
        "again.JSONL",
        "日本.jsonl",
        "中文.jsonl",
        "???.jsonl",
        "a b.jsonl",
        "a-b.jsonl",
        "a--b.jsonl",
        "a_b.jsonl",
        "a" * 248 + ".jsonl",
        "a" * 247 + "b.jsonl",
    ]
    shards = [shard_name(n) for n in names]
    assert len(set(shards)) == len(names), dict(zip(names, shards))
    for shard in shards:
        validate_name(shard)
        assert len(shard) <= 50
    # stable: the same name maps to the same shard in every process and version (pinned values)
    assert shards[:2] == ["again", "again--00cd95f6"]
    assert shard_name("incoming/sub/日本.jsonl") == shard_name("日本.jsonl") == "shard--aff4f8dd"
    # names already valid keep their stem: the sample corpus's shards do not move
    assert [
        shard_name(n) for n in ("pydocs-00.warc.gz", "austen-00.jsonl.gz", "math-00.parquet")
    ] == ["pydocs-00", "austen-00", "math-00"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s),
            st.sampled_from(SUFFIXES),
        ),
        min_size=2,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_different_stems_never_share_a_shard(files):
    """Injective up to the suffix: different stems give different shards (a shared stem with two
    suffixes is the one collision left, refused by the callers)."""
    names = [stem + suffix for stem, suffix in files]
    assert len({split_suffix(n)[0] for n in names}) == len(names)  # distinct stems (as generated)
    shards = [shard_name(n) for n in names]
    assert len(set(shards)) == len(names), dict(zip(names, shards))
    for shard in shards:
        validate_name(shard)
    digest = {
        n: hashlib.sha256(n.encode("utf-8", "surrogateescape")).hexdigest()[:8] for n in names
    }
    for n in names:
        assert shard_name(n) == split_suffix(n)[0] or shard_name(n).endswith("--" + digest[n])


def test_store_temporary_names_and_control_characters_are_refused_as_inputs():
    for bad in (".tmp-x.jsonl", "a\nb.jsonl", "é" * 130 + ".jsonl"):
        with pytest.raises(InvalidName):
            check_input_file_name(bad)
    check_input_file_name("a" * 248 + ".jsonl")


# --- item 4: a file never replaces or hides another shard ------------------------------------------
def test_case_and_script_variants_each_get_their_own_shard(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    jsonl(data / "again.jsonl", "the first document", "the second document")
    jsonl(data / "AGAIN.jsonl", "a different single document")
    jsonl(data / "日本.jsonl", "日本語の文書です")
    jsonl(data / "中文.jsonl", "这是中文文档")
    before = tree(tmp_path, skip=home)
    out = prox(home, "ingest", data).stdout
    assert out.count(" ok in ") == 4, out
    assert out.count("(one run of 4 partitions)") == 4, out  # a range run, its keys in any script
    rows = {
        r["source_file"]: r
        for r in query(home, "SELECT shard, source_file, n_read, n_ingested FROM ingestions")
    }
    assert {Path(k).name: (v["shard"], v["n_ingested"]) for k, v in rows.items()} == {
        "again.jsonl": ("again", 2),
        "AGAIN.jsonl": (shard_name("AGAIN.jsonl"), 1),
        "日本.jsonl": (shard_name("日本.jsonl"), 1),
        "中文.jsonl": (shard_name("中文.jsonl"), 1),
    }
    assert reconciles(home)["n_ingested"] == 5
    assert tree(tmp_path, skip=home) == before  # nothing written outside PROX_HOME


def test_a_second_file_for_a_taken_shard_is_refused(tmp_path):
    home = tmp_path / "home"
    first = jsonl(tmp_path / "a" / "same.jsonl", "one two three")
    prox(home, "ingest", "--no-run", first)
    other = jsonl(
        tmp_path / "b" / "same.ndjson", "four five six"
    )  # stem "same" again, another file
    one_line_error(
        prox(home, "ingest", "--no-run", other, check=False), "shard 'same'", "same.jsonl"
    )
    assert incoming(home) == ["same.jsonl"]


def test_same_name_other_bytes_is_refused_unless_replace(tmp_path):
    home = tmp_path / "home"
    a = jsonl(tmp_path / "a" / "doc.jsonl", "first version of the text")
    b = jsonl(tmp_path / "b" / "doc.jsonl", "second version", "with two documents")
    prox(home, "ingest", a)
    prox(home, "ingest", a)  # the same bytes again: fine, ingested again
    one_line_error(prox(home, "ingest", b, check=False), "exists with other content", "--replace")
    stored = home / "store" / "incoming" / "doc.jsonl"
    assert stored.read_bytes() == a.read_bytes()
    prox(home, "ingest", "--replace", b)
    assert stored.read_bytes() == b.read_bytes()
    assert query(home, "SELECT n_ingested FROM ingestions WHERE shard = 'doc'") == [
        {"n_ingested": 2}
    ]
    reconciles(home)


def test_concurrent_ingests_of_one_basename_do_not_both_succeed(tmp_path):
    home = tmp_path / "home"
    files = [
        jsonl(tmp_path / d / "dup.jsonl", f"written by {d}", "and one more line")
        for d in ("a", "b", "c")
    ]
    prox(home, "catalog", "SELECT 1")  # the home exists; the race is the upload's
    procs = [
        subprocess.Popen(
            [BIN / "prox", "ingest", "--no-run", f],
            cwd=REPO_ROOT,
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    winners = [i for i, (rc, _, _) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results
    for i, (_, _, err) in enumerate(results):
        if i not in winners:
            assert "exists with other content" in err and "Traceback" not in err, err
    assert (home / "store" / "incoming" / "dup.jsonl").read_bytes() == files[
        winners[0]
    ].read_bytes()
    assert incoming(home) == ["dup.jsonl"]


def test_a_collision_dropped_into_incoming_is_reported_and_used_for_neither(prox_env):
    import dagster as dg

    from prox_assets.ingest import (
        incoming_file,
        incoming_files,
        incoming_files_sensor,
        scan_incoming,
    )
    from prox_resources.store import ObjectStore
    from tests.support.pipeline import materialize

    store = ObjectStore()
    store.write_bytes("incoming/same.jsonl", b'{"text": "one"}\n')
    store.write_bytes("incoming/same.ndjson", b'{"text": "two"}\n')  # both map to shard "same"
    store.write_bytes("incoming/fine.jsonl", b'{"text": "three"}\n')
    scan = scan_incoming(store)
    assert scan.collisions == {"same": ["incoming/same.jsonl", "incoming/same.ndjson"]}
    assert incoming_files(store) == {"fine": "incoming/fine.jsonl"}
    with pytest.raises(dg.Failure, match="ambiguous"):
        incoming_file(store, "same")

    with dg.DagsterInstance.get() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"store": store})
        result = incoming_files_sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["fine"]
        instance.add_dynamic_partitions("shard", ["fine"])
        result = incoming_files_sensor(
            dg.build_sensor_context(instance=instance, resources={"store": store})
        )
        assert not result.run_requests and "ambiguous" in str(result.skip_reason)
        # a run for the ambiguous shard (registered by hand) fails and reads neither file
        instance.add_dynamic_partitions("shard", ["same"])
        run = materialize(instance, "raw_corpus", "same", raise_on_error=False)
    assert not run.success
    assert not [k for k in store.list("raw/") if "same" in k]


# --- item 5: names that become paths -----------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["{outside}"], "not allowed"),  # ../ segments leading to an outside folder
        ([""], "must not be empty"),
        (["a|b"], "not allowed"),
        (["Upper"], "not allowed"),
        (["x" * 248], "at most 64"),
        (["ok", "--n-target", "-5"], "--n-target"),
        (["ok", "--n-target", "0"], "--n-target"),
        (["ok", "--n-heldout", "-1"], "--n-heldout"),
    ],
)
def test_target_add_refuses_names_and_counts(tmp_path, args, needle):
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    escape = os.path.relpath(outside, home / "store" / "targets")
    args = [a.format(outside=escape) for a in args]
    proc = prox(home, "target", "add", *args, "--task", "gsm8k", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and needle in proc.stderr, (
        proc.stderr
    )
    assert list(outside.iterdir()) == [] and not (home / "store" / "targets").exists()
    assert not list(tmp_path.glob("**/target.parquet"))


def test_add_target_refuses_a_path_name_when_called_directly(prox_env, tmp_path):
    from prox_assets.cli import add_target
    from prox_assets.layout import target_prefix

    for bad in ("../../outside", "a|b", ""):
        with pytest.raises(InvalidName):
            add_target(bad, "gsm8k", 4, 4, 0)
        with pytest.raises(InvalidName):
            target_prefix(bad)
    assert not list(tmp_path.glob("**/target.parquet"))


@pytest.mark.parametrize(
    "cmd",
    [
        ["backfill", "--refiner-version", "../../x"],
        ["backfill", "--refiner-version", "d1-c2", "--shard", "a|b"],
        ["bench", "refinement", "--refiner-version", "a/b"],
        ["bench", "refine", "--refiner-version", ""],
    ],
)
def test_refiner_versions_and_shards_on_the_command_line_use_the_same_validator(tmp_path, cmd):
    proc = prox(tmp_path / "home", *cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not allowed" in proc.stderr or "must not be empty" in proc.stderr, proc.stderr


# --- item 8: links, long names, temporary names --------------------------------------------------------
def test_symbolic_links_given_or_found_are_refused(tmp_path):
    home = tmp_path / "home"
    secret = jsonl(tmp_path / "outside" / "secret.jsonl", "SECRET-LINE-1", "SECRET-LINE-2")
    data = tmp_path / "data"
    jsonl(data / "fine.jsonl", "an ordinary document")
    (data / "link.jsonl").symlink_to(secret)
    one_line_error(prox(home, "ingest", data / "link.jsonl", check=False), "symbolic link")
    one_line_error(prox(home, "ingest", data, check=False), "symbolic link", "link.jsonl")
    linked_dir = tmp_path / "data2"
    linked_dir.mkdir()
    (linked_dir / "sub").symlink_to(secret.parent, target_is_directory=True)
    one_line_error(prox(home, "ingest", linked_dir, check=False), "symbolic link", "sub")
    assert incoming(home) == []


def test_a_link_dropped_into_incoming_is_never_read(prox_env, tmp_path):
    import dagster as dg

    from prox_assets.ingest import incoming_files, incoming_files_sensor, scan_incoming
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore
    from tests.support.pipeline import materialize

    secret = jsonl(tmp_path / "outside" / "secret.jsonl", "SECRET-LINE-1", '{"not json')
    store = ObjectStore()
    store.write_bytes("incoming/fine.jsonl", b'{"text": "three words here"}\n')
    (prox_env / "store" / "incoming" / "evil.jsonl").symlink_to(secret)
    assert "incoming/evil.jsonl" in scan_incoming(store).refused
    assert incoming_files(store) == {"fine": "incoming/fine.jsonl"}
    with pytest.raises(PermissionError):
        store.open_read("incoming/evil.jsonl")
    with pytest.raises(PermissionError):
        store.read_bytes("incoming/evil.jsonl")
    with dg.DagsterInstance.get() as instance:
        result = incoming_files_sensor(
            dg.build_sensor_context(instance=instance, resources={"store": store})
        )
        assert [r.partition_key for r in result.run_requests] == ["fine"]
        instance.add_dynamic_partitions("shard", ["evil", "fine"])
        bad = materialize(instance, "raw_corpus", "evil", raise_on_error=False)
        good = materialize(instance, "raw_corpus", "fine", raise_on_error=False)
    assert not bad.success and good.success
    dump = (
        Catalog().query("SELECT * FROM quarantine").write_csv()
        + Catalog().query("SELECT * FROM ingestions").write_csv()
    )
    assert "SECRET" not in dump and "not json" not in dump
    assert not [k for k in store.list("raw/") if "evil" in k]


def test_a_248_character_name_ingests_under_a_bounded_shard(tmp_path):
    home = tmp_path / "home"
    long_file = jsonl(
        tmp_path / "data" / ("n" * 248 + ".jsonl"), "a document with a very long file name"
    )
    wide_file = jsonl(
        tmp_path / "data" / ("名" * 80 + ".jsonl"), "a document whose name is 246 bytes"
    )
    out = prox(home, "ingest", long_file, wide_file).stdout
    assert out.count(" ok in ") == 2, out
    shards = {r["shard"] for r in query(home, "SELECT shard FROM ingestions")}
    assert shards == {shard_name(long_file.name), shard_name(wide_file.name)}
    assert all(len(s) <= 50 for s in shards)
    assert reconciles(home)["n_ingested"] == 2


def test_a_store_temporary_name_is_refused_before_upload(tmp_path):
    home = tmp_path / "home"
    tmp_named = jsonl(tmp_path / "data" / ".tmp-x.jsonl", "would be registered, then never found")
    one_line_error(prox(home, "ingest", tmp_named, check=False), ".tmp-")
    one_line_error(prox(home, "ingest", tmp_path / "data", check=False), ".tmp-")
    assert incoming(home) == []


# --- item 6: first use by several commands at once ---------------------------------------------------
def test_four_ingests_started_together_on_a_fresh_home_all_succeed(tmp_path):
    home = tmp_path / "home"
    files = [
        jsonl(tmp_path / "data" / f"part-{i}.jsonl", f"document {i} alpha", f"document {i} beta")
        for i in range(4)
    ]
    for f in files:
        with f.open("a") as out:
            out.write('{"text": "malformed\n')  # one quarantined line per file
    procs = [
        subprocess.Popen(
            [BIN / "prox", "ingest", f],
            cwd=REPO_ROOT,
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0, 0, 0], "\n".join(
        err[-3000:] for _, _, err in results
    )
    assert incoming(home) == [f.name for f in files]  # no orphan, none missing
    totals = reconciles(home)
    assert totals["shards"] == 4 and totals["n_ingested"] == 8 and totals["n_quarantined"] == 4


def test_an_upload_that_cannot_be_registered_leaves_nothing_behind(prox_env, tmp_path):
    from prox_assets.cli import _instance, ingest_paths

    kept = jsonl(tmp_path / "data" / "kept.jsonl", "registered before")
    ingest_paths([kept], run=False)
    _instance()  # created and cached; now its event storage breaks under it
    index_db = (
        prox_env / "dagster" / "history" / "runs" / "index.db"
    )  # dynamic partitions live here
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_db}{suffix}").unlink(missing_ok=True)
    new = jsonl(tmp_path / "data2" / "new.jsonl", "cannot be registered")
    with pytest.raises(Exception, match="dynamic partitions table"):
        ingest_paths([new], run=False)
    assert incoming(prox_env) == [
        "kept.jsonl"
    ]  # the new upload was deleted again; the old one stays


# --- item 8: the catalog command is read-only, errors are one line -------------------------------------
def test_catalog_is_read_only_without_file_access(tmp_path):
    home = tmp_path / "home"
    prox(home, "ingest", jsonl(tmp_path / "data" / "c.jsonl", "one document here"))
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    target = tmp_path / "copied.csv"
    before = tree(tmp_path, skip=home)
    for sql, needle in [
        (f"COPY (SELECT * FROM documents) TO '{target}'", "Permission Error"),
        (f"SELECT * FROM read_text('{secret}')", "Permission Error"),
        (f"ATTACH '{tmp_path / 'other.duckdb'}' AS o", "Permission Error"),
        ("SET enable_external_access = true", "Permission Error"),
        (f"SELECT 1; COPY (SELECT 1) TO '{target}'", "Permission Error"),
        ("DELETE FROM documents", "Permission Error"),
        ("INSTALL httpfs", "Permission Error"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM no_such_table", "no_such_table"),
    ]:
        line = one_line_error(prox(home, "catalog", sql, check=False), "catalog:", needle)
        assert "SECRET" not in line
    assert tree(tmp_path, skip=home) == before and not target.exists()
    assert query(home, "SELECT count(*) AS n FROM documents") == [{"n": 1}]


# --- hardening round 3 (issue 32), items 1, 9, 10: the catalog command writes nothing, blocks
# nothing, and answers every query with rows or one line --------------------------------------
def test_catalog_cannot_overwrite_its_own_database_or_wal(tmp_path):
    """DuckDB lets COPY ... TO write the database's own file and WAL even with external access
    off: before the fix this exited 0 and left a catalog that no command could open again."""
    home = tmp_path / "home"
    prox(home, "ingest", jsonl(tmp_path / "data" / "c.jsonl", "one document here"))
    db = home / "catalog.duckdb"
    before = db.read_bytes()
    for target in (db, Path(f"{db}.wal")):
        for sql in (
            f"COPY (SELECT 1) TO '{target}' (FORMAT csv, USE_TMP_FILE false)",
            f"COPY (SELECT 1) TO '{target}' (FORMAT csv)",
            f"EXPORT DATABASE '{tmp_path / 'export'}'",
            "CHECKPOINT",
            f"PRAGMA database_size; COPY (SELECT 1) TO '{target}'",
        ):
            one_line_error(prox(home, "catalog", sql, check=False), "catalog:", "refused")
    assert db.read_bytes() == before and not Path(f"{db}.wal").exists()
    assert not (tmp_path / "export").exists()
    assert query(home, "SELECT count(*) AS n FROM documents") == [{"n": 1}]
    # what a person reads with stays allowed
    assert query(home, "SHOW TABLES") and query(home, "DESCRIBE documents")
    assert query(home, "SUMMARIZE documents")


def test_catalog_prints_every_type_and_json_stays_json(tmp_path):
    home = tmp_path / "home"
    prox(home, "ingest", jsonl(tmp_path / "data" / "c.jsonl", "one document here"))
    odd = (
        "SELECT INTERVAL 3 DAY AS i, union_value(k := 1) AS u, 'infinity'::TIMESTAMP AS t, "
        "'-infinity'::DATE AS d, 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, "
        "'-inf'::FLOAT AS ninf, [1.0, 'nan'::DOUBLE] AS l, {'x': 'inf'::DOUBLE} AS s"
    )
    shown = prox(home, "catalog", odd)
    assert "Traceback" not in shown.stderr and "3 days" in shown.stdout
    rows = json.loads(prox(home, "catalog", "--json", odd).stdout)  # strict: no NaN/Infinity
    assert rows[0]["nan"] == "NaN" and rows[0]["inf"] == "Infinity"
    assert rows[0]["ninf"] == "-Infinity" and rows[0]["l"] == [1.0, "NaN"]
    assert rows[0]["s"] == {"x": "Infinity"} and "3" in str(rows[0]["i"])
    not_utf8 = subprocess.run(
        [BIN / "prox", "catalog", b"SELECT '\xff'"],
        cwd=REPO_ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    one_line_error(not_utf8, "UTF-8")


def test_a_long_catalog_query_blocks_no_ingestion_and_a_killed_one_leaves_nothing(tmp_path):
    """Before the fix a 40 s query held an ingestion's commit for 40 s: the query held the shared
    lock that the writer needs exclusively. It now reads a snapshot and holds nothing."""
    import signal
    import time

    home = tmp_path / "home"
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = _env(home, TMPDIR=str(scratch))
    prox(home, "ingest", jsonl(tmp_path / "data" / "a.jsonl", "first shard"), env=env)
    slow = subprocess.Popen(
        [BIN / "prox", "catalog", "SELECT sum(hash(i)) FROM range(100000000000) t(i)"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(15.0)  # the command has started and its query runs (it would for hours)
        assert slow.poll() is None, "the query ended early"
        started = time.monotonic()
        ingest = subprocess.run(
            [BIN / "prox", "ingest", jsonl(tmp_path / "data" / "b.jsonl", "second shard")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,  # before the fix it waited for the query: 600 s, then failed
        )
        took = time.monotonic() - started
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        assert slow.poll() is None, "the query ended before the ingestion: make it longer"
        print(f"ingestion beside a running catalog query: {took:.1f} s")
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait()
    assert query(home, "SELECT count(*) AS n FROM documents") == [{"n": 2}]
    # the killed query's snapshot is deleted by the next reader
    prox(home, "catalog", "SELECT 1", env=env)
    assert not list(scratch.iterdir())


# --- hardening round 3 (issue 32), items 2 and 4: ingestions of one shard never lose its data, and
# a killed one leaks nothing ------------------------------------------------------------------
def test_two_ingestions_of_one_shard_at_once_keep_the_file_the_catalog_names(tmp_path):
    """Both runs wrote their raw file before either committed (a reader held the catalog's lock);
    each then deleted the other's file, and the catalog ended naming a deleted one."""
    import fcntl
    import time

    home = tmp_path / "home"
    data = jsonl(tmp_path / "data" / "twice.jsonl", *(f"document number {i}" for i in range(30)))
    prox(home, "ingest", "--no-run", data)
    raw = home / "store" / "raw" / "twice"
    lock = os.open(home / "catalog.duckdb.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_SH)  # as a long reader did: writers wait at their commit
    procs = [
        subprocess.Popen(
            [BIN / "prox", "ingest", data],
            cwd=REPO_ROOT,
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 240
        while not list(raw.glob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(8.0)  # time for the second run to write its file too, were it not waiting
    finally:
        os.close(lock)
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
    named = query(home, "SELECT raw_path FROM ingestions WHERE shard = 'twice'")[0]["raw_path"]
    assert (home / "store" / named).is_file(), f"the catalog names a deleted file: {named}"
    assert [p.name for p in raw.iterdir()] == [Path(named).name]
    assert query(home, "SELECT count(*) AS n FROM documents WHERE raw_path = '" + named + "'") == [
        {"n": 30}
    ]


def test_a_killed_ingestion_leaves_nothing_once_the_shard_is_ingested_again(tmp_path):
    import signal
    import time

    home = tmp_path / "home"
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = _env(home, TMPDIR=str(scratch))
    big = tmp_path / "data" / "big-00.jsonl"
    big.parent.mkdir(parents=True)
    line = json.dumps({"text": "A line of ordinary prose for the ingest to read.\n" * 40})
    big.write_text((line + "\n") * 30_000)  # ~60 MB: seconds of writing once the step starts
    raw = home / "store" / "raw" / "big-00"
    proc = subprocess.Popen(
        [BIN / "prox", "ingest", big],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(raw.glob(".tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "no write was caught"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(raw.glob(".tmp-*")) and list(scratch.glob("prox-ingest-*"))  # what kill -9 leaves
    big.write_text(json.dumps({"text": "now a small file"}) + "\n")
    prox(home, "ingest", "--replace", big, env=env)
    named = query(home, "SELECT raw_path FROM ingestions WHERE shard = 'big-00'")[0]["raw_path"]
    assert [p.name for p in raw.iterdir()] == [Path(named).name]
    assert not list(scratch.glob("prox-ingest-*"))


@pytest.mark.slow
def test_s3_access_denied_is_one_line(seaweedfs, s3_store_env, tmp_path):
    home = tmp_path / "home"
    env = _env(
        home,
        PROX_STORE=os.environ["PROX_STORE"],
        AWS_ENDPOINT_URL=seaweedfs["endpoint"],
        AWS_ACCESS_KEY_ID=seaweedfs["key"],
        AWS_SECRET_ACCESS_KEY="wrong-secret",
    )
    proc = prox(
        home, "ingest", "--no-run", jsonl(tmp_path / "d.jsonl", "x y z"), check=False, env=env
    )
    print(one_line_error(proc, "access denied", "AWS_SECRET_ACCESS_KEY"))
    ok_env = {**env, "AWS_SECRET_ACCESS_KEY": seaweedfs["secret"]}
    prox(
        home, "ingest", "--no-run", tmp_path / "d.jsonl", env=ok_env
    )  # right key: the same command works


# --- issue 32: a bad setting, a full disk, Dagster's warnings: one line ------------------------
@pytest.mark.parametrize(
    "variable, value, needles",
    [
        ("PROX_ENGINE_BACKEND", "torch", ["PROX_ENGINE_BACKEND='torch'", "transformers, vllm"]),
        ("PROX_PARTITIONS_PER_RUN", "many", ["PROX_PARTITIONS_PER_RUN='many'", "not an integer"]),
        ("PROX_EXECUTOR", "kubernetes", ["PROX_EXECUTOR='kubernetes'", "k8s, celery"]),
    ],
)
@pytest.mark.parametrize("command", [["settings"], ["ingest", "--no-run", "{file}"]])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path, variable, value, needles, command):
    """A typo in a variable stops every command with one line that names the variable and the
    values it takes (PROX_EXECUTOR=kubernetes used to run Dagster's own executor silently)."""
    home = tmp_path / "home"
    args = [a.format(file=jsonl(tmp_path / "d.jsonl", "x y z")) for a in command]
    before = tree(tmp_path)
    proc = prox(home, *args, check=False, env=_env(home, **{variable: value}))
    one_line_error(proc, *needles)
    assert tree(tmp_path) == before and not home.exists()  # refused before anything is written


def test_commands_print_no_dagster_beta_warnings(tmp_path):
    home = tmp_path / "home"
    proc = prox(home, "ingest", jsonl(tmp_path / "data" / "w.jsonl", "one two three"))
    assert "Warning" not in proc.stderr, proc.stderr
    assert "Warning" not in prox(home, "settings").stderr


def _unshare_works() -> bool:
    """Whether this machine lets a process mount a tmpfs in its own namespaces (``unshare``)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="no unshare/tmpfs: cannot make a small disk")
@pytest.mark.parametrize("kb", [600, 2400], ids=["home-fills", "upload-fills"])
def test_a_full_disk_is_one_line_and_the_command_completes_once_there_is_room(tmp_path, kb):
    """PROX_HOME on a real 2 MiB disk (a tmpfs in a private mount namespace): a file that fills it
    during the upload, or after it (Dagster's SQLite storage: "disk I/O error"), ends with one
    line saying the disk is full; given room, the same command ingests everything."""
    home, disk, out = tmp_path / "disk" / "home", tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    n = kb * 1024 // 1000
    source = tmp_path / "data" / "fill.jsonl"
    source.parent.mkdir()
    source.write_text(
        "".join(
            json.dumps({"text": f"document {i}: " + "ordinary words " * 64}) + "\n"
            for i in range(n)
        )
    )
    prox_bin = BIN / "prox"
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {disk} || exit 99\n"
        f"{prox_bin} ingest {source} >{out}/1.out 2>{out}/1.err; echo $? >{out}/1.rc\n"
        f"mount -o remount,size=64m {disk}\n"  # room again: the same command
        f"{prox_bin} ingest {source} >{out}/2.out 2>{out}/2.err; echo $? >{out}/2.rc\n"
        f"{prox_bin} catalog --json 'SELECT sum(n_read) AS n_read, sum(n_ingested) AS n_ingested "
        f"FROM ingestions' >{out}/q.json 2>{out}/q.err\n"
    )
    subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=REPO_ROOT, env=_env(home), timeout=600
    )

    def read(name: str) -> str:
        return (out / name).read_text()

    failed = subprocess.CompletedProcess([], int(read("1.rc")), read("1.out"), read("1.err"))
    one_line_error(failed, "no space left on device", "PROX_HOME")
    if read("2.rc").strip() != "0" and "replaying WAL" in read("2.err"):
        # DuckDB cannot replay the WAL a full disk cut short: the catalog stays unusable until
        # catalog.duckdb.wal is removed (prox_resources/catalog.py, not this command's to fix)
        pytest.xfail("a full disk leaves catalog.duckdb.wal unreplayable")
    assert read("2.rc").strip() == "0", read("2.err")[-3000:]
    assert json.loads(read("q.json")) == [{"n_read": n, "n_ingested": n}], read("q.err")
    assert list(disk.iterdir()) == []  # the disk lived in the namespace: nothing written outside


# --- issue 32: prox backfill against what is not a Dagster webserver ---------------------------
class _Answer(BaseHTTPRequestHandler):
    """A webserver that answers every POST with the class's ``body`` (as ``content_type``)."""

    body = b""
    content_type = "application/json"

    def do_POST(self):  # http.server calls it by this name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):  # quiet
        pass


@contextmanager
def answering(body: bytes, content_type: str = "application/json"):
    """A real HTTP server on loopback answering ``body``; yields its URL."""
    handler = type("Handler", (_Answer,), {"body": body, "content_type": content_type})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "body, content_type, needles",
    [
        (
            b"<!doctype html><html><body>Sign in</body></html>",
            "text/html",
            ["not answer", "Sign in"],
        ),
        (b'{"data": null}', "application/json", ["without data"]),
        (b'{"data": {}}', "application/json", ["launchPartitionBackfill"]),
        (  # a launch that succeeds without an id, and one whose id is an escape sequence
            b'{"data": {"launchPartitionBackfill": {"__typename": "LaunchBackfillSuccess"}}}',
            "application/json",
            ["no backfill id"],
        ),
        (
            b'{"data": {"launchPartitionBackfill": {"__typename": "LaunchBackfillSuccess", '
            b'"backfillId": "\\u001b]0;owned\\u0007"}}}',
            "application/json",
            ["no backfill id"],
        ),
        (b"[1, 2]", "application/json", ["not answer"]),
        (b"\xff\xfe", "application/octet-stream", ["not answer"]),
        (None, None, ["no Dagster webserver", "prox ui"]),  # nothing listens
    ],
    ids=["html", "data-null", "no-field", "no-id", "escape-id", "json-list", "binary", "no-server"],
)
def test_backfill_against_a_server_that_is_not_dagster_is_one_line(
    prox_env, tmp_path, body, content_type, needles
):
    from prox_assets.partitions import refiner_version_partitions, shard_partitions
    from prox_assets.runs import instance

    instance().add_dynamic_partitions(refiner_version_partitions.name, ["d1-c1"])
    instance().add_dynamic_partitions(shard_partitions.name, ["s1"])
    before = tree(tmp_path, skip=prox_env)
    with (
        nullcontext(f"http://127.0.0.1:{_closed_port()}")
        if body is None
        else answering(body, content_type)
    ) as url:
        proc = prox(prox_env, "backfill", "--refiner-version", "d1-c1", "--url", url, check=False)
    line = one_line_error(proc, url, *needles)
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in line
    assert tree(tmp_path, skip=prox_env) == before


# --- issue 32: prox audit: ids and URLs that are not plain text --------------------------------
def test_audit_of_an_id_that_is_not_utf8_is_one_line(tmp_path):
    home = tmp_path / "home"
    one_line_error(prox(home, "audit", b"\xff\xfe-not-an-id", check=False), "not valid UTF-8")


def test_audit_shows_escape_sequences_from_a_url_inert(tmp_path):
    """A document's URL (and an id typed by someone) may hold terminal escape sequences (set the
    title, clear the screen, recolour) and bidirectional overrides: the audit prints them as
    escapes, each fact on its own line."""
    home = tmp_path / "home"
    hostile = "http://x.org/\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\nfake line"
    source = tmp_path / "data" / "esc.jsonl"
    source.parent.mkdir()
    source.write_text(json.dumps({"text": "a document with a hostile url", "url": hostile}) + "\n")
    prox(home, "ingest", source)
    [row] = query(home, "SELECT doc_id, url FROM documents")
    assert row["url"] == hostile  # stored as given: only what is printed is made inert
    out = prox(home, "audit", row["doc_id"]).stdout
    assert not any(c in out for c in "\x1b\x07\x9b\u202e"), out
    assert "http://x.org/\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\nfake line" in out, out
    assert len(out.splitlines()) == 2  # the document line and its ingestion line
    assert json.loads(prox(home, "audit", "--json", row["doc_id"]).stdout)["ingested"][0][
        "url"
    ] == (hostile)  # --json is JSON: escaped by its own rules, the value intact
    typed = prox(home, "audit", "\x1b[2J\x1b]0;x\x07", check=False)
    assert typed.returncode == 1 and "\x1b" not in typed.stdout and "\\x1b[2J" in typed.stdout


# --- issue 32: a file name that is not UTF-8 ---------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_refused_before_upload(tmp_path):
    """A POSIX name may be any bytes; the catalog, Dagster's records and S3 keys are text, so
    such a file is refused with one line, given alone or found in a folder."""
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    bad = os.fsencode(data) + b"/caf\xe9-latin1.jsonl"
    with open(bad, "wb") as f:
        f.write(b'{"text": "a fine document"}\n')
    jsonl(data / "fine.jsonl", "another fine document")
    one_line_error(prox(home, "ingest", bad, check=False), "not valid UTF-8", "\\udce9")
    one_line_error(prox(home, "ingest", data, check=False), "not valid UTF-8")
    assert incoming(home) == [] and not (home / "store" / "raw").exists()
    with pytest.raises(InvalidName, match="not valid UTF-8"):
        check_input_file_name(os.fsdecode(bad))


# --- issue 32: prox target add, a seed the catalog cannot hold, a failed row --------------------
def test_target_add_refuses_a_seed_the_catalog_cannot_hold_before_writing(tmp_path):
    home = tmp_path / "home"
    proc = prox(home, "target", "add", "big", "--task", "gsm8k", "--seed", 2**32, check=False)
    one_line_error(proc, "--seed", "4294967296")
    assert proc.returncode == 2
    assert not (home / "store" / "targets").exists()


def test_a_target_whose_catalog_row_fails_leaves_no_files_and_no_partition(prox_env):
    """Checked before anything is written (a seed out of range); and where the catalog insert
    itself fails, the files are removed again (a new target) or put back (a re-drawn one)."""
    from prox_assets.core.errors import UserError
    from prox_assets.partitions import target_partitions
    from prox_assets.runs import instance
    from prox_assets.targets import add_target
    from prox_resources.catalog import Catalog

    targets = prox_env / "store" / "targets"
    with pytest.raises(UserError, match="out of range"):
        add_target("big", "gsm8k", 2, 2, seed=2**32)
    assert not targets.exists()
    add_target("kept", "gsm8k", 2, 2, seed=0)
    drawn = tree(targets)
    with Catalog().write() as con:  # the insert now fails: a real catalog error, after the draw
        con.execute("DROP TABLE targets")
    with pytest.raises(UserError, match="targets"):
        add_target("new", "gsm8k", 2, 2, seed=0)
    with pytest.raises(UserError, match="targets"):
        add_target("kept", "gsm8k", 3, 3, seed=1)
    assert tree(targets) == drawn  # "new" left nothing, "kept" holds its recorded draw
    assert instance().get_dynamic_partitions(target_partitions.name) == ["kept"]
