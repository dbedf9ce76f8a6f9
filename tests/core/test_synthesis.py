"""Scoring, annotators and SFT building as plain functions."""

import json

import pytest

from prox_assets.core.annotators import (
    RuleAnnotator,
    annotate_windows,
    merge_programs,
    validate_chunk_program,
)
from prox_assets.core.chunking import Window, chunk_document, whitespace_token_counter
from prox_assets.core.executor import execute_chunk_programs
from prox_assets.core.programs import parse_program
from prox_assets.core.scoring import expected_score, parse_score_line, prox_keep, seed_sample
from prox_assets.core.sft import (
    SPLITS,
    DocLabel,
    SFTExample,
    assign_splits,
    build_sft_set,
    chunk_annotator_name,
    chunk_examples,
    clean_examples,
    doc_label,
    gold_page_examples,
    sft_version,
)


@pytest.mark.parametrize(
    "text, score",
    [
        ("Clear and useful.\nScore: 4", 4),
        ("score=2 at first... on reflection\nScore: 5", 5),
        ("**Score:** 3", 3),
        ("I cannot rate this.", None),
        ("Score: 7", None),
    ],
)
def test_parse_score_line(text, score):
    assert parse_score_line(text) == score


def test_expected_score():
    assert expected_score({"5": 0.5})[0] == pytest.approx(5.0)
    e, norm, mass = expected_score(dict.fromkeys("012345", 0.1))
    assert e == pytest.approx(2.5) and mass == pytest.approx(0.6) and sum(norm) == pytest.approx(1)
    assert expected_score({})[2] == 0.0


@pytest.mark.parametrize(
    "edu, fmt, keep",
    [
        (3, 0, True),
        (5, 0, True),
        (2, 4, True),
        (2, 5, True),
        (2, 3, False),
        (1, 5, False),
        (0, 0, False),
    ],
)
def test_prox_keep_rule(edu, fmt, keep):
    assert prox_keep(edu, fmt) is keep


def test_seed_sample_is_seeded_and_order_free():
    ids = [f"d{i}" for i in range(100)]
    a = seed_sample(ids, 10, seed=0)
    assert a == seed_sample(list(reversed(ids)), 10, seed=0)
    assert a != seed_sample(ids, 10, seed=1) and len(set(a)) == 10


PAGE = "\n".join(
    [
        "Home | News | Sport | Weather",  # 0 menu bar
        "",  # 1
        "Share on Facebook",  # 2 phrase
        "The council approved the new bridge on Tuesday after a long debate about its cost.",  # 3
        "It will open in 2027¶",  # 4 normalize ¶
        "  • About us",  # 5 menu item
        "",  # 6
        "  • Careers",  # 7 menu item (joined across the blank line)
        "https://example.com/story/123",  # 8 url
        "Engineers said the work would start in spring, weather permitting, and last two years.",  # 9
        "© 2026 Example Media",  # 10 phrase
    ]
)


def test_rule_annotator_program():
    window = Window(0, 0, 10, "", 0)
    program = RuleAnnotator().annotate(PAGE, window)
    assert program.split("\n") == [
        "remove_lines(line_start=0, line_end=2)",  # the blank line 1 joins two flagged lines
        "remove_lines(line_start=5, line_end=8)",
        "remove_lines(line_start=10, line_end=10)",
        'normalize(source_str="¶", target_str="")',
    ]
    assert validate_chunk_program(program, PAGE, window, 0.75) is None
    refined = execute_chunk_programs(PAGE, [(0, 10, program)]).text
    assert refined == "\n".join([PAGE.split("\n")[3], "It will open in 2027", PAGE.split("\n")[9]])


def test_repeated_lines_across_a_shard_are_boilerplate():
    docs = [
        f"Site Navigation\nStory {i} is about something else entirely, told at length."
        for i in range(5)
    ]
    annotator = RuleAnnotator.for_shard(docs, min_docs=3)
    assert annotator.line_reason("Site navigation ") == "repeated_in_shard"
    assert (
        annotator.line_reason("Story 1 is about something else entirely, told at length.") is None
    )
    assert (
        RuleAnnotator().annotate("A clean paragraph of prose.", Window(0, 0, 0, "", 0))
        == "keep_chunk()"
    )


def test_merge_programs():
    merged = merge_programs(
        ["remove_lines(0, 1)\nbroken(", "remove_lines(0, 1)\nnormalize('x', '')", "keep_chunk()"]
    )
    assert (
        merged == 'remove_lines(line_start=0, line_end=1)\nnormalize(source_str="x", target_str="")'
    )
    assert merge_programs(["keep_chunk()", "nonsense"]) == "keep_chunk()"


@pytest.mark.parametrize(
    "program, reason",
    [
        ("remove_lines(0, 11)", "lines_outside_window"),
        ("normalize('not here', '')", "normalize_source_not_in_window"),
        ("remove_lines(0, 9)", "removal_ratio_above_cap"),
        (
            "remove_lines(0, ",
            "parse_warning:truncated_call",
        ),  # the executor's leniency, never a target
        ("remove_lines(0, 1\nkeep_chunk()", "parse_error:syntax"),
        ("remove_lines(start=0, end=1)", "parse_warning:renamed_argument"),
        ("", "empty_program"),
    ],
)
def test_validation_reasons(program, reason):
    assert validate_chunk_program(program, PAGE, Window(0, 0, 10, "", 0), 0.75) == reason


def test_chunk_examples_splits_and_versions():
    text = "\n".join([PAGE] * 6)
    windows = chunk_document(text, whitespace_token_counter, max_tokens=60)
    annotator = RuleAnnotator()
    examples = chunk_examples(
        "d1",
        "s",
        text,
        windows,
        [annotator.annotate(text, w) for w in windows],
        "rules-v1",
        "none",
        0.75,
    )
    examples += chunk_examples(
        "d2", "s", PAGE, windows[:1], ["keep_chunk()"], "rules-v1", "none", 0.75
    )
    assert len(examples) == len(windows) + 1
    for ex in examples:
        chat = json.loads(ex.messages)
        assert chat[0]["role"] == "system" and chat[1]["content"].startswith("[doc]\n[")
        if ex.status == "accepted":
            assert not parse_program(ex.target, "chunk").errors
    assign_splits(examples, 0.5, seed=0)
    by_doc = {}
    for ex in examples:
        by_doc.setdefault(ex.doc_id, set()).add(ex.split)
    assert all(len(s) == 1 for s in by_doc.values())
    v = sft_version("chunk", {"a": 1}, examples)
    assert v == sft_version("chunk", {"a": 1}, list(reversed(examples)))
    assert v != sft_version("chunk", {"a": 2}, examples)


def test_sft_example_fields_are_complete():
    ex = SFTExample("doc", "d", "s", "[]", "keep_doc()", "keep", "rubric-scores", "m")
    assert {"annotator", "model", "prompt_version", "status", "reject_reason"} <= set(ex.to_dict())


def test_split_of_sampled_seeds_follows_the_fraction():
    """Regression: the split once reused the sampling key and sent 40 of 42 seeds to val."""
    chosen = seed_sample([f"doc{i}" for i in range(5000)], 400, seed=0)
    examples = [SFTExample("doc", d, "s", "[]", "keep_doc()", "keep", "a", "m") for d in chosen]
    assign_splits(examples, 0.2, seed=0)
    val = sum(ex.split == "val" for ex in examples) / len(examples)
    assert 0.14 < val < 0.26


def test_an_sft_set_splits_counts_and_versions_its_examples():
    def example(i: int, label: str, status: str = "accepted") -> SFTExample:
        target = f"{label}_doc()"
        ex = SFTExample("doc", f"doc{i}", "s", "[]", target, label, f"a{i % 2}", "m", status)
        ex.reject_reason = "bad" if status == "rejected" else None
        return ex

    examples = [example(i, "keep" if i % 3 else "drop") for i in range(30)]
    examples.append(example(30, "keep", "rejected"))
    sft = build_sft_set("doc", {"a": 1}, examples, 0.3, seed=0)
    assert sft.version == sft_version("doc", {"a": 1}, examples)
    assert all(len(ex.example_id) == 16 for ex in sft.examples)
    assert sum(sft.split(s).height for s in SPLITS) == sft.frame.height == 31
    assert (sft.n_train, sft.n_val, sft.n_rejected) == (
        sft.split("train").height,
        sft.split("val").height,
        1,
    )
    assert sft.labels() == {"keep": 20, "drop": 10} and sft.minority() == 10
    assert sft.reject_reasons() == {"bad": 1}
    assert sum(n for _, _, n in sft.labels_by_annotator()) == 30
    assert sft.preview(2) == [("doc0", "drop", "drop_doc()"), ("doc1", "keep", "keep_doc()")]


def test_a_documents_label_is_distant_first_then_the_rubrics():
    assert doc_label(False, True, (True, "m")) == DocLabel(False, "layout-gold", "none")
    assert doc_label(None, True, (False, "m")) == DocLabel(True, "clean-source", "none")
    assert doc_label(None, False, (False, "m")) == DocLabel(False, "rubric-scores", "m")
    assert doc_label(None, False, None) is None


def test_chunk_examples_of_clean_text_gold_pages_and_annotators():
    windows = chunk_document(PAGE, whitespace_token_counter, max_tokens=60)
    clean = clean_examples("d1", "s", PAGE, windows)
    assert len(clean) == len(windows) and not [e for e in clean if "remove_lines" in e.target]
    assert {e.annotator for e in clean} == {"clean-source"}
    lines = PAGE.split("\n")
    labels = [i % 2 == 0 for i in range(len(lines))]  # every other line noise
    body = "\n".join(line for line, keep in zip(lines, labels) if keep)
    body_windows = chunk_document(body, whitespace_token_counter, max_tokens=60)
    gold = gold_page_examples("d2", "s", PAGE, labels, windows, body, body_windows)
    assert [e.doc_id for e in gold] == ["d2"] * len(windows) + ["d2:body"] * len(body_windows)
    assert {e.annotator for e in gold} == {"layout-gold", "layout-gold-body"}
    assert any("remove_lines" in e.target for e in gold[: len(windows)])
    assert not [e for e in gold[len(windows) :] if "remove_lines" in e.target]
    rules = RuleAnnotator()
    by_rules = annotate_windows(PAGE, windows, "rules", rules)
    assert by_rules == [rules.annotate(PAGE, w) for w in windows]
    assert chunk_annotator_name("rules") == "rules-v2"
    assert chunk_annotator_name("both").startswith("rules-v2+llm-")
