"""The ProX program language: a parser for the tiny programs a refiner model writes
(docs/methods.md#program-language).

A program is a sequence of calls, one statement per line (or separated by ``;``)::

    remove_lines(line_start=0, line_end=3)
    normalize(source_str="Click here to subscribe", target_str="")
    keep_chunk()

The model's output is untrusted input. This module never evaluates it: a hand-written grammar
accepts only whitelisted call names with literal integer or string arguments, and everything is
bounded (program length, number of calls, string length, digits). Each regex below is linear on
its input (alternatives start with distinct characters, so there is no catastrophic
backtracking); one bad statement costs one error and parsing resumes on the next line.

Compared with the reference splitter, this grammar handles ``=``, ``)``, ``,`` and quotes inside
strings, both quote styles, escapes, positional arguments, leading zeros (``001``, which the model
copies from the ``[001]`` line prefixes and which Python's own parser rejects), comments and code
fences.

Two leniencies, each recorded as a warning in ``ParsedProgram.warnings`` (never counted as an
error, never silent):

- ``truncated_call``: model output is cut at ``max_new_tokens``, so the final statement is often
  incomplete (``remove_lines(line_start=40, line_e`` or ``normalize(source_str="abc``). When the
  text ends inside a call of a name permitted at the stage (an unclosed parenthesis or an
  unterminated string with everything before the cut well-formed, or the text ends inside the
  call's name), that call is the end of the program, not an error. An incomplete statement
  followed by more text, or a final statement that is complete but malformed, stays an error.
- ``renamed_argument``: the reference executor ignores the keyword names of ``remove_lines``, and
  a small model sometimes writes others (``start=``, ``end_line=``, ...). Names that clearly mean
  the start or the end are mapped when the call then has exactly one of each; anything ambiguous
  stays an error. ``normalize`` has no aliases.

Statements in the canonical spelling the refiner is trained on (``_CANONICAL``) bind without the
general grammar, a whole program of them in one pass; the result is the same, limits included
(tests/core/test_program_properties.py compares the two on generated programs).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["doc", "chunk"]
Value = int | str

# name -> ((parameter, type), ...). Aliases map to a canonical name per stage.
_SIGNATURES: dict[str, tuple[tuple[str, type], ...]] = {
    "keep_doc": (),
    "drop_doc": (),
    "keep_chunk": (),
    "remove_lines": (("line_start", int), ("line_end", int)),
    "normalize": (("source_str", str), ("target_str", str)),
}
_STAGE_NAMES: dict[Stage, dict[str, str]] = {
    "doc": {"keep_doc": "keep_doc", "drop_doc": "drop_doc", "untouch_doc": "keep_doc"},
    "chunk": {
        "remove_lines": "remove_lines",
        "normalize": "normalize",
        "keep_chunk": "keep_chunk",
        "skip_chunk": "keep_chunk",
        "untouch_doc": "keep_chunk",
    },
}
_ALL_NAMES = {name for names in _STAGE_NAMES.values() for name in names}
_PARAM_NAMES = {name: frozenset(p for p, _ in params) for name, params in _SIGNATURES.items()}
# Keyword names a model writes for remove_lines that clearly mean one parameter (exact spelling).
_KEYWORD_ALIASES: dict[str, dict[str, str]] = {
    "remove_lines": {
        **dict.fromkeys(
            (
                "start",
                "start_line",
                "line_begin",
                "begin",
                "first",
                "first_line",
                "from_line",
                "line_from",
            ),
            "line_start",
        ),
        **dict.fromkeys(
            ("end", "end_line", "stop", "last", "last_line", "to_line", "line_to", "line_stop"),
            "line_end",
        ),
    },
}


@dataclass(frozen=True)
class Limits:
    """Bounds on what the parser accepts; anything beyond is an error, never work."""

    max_program_chars: int = 65_536
    max_calls: int = 512
    max_string_chars: int = 16_384
    max_int_digits: int = 9


@dataclass(frozen=True)
class Call:
    """One parsed, type-checked call with its canonical name and bound arguments."""

    name: str
    args: tuple[tuple[str, Value], ...] = ()
    line: int = 0  # 0-based line of the program where the call starts

    def arg(self, name: str) -> Value:
        return dict(self.args)[name]

    def int_arg(self, name: str) -> int:
        value = self.arg(name)
        if not isinstance(value, int):
            raise TypeError(f"{self.name}({name}=…) is not an int")
        return value

    def str_arg(self, name: str) -> str:
        value = self.arg(name)
        if not isinstance(value, str):
            raise TypeError(f"{self.name}({name}=…) is not a str")
        return value

    def render(self) -> str:
        """Canonical text: keyword arguments, double-quoted strings with JSON escapes."""
        inner = ", ".join(
            f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, str) else v}"
            for k, v in self.args
        )
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class ProgramIssue:
    """Something wrong with a program: what kind, a human message, and where."""

    kind: str
    message: str
    line: int = -1
    window: int = -1  # index of the window whose program it came from (set by the executor)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "line": self.line,
            "window": self.window,
        }


@dataclass
class ParsedProgram:
    calls: list[Call] = field(default_factory=list)
    errors: list[ProgramIssue] = field(default_factory=list)
    # Accepted leniencies (truncated_call, renamed_argument); never counted as errors.
    warnings: list[ProgramIssue] = field(default_factory=list)
    # A fatal error means the whole program is unusable (too long, too many calls).
    fatal: bool = False


# --- lexical grammar -----------------------------------------------------------------------
_STR = (
    r"(?:[rRuU]?(?:'''(?:[^'\\]|\\.|'(?!''))*'''"
    r'|"""(?:[^"\\]|\\.|"(?!""))*"""'
    r"|'(?:[^'\\\n]|\\.)*'"
    r'|"(?:[^"\\\n]|\\.)*"))'
)
_INT = r"[+-]?[0-9]+"
_ARG = rf"(?:[A-Za-z_]\w*\s*=\s*)?(?:{_STR}|{_INT})"
# A call, then (looking ahead) optional spaces, an optional comment, and the end of the statement.
_CALL_RE = re.compile(
    rf"([A-Za-z_][\w.]*)[ \t]*\(\s*((?:{_ARG}\s*,\s*)*(?:{_ARG}\s*)?)\)"
    r"(?=[ \t]*(?:#[^\n]*)?(?:\n|;|$))",
    re.DOTALL,
)
# A call cut off by the end of the text: a name, then either the end (cut inside the name) or
# "(", well-formed arguments each followed by a comma, a prefix of one more argument (a keyword
# being written, ``key=``, digits, a complete argument with no comma yet, or an unterminated
# string, possibly ending in a lone backslash), and the end of the text. Linear like the rest.
_PARTIAL_STR = (
    r"(?:[rRuU]?(?:'''(?:[^'\\]|\\.|'(?!''))*'{0,2}"
    r'|"""(?:[^"\\]|\\.|"(?!""))*"{0,2}'
    r"|'(?:[^'\\\n]|\\.)*"
    r'|"(?:[^"\\\n]|\\.)*)\\?)'
)
_PARTIAL_ARG = (
    rf"(?:{_ARG}\s*"
    rf"|[A-Za-z_]\w*\s*(?:=\s*(?:{_PARTIAL_STR}|[+-]?[0-9]*))?"
    rf"|{_PARTIAL_STR}|[+-])"
)
_TRUNCATED_RE = re.compile(
    rf"([A-Za-z_]\w*)[ \t]*(?:(\()\s*(?:{_ARG}\s*,\s*)*(?:{_PARTIAL_ARG})?)?\Z", re.DOTALL
)
# The canonical spelling of each call, the one the refiner is trained to write: keyword arguments,
# unsigned integers, double-quoted strings without escapes. A statement spelled exactly so binds
# to the call _CALL_RE and _bind would build, so the parser takes it without the general
# machinery (its limits still checked); anything else, or a limit exceeded, goes the general way.
# Matched anchored, without nested repetition, strings excluding their quote: linear.
_CANONICAL = (
    r"(?:remove_lines\(line_start=([0-9]+), line_end=([0-9]+)\)"
    r'|normalize\(source_str="([^"\\\n]*)", target_str="([^"\\\n]*)"\)'
    r"|([a-z_]+)\(\))"
)
_CANONICAL_RE = re.compile(_CANONICAL + r"(?=[ \t]*(?:\n|;|$))")
# One canonical statement that ends its line: a program of these (the usual model output) has
# statement i on program line i.
_CANONICAL_LINE_RE = re.compile(_CANONICAL + r"(?:\n|\Z)")
_NAME_RE = re.compile(r"[A-Za-z_]\w*")
_ARG_RE = re.compile(rf"\s*(?:([A-Za-z_]\w*)\s*=\s*)?({_STR}|{_INT})\s*,?", re.DOTALL)
_SKIP_RE = re.compile(r"(?:[ \t\r\n;]+|#[^\n]*)+")
_FENCE_RE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_ESCAPE_RE = re.compile(
    r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}\n]{1,100}\}|[0-7]{1,3}|\n|.)",
    re.DOTALL,
)
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\n": "",
}


def _unescape_one(m: re.Match) -> str:
    body = m.group(1)
    if body in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[body]
    head = body[0]
    if head in "xuU":
        code = int(body[1:], 16)
        return chr(code) if code <= 0x10FFFF else m.group(0)
    if head == "N":
        try:
            return unicodedata.lookup(body[2:-1])
        except KeyError:
            return m.group(0)
    if head in "01234567":
        return chr(int(body, 8))
    return m.group(0)  # unknown escapes stay literal, as in Python


def _decode_string(token: str) -> str:
    raw = token[0] in "rR"
    if token[0] in "rRuU":
        token = token[1:]
    quote = 3 if token[:3] in ("'''", '"""') else 1
    body = token[quote:-quote]
    if raw or "\\" not in body:
        return body
    return _ESCAPE_RE.sub(_unescape_one, body)


def strip_fences(program: str) -> str:
    """Blank out Markdown code-fence lines, keeping line numbers stable."""
    return _FENCE_RE.sub("", program)


def parse_program(program: str, stage: Stage, limits: Limits = Limits()) -> ParsedProgram:
    """Parse ``program`` for ``stage``. Never raises on any string; never runs any code."""
    out = ParsedProgram()
    if not isinstance(program, str):
        out.errors.append(ProgramIssue("not_text", f"program is {type(program).__name__}"))
        out.fatal = True
        return out
    if len(program) > limits.max_program_chars:
        out.errors.append(
            ProgramIssue(
                "program_too_long", f"{len(program)} chars > limit {limits.max_program_chars}"
            )
        )
        out.fatal = True
        return out
    names = _STAGE_NAMES[stage]
    fenced = "```" in program  # a program without a fence needs no blanking (most do not)
    if not fenced and (calls := _canonical_program(program, names, limits)) is not None:
        out.calls = calls
        return out
    text = strip_fences(program) if fenced else program
    # Output that ends with a closing code fence was not cut off: nothing in it is truncated.
    may_be_truncated = True
    if fenced:
        stripped = program.rstrip()
        may_be_truncated = _FENCE_RE.fullmatch(stripped[stripped.rfind("\n") + 1 :]) is None
    pos, n = 0, len(text)
    line, counted_to = 0, 0  # program line of `pos`, counted incrementally (linear overall)
    while pos < n:
        skip = _SKIP_RE.match(text, pos)
        if skip:
            pos = skip.end()
            if pos >= n:
                break
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        # A canonical statement binds without _bind; any other goes through the general grammar.
        fast = _CANONICAL_RE.match(text, pos)
        call = _canonical_call(fast, names, limits, line) if fast else None
        m = _CALL_RE.match(text, pos) if call is None else None
        if call is None and m is None:
            if may_be_truncated and _is_truncated_call(text, pos, names):
                stmt = text[pos:]
                out.warnings.append(
                    ProgramIssue(
                        "truncated_call",
                        f"incomplete final call, end of program: {stmt[:80]!r}",
                        line,
                    )
                )
                break
            eol = text.find("\n", pos)
            stmt = text[pos : n if eol < 0 else eol]
            out.errors.append(ProgramIssue("syntax", f"not a call: {stmt[:80]!r}", line))
            pos = n if eol < 0 else eol + 1
            continue
        matched = m or fast
        assert matched is not None  # the no-match case continued above
        pos = matched.end()
        if len(out.calls) + len(out.errors) >= limits.max_calls:
            out.errors.append(ProgramIssue("too_many_calls", f"> {limits.max_calls} statements"))
            out.fatal = True
            return out
        if call is None:
            assert m is not None
            call, issue, warnings = _bind(m.group(1), m.group(2), names, stage, limits, line)
            if issue is not None:
                out.errors.append(issue)
                continue
            assert call is not None  # _bind gives a call or an issue
            out.warnings.extend(warnings)
        out.calls.append(call)
    return out


def _canonical_program(text: str, names: dict[str, str], limits: Limits) -> list[Call] | None:
    """The calls of a program written wholly in canonical statements, one per line, when all are
    permitted and within the limits: what the general loop would return, without its work.
    None otherwise, and the general loop parses the program (and reports what is wrong)."""
    calls: list[Call] = []
    pos, n = 0, len(text)
    while pos < n:  # anchored matches, one per line: linear, and the first misfit ends it
        m = _CANONICAL_LINE_RE.match(text, pos)
        if m is None or len(calls) >= limits.max_calls:
            return None
        call = _canonical_call(m, names, limits, len(calls))
        if call is None:
            return None
        calls.append(call)
        pos = m.end()
    return calls


def _canonical_call(m: re.Match, names: dict[str, str], limits: Limits, line: int) -> Call | None:
    """The call a _CANONICAL_RE match spells, when it is permitted at the stage and within the
    limits; None sends the statement the general way (which reports what is wrong)."""
    start, end, source, target, bare = m.groups()
    if start is not None:
        digits = limits.max_int_digits
        if len(start) > digits or len(end) > digits or "remove_lines" not in names:
            return None
        return Call("remove_lines", (("line_start", int(start)), ("line_end", int(end))), line)
    if source is not None:
        chars = limits.max_string_chars
        if len(source) > chars or len(target) > chars or "normalize" not in names:
            return None
        return Call("normalize", (("source_str", source), ("target_str", target)), line)
    name = names.get(bare)
    if name is None or _SIGNATURES[name]:  # unknown here, or a call that needs arguments
        return None
    return Call(name, (), line)


def _is_truncated_call(text: str, pos: int, names: dict[str, str]) -> bool:
    """Whether ``text[pos:]`` is a call of a stage name cut off by the end of the text."""
    head = _NAME_RE.match(text, pos)
    if head is None or not any(n.startswith(head.group(0)) for n in names):
        return False  # cheap rejection before the anchored match below
    m = _TRUNCATED_RE.match(text, pos)
    if m is None:
        return False
    name = m.group(1)
    if m.group(2) or m.end(1) < len(
        text
    ):  # "(" or spaces after the name: the whole name was written
        return name in names
    return any(n.startswith(name) for n in names)  # cut inside the name


def _bind(
    raw_name: str, raw_args: str, names: dict[str, str], stage: Stage, limits: Limits, line: int
) -> tuple[Call | None, ProgramIssue | None, list[ProgramIssue]]:
    """The bound call and its warnings, or None and the first error."""

    def fail(kind: str, message: str) -> tuple[None, ProgramIssue, list[ProgramIssue]]:
        return None, ProgramIssue(kind, message, line), []

    if raw_name not in _ALL_NAMES:
        return fail("unknown_call", f"{raw_name[:60]}() is not a permitted call")
    if raw_name not in names:
        return fail("wrong_stage", f"{raw_name}() is not a {stage}-stage call")
    name = names[raw_name]
    params = _SIGNATURES[name]
    aliases = _KEYWORD_ALIASES.get(name, {})
    positional: list[Value] = []
    keyword: dict[str, Value] = {}
    renamed: list[ProgramIssue] = []
    for am in _ARG_RE.finditer(raw_args):
        key, token = am.group(1), am.group(2)
        value: Value
        if token[-1] in "'\"":
            value = string = _decode_string(token)
            if len(string) > limits.max_string_chars:
                return fail("string_too_long", f"{len(string)} chars > {limits.max_string_chars}")
        else:
            if len(token.lstrip("+-")) > limits.max_int_digits:
                return fail("int_too_large", f"{token[:20]}… has too many digits")
            value = int(token)
        if key is None:
            if keyword:
                return fail("syntax", "positional argument after keyword")
            positional.append(value)
            continue
        if key in aliases:  # two names for one parameter are caught below as a duplicate
            renamed.append(
                ProgramIssue("renamed_argument", f"{name}({key}=…) read as {aliases[key]}=…", line)
            )
            key = aliases[key]
        if key in keyword:
            return fail("duplicate_argument", f"{key} given twice")
        keyword[key] = value
    if len(positional) > len(params):
        return fail("too_many_arguments", f"{name}() takes {len(params)} arguments")
    bound: dict[str, Value] = {}
    for (pname, _), value in zip(params, positional):
        bound[pname] = value
    for key, value in keyword.items():
        if key not in _PARAM_NAMES[name]:
            return fail("unknown_argument", f"{name}() has no argument {key!r}")
        if key in bound:
            return fail("duplicate_argument", f"{key} given twice")
        bound[key] = value
    for pname, ptype in params:
        if pname not in bound:
            return fail("missing_argument", f"{name}() needs {pname}")
        if type(bound[pname]) is not ptype:
            return fail("wrong_type", f"{name}({pname}=…) must be {ptype.__name__}")
    return Call(name, tuple((p, bound[p]) for p, _ in params), line), None, renamed
