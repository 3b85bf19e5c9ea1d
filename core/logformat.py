"""Log lines that text from elsewhere cannot steer: a formatter that runs
:func:`~peerstash.core.text.printable` over every message and traceback line.

A log line can carry a peer's instance id, a repository's error, an operation id a peer chose;
written verbatim, a newline in it forges a second log line and an escape sequence rewrites the
terminal of whoever tails the log. The node and the tray install this formatter at start
(:func:`use_printable_log_lines`).
"""

from __future__ import annotations

import logging

from peerstash.core.text import printable, printable_lines

__all__ = ["PrintableFormatter", "use_printable_log_lines"]


class PrintableFormatter(logging.Formatter):
    """A log formatter whose message part cannot carry control characters.

    The message (with its arguments, which is where peer text arrives) is neutralised
    entirely, newlines included, so one log record is one line and cannot forge another;
    tracebacks keep their lines, but each line is neutralised too: the exception's own message
    can quote what a peer sent (``ValueError(f"bad id {peer_id}")``).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return printable_lines(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable_lines(super().formatStack(stack_info))


def use_printable_log_lines() -> None:
    """Give every handler of the root logger a :class:`PrintableFormatter` (same layout), so
    peer text in a log message (an instance id, an error a peer sent) stays one visible line."""
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        handler.setFormatter(
            PrintableFormatter(fmt._fmt if fmt else None, fmt.datefmt if fmt else None)
        )
