"""Range / Content-Range parsing (izreg.core.ranges)."""

from __future__ import annotations

import pytest

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.ranges import ByteRange, parse_content_range, parse_range, upload_range


@pytest.mark.parametrize(
    "header, total, expected",
    [
        # whole body
        (None, 10, None),
        ("", 10, None),
        (None, 0, None),
        # ordinary ranges
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=0-0", 1, (0, 0)),
        # last-pos past the end is clamped
        ("bytes=0-10", 10, (0, 9)),
        ("bytes=5-1000000000000", 10, (5, 9)),
        # open ranges
        ("bytes=0-", 10, (0, 9)),
        ("bytes=9-", 10, (9, 9)),
        ("bytes=3-", 10, (3, 9)),
        # suffix ranges
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-11", 10, (0, 9)),  # longer than the body: the whole body
        ("bytes=-1", 1, (0, 0)),
        # the unit is case-insensitive; optional whitespace around
        ("BYTES=1-2", 10, (1, 2)),
        ("Bytes=1-2", 10, (1, 2)),
        ("bytes=1-2 ", 10, (1, 2)),
        # syntactically invalid or unsupported: ignored (send 200 with the whole body)
        ("bytes=5-3", 10, None),
        ("bytes=-", 10, None),
        ("bytes=", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=0-1,3-4", 10, None),  # multi-range
        ("bytes=-1,0-0", 10, None),
        ("items=0-1", 10, None),
        ("0-1", 10, None),
        ("bytes 0-1", 10, None),
        ("bytes=1.5-2", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=5-3", 0, None),  # invalid beats unsatisfiable
    ],
)
def test_parse_range(header, total, expected):
    result = parse_range(header, total)
    if expected is None:
        assert result is None
    else:
        assert result == ByteRange(expected[0], expected[1], total)


@pytest.mark.parametrize(
    "header, total",
    [
        ("bytes=10-", 10),  # first-pos at the end
        ("bytes=10-20", 10),
        ("bytes=11-11", 10),
        ("bytes=-0", 10),  # zero-length suffix
        ("bytes=-0", 0),
        ("bytes=0-", 0),  # empty representation: nothing is satisfiable
        ("bytes=0-0", 0),
        ("bytes=-1", 0),
        ("bytes=-100", 0),
        ("bytes=1-", 1),
    ],
)
def test_parse_range_unsatisfiable(header, total):
    with pytest.raises(RegistryError) as info:
        parse_range(header, total)
    error = info.value
    assert error.code is ErrorCode.RANGE_INVALID
    assert error.code.status == 416
    assert error.headers == {"Content-Range": f"bytes */{total}"}
    assert error.detail == {"range": header, "size": total}


def test_unsatisfiable_detail_is_truncated():
    header = "bytes=" + "9" * 200 + "-"
    with pytest.raises(RegistryError) as info:
        parse_range(header, 5)
    assert info.value.detail["range"] == header[:100]


@pytest.mark.parametrize(
    "start, end, total, length, content_range",
    [
        (0, 0, 1, 1, "bytes 0-0/1"),
        (0, 9, 10, 10, "bytes 0-9/10"),
        (5, 7, 100, 3, "bytes 5-7/100"),
    ],
)
def test_byte_range(start, end, total, length, content_range):
    r = ByteRange(start, end, total)
    assert r.length == length
    assert r.content_range() == content_range


@pytest.mark.parametrize(
    "header, expected",
    [
        ("0-0", (0, 0)),
        ("0-9", (0, 9)),
        ("10-19", (10, 19)),
        ("5-5", (5, 5)),
        (" 0-9 ", (0, 9)),
        ("0-9\n", (0, 9)),
        ("bytes 0-9", (0, 9)),
        ("bytes=0-9", (0, 9)),
        ("BYTES 0-9/10", (0, 9)),
        ("0-9/*", (0, 9)),
        ("0-9/100", (0, 9)),
        ("0-99999999999999999999", (0, 99999999999999999999)),
    ],
)
def test_parse_content_range(header, expected):
    assert parse_content_range(header) == expected


@pytest.mark.parametrize(
    "header",
    ["", None, "9-0", "1-0", "-", "0-", "-9", "a-b", "0 - 9", "0-9,10-19", "0-9/", "0-9/x", "bytes */10", "items 0-9", "0-9\nX", "+0-9"],
)
def test_parse_content_range_invalid(header):
    with pytest.raises(RegistryError) as info:
        parse_content_range(header)
    assert info.value.code is ErrorCode.RANGE_INVALID


@pytest.mark.parametrize("offset, expected", [(0, "0-0"), (1, "0-0"), (2, "0-1"), (10, "0-9"), (1 << 40, f"0-{(1 << 40) - 1}")])
def test_upload_range(offset, expected):
    assert upload_range(offset) == expected
