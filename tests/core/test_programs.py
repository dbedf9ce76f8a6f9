"""The program language: table-driven cases, including every defect of the reference executor."""

import pytest

from prox_assets.core.executor import (
    ExecutorConfig,
    execute_chunk_program,
    execute_chunk_programs,
    execute_doc_program,
)
from prox_assets.core.programs import Limits, parse_program

DOC = "\n".join(
    [
        "Home | About | Contact",  # 0
        "Menu: News, Sports, Weather",  # 1
        "The river rose three metres overnight after a week of heavy rain in the hills.",  # 2
        "Residents of the lower town were moved to the school gym before midnight.",  # 3
        "Read more at http://example.com/story?id=42&ref=home (updated)",  # 4
        "Engineers expect the water to fall slowly over the next two days, officials said.",  # 5
        "© 2026 Example News. All rights reserved.",  # 6
    ]
)
LINES = DOC.split("\n")


def calls(program: str, stage: str = "chunk") -> list[str]:
    return [c.render() for c in parse_program(program, stage).calls]


def kinds(program: str, stage: str = "chunk") -> list[str]:
    return [e.kind for e in parse_program(program, stage).errors]


# --- the reference executor's defects, each handled correctly -------------------------------
@pytest.mark.parametrize(
    "program, source, target",
    [
        # '=' inside a string truncates the value in the reference (URLs with query strings)
        (
            'normalize(source_str="http://example.com/story?id=42&ref=home", target_str="")',
            "http://example.com/story?id=42&ref=home",
            "",
        ),
        # ')' inside a string cuts the argument
        ('normalize(source_str="(updated)", target_str="")', "(updated)", ""),
        # ',' inside a string silently skips the call
        (
            'normalize(source_str="News, Sports", target_str="News and Sports")',
            "News, Sports",
            "News and Sports",
        ),
        # single quotes never match in the reference
        ("normalize(source_str='Read more at ', target_str='')", "Read more at ", ""),
        # positional arguments count as errors in the reference
        ('normalize("Weather", "Forecast")', "Weather", "Forecast"),
        # quotes and escapes inside strings
        (
            r'normalize(source_str="Example News\u002e", target_str="Example News")',
            "Example News.",
            "Example News",
        ),
        ('normalize(source_str="a \\"quoted\\" word", target_str=\'x\')', 'a "quoted" word', "x"),
    ],
)
def test_reference_defects_normalize(program, source, target):
    parsed = parse_program(program, "chunk")
    assert parsed.errors == []
    assert [(c.arg("source_str"), c.arg("target_str")) for c in parsed.calls] == [(source, target)]


def test_url_with_query_string_is_removed_exactly():
    r = execute_chunk_program(
        DOC, 'normalize(source_str="http://example.com/story?id=42&ref=home", target_str="")'
    )
    assert r.errors == [] and not r.dropped
    assert r.text.split("\n")[4] == "Read more at  (updated)"
    assert r.text.split("\n")[:4] == LINES[:4] and r.text.split("\n")[5:] == LINES[5:]


def test_positional_remove_lines_and_leading_zeros():
    assert calls("remove_lines(0, 1)") == ["remove_lines(line_start=0, line_end=1)"]
    assert calls("remove_lines(line_start=000, line_end=001)") == [
        "remove_lines(line_start=0, line_end=1)"
    ]
    assert calls("remove_lines(5, line_end=6)") == ["remove_lines(line_start=5, line_end=6)"]


def test_escaped_newline_spans_lines_within_window():
    r = execute_chunk_program(
        DOC, r'normalize(source_str="Contact\nMenu", target_str="Contact | Menu")'
    )
    assert r.errors == []
    assert r.text.split("\n")[0] == "Home | About | Contact | Menu: News, Sports, Weather"


def test_non_ascii_values():
    text = "Café crème — 5 €\n" + "\n".join(LINES[2:])
    r = execute_chunk_program(text, 'normalize(source_str="Café crème — 5 €", target_str="Café")')
    assert r.text.split("\n")[0] == "Café"


@pytest.mark.parametrize(
    "program, expected",
    [
        (
            "```python\nremove_lines(line_start=0, line_end=1)\n```",
            ["remove_lines(line_start=0, line_end=1)"],
        ),
        (
            "# navigation\nremove_lines(0, 1)  # menu\n\n\nkeep_chunk()",
            ["remove_lines(line_start=0, line_end=1)", "keep_chunk()"],
        ),
        (
            "remove_lines(0, 1); remove_lines(6, 6)",
            ["remove_lines(line_start=0, line_end=1)", "remove_lines(line_start=6, line_end=6)"],
        ),
        ("skip_chunk()\nuntouch_doc()", ["keep_chunk()", "keep_chunk()"]),
        (
            "remove_lines(\n    line_start=0,\n    line_end=1,\n)",
            ["remove_lines(line_start=0, line_end=1)"],
        ),
        ("normalize(r'\\d+', '')", ['normalize(source_str="\\\\d+", target_str="")']),
        (
            'normalize("""multi\nline""", "x")',
            ['normalize(source_str="multi\\nline", target_str="x")'],
        ),
    ],
)
def test_program_forms(program, expected):
    assert calls(program) == expected


def test_doc_stage_calls_and_aliases():
    assert calls("keep_doc()", "doc") == ["keep_doc()"]
    assert calls("untouch_doc()", "doc") == ["keep_doc()"]
    assert kinds("remove_lines(0, 1)", "doc") == ["wrong_stage"]
    assert kinds("drop_doc()", "chunk") == ["wrong_stage"]


# --- hostile programs: an error, never code run ----------------------------------------------
@pytest.mark.parametrize(
    "program, kind",
    [
        ("__import__('os').system('touch /tmp/pwned')", "syntax"),
        ("__import__('os')", "unknown_call"),
        ("os.system('ls')", "unknown_call"),
        ("keep_chunk.__class__()", "unknown_call"),
        ("eval('1')", "unknown_call"),
        ("remove_lines(0, 1).__globals__", "syntax"),
        ("remove_lines(line_start=1+1, line_end=2)", "syntax"),
        ("normalize(source_str=x, target_str='')", "syntax"),
        # an unterminated string that is not the end of the program (a cut one is a warning)
        ("normalize(source_str=\"unbalanced, target_str='')\n", "syntax"),
        ("remove_lines(" + "9" * 5000 + ", 1)", "int_too_large"),
        ("remove_lines(line_start=0, line_start=1)", "duplicate_argument"),
        ("remove_lines(0, 1, 2)", "too_many_arguments"),
        ("remove_lines(line_end=1)", "missing_argument"),
        ("remove_lines('0', '1')", "wrong_type"),
        ("normalize(source='a', target='b')", "unknown_argument"),
        ("keep_chunk" + "(" * 5000, "syntax"),
        ("lambda: 0", "syntax"),
    ],
)
def test_hostile_programs_are_errors(program, kind, tmp_path):
    parsed = parse_program(program, "chunk")
    assert parsed.calls == []
    assert [e.kind for e in parsed.errors][:1] == [kind]
    assert not (tmp_path / "pwned").exists()


def test_limits():
    limits = Limits(max_program_chars=100, max_calls=3, max_string_chars=10)
    assert parse_program("keep_chunk()\n" * 20, "chunk", limits).fatal
    assert parse_program("keep_chunk()\n" * 5, "chunk", limits).fatal
    assert [
        e.kind for e in parse_program("normalize('a' , '" + "b" * 11 + "')", "chunk", limits).errors
    ] == ["string_too_long"]
    assert execute_chunk_program(DOC, "keep_chunk()\n" * 5, ExecutorConfig(limits=limits)).ignored


def test_parser_never_raises_on_non_text():
    assert parse_program(None, "chunk").fatal  # type: ignore[arg-type]


# --- executor semantics ----------------------------------------------------------------------
def test_remove_lines_inclusive_and_merged():
    r = execute_chunk_program(
        DOC, "remove_lines(0, 1)\nremove_lines(1, 1)\nremove_lines(6, 6)\nremove_lines(0, 1)"
    )
    assert r.text.split("\n") == LINES[2:6]
    assert [(e.line_start, e.line_end) for e in r.edits] == [(0, 1), (6, 6)]
    assert not r.dropped and r.errors == []


def test_adjacent_ranges_merge():
    r = execute_chunk_program(DOC, "remove_lines(0, 0)\nremove_lines(1, 1)")
    assert [(e.line_start, e.line_end) for e in r.edits] == [(0, 1)]


def test_one_error_is_tolerated_two_ignore_the_program():
    one = execute_chunk_program(DOC, "remove_lines(0, 1)\nremove_lines(50, 60)")
    assert not one.ignored and one.text.split("\n") == LINES[2:]
    assert [e.kind for e in one.errors] == ["line_out_of_range"]
    two = execute_chunk_program(DOC, "remove_lines(0, 1)\nremove_lines(50, 60)\nbogus(")
    assert two.ignored and two.text == DOC and two.edits == []
    assert (
        ExecutorConfig(max_errors=3)
        and not execute_chunk_program(
            DOC, "remove_lines(0, 1)\nremove_lines(50, 60)\nbogus(", ExecutorConfig(max_errors=3)
        ).ignored
    )


def test_reversed_range_is_an_error():
    assert [e.kind for e in execute_chunk_program(DOC, "remove_lines(3, 2)").errors] == [
        "reversed_range"
    ]


def test_drop_when_too_few_words_remain():
    r = execute_chunk_program(DOC, "remove_lines(0, 5)")
    assert r.dropped and r.reason == "too_few_words_after_edits"
    long_doc = "\n".join(["word " * 30] * 40)
    r = execute_chunk_program(long_doc, "remove_lines(0, 38)")  # 30 of 1200 words = 2.5% left
    assert r.dropped and r.reason == "too_little_text_after_edits"
    r = execute_chunk_program(
        long_doc, "remove_lines(0, 37)", ExecutorConfig(min_word_fraction=0.01)
    )
    assert not r.dropped


def test_keep_only_program_returns_text_unchanged_even_when_short():
    short = "Just a few words."
    r = execute_chunk_program(short, "keep_chunk()")
    assert r.text == short and not r.dropped and r.edits == []


def test_doc_stage_only_clear_drop_drops():
    assert execute_doc_program(DOC, "drop_doc()").dropped
    assert execute_doc_program(DOC, "```\ndrop_doc()\n```").dropped
    assert not execute_doc_program(DOC, "keep_doc()").dropped
    assert not execute_doc_program(DOC, "").dropped
    assert not execute_doc_program(DOC, "I think this should be dropped").dropped
    assert not execute_doc_program(DOC, "drop_doc()\nkeep_doc()").dropped  # conflict keeps
    assert not execute_doc_program(
        DOC, "drop_doc()\njunk(\nmore junk("
    ).dropped  # 2 errors: ignored


def test_normalize_applies_to_its_own_window_by_default():
    text = "alpha beta\ngamma alpha\ndelta alpha\nomega"
    windows = [(0, 1, 'normalize("alpha", "A")'), (2, 3, "keep_chunk()")]
    r = execute_chunk_programs(text, windows)
    assert r.text == "A beta\ngamma A\ndelta alpha\nomega"
    assert r.edits[0].count == 2 and r.edits[0].window == 0
    doc_scope = execute_chunk_programs(text, windows, ExecutorConfig(normalize_scope="document"))
    assert doc_scope.text == "A beta\ngamma A\ndelta A\nomega"


def test_windows_with_all_lines_removed_leave_no_blank_line():
    text = "a a a a a a\nb b b b b b\nc c c c c c\nd d d d d d"
    r = execute_chunk_programs(
        text,
        [(0, 1, "remove_lines(0, 1)"), (2, 3, "keep_chunk()")],
        ExecutorConfig(min_words_kept=0),
    )
    assert r.text == "c c c c c c\nd d d d d d"


def test_duplicate_normalize_applied_once_and_missing_source_is_a_warning():
    r = execute_chunk_program(
        DOC, 'normalize("Weather", "W")\nnormalize("Weather", "W")\nnormalize("absent", "")'
    )
    assert [e.count for e in r.edits] == [1]
    assert [w.kind for w in r.warnings] == ["source_not_found"] and r.errors == []


def test_normalize_cannot_explode_the_text():
    r = execute_chunk_program("a" * 10000 + "\n" + DOC, 'normalize("a", "' + "b" * 100 + '")')
    assert [e.kind for e in r.errors] == ["normalize_growth"]
    assert r.text.startswith("a" * 10000)
    assert [e.kind for e in execute_chunk_program(DOC, 'normalize("", "x")').errors] == [
        "empty_source"
    ]


def test_normalize_never_produces_invalid_unicode():
    """Model output can spell a lone surrogate; the executor must not put it into the text."""
    for program in (
        r'normalize("Weather", "\ud800")',
        r'normalize(source_str="line", target_str="x\udfff")',
    ):
        r = execute_chunk_program(DOC, program)
        assert [e.kind for e in r.errors] == ["invalid_unicode"] and r.edits == []
        r.text.encode("utf-8")  # valid Unicode: the tokenizer and the Parquet writer accept it


def test_edits_are_auditable():
    r = execute_chunk_program(DOC, 'remove_lines(0, 1)\nnormalize("(updated)", "")')
    d = r.to_dict()
    assert d["edits"] == [
        {
            "kind": "remove_lines",
            "line_start": 0,
            "line_end": 1,
            "source": "",
            "target": "",
            "count": 0,
            "window": -1,
        },
        {
            "kind": "normalize",
            "line_start": -1,
            "line_end": -1,
            "source": "(updated)",
            "target": "",
            "count": 1,
            "window": 0,
        },
    ]


# --- a truncated final call is the end of the program (max_new_tokens cuts model output) ------
def warning_kinds(program: str, stage: str = "chunk") -> list[str]:
    return [w.kind for w in parse_program(program, stage).warnings]


@pytest.mark.parametrize(
    "program, expected_calls",
    [
        (
            "remove_lines(line_start=3, line_end=9)\nremove_lines(line_start=40, line_e",
            ["remove_lines(line_start=3, line_end=9)"],
        ),
        ('normalize(source_str="abc', []),
        ('keep_chunk()\nnormalize(source_str="abc\\', ["keep_chunk()"]),  # cut after a backslash
        ('normalize(source_str="ab", target_str=', []),
        ("normalize('x', '''multi\nline", []),
        ("remove_lines(3, 5", []),
        ("remove_lines(3, 5\n", []),  # newlines are allowed inside the parentheses
        ("remove_lines(0, 1)\nremove_lines(", ["remove_lines(line_start=0, line_end=1)"]),
        (
            "remove_lines(0, 1)\nremove_li",
            ["remove_lines(line_start=0, line_end=1)"],
        ),  # cut in the name
        (
            "```python\nremove_lines(0, 1)\nremove_lines(4, -",
            ["remove_lines(line_start=0, line_end=1)"],
        ),
        ("skip_chunk(", []),
    ],
)
def test_truncated_final_call_is_a_warning_not_an_error(program, expected_calls):
    parsed = parse_program(program, "chunk")
    assert parsed.errors == [] and not parsed.fatal
    assert [c.render() for c in parsed.calls] == expected_calls
    assert [w.kind for w in parsed.warnings] == ["truncated_call"]


@pytest.mark.parametrize(
    "program, kind",
    [
        ("remove_lines(3, 5\nkeep_chunk()", "syntax"),  # incomplete, but not the last statement
        ('normalize("abc\nkeep_chunk()', "syntax"),
        ("remove_lines(line_start=1+1, line_end=2)", "syntax"),  # last, complete but malformed
        ("remove_lines(0, 1).x", "syntax"),
        ("remove_lines(3, 5))", "syntax"),
        ("remove_lines(line_start=1+1, line_e", "syntax"),  # malformed before the cut
        ("keep_chunk\n", "syntax"),  # a complete statement that is not a call
        ('eval("abc', "syntax"),  # not a permitted call name
        ("drop_doc(", "syntax"),  # not a chunk-stage call
        ("```python\nremove_lines(0, 1\n```", "syntax"),  # a closing fence: the output was not cut
    ],
)
def test_incomplete_or_malformed_statements_stay_errors(program, kind):
    parsed = parse_program(program, "chunk")
    assert [e.kind for e in parsed.errors] == [kind] and parsed.warnings == []


def test_truncated_call_is_surfaced_by_the_executor_and_not_counted():
    program = "remove_lines(0, 1)\nremove_lines(50, 60)\nremove_lines(line_start=6, line_e"
    r = execute_chunk_program(DOC, program)  # before: 2 errors, the whole program ignored
    assert not r.ignored and r.text.split("\n") == LINES[2:]
    assert [e.kind for e in r.errors] == ["line_out_of_range"]
    assert [(w.kind, w.line) for w in r.warnings] == [("truncated_call", 2)]
    assert r.to_dict()["warnings"][0]["kind"] == "truncated_call"
    d = execute_doc_program(DOC, "drop_doc()\ndrop_do")
    assert d.dropped and d.errors == [] and [w.kind for w in d.warnings] == ["truncated_call"]


# --- keyword aliases of remove_lines ---------------------------------------------------------
@pytest.mark.parametrize(
    "program, n_renamed",
    [
        ("remove_lines(start=3, end=5)", 2),
        ("remove_lines(start_line=3, end_line=5)", 2),
        ("remove_lines(line_begin=3, line_stop=5)", 2),
        ("remove_lines(begin=3, stop=5)", 2),
        ("remove_lines(first=3, last=5)", 2),
        ("remove_lines(first_line=3, last_line=5)", 2),
        ("remove_lines(from_line=3, to_line=5)", 2),
        ("remove_lines(line_from=3, line_to=5)", 2),
        ("remove_lines(end=5, start=3)", 2),
        ("remove_lines(line_start=3, end=5)", 1),
        ("remove_lines(3, end=5)", 1),
    ],
)
def test_remove_lines_keyword_aliases_are_renamed_with_a_warning(program, n_renamed):
    parsed = parse_program(program, "chunk")
    assert parsed.errors == []
    assert [c.render() for c in parsed.calls] == ["remove_lines(line_start=3, line_end=5)"]
    assert [w.kind for w in parsed.warnings] == ["renamed_argument"] * n_renamed


@pytest.mark.parametrize(
    "program, kind",
    [
        ("remove_lines(start=1, begin=2, end=3)", "duplicate_argument"),  # two names, one parameter
        ("remove_lines(start=1, line_start=2, end=3)", "duplicate_argument"),
        ("remove_lines(start=1, start=1, end=3)", "duplicate_argument"),
        ("remove_lines(3, start=1)", "duplicate_argument"),
        ("remove_lines(3, foo=5)", "unknown_argument"),  # a positional and an unrecognised keyword
        ("remove_lines(start=1, finish=3)", "unknown_argument"),
        ("remove_lines(Start=1, End=3)", "unknown_argument"),
        ("remove_lines(start=1)", "missing_argument"),
        ("remove_lines(start='1', end=3)", "wrong_type"),
        ("remove_lines(start=1, end=3, 4)", "syntax"),
        ('normalize(start="a", end="b")', "unknown_argument"),  # no aliases for normalize
        ('normalize(source="a", target="b")', "unknown_argument"),
    ],
)
def test_ambiguous_or_unknown_argument_names_stay_errors(program, kind):
    parsed = parse_program(program, "chunk")
    assert parsed.calls == [] and [e.kind for e in parsed.errors] == [kind]
    assert parsed.warnings == []


def test_renamed_argument_is_applied_and_reported_by_the_executor():
    r = execute_chunk_program(DOC, "remove_lines(start=0, end=1)")
    assert r.text.split("\n") == LINES[2:] and r.errors == []
    assert [w.kind for w in r.warnings] == ["renamed_argument"] * 2
    assert all(w.window == 0 for w in r.warnings)
