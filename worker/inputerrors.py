"""Bad user input (CSV, template, phone numbers): one exception, one readable line.

Location convention, shared by every input module:

* ``row`` is the 1-based *data row* number: the header is row 0, the first record after it is
  row 1. A record whose quoted field spans several lines is still one row. Blank lines count as
  rows (so the number matches a spreadsheet's row number minus one) but yield no recipient.
* ``line`` is the 1-based *physical line* in the file where the problem is; it is added to the
  message only when it is known and differs from what ``row`` already tells the reader.
"""

from __future__ import annotations

from typing import Any

# Long reasons (a 1 MiB field quoted back, say) would drown the terminal; keep the line short.
_MAX_REASON_CHARS = 300


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) and cap the length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON_CHARS else flat[: _MAX_REASON_CHARS - 1] + "…"


def format_location(
    source: str | None,
    row: int | None = None,
    field: str | None = None,
    line: int | None = None,
) -> str:
    """The ``file: row N (line L): field 'x'`` prefix, without the parts that are unknown."""
    parts: list[str] = []
    if source:
        parts.append(_one_line(source))
    if row is not None:
        where = "header" if row == 0 else f"row {row}"
        # Line 1 is the header and line row+1 is row `row` when no record spans lines: say
        # nothing then, since the extra number would only be noise.
        if line is not None and line != row + 1:
            where += f" (line {line})"
        parts.append(where)
    elif line is not None:
        parts.append(f"line {line}")
    if field is not None:
        parts.append(f"field {_one_line(field)!r}")
    return ": ".join(parts)


class InputError(Exception):
    """Bad user input; ``str()`` is one line naming the file, row and field when known."""

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.reason = _one_line(reason)
        self.source = source
        self.row = row
        self.field = field
        self.line = line
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The full one-line message: location, then reason."""
        where = format_location(self.source, self.row, self.field, self.line)
        return f"{where}: {self.reason}" if where else self.reason

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments defeat Exception's default pickling (Celery may pickle errors).
        return (_rebuild, (type(self), self.reason, self.source, self.row, self.field, self.line))


def _rebuild(
    cls: type[InputError],
    reason: str,
    source: str | None,
    row: int | None,
    field: str | None,
    line: int | None,
) -> InputError:
    return cls(reason, source=source, row=row, field=field, line=line)
