"""A document's whole lineage, from the catalog: where it came from and what happened to it."""

from __future__ import annotations

import json
import re

from prox_resources.catalog import CatalogCore

# section -> (table, query); sections whose table does not exist yet are skipped
SECTIONS = {
    "ingested": (
        "documents",
        "SELECT shard, source, url, raw_path, row_index, n_chars, n_words, run_id, written_at "
        "FROM documents WHERE doc_id = ? ORDER BY shard",
    ),
    "quarantine_duplicates": (
        "quarantine",
        "SELECT shard, locator, reason, run_id FROM quarantine WHERE detail = ?",
    ),
    "seed_scores": (
        "seed_scores",
        "SELECT shard, edu_score, edu_expected, format_score, format_expected, keep, model, "
        "prompt_version, edu_critique, format_critique, run_id FROM seed_scores WHERE doc_id = ?",
    ),
    "sft_examples": (
        "sft_examples",
        "SELECT level, sft_version, window_index, split, label, status, reject_reason, target, "
        "annotator, run_id FROM sft_examples WHERE doc_id = ? ORDER BY level, window_index",
    ),
    "refinements": (
        "program_runs",
        "SELECT refiner_version, shard, kept, reason, doc_program, chunk_programs, windows, edits, "
        "errors, n_chars_before, n_chars_after, refined_path, run_id, written_at "
        "FROM program_runs WHERE doc_id = ? ORDER BY written_at",
    ),
    "influence": ("influence_scores", "SELECT * FROM influence_scores WHERE doc_id = ?"),
    "selections": ("selections", "SELECT * FROM selections WHERE doc_id = ?"),
    "checkpoints": (
        "checkpoint_documents",
        "SELECT d.target, d.variant, d.seed, d.version, d.weight, c.text_kind, c.data_spec, "
        "c.train_tokens, c.path, "
        "d.run_id FROM checkpoint_documents d LEFT JOIN checkpoints c "
        "USING (target, variant, seed, version) WHERE d.doc_id = ? ORDER BY 1, 2, 3",
    ),
}
_JSON_COLUMNS = {"chunk_programs", "windows", "edits", "errors"}

# What may be written into the SQL as a literal: characters that cannot end or escape a string
# literal (a doc_id is 32 hex digits). DuckDB's Python client imports pandas (and numpy) the first
# time it converts a bound Python value, ~0.3 s of a ~0.65 s `prox audit`; a literal binds nothing.
_PLAIN_VALUE = re.compile(r"[0-9A-Za-z_.:-]{1,256}")


def _bind(sql: str, value: str) -> tuple[str, list[str]]:
    """``sql`` (one ``?``) and its parameters: ``value`` as a literal when it is plain, else bound."""
    if _PLAIN_VALUE.fullmatch(value) and sql.count("?") == 1:
        return sql.replace("?", f"'{value}'"), []
    return sql, [value]


def audit_document(catalog: CatalogCore, doc_id: str) -> dict:
    with catalog.read() as con:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        out: dict = {"doc_id": doc_id}
        for section, (table, sql) in SECTIONS.items():
            if table not in tables:
                continue
            cursor = con.execute(*_bind(sql, doc_id))
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
            for row in rows:
                for k in _JSON_COLUMNS & row.keys():
                    row[k] = json.loads(row[k]) if row[k] else None
            out[section] = rows
    return out


def format_audit(audit: dict) -> str:
    lines = [f"document {audit['doc_id']}"]
    if not audit.get("ingested"):
        return lines[0] + "\n  not in the catalog"
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
    return "\n".join(lines)
