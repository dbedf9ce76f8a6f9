"""Building the synthetic function-call SFT set: chat examples in exactly the refiner's format
(docs/methods.md#sft-synthesis).

``doc`` examples come from scored seed documents (target ``keep_doc()`` / ``drop_doc()`` by the
ProX rule); ``chunk`` examples from line-numbered windows and an annotator's program. Every
example keeps its provenance (annotator, model, prompt version) and, when rejected, the reason.
Train/validation are split per document, so windows of one document never straddle the split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import polars as pl

from prox_assets.core.annotators import KEEP, gold_program, validate_chunk_program
from prox_assets.core.chunking import Window, content_line_numbers, split_lines
from prox_assets.core.programs import Stage, parse_program
from prox_assets.core.prompts import (
    ANNOTATOR_PROMPT_VERSION,
    REFINER_PROMPT_VERSION,
    chunk_refiner_chat,
    doc_refiner_chat,
)


@dataclass
class SFTExample:
    level: Stage
    doc_id: str
    shard: str
    messages: str  # JSON: the chat the refiner sees, without the answer
    target: str  # the program: the assistant's answer
    label: str  # doc: keep|drop; chunk: remove|keep
    annotator: str
    model: str
    status: str = "accepted"  # accepted | rejected
    reject_reason: str | None = None
    window_index: int = -1
    line_start: int = -1
    line_end: int = -1
    prompt_version: str = REFINER_PROMPT_VERSION
    split: str = ""
    example_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def doc_example(
    doc_id: str, shard: str, shown_text: str, keep: bool, scorer_model: str
) -> SFTExample:
    target = "keep_doc()" if keep else "drop_doc()"
    return SFTExample(
        level="doc",
        doc_id=doc_id,
        shard=shard,
        messages=json.dumps(doc_refiner_chat(shown_text)),
        target=target,
        label="keep" if keep else "drop",
        annotator="rubric-scores",
        model=scorer_model,
    )


def chunk_examples(
    doc_id: str,
    shard: str,
    text: str,
    windows: Sequence[Window],
    programs: Sequence[str],
    annotator: str,
    model: str,
    max_removal_ratio: float | None,
) -> list[SFTExample]:
    out = []
    for window, program in zip(windows, programs):
        reason = validate_chunk_program(program, text, window, max_removal_ratio)
        out.append(
            SFTExample(
                level="chunk",
                doc_id=doc_id,
                shard=shard,
                messages=json.dumps(chunk_refiner_chat(window.text)),
                target=program,
                label="keep" if program == KEEP else "remove",
                annotator=annotator,
                model=model,
                status="rejected" if reason else "accepted",
                reject_reason=reason,
                window_index=window.index,
                line_start=window.line_start,
                line_end=window.line_end,
            )
        )
    return out


class DocLabel(NamedTuple):
    """A document's keep/drop label and where it came from."""

    keep: bool
    annotator: str  # layout-gold | clean-source | rubric-scores
    model: str  # the scorer model of a rubric label; "none" for a distant label


def doc_label(
    gold_keep: bool | None, clean_source: bool, rubric: tuple[bool, str] | None
) -> DocLabel | None:
    """Distant labels where a document has them (a docs page's layout, ``gold_keep``: index and
    near-empty pages are drops; a clean source's documents are keeps), else the seed rubric's
    (keep, scorer model); None: no label."""
    if gold_keep is not None:
        return DocLabel(gold_keep, "layout-gold", "none")
    if clean_source:
        return DocLabel(True, "clean-source", "none")
    if rubric is not None:
        return DocLabel(rubric[0], "rubric-scores", rubric[1])
    return None


def chunk_annotator_name(annotator: str) -> str:
    """The provenance a chunk example records for the rules (``rules``), the LLM (``llm``) or
    both merged (``both``): the annotator and its version."""
    return {
        "rules": "rules-v2",
        "llm": f"llm-{ANNOTATOR_PROMPT_VERSION}",
        "both": f"rules-v2+llm-{ANNOTATOR_PROMPT_VERSION}",
    }[annotator]


def clean_examples(
    doc_id: str, shard: str, text: str, windows: Sequence[Window], annotator: str = "clean-source"
) -> list[SFTExample]:
    """The windows of a clean text, each program keep_chunk(): what a refiner must leave alone."""
    clean = [True] * len(split_lines(text))
    programs = [gold_program(text, clean, w) for w in windows]
    return chunk_examples(doc_id, shard, text, windows, programs, annotator, "none", None)


def gold_page_examples(
    doc_id: str,
    shard: str,
    text: str,
    labels: Sequence[bool | None],
    windows: Sequence[Window],
    body: str,
    body_windows: Sequence[Window],
) -> list[SFTExample]:
    """A docs page with layout gold: its windows with the gold programs (``labels``: each line
    content or not), then its clean ``body`` alone (``<doc_id>:body``), every window kept."""
    programs = [gold_program(text, labels, w) for w in windows]
    return chunk_examples(
        doc_id, shard, text, windows, programs, "layout-gold", "none", None
    ) + clean_examples(f"{doc_id}:body", shard, body, body_windows, "layout-gold-body")


def assign_splits(examples: list[SFTExample], val_fraction: float, seed: int) -> None:
    """Per document, by a keyed hash: stable under re-runs and row order. The key has its own
    namespace: seed documents are *chosen* by the smallest ``seed:doc_id`` hashes, and reusing
    that key would put nearly all of them in one split. ``<doc_id>:body`` (a page's clean body)
    shares its page's split."""
    for ex in examples:
        page = ex.doc_id.partition(":")[0]
        h = int(hashlib.sha256(f"split:{seed}:{page}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        ex.split = "val" if h < val_fraction else "train"


def sft_version(level: str, config: dict, examples: Sequence[SFTExample]) -> str:
    """Content-derived: the same config and the same examples give the same version."""
    h = hashlib.sha256(json.dumps({"level": level, "config": config}, sort_keys=True).encode())
    for ex in sorted(examples, key=lambda e: (e.doc_id, e.window_index)):
        h.update(f"{ex.doc_id}|{ex.window_index}|{ex.messages}|{ex.target}|{ex.status}\n".encode())
    return h.hexdigest()[:12]


def finalize(examples: list[SFTExample], version: str) -> None:
    for ex in examples:
        ex.example_id = hashlib.sha256(
            f"{version}:{ex.doc_id}:{ex.window_index}".encode()
        ).hexdigest()[:16]


def unparsable_targets(examples: Sequence[SFTExample]) -> list[SFTExample]:
    """Accepted examples whose target does not parse cleanly at its level (must be none)."""
    bad = []
    for ex in examples:
        if ex.status == "accepted":
            parsed = parse_program(ex.target, ex.level)
            if parsed.errors or parsed.warnings or not parsed.calls:
                bad.append(ex)
    return bad


SPLITS = ("train", "val", "rejected")  # the files of an SFT set, in the order written


@dataclass(frozen=True)
class SFTSet:
    """A level's SFT set: its content version and every example, accepted and rejected, in
    ``frame`` (one row per ``SFTExample``)."""

    level: str
    version: str
    examples: list[SFTExample]
    frame: pl.DataFrame

    @property
    def accepted(self) -> pl.DataFrame:
        return self.frame.filter(pl.col("status") == "accepted")

    def split(self, name: str) -> pl.DataFrame:
        """The rows of one of ``SPLITS``: the accepted examples of train or val, or the rejected."""
        if name == "rejected":
            return self.frame.filter(pl.col("status") == "rejected")
        return self.accepted.filter(pl.col("split") == name)

    @property
    def n_train(self) -> int:
        return int((self.accepted["split"] == "train").sum())

    @property
    def n_val(self) -> int:
        return self.accepted.height - self.n_train

    @property
    def n_rejected(self) -> int:
        return self.frame.height - self.accepted.height

    def labels(self) -> Counter:
        """Accepted examples per label."""
        return Counter(self.accepted["label"].to_list())

    def reject_reasons(self) -> Counter:
        return Counter(self.frame["reject_reason"].drop_nulls().to_list())

    def annotators(self) -> Counter:
        """Examples (accepted and rejected) per annotator."""
        return Counter(self.frame["annotator"].to_list())

    def labels_by_annotator(self) -> list[tuple[str, str, int]]:
        """(annotator, label, accepted examples), sorted."""
        pairs = Counter(self.accepted.select("annotator", "label").rows())
        return [(a, lab, n) for (a, lab), n in sorted(pairs.items())]

    def minority(self) -> int:
        """Accepted examples of the rarer label; 0 unless both labels occur."""
        labels = self.labels()
        return min(labels.values()) if len(labels) == 2 else 0

    def preview(self, n: int = 4) -> list[tuple]:
        """(doc_id, label, target) of the first ``n`` accepted examples."""
        return self.accepted.head(n).select("doc_id", "label", "target").rows()


def build_sft_set(
    level: str, config: dict, examples: list[SFTExample], val_fraction: float, seed: int
) -> SFTSet:
    """``examples`` split into train and val (``assign_splits``), versioned by ``config`` and
    their content (``sft_version``) and given their ids."""
    assign_splits(examples, val_fraction, seed)
    version = sft_version(level, config, examples)
    finalize(examples, version)
    frame = pl.DataFrame(
        [e.to_dict() for e in examples], schema_overrides={"reject_reason": pl.String}
    )
    return SFTSet(level, version, examples, frame)


def _keyed(seed: int, ex: SFTExample) -> str:
    return hashlib.sha256(f"balance:{seed}:{ex.doc_id}:{ex.window_index}".encode()).hexdigest()


def _stratified(examples: list[SFTExample], room: int, seed: int) -> list[SFTExample]:
    """``room`` examples taken round-robin across annotators (each in keyed-hash order), so a
    small source (clean prose) is not crowded out by a large one (the middles of docs pages)."""
    groups: dict[str, list[SFTExample]] = {}
    for e in sorted(examples, key=lambda e: _keyed(seed, e)):
        groups.setdefault(e.annotator, []).append(e)
    out: list[SFTExample] = []
    queues = [groups[k] for k in sorted(groups)]
    while len(out) < room and any(queues):
        for q in queues:
            if q and len(out) < room:
                out.append(q.pop(0))
    return out


def removal_extent(example: SFTExample) -> str:
    """``none`` (the program removes no line), ``whole`` (it removes every non-blank line of its
    window) or ``partial``: a window where content meets noise and the program must name the line
    where one turns into the other."""
    removed: set[int] = set()
    for call in parse_program(example.target, "chunk").calls:
        if call.name == "remove_lines":
            removed.update(range(call.int_arg("line_start"), call.int_arg("line_end") + 1))
    if not removed:
        return "none"
    chat = json.loads(example.messages)
    window = chat[-1]["content"] if chat else ""
    return "whole" if content_line_numbers(window) <= removed else "partial"


def balance_chunk_examples(
    examples: list[SFTExample],
    keep_fraction: float,
    seed: int,
    whole_per_partial: float | None = None,
) -> list[SFTExample]:
    """At most ``keep_fraction`` of the accepted examples without a removal (keep_chunk() or a
    normalize only), spread evenly over their sources: real pages are mostly clean windows, and
    a small model trained on their natural share learns to remove nothing. With
    ``whole_per_partial``, windows removed whole are capped at that many per *partial* window
    (content meeting noise): a model trained on their natural share (1.5 per partial one on the
    docs pages) learns to remove every window that starts or ends with noise, and never learns
    where the noise begins. Rejected examples are all kept (they are a report)."""
    accepted = [e for e in examples if e.status == "accepted"]
    by_extent: dict[str, list[SFTExample]] = {"none": [], "partial": [], "whole": []}
    for e in accepted:
        by_extent[removal_extent(e)].append(e)
    partial, whole, other = by_extent["partial"], by_extent["whole"], by_extent["none"]
    if whole_per_partial is not None and partial:
        whole = _stratified(whole, int(whole_per_partial * len(partial)), seed)
    removing = partial + whole
    room = (
        int(len(removing) * keep_fraction / max(1e-9, 1 - keep_fraction))
        if removing
        else len(other)
    )
    return (
        removing + _stratified(other, room, seed) + [e for e in examples if e.status != "accepted"]
    )


def balance_doc_examples(
    examples: list[SFTExample], keep_per_drop: float, seed: int
) -> list[SFTExample]:
    """Per annotator: every drop and at most ``keep_per_drop`` keeps per drop; an annotator
    with no drop (clean sources) adds at most as many keeps as there are drops in all. So no
    source is all-drop and none swamps the others. Everything when there is no drop at all."""
    drops = [e for e in examples if e.label == "drop"]
    if not drops:
        return list(examples)
    out = list(drops)
    for annotator in sorted({e.annotator for e in examples}):
        keeps = sorted(
            (e for e in examples if e.label != "drop" and e.annotator == annotator),
            key=lambda e: _keyed(seed, e),
        )
        mine = sum(e.annotator == annotator for e in drops)
        out += keeps[: int(keep_per_drop * mine) if mine else len(drops)]
    return out
