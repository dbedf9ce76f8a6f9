"""Distant supervision from real pages, and the refiner evaluation's ceiling and control."""

import json
import random

import pytest
from transformers import AutoTokenizer

from prox_assets.core.annotators import KEEP, RuleAnnotator, gold_program
from prox_assets.core.chunking import Window, chunk_document, hf_token_counter, split_lines
from prox_assets.core.prompts import chunk_refiner_chat
from prox_assets.core.real_pairs import (
    aligned_labels,
    news_pairs,
    page_split,
    pydocs_pair,
    pydocs_rel,
    source_agreement,
)
from prox_assets.core.refiner_quality import (
    build_quality_set,
    chunk_stage_quality,
    doc_stage_quality,
    imitator_writers,
    model_writers,
    noise_rate,
    random_writers,
)
from prox_assets.core.refiner_training import generation_budget
from prox_assets.core.sft import (
    SFTExample,
    balance_chunk_examples,
    balance_doc_examples,
    removal_extent,
)
from prox_resources.settings import downloads_dir


def test_layout_gold_of_a_real_docs_page():
    pair = pydocs_pair("library/json")
    lines = split_lines(pair.page_text)
    label = {ln.strip(): lab for ln, lab in zip(lines, pair.labels) if ln.strip()}
    # sidebar, relbar and footer are noise; generated body lines the .rst source lacks are content
    assert label["Table of Contents"] is False and label["Previous topic"] is False
    assert label["Created using Sphinx 5.3.0."] is False
    assert (
        label["New in version 3.5."] is True and label["json — JSON encoder and decoder¶"] is True
    )
    noise = sum(lab is False for lab in pair.labels)
    assert 50 < noise < 200 and pair.keep
    assert source_agreement(pair) < 0.9  # the trigram labels the layout replaced were this wrong


def test_alignment_is_positional_not_set_membership():
    page = "Intro\nHome\nBody line one\nBody line two\nHome"
    assert aligned_labels(page, "Body line one\nBody line two\nHome") == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert aligned_labels(page, "Home\nBody line one\nBody line two") == [
        False,
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    "rel, keep",
    [
        ("genindex-A", False),
        ("py-modindex", False),
        ("search", False),
        ("contents", False),
        ("library/json", True),
        ("tutorial/classes", True),
    ],
)
def test_index_pages_are_the_document_stage_drops(rel, keep):
    assert pydocs_pair(rel).keep is keep


def test_near_empty_news_pages_are_drops_and_urls_map_to_pages():
    keep = {p.name: p.keep for p in news_pairs(downloads_dir())}
    assert keep["news:japanese_article.html"] is False and keep["news:cnn_001.html"] is True
    assert pydocs_rel("https://docs.python.org/3.11/library/json.html") == "library/json"
    assert pydocs_rel("https://example.com/library/json.html") is None


def test_page_split_is_keyed_and_stable():
    names = [f"pydocs:p{i}" for i in range(2000)]
    held = [n for n in names if page_split(n, 0.3) == "heldout"]
    assert 0.25 < len(held) / len(names) < 0.35
    assert held == [n for n in names if page_split(n, 0.3) == "heldout"]
    assert held != [n for n in names if page_split(n, 0.3, seed=1) == "heldout"]


def test_repeated_lines_fire_only_in_blocks():
    text = (
        "Home\nDocs\nA paragraph about sockets.\nNote\nSockets are endpoints of a connection.\n"
        "© 2026 Example Ltd. All rights reserved."
    )
    rules = RuleAnnotator(
        frozenset({"home", "docs", "note", "© 2026 example ltd. all rights reserved."})
    )
    # "Note" repeats across the shard but stands alone in the body; the repeated footer is
    # boilerplate by its phrase, block or not
    assert rules.annotate(text, Window(0, 0, 5, "", 0)) == (
        "remove_lines(line_start=0, line_end=1)\nremove_lines(line_start=5, line_end=5)"
    )
    # a block cut by a window's edge is still a block
    assert rules.annotate(text, Window(1, 1, 5, "", 0)).startswith(
        "remove_lines(line_start=1, line_end=1)"
    )


def _example(annotator: str, label: str, target: str, i: int, window: str = "") -> SFTExample:
    return SFTExample(
        level="chunk",
        doc_id=f"d{i}",
        shard="s",
        messages=json.dumps(chunk_refiner_chat(window)) if window else "[]",
        target=target,
        label=label,
        annotator=annotator,
        model="none",
        window_index=i,
    )


def test_balance_keeps_every_removal_and_spreads_the_rest_over_sources():
    rm = [
        _example("layout-gold", "remove", "remove_lines(line_start=0, line_end=1)", i)
        for i in range(60)
    ]
    page_keeps = [_example("layout-gold", "keep", KEEP, 100 + i) for i in range(200)]
    prose = [_example("clean-source", "keep", KEEP, 400 + i) for i in range(30)]
    out = balance_chunk_examples(rm + page_keeps + prose, keep_fraction=0.4, seed=0)
    others = [e for e in out if "remove_lines" not in e.target]
    assert len(out) - len(others) == 60 and len(others) == 40
    assert sum(e.annotator == "clean-source" for e in others) == 20  # not crowded out 200:30

    docs = [_example("layout-gold", "drop", "drop_doc()", i) for i in range(10)]
    docs += [_example("layout-gold", "keep", "keep_doc()", 10 + i) for i in range(100)]
    docs += [_example("clean-source", "keep", "keep_doc()", 200 + i) for i in range(500)]
    out = balance_doc_examples(docs, keep_per_drop=3, seed=0)
    count = {(e.annotator, e.label): 0 for e in out}
    for e in out:
        count[e.annotator, e.label] += 1
    assert count == {
        ("layout-gold", "drop"): 10,
        ("layout-gold", "keep"): 30,
        ("clean-source", "keep"): 10,
    }


@pytest.fixture(scope="module")
def quality_set():
    return build_quality_set(
        downloads_dir(), n_pages=8, n_news=4, n_clean=4, n_doc_pages=12, max_chars=8000
    )


def test_the_quality_set_is_built_once_per_process_and_arguments(quality_set):
    from prox_assets.core.refiner_quality import _quality_set

    hits = _quality_set.cache_info().hits
    again = build_quality_set(
        downloads_dir(), n_pages=8, n_news=4, n_clean=4, n_doc_pages=12, max_chars=8000
    )
    assert _quality_set.cache_info().hits == hits + 1  # the doc and chunk refiners' second call
    assert again == quality_set and again.pages is not quality_set.pages  # a copy each


class LabelEcho:
    """A refiner that writes exactly the gold program of every window it is shown, cut at
    ``max_new_tokens`` tokens like a real model's output: the perfect imitator, through the
    model path (chat, generation budget, executor)."""

    def __init__(self, tokenizer, programs: dict[str, str]):
        self.tokenizer, self.programs, self.longest = tokenizer, programs, 0

    def generate(self, chats, max_new_tokens, **_):
        out = []
        for chat in chats:
            ids = self.tokenizer(self.programs[chat[-1]["content"]], add_special_tokens=False)[
                "input_ids"
            ]
            self.longest = max(self.longest, len(ids))
            out.append(self.tokenizer.decode(ids[:max_new_tokens]))
        return out


def test_a_refiner_that_writes_the_labels_scores_the_ceiling(quality_set, smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    count = hf_token_counter(tokenizer)
    programs = {}
    texts = [(p.page_text, p.labels) for p in quality_set.pages + quality_set.news]
    texts += [(t, [True] * len(split_lines(t))) for ts in quality_set.clean.values() for t in ts]
    lengths = []
    for text, labels in texts:
        for w in chunk_document(text, count, 384):
            programs[w.text] = gold_program(text, labels, w)
            lengths.append(count([programs[w.text]])[0] + 1)  # + the end-of-turn token
    p99 = sorted(lengths)[int(0.99 * len(lengths))]
    echo = LabelEcho(tokenizer, programs)
    quality = chunk_stage_quality(
        model_writers(echo, generation_budget(p99))[1], quality_set, count, 384
    )
    assert (
        quality["pydocs-heldout"]["line_f1"] >= 0.95
        and quality["pydocs-heldout"]["gold_text_kept"] >= 0.95
    )
    assert (
        quality["clean-austen"]["tokens_kept"] == 1.0
        and quality["clean-math"]["docs_dropped"] == 0.0
    )
    if (
        echo.longest > 24
    ):  # a budget far below the labels' lengths is what the evaluation must expose
        cut = chunk_stage_quality(model_writers(echo, 8)[1], quality_set, count, 384)
        assert cut["pydocs-heldout"]["line_f1"] < quality["pydocs-heldout"]["line_f1"]


def test_the_control_is_far_below_the_ceiling(quality_set, smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    count = hf_token_counter(tokenizer)
    ceiling = chunk_stage_quality(imitator_writers()[1], quality_set, count, 384)
    control = chunk_stage_quality(
        random_writers(noise_rate(quality_set.pages), 0.2)[1], quality_set, count, 384
    )
    assert (
        ceiling["pydocs-heldout"]["line_f1"] == 1.0
        and ceiling["pydocs-heldout"]["gold_text_kept"] == 1.0
    )
    # news: the executor's "<= 10 words left" drop counts whitespace words, so a CJK page the
    # imitator cleans perfectly can still be dropped: the ceiling shows it, the test allows it
    assert ceiling["news-heldout"]["noise_removed"] == 1.0
    assert ceiling["news-heldout"]["gold_text_kept"] > control["news-heldout"]["gold_text_kept"]
    assert (
        control["pydocs-heldout"]["gold_text_kept"] < 0.8
        and control["clean-austen"]["tokens_kept"] < 0.9
    )
    truncate = lambda t: t[:2000]  # noqa: E731
    docs_ceiling = doc_stage_quality(imitator_writers()[0], quality_set, truncate)
    docs_control = doc_stage_quality(
        random_writers(0.3, 0.2, seed=random.Random(0).randrange(99))[0], quality_set, truncate
    )
    assert (
        docs_ceiling["doc-labelled"]["macro_f1"] == 1.0
        and docs_control["doc-labelled"]["macro_f1"] < 0.75
    )
    assert docs_ceiling["docs-pydocs-index"]["docs_dropped"] == 1.0


def test_windows_where_content_meets_noise_are_not_outnumbered_by_whole_removals():
    window = "[doc]\n[010]Home | Docs\n[011]\n[012]Body text here.\n[013]© 2026 Example\n[/doc]"
    partial = "remove_lines(line_start=10, line_end=11)"
    whole = "remove_lines(line_start=10, line_end=13)"
    # blank lines need not be removed for a window to be removed whole
    blank_skipped = (
        "remove_lines(line_start=10, line_end=10)\nremove_lines(line_start=12, line_end=13)"
    )
    assert removal_extent(_example("g", "remove", partial, 0, window)) == "partial"
    assert removal_extent(_example("g", "remove", whole, 0, window)) == "whole"
    assert removal_extent(_example("g", "remove", blank_skipped, 0, window)) == "whole"
    assert removal_extent(_example("g", "keep", KEEP, 0, window)) == "none"
    assert (
        removal_extent(_example("g", "keep", 'normalize(source_str="¶", target_str="")', 0, window))
        == "none"
    )

    examples = [_example("g", "remove", partial, i, window) for i in range(10)]
    examples += [_example("g", "remove", whole, 100 + i, window) for i in range(40)]
    examples += [_example("g", "keep", KEEP, 200 + i, window) for i in range(100)]
    natural = balance_chunk_examples(examples, keep_fraction=0.5, seed=0)
    assert sum(removal_extent(e) == "whole" for e in natural) == 40
    capped = balance_chunk_examples(examples, keep_fraction=0.5, seed=0, whole_per_partial=1.0)
    count = {k: sum(removal_extent(e) == k for e in capped) for k in ("partial", "whole", "none")}
    assert count == {"partial": 10, "whole": 10, "none": 20}
