"""Errors users see. Every message names the file, the field, the value and what was expected."""

from __future__ import annotations

from pathlib import Path


class FedEHRError(Exception):
    """Base class for errors fedehr reports to users (the CLI prints them without a traceback)."""


class InputError(FedEHRError, ValueError):
    """Bad user input: a malformed file, a missing column, an out-of-domain option."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        value: object = None,
        expected: str | None = None,
    ) -> None:
        self.file, self.line, self.field, self.value, self.expected = file, line, field, value, expected
        parts = []
        if file is not None:
            parts.append(f"{file}" + (f", line {line}" if line is not None else ""))
        if field is not None:
            parts.append(f"field {field!r}")
        if value is not None:
            parts.append(f"value {value!r}")
        where = ": ".join([", ".join(parts), message]) if parts else message
        if expected:
            where += f" (expected {expected})"
        super().__init__(where)


class NotImplementedYetError(FedEHRError, NotImplementedError):
    """A documented feature that this version does not provide; the message says what to use instead."""
