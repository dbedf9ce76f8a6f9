"""Prompts, in our own words: the two scoring rubrics and the refiner's input formats.

The refiner formats here are used both to build the SFT set and at inference, so a refiner sees
exactly what it was trained on. Bump a version whenever its text changes: every score and every
SFT example records the version that produced it.
"""

from __future__ import annotations

SCORE_PROMPT_VERSION = "score-v1"
REFINER_PROMPT_VERSION = "refiner-v1"
ANNOTATOR_PROMPT_VERSION = "annotate-v1"

SCORE_SYSTEM = "You are a careful annotator of web text for training language models."

EDU_RUBRIC = """Rate how useful the document below would be for teaching, from primary school to
university level, using this additive scale. Start at 0 and add points:
+1 if it offers some basic information related to an educational topic, even if mixed with ads,
   navigation or other irrelevant material;
+1 if it addresses elements of an educational topic but is disorganised or incomplete;
+1 if it is suitable for educational use and introduces concepts a curriculum would cover,
   coherently, even if not comprehensive;
+1 if it is highly relevant for teaching, clear and consistent, like a chapter of a textbook or
   a tutorial, with little that is off-topic;
+1 if it is outstanding for teaching: detailed reasoning, easy to follow, deep insight, and no
   irrelevant or commercial content."""

FORMAT_RUBRIC = """Rate how clean the text of the document below is, as extracted from a web page,
using this additive scale. Start at 0 and add points:
+1 if the text is readable as a whole, despite leftover markup, menus or broken characters;
+1 if basic cleaning was done: no large blocks of code, scripts, tracking or style rules;
+1 if the body is mostly clean text, with only a few navigation, button or footer lines;
+1 if it is organised into clear paragraphs with sensible headings and almost no noise;
+1 if the formatting is flawless: nothing but well-structured, readable text."""

RUBRICS = {"edu": EDU_RUBRIC, "format": FORMAT_RUBRIC}
SCORE_CANDIDATES = ["0", "1", "2", "3", "4", "5"]


def score_chat(rubric: str, document: str, with_critique: bool) -> list[dict[str, str]]:
    """The chat for one rubric; the assistant turn continues with ``score_prefix``."""
    ask = (
        "First write a short critique (two sentences), then a final line 'Score: N' with N from 0 to 5."
        if with_critique
        else "Answer with 'Score: N', N from 0 to 5."
    )
    return [
        {"role": "system", "content": SCORE_SYSTEM},
        {
            "role": "user",
            "content": f'{RUBRICS[rubric]}\n\nDocument:\n"""\n{document}\n"""\n\n{ask}',
        },
    ]


def score_prefix(critique: str | None) -> str:
    """Assistant text after which the next token is the score digit."""
    return f"{critique.strip()}\nScore: " if critique else "Score: "


# --- the refiner's input formats ----------------------------------------------------------------
DOC_REFINER_SYSTEM = (
    "You are a data refiner for language-model pre-training. Read the document and reply with "
    "exactly one call: keep_doc() if it is worth training on, drop_doc() if it is not."
)
CHUNK_REFINER_SYSTEM = (
    "You are a data refiner for language-model pre-training. The document lines are numbered "
    "[NNN]. Reply with a program, one call per line:\n"
    "remove_lines(line_start=i, line_end=j) deletes noisy lines i..j (inclusive), such as "
    "navigation, menus, buttons, links, footers, ads and references;\n"
    'normalize(source_str="...", target_str="...") replaces a noisy string inside a line;\n'
    "keep_chunk() when the chunk is clean."
)


def doc_refiner_chat(document: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DOC_REFINER_SYSTEM},
        {"role": "user", "content": document},
    ]


def chunk_refiner_chat(window_text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": CHUNK_REFINER_SYSTEM},
        {"role": "user", "content": window_text},
    ]


# --- few-shot annotation prompts, one per noise type --------------------------------------------
NOISE_TYPES = {
    "navigation": "navigation bars, menus, breadcrumbs, tables of contents and sidebars",
    "links": "URLs, buttons, 'read more' / 'share' / 'sign in' links and calls to action",
    "footers": "footers, copyright lines, legal notices, reference lists and 'last updated' lines",
}
FEW_SHOT_WINDOW = """[doc]
[000]Home | Products | Blog | Contact
[001]How to repot a fern
[002]Ferns like loose, moist soil. Choose a pot one size larger than the old one.
[003]Share on Facebook | Tweet | Email
[004]Water well after repotting and keep the plant out of direct sun for a week.
[005]© 2024 GreenThumb Ltd. All rights reserved. Privacy policy
[/doc]"""
FEW_SHOT_ANSWERS = {
    "navigation": "remove_lines(line_start=0, line_end=0)",
    "links": "remove_lines(line_start=3, line_end=3)",
    "footers": "remove_lines(line_start=5, line_end=5)",
}


def annotator_chat(noise_type: str, window_text: str) -> list[dict[str, str]]:
    system = (
        f"You label noisy lines in numbered documents. Find only {NOISE_TYPES[noise_type]}. Reply "
        "with remove_lines(line_start=i, line_end=j) calls, one per line, or keep_chunk() if there "
        "is none. Never remove lines of the main content."
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": FEW_SHOT_WINDOW},
        {"role": "assistant", "content": FEW_SHOT_ANSWERS[noise_type]},
        {"role": "user", "content": window_text},
    ]
