"""Recipients, from a CSV file or a Python iterable, streamed one row at a time.

Row numbers follow ``worker.inputerrors``: the header is row 0, the first record after it is
row 1, a record with quoted line breaks is one row, and blank rows are counted but not yielded.
Error messages add the physical line when it differs from ``row + 1``.
"""

from __future__ import annotations

import csv
import io
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, NamedTuple

from worker.inputerrors import InputError

# Bytes one physical line may take (checked per 64 KiB read, so a little more gets through).
# Far above any real recipient row (a message is at most 4096 characters); it bounds memory when
# a file has no line breaks at all. A value is bounded by csv.field_size_limit() (128 Ki chars
# unless the process changed it: we leave that global setting alone).
MAX_LINE_BYTES = 1024 * 1024

_CHUNK_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
# \r\n before \r: alternation order makes a Windows line end one line end, not two.
_EOL = re.compile(rb"\r\n|\r|\n")


class Recipient(NamedTuple):
    """One recipient: its row number, its phone as written, and its template variables."""

    row: int
    phone: str
    variables: dict[str, str]


def read_recipients(path: str | os.PathLike[str]) -> Iterator[Recipient]:
    """Stream the recipients of a CSV file; InputError (file, row, field) on bad input.

    The header must have a ``phone`` column (any case); the other named columns are template
    variables, values stripped of surrounding spaces; missing trailing values are "". A file
    with a header and no rows yields nothing: whether zero recipients is an error is the
    caller's decision. Errors are raised while iterating, at the row they concern.
    """
    source = os.fsdecode(path)
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below, inside the generator
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror or exc}", source=source) from exc
    with file:
        lines = _LineReader(file, source)
        # strict: an unclosed quote must be an error, not a field that swallows the next rows.
        yield from _records(csv.reader(lines, strict=True), lines, source)


def iter_recipients(
    rows: Iterable[Mapping[str, Any]], source: str = "recipients"
) -> Iterator[Recipient]:
    """Recipients from mappings with a ``phone`` key (Python API); values become str, None "".

    Rows are numbered from 1 in iteration order. Values are kept as given (not stripped).
    """
    for row, item in enumerate(rows, start=1):
        if not isinstance(item, Mapping):
            reason = f"expected a mapping with a 'phone' key, got {type(item).__name__}"
            raise InputError(reason, source=source, row=row)
        if "phone" not in item:
            raise InputError("no 'phone' key", source=source, row=row, field="phone")
        variables = {str(key): _as_text(value) for key, value in item.items() if key != "phone"}
        phone = _as_text(item["phone"])
        for name, value in (("phone", phone), *variables.items()):
            # PostgreSQL text cannot hold NUL; refuse here rather than fail half-way into a batch.
            if "\x00" in value:
                raise InputError("contains a NUL character", source=source, row=row, field=name)
        yield Recipient(row, phone, variables)


def _as_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


class _LineReader:
    """Physical lines of a binary file, decoded as UTF-8, for ``csv.reader``.

    Clean 64 KiB blocks are decoded and split in C. A block holding a NUL or an invalid byte is
    redone line by line, so the error names the right line and row; a TextIOWrapper would fail
    while decoding ahead, rows before the culprit.
    """

    def __init__(self, file: IO[bytes], source: str) -> None:
        self._file = file
        self._source = source
        self.line = 0  # physical lines in the blocks handed out so far
        self.row = 0  # row being read: 0 for the header, then 1, 2, ... (set by the caller)

    def error(self, reason: str, line: int, field: str | None = None) -> InputError:
        """An InputError at the row being read."""
        return InputError(reason, source=self._source, row=self.row, field=field, line=line)

    def __iter__(self) -> Iterator[str]:
        read = self._file.read
        tail = read(_CHUNK_BYTES)
        if tail.startswith(_BOM):
            tail = tail[len(_BOM) :]
        while True:
            chunk = read(_CHUNK_BYTES)
            buf = tail + chunk
            if not chunk:
                if buf:
                    yield from self._block(buf)
                return
            # Cut after the last complete line end. A final '\r' may be half of a '\r\n' whose
            # '\n' is in the next chunk: keep it for then. (A '\r' directly followed by '\n' is
            # never chosen: the '\n' after it is found further right.)
            end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            cut = max(buf.rfind(b"\n", 0, end), buf.rfind(b"\r", 0, end)) + 1
            if cut == 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise self.error(_too_long(), self.line + 1)
                tail = buf
                continue
            tail = buf[cut:]
            yield from self._block(buf[:cut])

    def _block(self, block: bytes) -> Iterator[str]:
        first_line = self.line + 1
        self.line += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if b"\x00" not in block:
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                # newline="": split on \n, \r\n and \r alike and keep the ends, as csv needs.
                yield from io.StringIO(text, newline="")
                return
        for number, raw in enumerate(_split_lines(block), start=first_line):
            yield self._decode(raw, number)

    def _decode(self, raw: bytes, line: int) -> str:
        if b"\x00" in raw:
            raise self.error("contains a NUL byte (is this really a CSV text file?)", line)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = (
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                "save the file as CSV UTF-8"
            )
            raise self.error(reason, line) from None


def _split_lines(block: bytes) -> Iterator[bytes]:
    """The lines of ``block``, each with its line end."""
    pos = 0
    for match in _EOL.finditer(block):
        yield block[pos : match.end()]
        pos = match.end()
    if pos < len(block):
        yield block[pos:]


def _too_long() -> str:
    return f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB"


def _records(reader: Any, lines: _LineReader, source: str) -> Iterator[Recipient]:
    """Check the header, then turn each CSV record into a Recipient."""
    start_line = 1  # physical line the record being read starts on
    try:
        phone_index, columns, width = _read_header(reader, lines, source)
        names = [name for _, name in columns]
        indexes = [index for index, _ in columns]
        pick = _picker(indexes)
        start_line = reader.line_num + 1
        lines.row = 1
        for fields in reader:
            count = len(fields)
            if count > width and any(value.strip() for value in fields[width:]):
                reason = f"{count} fields, but the header has {width}"
                raise lines.error(reason, start_line)
            # Blank lines and rows of empty cells are counted (spreadsheet numbering), not sent.
            if any(fields) and "".join(fields).strip():
                if count < width:
                    fields += [""] * (width - count)  # missing trailing values are empty
                variables = dict(zip(names, map(str.strip, pick(fields)), strict=True))
                yield Recipient(lines.row, fields[phone_index], variables)
            lines.row += 1
            start_line = reader.line_num + 1
    except csv.Error as exc:
        message = str(exc)
        if "field limit" in message:
            message = f"a value longer than {csv.field_size_limit()} characters (unclosed quote?)"
        raise lines.error(f"malformed CSV: {message}", start_line) from None


def _picker(indexes: list[int]) -> Callable[[list[str]], Iterable[str]]:
    """A fast ``lambda fields: [fields[i] for i in indexes]`` (runs once per row)."""
    if len(indexes) >= 2:
        return operator.itemgetter(*indexes)
    if indexes:
        index = indexes[0]
        return lambda fields: (fields[index],)
    return lambda fields: ()


def _read_header(
    reader: Any, lines: _LineReader, source: str
) -> tuple[int, list[tuple[int, str]], int]:
    """(phone column index, [(index, variable name)], header width) from the first record."""
    for fields in reader:
        if "".join(fields).strip():
            break  # blank lines before the header are tolerated
    else:
        raise InputError(
            "empty file (a header row with a 'phone' column is required)", source=source
        )
    line = reader.line_num - (sum(f.count("\n") for f in fields))
    phone_index: int | None = None
    columns: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, raw_name in enumerate(fields):
        name = raw_name.strip()
        if not name:
            continue  # spreadsheets export trailing empty columns; nothing can refer to them
        key = "phone" if name.lower() == "phone" else name
        if key in seen:
            raise lines.error(f"duplicate column name {name!r}", line, field=name)
        seen.add(key)
        if key == "phone":
            phone_index = index
        else:
            columns.append((index, name))
    if phone_index is None:
        raise lines.error("no 'phone' column in the header", line, field="phone")
    return phone_index, columns, len(fields)
