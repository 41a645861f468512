"""
The one line a server (or C{izreg --config ... gc}) says at start when the
bucket cannot be reached (L{izreg.storage.s3.check_bucket}): what to do, not
only botocore's own words.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest

from izreg.service.config import Config
from izreg.storage.interfaces import StorageError
from izreg.storage.s3 import check_bucket


@pytest.fixture
def no_aws_credentials(tmp_path, monkeypatch):
    """An environment where boto3's chain finds no credentials: no variables, no files, no instance role."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(port, **credentials):
    return Config(storage_backend="s3", s3_bucket="izreg-blobs", s3_endpoint_url=f"http://127.0.0.1:{port}",
                  s3_region="us-east-1", **credentials)


def test_missing_credentials_say_where_to_set_them(no_aws_credentials, closed_port):
    with pytest.raises(StorageError) as raised:
        check_bucket(_config(closed_port))
    assert str(raised.value) == (
        f"S3 bucket 'izreg-blobs' at 127.0.0.1:{closed_port} is not reachable: no credentials: set"
        " [storage.s3] access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the"
        " server's environment (or ~/.aws/credentials, an instance role)")


def test_with_credentials_the_next_failure_is_said_instead(no_aws_credentials, closed_port):
    """The credentials hint is for missing credentials only: given some, the refused connection is named."""
    with pytest.raises(StorageError) as raised:
        check_bucket(_config(closed_port, s3_access_key_id="AKIAEXAMPLE", s3_secret_access_key="secret"))
    message = str(raised.value)
    assert "no credentials" not in message and "secret" not in message
    assert "Could not connect" in message, message


def test_the_start_message_names_no_credentials_of_the_endpoint_url(closed_port):
    # botocore's own message quotes the URL whole; the start line named it whole too
    config = dataclasses.replace(_config(closed_port, s3_access_key_id="AKIAEXAMPLE", s3_secret_access_key="secret"),
                                 s3_endpoint_url=f"http://minio:sekrit@127.0.0.1:{closed_port}")
    with pytest.raises(StorageError) as raised:
        check_bucket(config)
    message = str(raised.value)
    assert message.startswith(f"S3 bucket 'izreg-blobs' at 127.0.0.1:{closed_port} is not reachable: ")
    assert "sekrit" not in message and "minio" not in message, message
    assert f'"http://127.0.0.1:{closed_port}/izreg-blobs"' in message  # where it tried, less the credentials
