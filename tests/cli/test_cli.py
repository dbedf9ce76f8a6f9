"""The `prox` command line and the code location, as a user runs them."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN


def run(args, env_home: Path, check=True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_"))}
    env["PROX_HOME"] = str(env_home)
    proc = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_subcommands(tmp_path):
    out = run([BIN / "prox", "--help"], tmp_path).stdout
    for sub in ("demo", "ingest", "program", "bench", "catalog", "samples", "ui"):
        assert f"  {sub}" in out


def test_definitions_validate(tmp_path):
    """Exactly as on a fresh clone: no DAGSTER_HOME, no PROX_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_"))}
    proc = subprocess.run(
        [BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


CASES = [
    (
        "url_with_equals",
        'normalize(source_str="http://x.org/a?b=1&c=2", target_str="")',
        "Read http://x.org/a?b=1&c=2 now",
        "Read  now",
    ),
    (
        "paren_in_string",
        "normalize(source_str='(ad)', target_str='')",
        "Buy (ad) bread",
        "Buy  bread",
    ),
    ("comma_in_string", 'normalize("one, two", "1 2")', "count one, two", "count 1 2"),
    ("escaped_newline", r'normalize("a\nb", "a b")', "a\nb", "a b"),
    ("positional_remove", "remove_lines(0, 0)", "drop me\nkeep me", "keep me"),
]


@pytest.mark.parametrize("name, program, text, expected", CASES, ids=[c[0] for c in CASES])
def test_program_run_reference_defects(tmp_path, name, program, text, expected):
    (tmp_path / "t.txt").write_text(text + "\n" + " ".join(["filler"] * 20))
    (tmp_path / "p.txt").write_text(program)
    out = run(
        [
            BIN / "prox",
            "program",
            "run",
            "--stage",
            "chunk",
            "--text-file",
            tmp_path / "t.txt",
            "--program-file",
            tmp_path / "p.txt",
            "--json",
        ],
        tmp_path,
    ).stdout
    result = json.loads(out)
    assert result["errors"] == [] and result["text"].split("\n" + "filler")[0] == expected


@pytest.mark.parametrize(
    "program",
    [
        "__import__('os').system('touch PWNED')",
        "open('PWNED', 'w')",
        "remove_lines(0, 0).__class__.__bases__",
        "normalize('" + "A" * 100 + "', 'B')" + "\n" * 3 + "keep_chunk(" * 300,
        "normalize(\"unbalanced, 'x')\nnormalize('x', \"also unbalanced)",
    ],
)
def test_program_run_hostile_programs_are_errors(tmp_path, program):
    (tmp_path / "t.txt").write_text("line one\nline two")
    (tmp_path / "p.txt").write_text(program)
    out = run(
        [
            BIN / "prox",
            "program",
            "run",
            "--stage",
            "chunk",
            "--text-file",
            tmp_path / "t.txt",
            "--program-file",
            tmp_path / "p.txt",
            "--json",
        ],
        tmp_path,
    ).stdout
    result = json.loads(out)
    assert result["errors"] and result["text"] == "line one\nline two"
    assert not (REPO_ROOT / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_program_run_doc_stage_text_output(tmp_path):
    (tmp_path / "t.txt").write_text("spam spam")
    (tmp_path / "p.txt").write_text("```python\ndrop_doc()\n```")
    out = run(
        [
            BIN / "prox",
            "program",
            "run",
            "--stage",
            "doc",
            "--text-file",
            tmp_path / "t.txt",
            "--program-file",
            tmp_path / "p.txt",
        ],
        tmp_path,
    ).stdout
    assert out.startswith("dropped: True (drop_doc)")


@pytest.mark.slow
def test_ingest_sample_corpus_plus_malformed_files(tmp_path, sample_files):
    bad = tmp_path / "incoming-mess.jsonl"
    bad.write_bytes(
        b'{"text": "a fine document with several words in it"}\n{"text": oops}\n\xff\xfe\n{"text": ""}\n'
    )
    proc = run([BIN / "prox", "ingest", *sample_files, bad], tmp_path)
    n_shards = len(sample_files) + 1
    # raw_corpus's backfill policy: one run for all the shards, a progress line (and a
    # materialization) per shard
    assert (
        proc.stdout.count(" ok in ") == n_shards
        and proc.stdout.count(f"(one run of {n_shards} partitions)") == n_shards
    ), proc.stdout

    def query(sql):
        return json.loads(run([BIN / "prox", "catalog", "--json", sql], tmp_path).stdout)

    rows = query(
        "SELECT locator, reason FROM quarantine WHERE shard = 'incoming-mess' ORDER BY locator"
    )
    assert rows == [
        {"locator": "line:2", "reason": "malformed_json"},
        {"locator": "line:3", "reason": "undecodable_bytes"},
        {"locator": "line:4", "reason": "empty_document"},
    ]
    totals = query(
        "SELECT sum(n_read) - sum(n_ingested) - sum(n_quarantined) AS lost, count(*) AS shards, "
        "sum(n_ingested) AS ingested FROM ingestions"
    )[0]
    assert totals["lost"] == 0 and totals["shards"] == len(sample_files) + 1
    assert query("SELECT count(*) AS n FROM documents")[0]["n"] == totals["ingested"] > 2000

    unreadable = tmp_path / "truncated.parquet"
    unreadable.write_bytes(b"PAR1\x00\x00 not really")
    proc = run([BIN / "prox", "ingest", unreadable], tmp_path, check=False)
    assert proc.returncode != 0
    assert "truncated.parquet" in proc.stdout + proc.stderr


def test_ingest_rejects_a_shard_name_collision_before_uploading_anything(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "first.jsonl").write_text('{"text": "one two three"}\n')
    (a / "same.jsonl").write_text('{"text": "four five six"}\n')
    (b / "same.parquet").write_bytes(b"irrelevant")  # shard "same" again, from another file
    proc = run(
        [
            BIN / "prox",
            "ingest",
            "--no-run",
            a / "first.jsonl",
            a / "same.jsonl",
            b / "same.parquet",
        ],
        tmp_path / "home",
        check=False,
    )
    assert proc.returncode != 0 and "shard 'same'" in proc.stderr
    assert not (tmp_path / "home" / "store" / "incoming").exists()  # nothing half-uploaded


def test_bench_executor_reports_both_workloads_against_the_reference(sample_files):
    """`prox bench executor` on the sample corpus: the reference's algorithm as baseline on the
    same documents and programs, identical outputs, and the hostile-input size ratios (no timing
    is asserted: the machines here are shared)."""
    home = sample_files[0].parent.parent  # the PROX_HOME whose samples/ holds them
    report = json.loads(
        run([BIN / "prox", "bench", "executor", "--docs", "300", "--json"], home).stdout
    )
    for workload in ("lines40", "corpus"):
        n = report[f"{workload}_documents"]
        assert n >= 270 and report[f"{workload}_identical_outputs"] == f"{n}/{n}"
        assert (
            report[f"{workload}_reference_docs_per_s"] > 0
            and report[f"{workload}_speedup_vs_reference"] > 0
        )
    assert report["lines40_mean_lines"] == 40
    assert {
        "hostile_many_windows_4x_size_time_ratio",
        "hostile_unbalanced_args_4x_size_time_ratio",
    } <= set(report)


def test_bench_ingest_reports_throughput_and_peak_memory(sample_files):
    """`prox bench ingest` on the sample corpus and a small generated shard: both readers' speed,
    exact bomb counts, and peak RSS figures (no bound asserted here: tests/core/test_hostile_ingest.py
    asserts the bounds)."""
    home = sample_files[0].parent.parent
    report = json.loads(
        run([BIN / "prox", "bench", "ingest", "--shard-mb", "8", "--json"], home).stdout
    )
    assert report["streaming_mb_per_s"] > 0 and report["whole_file_mb_per_s"] > 0
    assert (
        report["shard"]["n_ingested"] == report["shard"]["documents"] > 0
        and report["shard"]["rss_mb"] > 0
    )
    assert (
        report["gzip_bomb"]["n_quarantined"] == 1_000_000
        and report["gzip_bomb"]["samples"] == 1_000
    )
    assert report["warc_header_bomb"]["n_ingested"] == 1


def _step_started(home: Path) -> bool:
    """Whether a Dagster run under ``home`` has begun executing its step (its event log says so)."""
    import sqlite3

    for db in (home / "dagster" / "history" / "runs").glob("*-*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                query = "select count(*) from event_logs where dagster_event_type = 'STEP_START'"
                if con.execute(query).fetchone()[0]:
                    return True
        except sqlite3.Error:  # created but not yet written
            continue
    return False


def test_sigterm_inside_a_run_stops_the_command_and_leaves_no_output(tmp_path):
    """Dagster turns SIGTERM inside a step into a failed run; the command must stop there (exit
    130, saying so), not carry on to its next run as if a partition had merely failed, and the
    interrupted partition must leave no raw file behind."""
    import signal
    import time

    big = tmp_path / "big-00.jsonl"
    line = json.dumps({"text": "A line of ordinary prose for the ingest to read.\n" * 40})
    big.write_text((line + "\n") * 60_000)  # ~120 MB: seconds of ingest after the step starts
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROX_", "DAGSTER_", "AWS_"))}
    env["PROX_HOME"] = str(home)
    proc = subprocess.Popen(
        [BIN / "prox", "ingest", big],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _step_started(home) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the ingest ended before its step started: make the file bigger"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "stopped by a signal" in err and "interrupted" in err
    assert not list((home / "store" / "raw").glob("**/*.parquet"))


def test_the_sample_files_fixture_builds_from_the_downloads_prox_downloads_names(
    tmp_path, monkeypatch
):
    """Issue 32, item 12: a set-up may keep its downloads apart from PROX_HOME (a CI cache); the
    ``sample_files`` fixture must build from PROX_DOWNLOADS, as ``prox_env`` and the platform do,
    not look for $PROX_HOME/downloads. The fixture finds both through ``setup_locations``."""
    from prox_assets.core.samples import build_sample_corpus
    from tests.support.paths import setup_locations

    repo_home = REPO_ROOT / ".prox"
    downloads = Path(os.environ.get("PROX_DOWNLOADS") or repo_home / "downloads")  # the real ones
    home = tmp_path / "home"  # no downloads here
    monkeypatch.setenv("PROX_HOME", str(home))
    monkeypatch.setenv("PROX_DOWNLOADS", str(downloads))
    where = setup_locations(os.environ)
    assert where.downloads == downloads and where.samples == home / "samples"
    files = build_sample_corpus(where.samples, where.downloads)
    assert files and all(f.parent == home / "samples" and f.stat().st_size > 0 for f in files)
    assert sorted(p.name for p in home.iterdir()) == ["samples"]
    conftest = (REPO_ROOT / "tests" / "conftest.py").read_text()
    assert "setup_locations(os.environ)" in conftest.split("def sample_files", 1)[1][:600]
