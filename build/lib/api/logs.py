"""Log lines that a client cannot forge: control characters in logged values are escaped.

A path like ``/x%0a2026-11-30 22:00:00,000 INFO api: job FORGED`` reaches the service decoded, with a
real newline; logged as is it would start a second, forged line (and ``%00`` would write NUL bytes,
``%1b`` terminal escapes). `install()` puts one log record factory in front of every logger (ours,
uvicorn's access and error logs, RQ's): each string argument, and a message with no arguments, has
its control characters (C0, DEL, C1, U+2028/2029) written as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``.
Tracebacks are formatted later and stay multi-line.
"""

import logging

CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in CONTROL} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def escape(text: str) -> str:
    """`text` with its control characters as visible escapes; the same object when it has none."""
    escaped = text.translate(ESCAPES)
    return text if escaped == text else escaped


def _escape_arg(value):
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, (int, float, type(None))):  # numbers keep their type for %d and %f
        return value
    if isinstance(value, (bytes, bytearray)):  # %s shows b'...', already escaped
        return value
    text = str(value)
    escaped = escape(text)
    return value if escaped is text else escaped


def escape_record(record: logging.LogRecord) -> logging.LogRecord:
    if record.args:
        if isinstance(record.args, dict):
            record.args = {key: _escape_arg(value) for key, value in record.args.items()}
        else:
            record.args = tuple(_escape_arg(value) for value in record.args)
    elif isinstance(record.msg, str):
        record.msg = escape(record.msg)
    return record


def install() -> None:
    """Escapes every record created from now on, whoever logs it (idempotent)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "escapes_control_characters", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        return escape_record(make(*args, **kwargs))

    factory.escapes_control_characters = True
    logging.setLogRecordFactory(factory)
