"""Hostile documents and model output never cost a refinement partition (issue 15, item 2).

Real models throughout (a tiny random Llama, and refiners trained from it through the assets);
the faults are injected around the real backend, per marked document: an engine call that raises
whenever a marked prompt is in it (a server that rejects one request, a tokenizer that rejects
one text, both fail the batched call), and a program with a lone surrogate (what an
OpenAI-compatible server can send, JSON-escaped). Each marked document must cost only itself,
be recorded with its reason, and the counts must reconcile; a broken engine must still fail.
"""

import json

import dagster as dg
import polars as pl
import pytest

from prox_assets.core.chunking import hf_token_counter
from prox_assets.core.refinement import DocumentFailed, refine_documents
from prox_assets.partitions import shard_partitions
from prox_assets.refinement import ROW_SCHEMA, RefineConfig, RefinerPair, _conform, refine_batch
from prox_resources.backends import TransformersBackend
from prox_resources.catalog import Catalog
from prox_resources.engine import ModelEngine
from tests.support.pipeline import REFINE, materialize, train_refiners

REJECT, SURROGATE, DROP = "REJECTED-BY-THE-ENGINE", "SURROGATE-IN-PROGRAM", "DROPPED-BY-PROGRAM"
LONE_SURROGATE_PROGRAM = 'normalize(source_str="line", target_str="\ud800")'


class FaultyBackend:
    """The real backend, but: any call whose prompts include a REJECT document raises; a
    SURROGATE document's programs have a lone surrogate; a DROP document's are drop_doc().
    ``broken``: every call raises (the engine, not a document, is at fault)."""

    def __init__(self, real, broken: bool = False):
        self.real, self.broken, self.tokenizer = real, broken, real.tokenizer
        self.calls = 0

    def truncate(self, text, max_tokens):
        return self.real.truncate(text, max_tokens)

    def generate(self, chats, max_new_tokens, temperature=0.0, seed=0, progress=None):
        self.calls += 1
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        shown = [c[-1]["content"] for c in chats]
        if any(REJECT in s for s in shown):
            raise ValueError(f"the engine rejects a prompt of this call of {len(chats)}")
        out = self.real.generate(chats, max_new_tokens, temperature, seed, progress)
        return [
            LONE_SURROGATE_PROGRAM if SURROGATE in s else "drop_doc()" if DROP in s else o
            for s, o in zip(shown, out)
        ]


class FaultyEngine(ModelEngine):
    broken: bool = False

    def load(self, device=None, model=None, log=None):
        return FaultyBackend(super().load(device, model, log), self.broken)


def _doc(marker: str, i: int) -> str:
    return "\n".join(
        f"{marker} line {j} of document {i}: the kettle boiled while the rain kept falling outside."
        for j in range(5)
    )


HOSTILE_DOCS = [
    _doc("plain", 0),
    _doc(REJECT, 1),
    _doc("plain", 2),
    _doc(SURROGATE, 3),
    _doc("plain", 4),
    _doc(DROP, 5),
    _doc("plain", 6),
]


def _by_marker(frame: pl.DataFrame, marker: str) -> dict:
    rows = frame.filter(pl.col("text").str.contains(marker)).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_refinement_batch_isolates_a_failing_document(pipeline):
    instance, store, model = pipeline
    store.write_bytes(
        "incoming/hostile-00.jsonl",
        "".join(json.dumps({"text": t}) + "\n" for t in HOSTILE_DOCS).encode(),
    )
    instance.add_dynamic_partitions(shard_partitions.name, ["hostile-00"])
    assert materialize(instance, "raw_corpus", "hostile-00").success
    version = train_refiners(instance, model)
    key = dg.MultiPartitionKey({"shard": "hostile-00", "refiner_version": version})

    def refine(engine: ModelEngine):
        return materialize(
            instance,
            "refined_corpus",
            key,
            {**REFINE, "batch_docs": 4},
            resources={"engine": engine},
            raise_on_error=False,
        )

    # the engine itself is broken: a real failure of the partition, nothing recorded as documents'
    broken = refine(FaultyEngine(broken=True))
    assert not broken.success
    failure = next(e for e in broken.all_events if e.event_type_value == "STEP_FAILURE")
    assert "illegal memory access" in str(failure.event_specific_data.error.to_string())
    assert store.list(f"refined/{version}/") == []
    assert (
        Catalog().query("SELECT count(*) n FROM program_runs WHERE shard = 'hostile-00'")["n"][0]
        == 0
    )

    result = refine(FaultyEngine())
    assert result.success
    meta = result.asset_materializations_for_node("refined_corpus")[0].metadata
    frame = store.read_parquet(f"refined/{version}/hostile-00.parquet")
    n = len(HOSTILE_DOCS)
    assert meta["documents_in"].value == frame.height == n
    assert meta["kept"].value + meta["dropped"].value + meta["errored"].value == n
    assert meta["errored"].value == 1 and meta["dropped"].value >= 1

    rejected = _by_marker(frame, REJECT)  # recorded with its reason, its raw text, not kept
    assert (
        rejected["status"] == "error"
        and not rejected["kept"]
        and rejected["reason"] == "refine_error"
    )
    assert rejected["error"].startswith("doc_generate: ValueError: the engine rejects a prompt")
    assert rejected["text"] == _doc(REJECT, 1)
    assert [e["kind"] for e in json.loads(rejected["errors"])] == ["document_error"]
    assert (
        rejected["doc_id"] in meta["errored_documents"].value
        and "doc_generate" in meta["error_stages"].value
    )

    surrogate = _by_marker(frame, SURROGATE)  # refined; the lone surrogate is escaped, never text
    assert surrogate["status"] in ("kept", "dropped") and surrogate["error"] is None
    assert (
        surrogate["doc_program"]
        == LONE_SURROGATE_PROGRAM.encode("utf-8", "backslashreplace").decode()
    )
    assert "invalid_unicode" in {e["kind"] for e in json.loads(surrogate["errors"])}
    assert set(json.loads(surrogate["chunk_programs"])) == {
        LONE_SURROGATE_PROGRAM
    }  # one per window
    dropped = _by_marker(frame, DROP)
    assert dropped["status"] == "dropped" and dropped["reason"] == "drop_doc"
    others = frame.filter(pl.col("text").str.contains("plain"))
    assert (
        others.height == 4
        and (others["status"] != "error").all()
        and others["error"].is_null().all()
    )
    assert (others["doc_program"].str.len_chars() > 0).all()  # the real model wrote their programs

    runs = Catalog().query(
        "SELECT doc_id, status, kept, reason, error FROM program_runs WHERE shard = 'hostile-00'"
    )
    assert runs.height == n and set(runs["doc_id"]) == set(frame["doc_id"])
    counts = dict(runs.group_by("status").len().rows())
    assert counts == {
        s: c
        for s, c in (("kept", meta["kept"].value), ("dropped", meta["dropped"].value), ("error", 1))
        if c
    }
    assert runs.filter(pl.col("status") == "error").rows() == [
        (rejected["doc_id"], "error", False, "refine_error", rejected["error"])
    ]


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama_dir):
    import torch

    return TransformersBackend(str(tiny_llama_dir), "cpu", torch.float32)


PAIR = RefinerPair(
    doc="d",
    chunk="c",
    doc_sft_version="sd",
    chunk_sft_version="sc",
    doc_max_tokens=48,
    window_tokens=96,
    chunk_max_new_tokens=16,
    heldout_pages=None,
    split_seed=0,
)
CONFIG = RefineConfig(doc_max_new_tokens=6, chunk_max_new_tokens=16)


def test_refine_batch_records_every_document(tiny_backend):
    """Texts no ingest lets through (a null, an empty one) and a rejected prompt cost only
    themselves; one row each, in order, in the row schema."""
    backend = FaultyBackend(tiny_backend)
    texts = [_doc("plain", 0), None, "", _doc(REJECT, 1), _doc(SURROGATE, 2), _doc("plain", 3)]
    batch = pl.DataFrame(
        {"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts},
        schema={"doc_id": pl.String, "text": pl.String},
    )
    rows = refine_batch(backend, backend, batch, "s", "v", PAIR, CONFIG)
    assert (
        rows.schema == pl.Schema(ROW_SCHEMA)
        and rows["doc_id"].to_list() == batch["doc_id"].to_list()
    )
    status = dict(zip(rows["doc_id"], rows["status"]))
    assert status["d1"] == "error" and status["d3"] == "error"
    assert {status[d] for d in ("d0", "d2", "d4", "d5")} <= {"kept", "dropped"}
    errors = dict(zip(rows["doc_id"], rows["error"]))
    assert errors["d1"] == "input: ValueError: text is NoneType, not a string"
    assert errors["d3"].startswith("doc_generate: ValueError")
    assert (rows.filter(pl.col("status") == "error")["kept"] == False).all()  # noqa: E712
    pl.concat([_conform(rows), _conform(rows.head(1))])  # parts concatenate whatever their nulls


def test_a_stage_that_fails_every_document_is_the_refiners_failure(tiny_backend):
    count = hf_token_counter(tiny_backend.tokenizer)
    args = {
        "doc_max_tokens": 48,
        "doc_max_new_tokens": 4,
        "chunk_max_new_tokens": 8,
        "count_tokens": count,
    }
    texts = [_doc("plain", i) for i in range(3)]
    with pytest.raises(
        RuntimeError, match="illegal memory access"
    ):  # the engine: raised, not recorded
        refine_documents(
            FaultyBackend(tiny_backend, broken=True), tiny_backend, texts, window_tokens=96, **args
        )
    with pytest.raises(DocumentFailed, match="windows: ValueError"):  # a window budget no line fits
        refine_documents(tiny_backend, tiny_backend, texts, window_tokens=4, **args)
    # every document rejected, but the engine works on an ordinary one: the documents' errors
    out = refine_documents(
        FaultyBackend(tiny_backend),
        tiny_backend,
        [_doc(REJECT, 0), _doc(REJECT, 1)],
        window_tokens=96,
        **args,
    )
    assert [r.error.stage for r in out] == ["doc_generate", "doc_generate"]


def test_parts_of_an_earlier_attempt_still_concatenate():
    """A part written before status and error existed, whose batch kept every document (an
    all-null reason column), beside a part with a drop."""
    old = pl.DataFrame({c: [] for c in ROW_SCHEMA if c not in ("status", "error")})
    old = pl.DataFrame([{**dict.fromkeys(old.columns), "doc_id": "a", "kept": True}])
    assert old.schema["reason"] == pl.Null
    new = pl.DataFrame(
        [
            dict.fromkeys(ROW_SCHEMA)
            | {"doc_id": "b", "kept": False, "status": "dropped", "reason": "drop_doc"}
        ],
        schema=ROW_SCHEMA,
    )
    frame = pl.concat([_conform(old), _conform(new)])
    assert frame["status"].to_list() == ["kept", "dropped"] and frame["reason"].to_list() == [
        None,
        "drop_doc",
    ]


# --- a program that multiplies its document (issue 32, item 7): bounded output and work --------
_MULTIPLY_SCRIPT = """
import json, sys, time
from prox_assets.benchmarks import peak_rss_mb
from prox_assets.core.executor import ExecutorConfig, execute_chunk_programs
scope = sys.argv[1]
# 4 one-line windows of 1,000 'a's; each window's program: 512 distinct calls that each add
# 64,000 chars (under the old per-call cap): 64 a 'a' to its window, or 16 a 'a' to the document
lines = ["a" * 1000] * 4
width = 64 if scope == "window" else 16
program = "\\n".join(f'normalize(source_str="a", target_str="a{i:0{width}d}")' for i in range(512))
started = time.perf_counter()
r = execute_chunk_programs("\\n".join(lines), [(w, w, program) for w in range(4)],
                           ExecutorConfig(normalize_scope=scope))
print(json.dumps({"chars_in": sum(map(len, lines)) + 3, "chars_out": len(r.text),
                  "errors": sorted({e.kind for e in r.errors}), "ignored": r.ignored_windows,
                  "seconds": round(time.perf_counter() - started, 2), "rss_mb": peak_rss_mb()}))
"""

_BIG_DOC_SCRIPT = """
import json, time
from prox_assets.benchmarks import peak_rss_mb
from prox_assets.core.executor import ExecutorConfig, execute_chunk_program
text = ("lorem ipsum dolor sit amet " * 4) + "\\n"
text = text * (16 * 1024 * 1024 // len(text))  # 16 MB, one window
program = "\\n".join(f'normalize(source_str="absent {i}", target_str="")' for i in range(512))
started = time.perf_counter()
r = execute_chunk_program(text, program, ExecutorConfig(normalize_scope="document"))
print(json.dumps({"same": r.text == text, "errors": sorted({e.kind for e in r.errors}),
                  "seconds": round(time.perf_counter() - started, 2), "rss_mb": peak_rss_mb()}))
"""


def _run_script(script: str, *args: str, timeout: int = 60) -> dict:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scope", ["window", "document"])
def test_a_program_cannot_multiply_its_document(scope):
    """Before: each call could add 64 KiB, so 4 windows x 512 calls made 125 MB in about a
    minute (the subprocess times out). Now the document grows by at most max_growth_chars in
    all, the over-growing windows are ignored with their reason, in well under a second."""
    got = _run_script(_MULTIPLY_SCRIPT, scope, timeout=30)
    assert got["chars_out"] <= got["chars_in"] + 65_536, got
    assert "normalize_growth" in got["errors"], got
    assert got["seconds"] < 5 and got["rss_mb"] < 300, got


def test_the_work_of_a_program_is_bounded():
    """512 scans of a 16 MB document stop at the work budget: the chunk stage changes nothing
    and says why."""
    got = _run_script(_BIG_DOC_SCRIPT)
    assert got["same"] and got["errors"] == ["work_budget"], got
    assert got["seconds"] < 3 and got["rss_mb"] < 400, got
