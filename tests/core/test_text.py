"""izreg.core.text: a count with its noun (the command's output and the log lines)."""

from __future__ import annotations

import pytest

from izreg.core.text import plural, without_userinfo


def test_plural():
    assert [plural(n, "repository", "repositories") for n in (0, 1, 2)] == [
        "0 repositories", "1 repository", "2 repositories"]
    assert [plural(n, "byte") for n in (0, 1, 2)] == ["0 bytes", "1 byte", "2 bytes"]
    assert [plural(n, "device CA") for n in (1, 2)] == ["1 device CA", "2 device CAs"]


@pytest.mark.parametrize("password", ["S3CRET", "S3@CRET", "S3:CR@ET", "S3/CR:ET@", "S3%40CR%2FET", "S3%2F@/:%3A"])
def test_without_userinfo(password):
    for message in (f'could not parse "postgresql://izreg:{password}@db:5432/x?sslmode=require"',
                    f"Could not connect to the endpoint URL: \"http://AKIA:{password}@s3:9000/bucket\"",
                    f"postgresql://izreg:{password}@db/x (and again: https://k:{password}@h/b)"):
        redacted = without_userinfo(message)
        assert "S3" not in redacted and "CR" not in redacted and "ET" not in redacted, redacted
        assert "//db" in redacted or "//s3:9000/" in redacted
    # the rest stays: where it went, and what went wrong
    assert without_userinfo('bad "postgresql://izreg:p@w@db:5432/x" here') == 'bad "postgresql://db:5432/x" here'
    assert without_userinfo("no URL: a@b, //host/path") == "no URL: a@b, //host/path"
