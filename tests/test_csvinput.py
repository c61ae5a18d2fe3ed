"""Recipients from CSV files and Python iterables: streaming, strict, precise errors."""

from __future__ import annotations

import inspect
import time
import tracemalloc
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import cast

import pytest

from worker.csvinput import MAX_LINE_BYTES, Recipient, iter_recipients, read_recipients
from worker.inputerrors import InputError


def write(tmp_path: Path, data: bytes | str, name: str = "recipients.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def read_all(path: Path) -> list[Recipient]:
    return list(read_recipients(path))


def error_of(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        read_all(path)
    assert "\n" not in str(info.value)
    return info.value


def test_basic_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,name,city\n0812-1,Budi,Bandung\n0812-2,Ani,Jakarta\n")
    assert read_all(path) == [
        Recipient(1, "0812-1", {"name": "Budi", "city": "Bandung"}),
        Recipient(2, "0812-2", {"name": "Ani", "city": "Jakarta"}),
    ]


def test_header_names_stripped_phone_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, " Name , PHONE \nBudi, 0812 \n")
    assert read_all(path) == [Recipient(1, " 0812 ", {"Name": "Budi"})]


def test_values_are_stripped_phone_kept_raw(tmp_path: Path) -> None:
    path = write(tmp_path, "phone, name\n 0812 ,  Budi  \n")
    assert read_all(path) == [Recipient(1, " 0812 ", {"name": "Budi"})]


def test_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfphone,name\r\n0812,Budi\r\n")
    assert read_all(path) == [Recipient(1, "0812", {"name": "Budi"})]


def test_empty_file(tmp_path: Path) -> None:
    assert "empty file" in str(error_of(write(tmp_path, "")))
    assert "empty file" in str(error_of(write(tmp_path, b"\xef\xbb\xbf")))
    assert "empty file" in str(error_of(write(tmp_path, "\n\n  \n")))


def test_header_only_yields_nothing(tmp_path: Path) -> None:
    assert read_all(write(tmp_path, "phone,name\n")) == []
    assert read_all(write(tmp_path, "phone,name")) == []


def test_missing_phone_column(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "telephone,name\n0812,Budi\n"))
    assert (error.row, error.field) == (0, "phone")
    assert str(error).endswith(
        "recipients.csv: header: field 'phone': no 'phone' column in the header"
    )


@pytest.mark.parametrize("header", ["phone,name,name", "phone,Phone", "phone, name ,name"])
def test_duplicate_header_names(tmp_path: Path, header: str) -> None:
    error = error_of(write(tmp_path, header + "\n0812,a,b\n"))
    assert error.row == 0
    assert "duplicate column name" in error.reason


def test_empty_header_names_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,name,,\n0812,Budi,x,\n")
    assert read_all(path) == [Recipient(1, "0812", {"name": "Budi"})]


def test_blank_lines_are_counted_not_yielded(tmp_path: Path) -> None:
    path = write(tmp_path, "\nphone,name\n0812-1,a\n\n , \n0812-2,b\n")
    assert [(r.row, r.phone) for r in read_all(path)] == [(1, "0812-1"), (4, "0812-2")]


def test_too_many_fields(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "phone,name\n0812-1,a\n0812-2,b,extra\n"))
    assert error.row == 2
    assert str(error) == f"{tmp_path / 'recipients.csv'}: row 2: 3 fields, but the header has 2"


def test_extra_empty_fields_are_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,name\n0812-1,a,,\n")
    assert read_all(path) == [Recipient(1, "0812-1", {"name": "a"})]


def test_fewer_fields_are_empty_values(tmp_path: Path) -> None:
    path = write(tmp_path, "name,city,phone\nBudi\n")
    assert read_all(path) == [Recipient(1, "", {"name": "Budi", "city": ""})]


def test_mixed_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path, b"phone,name\r\n0812-1,a\n0812-2,b\r0812-3,c\r\n0812-4,d")
    assert [(r.row, r.phone, r.variables["name"]) for r in read_all(path)] == [
        (1, "0812-1", "a"),
        (2, "0812-2", "b"),
        (3, "0812-3", "c"),
        (4, "0812-4", "d"),
    ]


def test_crlf_split_across_read_chunks(tmp_path: Path) -> None:
    # The 64 KiB read boundary falls between '\r' and '\n': still one line end, not two.
    filler = "x" * (64 * 1024 - len("phone,name\r\n0812,") - 1)
    path = write(tmp_path, f"phone,name\r\n0812,{filler}\r\n0813,b\r\n")
    rows = read_all(path)
    assert [(r.row, r.phone) for r in rows] == [(1, "0812"), (2, "0813")]


def test_quoted_fields_with_newlines_commas_quotes(tmp_path: Path) -> None:
    data = 'phone,note\n0812,"line 1\nline 2\r\nline 3, ""quoted"""\n0813,plain\n'
    rows = read_all(write(tmp_path, data))
    assert rows[0] == Recipient(1, "0812", {"note": 'line 1\nline 2\r\nline 3, "quoted"'})
    assert rows[1].row == 2


def test_row_and_line_differ_after_multiline_record(tmp_path: Path) -> None:
    data = 'phone,note\n0812,"a\nb\nc"\n0813,x,y\n'
    error = error_of(write(tmp_path, data))
    assert (error.row, error.line) == (2, 5)
    assert ": row 2 (line 5): " in str(error)


def test_unclosed_quote_is_an_error(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, 'phone,name\n0812,"Budi\n0813,Ani\n'))
    assert error.row == 1
    assert "malformed CSV" in error.reason


def test_invalid_utf8_names_row_and_line(tmp_path: Path) -> None:
    rows = "".join(f"0812{i:04d},name {i}\n" for i in range(1, 1000))
    data = b"phone,name\n" + rows.encode() + b"0812,Jos\xe9\n0813,ok\n"
    path = write(tmp_path, data)
    seen: list[int] = []
    with pytest.raises(InputError) as info:
        for recipient in read_recipients(path):
            seen.append(recipient.row)
    assert seen == list(range(1, 1000))  # every row before the bad one came through
    error = info.value
    assert error.row == 1000
    assert error.source == str(path)
    assert "not valid UTF-8 (byte 0xe9 at column 9)" in str(error)


def test_latin1_header_is_an_error_at_header(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "phone,caf\xe9\n".encode("latin-1")))
    assert error.row == 0
    assert "UTF-8" in error.reason


def test_nul_byte_names_row(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, b"phone,name\n0812,a\n0813,b\x00c\n"))
    assert error.row == 2
    assert "NUL" in error.reason


def test_ten_megabyte_line_is_a_clear_error(tmp_path: Path) -> None:
    big = b"phone,name\n0812," + b"x" * (10 * 1024 * 1024) + b"\n"
    path = write(tmp_path, big)
    tracemalloc.start()
    try:
        error = error_of(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.row == 1
    assert "longer than" in error.reason
    assert peak < 4 * MAX_LINE_BYTES  # stopped early; never held the 10 MB line


def test_ten_megabyte_file_without_line_breaks(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, b"phone" + b"," * (10 * 1024 * 1024)))
    assert error.row == 0
    assert "longer than" in error.reason


def test_huge_quoted_field_is_an_error(tmp_path: Path) -> None:
    data = 'phone,note\n0812,"' + "line\n" * 60_000 + '"\n'
    error = error_of(write(tmp_path, data))
    assert error.row == 1
    assert "longer than" in error.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: cannot open"):
        read_all(tmp_path / "nope.csv")


def test_streams_without_reading_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    with path.open("w") as out:
        out.write("phone,name\n")
        for i in range(300_000):
            out.write(f"0812{i:08d},n{i}\n")
    # read_recipients is a generator: look inside it for the open file.
    recipients = cast(Generator[Recipient, None, None], read_recipients(path))
    first = next(recipients)
    assert first.row == 1
    # The generator holds the file; only the first read chunks should have been consumed.
    file = inspect.getgeneratorlocals(recipients)["file"]
    assert file.tell() <= 256 * 1024 < path.stat().st_size
    recipients.close()
    assert file.closed


def _generate_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as out:
        out.write("phone,name,city\r\n")
        line = "0812{:08d},Name {},Bandung\r\n"
        out.writelines(line.format(i, i) for i in range(rows))


def _peak_while_streaming(path: Path) -> tuple[int, int]:
    count = 0
    tracemalloc.start()
    try:
        for recipient in read_recipients(path):
            count += 1
            del recipient
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


def test_streaming_memory_is_flat_100k(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    _generate_csv(path, 100_000)
    count, peak = _peak_while_streaming(path)
    assert count == 100_000
    assert peak < 2 * 1024 * 1024  # the file is ~3.3 MB; we hold a couple of 64 KiB blocks


@pytest.mark.slow
def test_streaming_memory_is_flat_one_million(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    _generate_csv(path, 1_000_000)
    start = time.perf_counter()
    assert sum(1 for _ in read_recipients(path)) == 1_000_000
    elapsed = time.perf_counter() - start
    count, peak = _peak_while_streaming(path)
    assert count == 1_000_000
    assert peak < 2 * 1024 * 1024  # the file is ~35 MB
    assert elapsed < 60


# Python API


def test_iter_recipients_converts_values() -> None:
    rows = [{"phone": 6281234567890, "name": "Budi", "n": 3, "none": None}]
    assert list(iter_recipients(rows)) == [
        Recipient(1, "6281234567890", {"name": "Budi", "n": "3", "none": ""})
    ]


def test_iter_recipients_is_lazy() -> None:
    def rows() -> Iterator[dict[str, str]]:
        yield {"phone": "0812"}
        raise AssertionError("read too far")

    assert next(iter_recipients(rows())) == Recipient(1, "0812", {})


def test_iter_recipients_missing_phone() -> None:
    with pytest.raises(InputError) as info:
        list(iter_recipients([{"phone": "1"}, {"name": "x"}], source="app"))
    assert str(info.value) == "app: row 2: field 'phone': no 'phone' key"


def test_iter_recipients_not_a_mapping() -> None:
    with pytest.raises(InputError, match="row 1: expected a mapping"):
        list(iter_recipients(["0812"]))  # type: ignore[list-item]


def test_iter_recipients_nul() -> None:
    with pytest.raises(InputError, match="row 1: field 'name': contains a NUL"):
        list(iter_recipients([{"phone": "0812", "name": "a\x00b"}]))
