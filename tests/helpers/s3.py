"""
A real S3 API server for the S3 backend's tests: moto in server mode
(``python -m moto.server``) on a free loopback port, started once per test
session (fixture C{moto_server}); each test gets a bucket of its own
(C{s3_bucket}). Nothing is patched into boto3: izreg talks HTTP to it.

Tests that use these fixtures carry the ``s3`` marker. Without moto
installed they skip, unless CI is set (then they fail).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.server import free_port

#: the credentials moto accepts (any); passed to izreg through the standard AWS_* variables
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "izreg-test", "AWS_SECRET_ACCESS_KEY": "izreg-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
START_TIMEOUT = 60.0


class MotoServer:
    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # an external process: poll its port with a deadline
            if self._proc.poll() is not None:
                raise AssertionError(f"moto server exited ({self._proc.returncode}); see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"moto server not listening after {START_TIMEOUT} s; see {self.log_path}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = "izreg-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def config_toml(self, bucket: str, **extra) -> str:
        """A ``[storage]`` + ``[storage.s3]`` TOML snippet for izreg over this server."""
        lines = ["[storage]", 'backend = "s3"', "[storage.s3]", f'bucket = "{bucket}"', f'endpoint_url = "{self.url}"',
                 'region = "us-east-1"']
        # moto on a shared 2-core machine may go quiet past izreg's 60 s default while it swallows a big part
        extra.setdefault("read_timeout", 300)
        extra.setdefault("writer_timeout", 30)  # likewise for a HEAD in a commit (5 s by default)
        for key, value in extra.items():
            lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
        return "\n".join(lines) + "\n"


def moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """One moto S3 server for the test session; AWS_* credentials set for izreg and boto3."""
    if not moto_available():
        if os.environ.get("CI"):
            pytest.fail("moto[server] is not installed (pip install '.[test]')")
        pytest.skip("moto[server] is not installed (pip install '.[test]')")
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(moto_server) -> str:
    """A new, empty bucket on the session's moto server."""
    return moto_server.new_bucket()


@pytest.fixture
def moto_proxy(moto_server):
    """A L{tests.helpers.tcpproxy.TCPProxy} in front of the session's moto server (a bucket that goes silent)."""
    from tests.helpers.tcpproxy import TCPProxy

    proxy = TCPProxy(moto_server.port)
    yield proxy
    proxy.close()


def s3_registry(tmp_path_factory, moto: MotoServer, label: str = "s3", bucket: str | None = None,
                extra_toml: str = "", **s3_options):
    """
    A L{RegistryProcess} (not started) whose blobs and uploads live in a new
    bucket of C{moto} (``[storage] backend = "s3"``); C{registry.bucket} names it.
    """
    from tests.helpers.server import RegistryProcess

    base = tmp_path_factory.mktemp(f"izreg-{label}")
    bucket = bucket or moto.new_bucket()
    config = base / "izreg.toml"
    config.write_text(moto.config_toml(bucket, **s3_options) + extra_toml)
    registry = RegistryProcess(data_dir=str(base / "data"), log_path=str(base / "server.log"),
                               extra_args=["--config", str(config)])
    registry.bucket = bucket
    return registry


def stored_blobs(moto: MotoServer, bucket: str, prefix: str = "") -> dict[str, str]:
    """Every object under ``blobs/`` in C{bucket}: its key's digest -> the sha256 of its bytes."""
    import hashlib

    client = moto.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}blobs/"):
        for item in page.get("Contents", []):
            algorithm, _, hexpart = item["Key"][len(prefix) + len("blobs/"):].partition("/")
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            hasher = hashlib.new(algorithm)
            for chunk in iter(lambda: body.read(1 << 20), b""):
                hasher.update(chunk)
            found[f"{algorithm}:{hexpart.split('/')[-1]}"] = f"{algorithm}:{hasher.hexdigest()}"
    return found
