"""Crawler-like plain text of an HTML page, with a time budget per page.

Parsing is not linear on hostile markup: a 2 MB page of nested ``div``s did not finish in 120 s,
868 KB of attributes took 61 s, and the parser (C++, resiliparse/lexbor) cannot be interrupted
from Python. So pages are converted in a worker process that is killed when a page overruns its
budget: the page is quarantined with the reason, the worker is started again for the next page,
and a crash of the parser costs its page only. One worker serves a whole process (it starts in
about a tenth of a second; a page then costs a round trip through a pipe).
"""

from __future__ import annotations

import atexit
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HTML_SECONDS = 10.0  # per page: ordinary pages take milliseconds

_HEADER = struct.Struct("<cQ")  # kind, payload length


def charset_of(content_type: str) -> str | None:
    """The charset a Content-Type declares (``text/html; charset=latin-1`` -> ``latin-1``)."""
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset" and value.strip(" \"'"):
            return value.strip(" \"'")
    return None


def decode_html(data: bytes, declared: str | None = None) -> tuple[str | None, str]:
    """The page as text, or (None, why): its declared charset when Python knows it, else UTF-8
    when the bytes are valid UTF-8, else the one detected from the bytes (meta tags, byte-order
    marks, statistics). Valid UTF-8 first because resiliparse's detector reads valid UTF-8 pages
    as cp1252, cp1250 or iso8859-7 (796 of 1,544 manual pages here), garbling their non-ASCII
    text; bytes in another encoding are almost never valid UTF-8."""
    from resiliparse.parse.encoding import detect_encoding

    encodings = [e for e in (declared, "utf-8", detect_encoding(data)) if e]
    why = ""
    for encoding in encodings:
        try:
            return data.decode(encoding), ""
        except (UnicodeDecodeError, LookupError) as exc:
            why = f"{encoding}: {exc}"
    return None, why


def extract_text(html, main_content: bool = False) -> str:
    """A page's text (``html``: a string or a parsed ``HTMLTree``) with the settings every page
    gets here (formatting and list bullets kept; no alt texts, link targets, form fields or
    noscript); with ``main_content``, what resiliparse's main-content heuristics leave of it."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(
        html,
        main_content=main_content,
        preserve_formatting=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
    )


def html_to_text(
    data: bytes, declared: str | None = None, main_content: bool = False
) -> tuple[str | None, str]:
    """Crawler-like text of a page (boilerplate kept; with ``main_content``, what main-content
    extraction leaves) or (None, why), in this process."""
    from resiliparse.parse.html import HTMLTree

    html, why = decode_html(data, declared)
    if html is None:
        return None, why
    return extract_text(HTMLTree.parse(html), main_content=main_content), ""


class PageTimeout(Exception):
    """A page took longer than its budget; its worker was stopped."""


class PageCrashed(Exception):
    """The parser's process died on a page; the next page gets a new one."""


class HtmlWorkerError(RuntimeError):
    """The worker process cannot start at all: the installation's fault, not a page's."""


_START_SECONDS = 120.0  # an import on a loaded machine; a worker that cannot start says so


class _Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # the process that started it: a forked child starts its own
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        # -I: neither the working directory nor PYTHONPATH can put other code first; the worker
        # imports prox_assets from where this process did
        root = str(Path(__file__).resolve().parents[2])
        code = "import sys; sys.path.insert(0, sys.argv[1]); import prox_assets.core.html_text as h; h._serve()"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            kind, _ = _read_frame(proc.stdout.fileno(), time.monotonic() + _START_SECONDS)
            why = f"its first answer was {kind!r}"
        except (PageTimeout, EOFError, OSError) as exc:
            kind, why = b"", f"{type(exc).__name__} {exc}"
        if kind != b"r":
            proc.kill()
            proc.wait()
            raise HtmlWorkerError(
                f"the HTML worker did not start (exit code {proc.returncode}: {why}); "
                "its error is on stderr"
            )
        return proc

    def stop(self) -> None:
        if self.proc is not None and self.pid == os.getpid():
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def convert(
        self, data: bytes, declared: str | None, seconds: float, main_content: bool = False
    ) -> tuple[str | None, str]:
        with self.lock:
            if self.pid != os.getpid():
                self.proc = None  # the parent's worker and pipes are the parent's
            if self.proc is None or self.proc.poll() is not None:
                self.proc, self.pid = self._start(), os.getpid()
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            charset = (declared or "").encode("utf-8", "replace")
            try:
                proc.stdin.write(_HEADER.pack(b"c", len(charset)) + charset)
                proc.stdin.write(_HEADER.pack(b"m", 1) + (b"1" if main_content else b"0"))
                proc.stdin.write(_HEADER.pack(b"d", len(data)))
                proc.stdin.write(data)
                proc.stdin.flush()
                kind, payload = _read_frame(proc.stdout.fileno(), time.monotonic() + seconds)
            except PageTimeout:
                self.stop()
                raise PageTimeout(f"no text after {seconds:g} s") from None
            except (OSError, EOFError) as exc:  # the parser died on this page
                code = proc.poll()
                self.stop()
                raise PageCrashed(
                    f"the HTML parser's process died ({exc}; exit code {code})"
                ) from None
            text = payload.decode("utf-8", "surrogatepass")
            return (text, "") if kind == b"t" else (None, text)


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise PageTimeout
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("worker exited")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float) -> tuple[bytes, bytes]:
    kind, n = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return kind, _read_exact(fd, n, deadline)


_WORKER = _Worker()
atexit.register(_WORKER.stop)


def html_to_text_bounded(
    data: bytes,
    declared: str | None = None,
    seconds: float = HTML_SECONDS,
    main_content: bool = False,
) -> tuple[str | None, str]:
    """``html_to_text`` in the worker process. Raises ``PageTimeout`` past ``seconds`` and
    ``PageCrashed`` if the parser dies (the page's fault), ``HtmlWorkerError`` if no worker can
    start (not a page's)."""
    return _WORKER.convert(data, declared, seconds, main_content)


def _serve() -> None:
    """The worker: frames in on stdin (a charset, the extraction, then a page), one frame out per
    page."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    declared: str | None = None
    main_content = False
    html_to_text(b"<p>ready</p>")  # the imports, before the parent starts counting a page's time
    stdout.write(_HEADER.pack(b"r", 0))
    stdout.flush()
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the parent is gone
        kind, n = _HEADER.unpack(header)
        payload = stdin.read(n)
        if kind == b"c":
            declared = payload.decode("utf-8") or None
            continue
        if kind == b"m":
            main_content = payload == b"1"
            continue
        try:
            text, why = html_to_text(payload, declared, main_content)
        except Exception as exc:  # noqa: BLE001  reported as the page's reason
            text, why = None, f"{type(exc).__name__}: {str(exc)[:500]}"
        out = (text if text is not None else why).encode("utf-8", "surrogatepass")
        stdout.write(_HEADER.pack(b"t" if text is not None else b"e", len(out)) + out)
        stdout.flush()
