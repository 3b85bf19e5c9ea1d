"""Showing text that came from somewhere else (a peer, a repository) without letting it steer
the screen.

A peer chooses its instance id, its plan and repository names, its error messages. Printed
verbatim, such text can carry terminal escapes (``ESC [ 2 J`` clears the screen, ``ESC ] 52``
writes the clipboard in some terminals), a carriage return that overwrites the start of the
line with something harmless-looking, a newline that forges a log line, or a right-to-left
override that makes ``evil.exe`` read as ``exe.live``. :func:`printable` turns every such
character into a visible ``\\uXXXX`` so that what a person sees is what was sent. It is applied
where text is *shown* (the CLI's human output, log lines, the desktop), never to stored data or
to ``--json`` output, which JSON escaping already keeps intact and valid. The log's side of it
is :mod:`peerstash.core.logformat` (kept apart so that a quick CLI command that prints peer text
does not import :mod:`logging`).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["is_unsafe_char", "printable", "printable_lines"]

#: Bidirectional embeddings, overrides and isolates; format characters (Cf) anyway, listed
#: here so the rule is explicit where a reader looks for it.
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F))


@lru_cache(maxsize=4096)
def is_unsafe_char(ch: str) -> bool:
    """True for characters that change how text around them is shown rather than showing
    themselves: C0 and C1 controls, DEL, bidi controls, and every other format (Cf),
    line/paragraph separator (Zl, Zp), surrogate (Cs) or unassigned (Cn) character."""
    if ch in _BIDI:
        return True
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return True
    return unicodedata.category(ch) in ("Cf", "Cs", "Cn", "Zl", "Zp")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with every unsafe character written as ``\\uXXXX``.

    Ordinary text, including accented letters and other scripts, is returned unchanged (and
    fast: the common case is one scan with no copy). A backslash stays a backslash, so the
    result is for people, not a reversible encoding.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and s.isascii():
        return s
    if not any(is_unsafe_char(c) for c in s):
        return s
    return "".join(_escape(c) if is_unsafe_char(c) else c for c in s)


def printable_lines(text: str) -> str:
    """:func:`printable` for text that is several lines on purpose: each line is neutralised,
    the line breaks between them are kept."""
    return "\n".join(printable(line) for line in text.split("\n"))
