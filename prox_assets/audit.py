"""A document's whole lineage, from the catalog: where it came from and what happened to it."""

from __future__ import annotations

import json
import re

from prox_assets.core.unicode import terminal_safe
from prox_resources.catalog import CatalogCore, query_text

# section -> the table it reads; its query is the named query audit_<section>
# (``prox_resources/catalog_sql/queries/``, parameter ``$doc_id``). Sections whose table does not
# exist yet are skipped.
SECTIONS = {
    "ingested": "documents",
    "quarantine_duplicates": "quarantine",
    "seed_scores": "seed_scores",
    "sft_examples": "sft_examples",
    "refinements": "program_runs",
    "influence": "influence_scores",
    "selections": "selections",
    "checkpoints": "checkpoint_documents",
}
_JSON_COLUMNS = {"chunk_programs", "windows", "edits", "errors"}

# What may be written into the SQL as a literal: characters that cannot end or escape a string
# literal (a doc_id is 32 hex digits). DuckDB's Python client imports pandas (and numpy) the first
# time it converts a bound Python value, ~0.3 s of a ~0.65 s `prox audit`; a literal binds nothing.
_PLAIN_VALUE = re.compile(r"[0-9A-Za-z_.:-]{1,256}")
_DOC_ID_PARAMETER = re.compile(r"\$doc_id\b")


def _bind(sql: str, value: str) -> tuple[str, dict[str, str]]:
    """``sql`` (parameter ``$doc_id``) and its parameters: ``value`` as a literal when it is plain,
    else bound."""
    if _PLAIN_VALUE.fullmatch(value):
        return _DOC_ID_PARAMETER.sub(f"'{value}'", sql), {}
    return sql, {"doc_id": value}


def audit_document(catalog: CatalogCore, doc_id: str) -> dict:
    with catalog.read() as con:
        tables = {r[0] for r in con.execute(query_text("catalog_tables")).fetchall()}
        out: dict = {"doc_id": doc_id}
        for section, table in SECTIONS.items():
            if table not in tables:
                continue
            sql, params = _bind(query_text(f"audit_{section}"), doc_id)
            cursor = con.execute(sql, params or None)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
            for row in rows:
                for k in _JSON_COLUMNS & row.keys():
                    row[k] = json.loads(row[k]) if row[k] else None
            out[section] = rows
    return out


def format_audit(audit: dict) -> str:
    """The audit for a terminal: one line per fact. A URL, a path or an error message comes from
    a document or its file, so each line is shown inert (``terminal_safe``): an escape sequence in
    a URL is printed as ``\\x1b[...``, never acted on, and a newline in it cannot fake a line."""
    return "\n".join(terminal_safe(line) for line in _audit_lines(audit))


def _audit_lines(audit: dict) -> list[str]:
    lines = [f"document {audit['doc_id']}"]
    if not audit.get("ingested"):
        return [lines[0], "  not in the catalog"]
    for r in audit["ingested"]:
        lines.append(
            f"  ingested into shard {r['shard']} (source {r['source']}, url {r['url']}) "
            f"by run {r['run_id']} at {r['written_at']}; {r['raw_path']} row {r['row_index']}, "
            f"{r['n_words']} words"
        )
    for r in audit.get("quarantine_duplicates", []):
        lines.append(
            f"  also seen in shard {r['shard']} at {r['locator']}: quarantined as {r['reason']}"
        )
    for r in audit.get("seed_scores", []):
        lines.append(
            f"  seed: educational value {r['edu_score']} (expected {r['edu_expected']:.2f}), format "
            f"{r['format_score']} (expected {r['format_expected']:.2f}) -> "
            f"{'keep' if r['keep'] else 'drop'}; {r['model']}, {r['prompt_version']}, run {r['run_id']}"
        )
    for r in audit.get("sft_examples", []):
        where = f" window {r['window_index']}" if r["window_index"] >= 0 else ""
        lines.append(
            f"  SFT {r['level']} {r['sft_version']}{where}: {r['split']} {r['label']} "
            f"{r['status']}{' (' + r['reject_reason'] + ')' if r['reject_reason'] else ''}"
        )
    for r in audit.get("refinements", []):
        verdict = "kept" if r["kept"] else f"dropped ({r['reason']})"
        lines.append(
            f"  refiner {r['refiner_version']}: {verdict}, {r['n_chars_before']} -> {r['n_chars_after']} chars, "
            f"run {r['run_id']}"
        )
        lines.append(f"    doc program: {r['doc_program']!r}")
        for w, p in zip(r["windows"] or [], r["chunk_programs"] or []):
            lines.append(f"    window {w[0]}..{w[1]}: {p!r}")
        for e in r["edits"] or []:
            lines.append(
                f"    edit: {e['kind']} "
                + (
                    f"{e['line_start']}..{e['line_end']}"
                    if e["kind"] == "remove_lines"
                    else f"{e['source']!r} -> {e['target']!r} x{e['count']}"
                )
            )
        for e in r["errors"] or []:
            lines.append(f"    error: {e['kind']}: {e['message']}")
    for section in ("influence", "selections"):
        for r in audit.get(section, []):
            lines.append(f"  {section}: {r}")
    for r in audit.get("checkpoints", []):
        lines.append(
            f"  trained checkpoint {r['version']} ({r['target']}|{r['variant']}, seed {r['seed']}) on its "
            f"{r['text_kind']} text, weight {r['weight']:g}, from {r['data_spec']}; {r['path']}, "
            f"run {r['run_id']}"
        )
    return lines
