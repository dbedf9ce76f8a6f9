"""Properties of the parser and executor over arbitrary text and programs (hypothesis)."""

import json
import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prox_assets.core.chunking import chunk_document, whitespace_token_counter
from prox_assets.core.executor import (
    ExecutorConfig,
    execute_chunk_program,
    execute_chunk_programs,
    execute_doc_program,
)
from prox_assets.core.programs import parse_program

NAMES = [
    "remove_lines",
    "normalize",
    "keep_chunk",
    "skip_chunk",
    "keep_doc",
    "drop_doc",
    "untouch_doc",
    "__import__",
    "os.system",
    "eval",
]
lines_st = st.lists(
    st.text(alphabet=string.printable.replace("\n", "") + "éü€—", max_size=40),
    min_size=1,
    max_size=30,
)
texts = st.one_of(st.text(max_size=400), lines_st.map("\n".join))


@st.composite
def programs(draw):
    """Program-like strings: real calls with good and bad arguments, mixed with junk."""
    stmts = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(NAMES))
        args = draw(
            st.lists(
                st.one_of(
                    st.integers(-5, 60).map(str),
                    st.text(max_size=12).map(repr),
                    st.text(alphabet="()=,'\"\\#;\n x", max_size=6),
                ),
                max_size=3,
            )
        )
        kw = draw(st.booleans())
        keys = (
            ["line_start", "line_end"] if name == "remove_lines" else ["source_str", "target_str"]
        )
        rendered = [f"{keys[i]}={a}" if kw and i < 2 else a for i, a in enumerate(args)]
        stmts.append(f"{name}({', '.join(rendered)})")
    if draw(st.booleans()):
        stmts.insert(draw(st.integers(0, len(stmts))), draw(st.text(max_size=30)))
    sep = draw(st.sampled_from(["\n", "; ", "\n\n# c\n"]))
    fence = draw(st.booleans())
    body = sep.join(stmts)
    return f"```python\n{body}\n```" if fence else body


FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(texts, st.one_of(programs(), st.text(max_size=200)))
def test_executor_never_raises(text, program):
    for stage_result in (execute_doc_program(text, program), execute_chunk_program(text, program)):
        assert isinstance(stage_result.text, str)
    parse_program(program, "chunk")
    parse_program(program, "doc")


@FAST
@given(texts, programs())
def test_surviving_lines_are_a_subsequence_without_normalize(text, program):
    program = "\n".join(ln for ln in program.split("\n") if "normalize" not in ln)
    r = execute_chunk_program(text, program, ExecutorConfig(min_words_kept=0, min_word_fraction=0))
    if any(c.name == "normalize" for c in parse_program(program, "chunk").calls):
        return  # a normalize hidden in a `;`-joined line
    original = text.split("\n")
    it = iter(original)
    assert all(line in it for line in r.text.split("\n")) or r.text == ""
    if r.ignored:
        assert r.text == text


@FAST
@given(texts, programs())
def test_changed_lines_are_named_by_a_normalize(text, program):
    r = execute_chunk_program(text, program, ExecutorConfig(min_words_kept=0, min_word_fraction=0))
    original = set(text.split("\n"))
    changed = [ln for ln in r.text.split("\n") if ln not in original]
    applied = [e for e in r.edits if e.kind == "normalize" and e.count > 0]
    if changed and r.text != "":
        assert applied, (changed, r.edits)
    if not applied and not r.ignored:  # without a normalize, the text is the surviving lines
        removed = {i for e in r.edits for i in range(e.line_start, e.line_end + 1)}
        kept = [ln for i, ln in enumerate(text.split("\n")) if i not in removed]
        assert r.text == "\n".join(kept)


@FAST
@given(texts, st.sampled_from(["keep_chunk()", "skip_chunk()", "untouch_doc()", "", "# nothing"]))
def test_keep_only_program_is_identity(text, program):
    r = execute_chunk_program(text, program)
    assert r.text == text and not r.dropped and r.edits == []


@FAST
@given(lines_st.map("\n".join), st.integers(16, 200))
def test_windows_cover_every_line_once_in_order(text, max_tokens):
    windows = chunk_document(text, whitespace_token_counter, max_tokens=max_tokens)
    n = len(text.split("\n"))
    covered = [i for w in windows for i in range(w.line_start, w.line_end + 1)]
    assert covered == list(range(n))
    for w in windows:
        assert w.n_tokens <= max_tokens or w.truncated_lines
        assert w.text.startswith("[doc]\n") and w.text.endswith("\n[/doc]")
    # executing keep programs over the windows is the identity
    r = execute_chunk_programs(text, [(w.line_start, w.line_end, "keep_chunk()") for w in windows])
    assert r.text == text


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_program_strings(program):
    """A fuzzing run over unstructured strings: parse and execute never raise."""
    execute_chunk_program("one two three\nfour five six\nseven", program)
    execute_doc_program("x", program)


@FAST
@given(
    st.text(alphabet=" \n\tab", max_size=300),
    st.text(alphabet=" \n\tab", max_size=300),
    st.integers(0, 12),
    st.floats(0, 0.5),
)
def test_drop_rule_equals_the_naive_word_count(original, refined, min_words, fraction):
    from prox_assets.core.executor import _drop_rule

    config = ExecutorConfig(min_words_kept=min_words, min_word_fraction=fraction)
    after, before = len(refined.split()), len(original.split())
    naive = after <= min_words or after <= fraction * before
    assert _drop_rule(original, refined, config)[0] == naive


@st.composite
def well_formed_programs(draw):
    """Programs of well-formed chunk calls in the spellings a model uses."""
    stmts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["remove", "remove_pos", "remove_alias", "normalize", "normalize_pos", "keep"]
            )
        )
        a, b = draw(st.integers(-3, 120)), draw(st.integers(-3, 120))
        s, t = draw(st.text(max_size=10)), draw(st.text(max_size=6))
        q = draw(st.sampled_from(['"', "'"]))
        quote = (lambda v: json.dumps(v, ensure_ascii=False)) if q == '"' else repr
        stmts.append(
            {
                "remove": f"remove_lines(line_start={a}, line_end={b})",
                "remove_pos": f"remove_lines({a}, {b})",
                "remove_alias": f"remove_lines(start={a}, end_line={b})",
                "normalize": f"normalize(source_str={quote(s)}, target_str={quote(t)})",
                "normalize_pos": f"normalize({quote(s)}, {quote(t)})",
                "keep": draw(st.sampled_from(["keep_chunk()", "skip_chunk()"])),
            }[kind]
        )
    return draw(st.sampled_from(["\n", "; ", "\n# note\n"])).join(stmts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(well_formed_programs())
def test_every_cut_of_a_well_formed_program_parses_without_errors(program):
    """max_new_tokens may cut model output anywhere: the part before the cut applies, the cut
    call is one truncated_call warning, and nothing is an error."""
    full = parse_program(program, "chunk")
    assert full.errors == [] and "truncated_call" not in [w.kind for w in full.warnings]
    for cut in range(len(program) + 1):
        parsed = parse_program(program[:cut], "chunk")
        assert parsed.errors == [], (program[:cut], parsed.errors)
        assert parsed.calls == full.calls[: len(parsed.calls)]
        assert [w.kind for w in parsed.warnings].count("truncated_call") <= 1


# --- the canonical fast path and the reference's algorithm ------------------------------------
@st.composite
def canonical_like_programs(draw):
    """Statements in (or a character away from) the canonical spelling the parser takes without
    its general grammar: limits, stage names, separators, comments, quotes and escapes vary."""
    stmts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["remove", "normalize", "bare", "other"]))
        if kind == "remove":
            a, b = (draw(st.sampled_from(["0", "000", "7", "39", "1234567890"])) for _ in range(2))
            stmts.append(f"remove_lines(line_start={a}, line_end={b})")
        elif kind == "normalize":
            source = draw(st.text(alphabet="ab ,=()'#;\t\r\\é\ud800", max_size=6))
            target = draw(st.text(alphabet="ab x", max_size=4))
            stmts.append(f'normalize(source_str="{source}", target_str="{target}")')
        elif kind == "bare":
            stmts.append(
                draw(
                    st.sampled_from(
                        [
                            "keep_chunk",
                            "skip_chunk",
                            "untouch_doc",
                            "keep_doc",
                            "drop_doc",
                            "remove_lines",
                            "normalize",
                            "eval",
                        ]
                    )
                )
                + "()"
            )
        else:
            stmts.append(
                draw(
                    st.sampled_from(
                        [
                            "",
                            " ",
                            "# c",
                            "keep_chunk() # c",
                            "keep_chunk();keep_chunk()",
                            "keep_chunk()keep_chunk()",
                            "```",
                            "remove_lines(0, 1",
                            'normalize(source_str="ab',
                        ]
                    )
                )
            )
    sep = draw(st.sampled_from(["\n", "\n", "; ", "\n\n", " \n"]))
    return sep.join(stmts) + draw(st.sampled_from(["", "\n", " ", "\n\n"]))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(canonical_like_programs(), programs(), well_formed_programs()),
    st.sampled_from(["chunk", "doc"]),
    st.booleans(),
)
def test_canonical_fast_path_parses_as_the_general_grammar(program, stage, small_limits):
    """With the canonical fast path switched off every statement goes through _CALL_RE and
    _bind: the result, calls, errors, warnings and line numbers, is the same."""
    from unittest import mock

    from prox_assets.core import programs as programs_module
    from prox_assets.core.programs import Limits

    limits = Limits(max_calls=3, max_string_chars=3, max_int_digits=2) if small_limits else Limits()
    fast = parse_program(program, stage, limits)
    with mock.patch.object(programs_module, "_canonical_call", lambda *a: None):
        general = parse_program(program, stage, limits)
    assert fast == general


@st.composite
def reference_readable_cases(draw):
    """A document of more than 10 words and a program the reference reads as the project does:
    in-range remove_lines, normalize strings without a character its splitting misreads (and not
    the single space it skips), no repeated normalize, keep_chunk()."""
    words = st.sampled_from(["ab", "ba", "a,b", "x=y", "(c)", '"q"', "é", "abab", "a.b", "b\\a"])
    lines = draw(st.lists(st.lists(words, max_size=8).map(" ".join), min_size=1, max_size=30))
    assume(sum(len(ln.split()) for ln in lines) > 10)
    n = len(lines)
    stmts, pairs = [], set()
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["remove", "normalize", "keep"]))
        if kind == "remove":
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, n - 1))
            stmts.append(f"remove_lines(line_start={a:0{draw(st.integers(1, 3))}d}, line_end={b})")
        elif kind == "normalize":
            pair = (
                draw(st.text(alphabet="abé. ", min_size=1, max_size=4).filter(lambda s: s != " ")),
                draw(st.text(alphabet="abx. ", max_size=3)),
            )
            if pair not in pairs:
                pairs.add(pair)
                stmts.append(f'normalize(source_str="{pair[0]}", target_str="{pair[1]}")')
        else:
            stmts.append("keep_chunk()")
    return "\n".join(lines), "\n".join(stmts)


@FAST
@given(reference_readable_cases())
def test_executor_output_equals_the_reference_on_programs_it_reads_alike(case):
    from prox_assets.benchmarks import project_output
    from prox_assets.reference_executor import execute_meta_operations

    text, program = case
    assert project_output(text, program) == execute_meta_operations(text, program)


def test_benchmark_workloads_give_the_reference_output(sample_files):
    """The documents and programs `prox bench executor` times: identical output on every one."""
    from prox_assets.benchmarks import (
        executor_against_reference,
        forty_line_documents,
        sample_texts,
    )

    texts = sample_texts(sample_files)
    for docs in (forty_line_documents(texts, 400), texts[::10]):
        report = executor_against_reference(docs, repeats=1)
        assert report["identical_outputs"] == f"{report['documents']}/{report['documents']}"
        assert report["documents"] >= 0.9 * len(docs)
