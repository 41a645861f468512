"""Fixtures shared by every test package."""

from tests.helpers.s3 import moto_server, s3_bucket  # noqa: F401  (session moto server, a bucket per test)
