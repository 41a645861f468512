"""
Several real izreg nodes sharing one PostgreSQL database and one S3 bucket,
behind a real haproxy: the deployment of docs/deploy.rst on loopback.

- C{Cluster(base, postgres_server, moto, nodes=3)}: a new database (migrated
  with ``izreg db upgrade``), a new bucket, one config file shared by every
  node (C{[metadata] backend = "postgresql"}, C{[storage] backend = "s3"}), N
  L{RegistryProcess} nodes (``twistd izreg server --config``) on free ports,
  and Debian's haproxy (``/usr/sbin/haproxy``) on a free port balancing
  round-robin per request (``option http-server-close``: each request may
  go to another node); with C{tls_pem}, haproxy ends TLS (C{cluster.url}
  is https). C{cluster.url}/C{cluster.host} is haproxy's; C{cluster.nodes[i]} each node. Node 1 starts first and makes the
  bootstrap account and key (C{cluster.account}, C{cluster.creds}); the
  others start with those credentials.
- fixture C{cluster}: one three-node cluster per test module (module scope:
  starting nodes is the slow part; each test uses repositories of its own).

Tests that use it carry the ``cluster``, ``postgres`` and ``s3`` markers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.server import REPO_ROOT, RegistryProcess, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
START_TIMEOUT = 60.0


def haproxy_available() -> bool:
    return os.access(HAPROXY, os.X_OK)


def haproxy_config(port: int, nodes: list[tuple[str, int]], checks: bool = True, tls_pem: str | None = None) -> str:
    """
    Round-robin per request over C{nodes} ((name, port)), health-checked on
    /healthz; with C{tls_pem} (certificate and key), haproxy ends TLS and
    says so in ``X-Forwarded-Proto`` (docs/deploy.rst).
    """
    check = " check inter 500ms fall 2 rise 1" if checks else ""
    bind = f"127.0.0.1:{port}" + (f" ssl crt {tls_pem} alpn http/1.1" if tls_pem else "")
    proto = "    http-request set-header X-Forwarded-Proto https\n" if tls_pem else ""
    servers = "\n".join(f"    server {name} 127.0.0.1:{node_port}{check}" for name, node_port in nodes)
    return f"""global
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    # a new server-side connection per request: round-robin reaches every node in turn
    option http-server-close
    # the client's address for the nodes' brake and logs (they trust 127.0.0.1: server.trusted_proxies)
    option forwardfor
    # a request that could not reach a node goes to another one
    option redispatch
    retries 2

frontend registry
    bind {bind}
    http-request del-header Forwarded
{proto}    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


class HAProxy:
    def __init__(self, base: str, nodes: list[tuple[str, int]], port: int | None = None,
                 tls_pem: str | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls_pem else 'http'}://{self.host}"
        self.config_path = os.path.join(base, "haproxy.cfg")
        self.log_path = os.path.join(base, "haproxy.log")
        with open(self.config_path, "w") as f:
            f.write(haproxy_config(self.port, nodes, tls_pem=tls_pem))
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        check = subprocess.run([HAPROXY, "-c", "-f", self.config_path], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(f"haproxy refuses its config:\n{check.stdout}{check.stderr}")
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path], stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(self.port, self._proc, f"haproxy (see {self.log_path})")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            self._log.close()
            self._proc = None


def _wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # an external process: poll its port with a deadline
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not listening after {START_TIMEOUT} s") from None
            time.sleep(0.1)


def izreg_command(config: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``izreg --config CONFIG ARGS`` (the admin command, against the cluster's database)."""
    proc = subprocess.run([sys.executable, "-m", "izreg.cli", "--config", config, *args], cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {})), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"izreg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


class Cluster:
    def __init__(self, base: str, postgres_server, moto, nodes: int = 3, extra_toml: str = "",
                 tls_pem: str | None = None) -> None:
        self.base = str(base)
        self.dsn = postgres_server.create_database()
        self.bucket = moto.new_bucket()
        self.config = os.path.join(self.base, "izreg.toml")
        with open(self.config, "w") as f:
            f.write(self.config_toml(moto) + extra_toml)
        # the key that seals webhook secrets and the token key in the database: the same file on every node
        from cryptography.fernet import Fernet

        sealing_key = Fernet.generate_key()
        for i in range(1, nodes + 1):
            node_dir = os.path.join(self.base, f"node{i}")
            os.makedirs(node_dir, mode=0o700)
            fd = os.open(os.path.join(node_dir, "webhook.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(sealing_key)
        self.nodes = [RegistryProcess(data_dir=os.path.join(self.base, f"node{i}"),
                                      log_path=os.path.join(self.base, f"node{i}.log"), config=self.config)
                      for i in range(1, nodes + 1)]
        self.haproxy = HAProxy(self.base, [(f"node{i}", node.port) for i, node in enumerate(self.nodes, 1)],
                               tls_pem=tls_pem)
        self.url, self.host = self.haproxy.url, self.haproxy.host
        self.account: str | None = None
        self.creds: str | None = None

    def config_toml(self, moto) -> str:
        return (f'[metadata]\nbackend = "postgresql"\ndsn = "{self.dsn}"\npool_size = 4\n'
                '[server]\ntrusted_proxies = ["127.0.0.1"]\n'
                + moto.config_toml(self.bucket))

    def izreg(self, *args: str) -> str:
        return izreg_command(self.config, *args).stdout.strip()

    def start(self) -> None:
        self.izreg("db", "upgrade")
        first = self.nodes[0]
        first.start()
        self.account, self.creds = first.account, first.creds
        for node in self.nodes[1:]:
            node.creds, node.account = self.creds, self.account
            node.start()
        self.haproxy.start()

    def new_account(self, read_only: bool = False) -> tuple[str, str]:
        """A new account and an access key of it, made with ``izreg`` against the database."""
        account = self.izreg("account", "create", "--name", "cluster")
        key = self.izreg("key", "create", account, *(["--read-only"] if read_only else []))
        return account, f"KEY:{key}"

    @property
    def requests_auth(self):
        user, _, password = self.creds.partition(":")
        return (user, password)

    def close(self) -> None:
        try:
            self.haproxy.stop()
        finally:
            for node in self.nodes:
                node.close()

    def __repr__(self) -> str:
        return f"<Cluster {self.url} nodes={[n.port for n in self.nodes]}>"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server, moto_server):
    from tests.conftest import require_tool

    require_tool(haproxy_available(), "haproxy")
    c = Cluster(tmp_path_factory.mktemp("cluster"), postgres_server, moto_server, nodes=3)
    try:
        c.start()
        yield c
    finally:
        c.close()
